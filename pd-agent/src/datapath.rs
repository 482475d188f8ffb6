//! What the XDP fast path may do, decided from what the kernel reports:
//! each interface's link type, which devices take redirected frames
//! (xdp-features), and whether netfilter hooks sit on the forwarding path.
//! Pure logic: the agent feeds it readings and writes the resulting
//! per-interface flags ([`pd_common::ifflags`]) into `pd_ifaces_v1`.
//!
//! The rules, each with a unit test below:
//! - a packet is forwarded in XDP only if the kernel would deliver it the
//!   same way: never into a device that cannot take a redirect (it would be
//!   dropped after XDP returns), never from a link without an Ethernet
//!   header (nothing to rewrite);
//! - `auto` (the default) never goes around the firewall: while any
//!   netfilter hook is on the forwarding path, or the hooks cannot be
//!   listed, everything goes to the kernel;
//! - `bypass-firewall` forwards even then; `off` never forwards;
//! - where the kernel reports no xdp-features, no device is a redirect
//!   target.

use std::collections::HashMap;

use pd_common::ifflags;

use crate::xdp_features;

/// `--fast-path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FastPathMode {
    /// Forward in XDP where the kernel would forward the same way and no
    /// netfilter hook is on the forwarding path; checked continuously.
    Auto,
    /// Never forward in XDP (snooping and source validation stay).
    Off,
    /// Forward in XDP even while netfilter hooks exist: the firewall never
    /// sees that traffic. Still only into devices that take redirects.
    BypassFirewall,
}

impl FastPathMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FastPathMode::Auto => "auto",
            FastPathMode::Off => "off",
            FastPathMode::BypassFirewall => "bypass-firewall",
        }
    }

    /// `auto`, `off`, `bypass-firewall`; `on`/`true` and `false` from
    /// older configurations mean `auto` and `off`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "on" | "true" => Ok(FastPathMode::Auto),
            "off" | "false" => Ok(FastPathMode::Off),
            "bypass-firewall" => Ok(FastPathMode::BypassFirewall),
            _ => Err(format!("expected auto, off or bypass-firewall, got {s}")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for FastPathMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Bool(bool),
            Text(String),
        }
        match Wire::deserialize(d)? {
            Wire::Bool(true) => Ok(FastPathMode::Auto),
            Wire::Bool(false) => Ok(FastPathMode::Off),
            Wire::Text(s) => FastPathMode::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// How frames on a link begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// An Ethernet header (also veth, bridges, VLAN devices, macvlan,
    /// gretap, vxlan).
    Ethernet,
    /// The IPv6 header first: ppp, tun, WireGuard, raw-IP modems, ipip,
    /// sit, ip6tnl.
    Bare,
}

/// A link type the programs cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link type {name} ({arphrd}) is not supported: {why}")]
pub struct UnsupportedLink {
    pub arphrd: u16,
    pub name: &'static str,
    pub why: &'static str,
}

/// The link kind of an `ARPHRD_*` device type, or why it is refused.
pub fn link_kind(arphrd: u16) -> Result<LinkKind, UnsupportedLink> {
    let refuse = |why| {
        Err(UnsupportedLink {
            arphrd,
            name: arphrd_name(arphrd),
            why,
        })
    };
    match arphrd {
        1 => Ok(LinkKind::Ethernet), // ARPHRD_ETHER
        // ARPHRD_PPP, ARPHRD_RAWIP, ARPHRD_TUNNEL (ipip), ARPHRD_TUNNEL6
        // (ip6tnl), ARPHRD_SIT, ARPHRD_NONE (tun, WireGuard): each resets
        // the mac header to the inner IP header on receive, so XDP and TC
        // see the IPv6 header first.
        512 | 519 | 768 | 769 | 776 | 0xfffe => Ok(LinkKind::Bare),
        // ARPHRD_IPGRE, ARPHRD_IP6GRE: without a unicast remote these carry
        // header_ops, and XDP (and TC egress) see the outer header first.
        778 | 823 => refuse(
            "on GRE devices the programs can see the outer header where they expect the inner one; \
             use gretap, ip6gretap or WireGuard",
        ),
        _ => refuse(
            "pd-agent reads Ethernet links and links that carry bare IP packets \
             (ppp, tun, WireGuard, ipip, sit, ip6tnl)",
        ),
    }
}

fn arphrd_name(t: u16) -> &'static str {
    match t {
        1 => "ether",
        32 => "infiniband",
        280 => "can",
        512 => "ppp",
        519 => "rawip",
        768 => "ipip",
        769 => "ip6tnl",
        772 => "loopback",
        776 => "sit",
        778 => "gre",
        803 => "ieee80211-radiotap",
        804 => "ieee802154",
        823 => "ip6gre",
        824 => "netlink",
        0xfffe => "none",
        _ => "unknown",
    }
}

/// What the netfilter probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firewall {
    /// No hook on the forwarding path.
    Clear,
    /// These hooks (described) are on it.
    Hooks(Vec<String>),
    /// The hooks could not be listed (this says why).
    Unknown(String),
}

/// The readings the fast path's flags are derived from.
#[derive(Debug, Clone)]
pub struct Datapath {
    pub mode: FastPathMode,
    pub firewall: Firewall,
    /// ifindex -> xdp-features bits; `None`: the kernel reports none.
    pub features: Option<HashMap<u32, u64>>,
}

impl Datapath {
    pub fn new(mode: FastPathMode) -> Self {
        Datapath {
            mode,
            // Until the first probe: the safe side.
            firewall: Firewall::Unknown("not probed yet".into()),
            features: None,
        }
    }

    /// Whether delegated traffic may be forwarded in XDP at all; else why not.
    pub fn forwarding(&self) -> Result<(), String> {
        match (self.mode, &self.firewall) {
            (FastPathMode::Off, _) => Err("--fast-path off".into()),
            (FastPathMode::BypassFirewall, _) | (FastPathMode::Auto, Firewall::Clear) => Ok(()),
            (FastPathMode::Auto, Firewall::Hooks(h)) => Err(format!(
                "netfilter hooks on the forwarding path ({}); the firewall decides, so the kernel forwards",
                h.join("; ")
            )),
            (FastPathMode::Auto, Firewall::Unknown(why)) => Err(format!(
                "cannot list the netfilter hooks ({why}); the kernel forwards"
            )),
        }
    }

    /// [`Datapath::forwarding`] as a metric label: `forwarding`, `off`,
    /// `firewall` or `hooks_unknown`.
    pub fn forwarding_reason(&self) -> &'static str {
        match (self.mode, &self.firewall) {
            (FastPathMode::Off, _) => "off",
            (FastPathMode::BypassFirewall, _) | (FastPathMode::Auto, Firewall::Clear) => {
                "forwarding"
            }
            (FastPathMode::Auto, Firewall::Hooks(_)) => "firewall",
            (FastPathMode::Auto, Firewall::Unknown(_)) => "hooks_unknown",
        }
    }

    /// Whether `ifindex` takes redirected frames; else why not.
    pub fn redirect_target(&self, ifindex: u32, kind: LinkKind) -> Result<(), String> {
        if kind == LinkKind::Bare {
            return Err("no Ethernet header to write".into());
        }
        let Some(features) = &self.features else {
            return Err("the kernel reports no xdp-features (before 6.3)".into());
        };
        let bits = features.get(&ifindex).copied().unwrap_or(0);
        if bits & xdp_features::NDO_XMIT == 0 {
            return Err(format!(
                "xdp-features {} lack ndo-xmit (a veth whose peer has no XDP program and GRO off, \
                 a bridge, a VLAN device, ...)",
                xdp_features::describe(bits)
            ));
        }
        Ok(())
    }

    /// The fast-path bits of `pd_ifaces_v1` for one managed interface.
    pub fn flags(&self, ifindex: u32, kind: LinkKind) -> u32 {
        let mut f = 0;
        if kind == LinkKind::Bare {
            f |= ifflags::L3;
        } else if self.forwarding().is_ok() {
            f |= ifflags::FWD_IN;
        }
        if self.mode != FastPathMode::Off && self.redirect_target(ifindex, kind).is_ok() {
            f |= ifflags::FWD_OUT;
        }
        f
    }
}

/// The readings, kept current: xdp-features from the `netdev` family,
/// netfilter hooks from nfnetlink. The agent calls [`Monitor::refresh`]
/// when a listener ticks (a device changed, the nftables ruleset changed)
/// and every [`POLL`] (ip6tables-legacy and conntrack announce nothing).
pub struct Monitor {
    pub state: Datapath,
    netdev: Option<crate::xdp_features::Netdev>,
    netfilter: Result<crate::netfilter::Netfilter, String>,
    /// The managed interfaces' names: their netdev hooks count too.
    pub devices: Vec<String>,
}

/// How often the hooks and features are read again without a notification.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the kernel trusts the flags without the agent renewing them
/// (it renews at every [`POLL`]).
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(6);

/// Ticks from the kernel's change notifications.
#[derive(Default)]
pub struct Listeners {
    pub features: Option<tokio::sync::mpsc::Receiver<()>>,
    pub firewall: Option<tokio::sync::mpsc::Receiver<()>>,
}

impl Monitor {
    /// Open the probes and subscribe to their notifications. A probe that
    /// cannot be opened leaves its reading on the safe side, and says so.
    pub fn start(mode: FastPathMode, devices: Vec<String>) -> (Self, Listeners) {
        let mut listeners = Listeners::default();
        let mut m = Monitor {
            state: Datapath::new(mode),
            netdev: None,
            netfilter: Err("not needed".into()),
            devices,
        };
        if mode == FastPathMode::Off {
            m.state.firewall = Firewall::Clear;
            return (m, listeners);
        }
        match crate::xdp_features::Netdev::open() {
            Ok(Some(n)) => {
                match n.listen() {
                    Ok(rx) => listeners.features = rx,
                    Err(e) => tracing::warn!(error = %crate::chain(&e), "xdp-features notifications; reading them every {}s instead", POLL.as_secs()),
                }
                m.netdev = Some(n);
            }
            Ok(None) => tracing::warn!(
                "the kernel reports no xdp-features (netdev netlink family, Linux 6.3+): the fast path \
                 redirects into no device, the kernel forwards everything"
            ),
            Err(e) => tracing::warn!(error = %crate::chain(&e), "reading xdp-features: the fast path redirects into no device"),
        }
        if mode == FastPathMode::Auto {
            m.netfilter = crate::netfilter::Netfilter::open().map_err(|e| crate::chain(&e));
            match crate::netfilter::Netfilter::listen() {
                Ok(rx) => listeners.firewall = Some(rx),
                Err(e) => {
                    tracing::warn!(error = %crate::chain(&e), "nftables notifications; reading the hooks every {}s instead", POLL.as_secs())
                }
            }
        } else {
            m.state.firewall = Firewall::Clear;
        }
        m.refresh();
        if let Some(how) = m.firewall_method() {
            tracing::info!(how, "netfilter hooks on the forwarding path are read from");
        }
        (m, listeners)
    }

    /// How netfilter hooks are found (None: not looked for).
    pub fn firewall_method(&self) -> Option<&'static str> {
        match (&self.netfilter, self.state.mode) {
            (Ok(nf), FastPathMode::Auto) => Some(nf.method()),
            _ => None,
        }
    }

    /// Read xdp-features and the netfilter hooks again.
    pub fn refresh(&mut self) {
        if let Some(n) = &mut self.netdev {
            match n.dump() {
                Ok(f) => self.state.features = Some(f),
                Err(e) => {
                    tracing::warn!(error = %crate::chain(&e), "reading xdp-features; no device is a redirect target until it works");
                    self.state.features = None;
                }
            }
        }
        if self.state.mode == FastPathMode::Auto {
            self.state.firewall = match &mut self.netfilter {
                Err(e) => Firewall::Unknown(e.clone()),
                Ok(nf) => match nf.forward_path(&self.devices) {
                    Ok(h) if h.is_empty() => Firewall::Clear,
                    Ok(h) => Firewall::Hooks(h.iter().map(|h| h.to_string()).collect()),
                    Err(e) => Firewall::Unknown(crate::chain(&e)),
                },
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETH: LinkKind = LinkKind::Ethernet;
    const XMIT: u64 = 0x7; // basic, redirect, ndo-xmit

    fn dp(mode: FastPathMode, fw: Firewall, feats: Option<&[(u32, u64)]>) -> Datapath {
        Datapath {
            mode,
            firewall: fw,
            features: feats.map(|f| f.iter().copied().collect()),
        }
    }

    #[test]
    fn forwards_only_into_devices_that_take_redirects() {
        // 1: a veth whose peer has GRO or XDP; 2: a plain veth; 3: a bridge.
        let d = dp(
            FastPathMode::Auto,
            Firewall::Clear,
            Some(&[(1, XMIT), (2, 0x23), (3, 0)]),
        );
        assert_eq!(d.flags(1, ETH), ifflags::FWD_IN | ifflags::FWD_OUT);
        assert_eq!(d.flags(2, ETH), ifflags::FWD_IN);
        assert_eq!(d.flags(3, ETH), ifflags::FWD_IN);
        assert_eq!(d.flags(4, ETH), ifflags::FWD_IN, "unknown device");
        assert!(d
            .redirect_target(2, ETH)
            .unwrap_err()
            .contains("basic,redirect,rx-sg"));
    }

    #[test]
    fn no_xdp_features_means_no_redirect_target() {
        let d = dp(FastPathMode::Auto, Firewall::Clear, None);
        assert_eq!(d.flags(1, ETH), ifflags::FWD_IN);
        assert!(d.redirect_target(1, ETH).unwrap_err().contains("6.3"));
    }

    #[test]
    fn auto_never_goes_around_the_firewall() {
        let hooks = Firewall::Hooks(vec![
            "ip6 forward: nftables chain inet filter forward".into()
        ]);
        let d = dp(FastPathMode::Auto, hooks.clone(), Some(&[(1, XMIT)]));
        assert_eq!(d.flags(1, ETH), ifflags::FWD_OUT);
        assert!(d.forwarding().unwrap_err().contains("inet filter forward"));
        // Hooks that cannot be listed count as hooks.
        let d = dp(
            FastPathMode::Auto,
            Firewall::Unknown("EINVAL".into()),
            Some(&[(1, XMIT)]),
        );
        assert_eq!(d.flags(1, ETH) & ifflags::FWD_IN, 0);
        assert_eq!(
            Datapath::new(FastPathMode::Auto).flags(1, ETH) & ifflags::FWD_IN,
            0
        );
        // Forcing goes around it, and says so in its name.
        let d = dp(FastPathMode::BypassFirewall, hooks, Some(&[(1, XMIT)]));
        assert_eq!(d.flags(1, ETH), ifflags::FWD_IN | ifflags::FWD_OUT);
    }

    #[test]
    fn off_forwards_nothing_and_bare_links_are_marked() {
        let d = dp(FastPathMode::Off, Firewall::Clear, Some(&[(1, XMIT)]));
        assert_eq!(d.flags(1, ETH), 0);
        assert_eq!(d.flags(1, LinkKind::Bare), ifflags::L3);
        let d = dp(FastPathMode::Auto, Firewall::Clear, Some(&[(1, XMIT)]));
        // A tun device lists ndo-xmit, but takes no Ethernet frames.
        assert_eq!(d.flags(1, LinkKind::Bare), ifflags::L3);
    }

    #[test]
    fn link_types() {
        assert_eq!(link_kind(1), Ok(LinkKind::Ethernet));
        for t in [512, 519, 768, 769, 776, 0xfffe] {
            assert_eq!(link_kind(t), Ok(LinkKind::Bare), "{t}");
        }
        assert!(link_kind(778)
            .unwrap_err()
            .to_string()
            .contains("gre (778)"));
        assert!(link_kind(823)
            .unwrap_err()
            .to_string()
            .contains("ip6gre (823)"));
        assert_eq!(link_kind(32).unwrap_err().name, "infiniband");
        assert!(link_kind(772)
            .unwrap_err()
            .to_string()
            .starts_with("link type loopback (772) is not supported: "));
    }

    #[test]
    fn mode_names_and_old_spellings() {
        for (s, m) in [
            ("auto", FastPathMode::Auto),
            ("on", FastPathMode::Auto),
            ("off", FastPathMode::Off),
            ("bypass-firewall", FastPathMode::BypassFirewall),
        ] {
            assert_eq!(FastPathMode::parse(s), Ok(m));
        }
        assert!(FastPathMode::parse("yes").is_err());
        #[derive(serde::Deserialize)]
        struct T {
            f: FastPathMode,
        }
        let t: T = toml::from_str("f = true").unwrap();
        assert_eq!(t.f, FastPathMode::Auto);
        let t: T = toml::from_str("f = \"bypass-firewall\"").unwrap();
        assert_eq!(t.f, FastPathMode::BypassFirewall);
        assert!(toml::from_str::<T>("f = \"fast\"").is_err());
    }
}
