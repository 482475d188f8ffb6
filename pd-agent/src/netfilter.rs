//! The netfilter hooks on the forwarding path, as `nft list hooks` lists
//! them (nfnetlink's hook subsystem, Linux 5.14+;
//! `include/uapi/linux/netfilter/nfnetlink_hook.h`).
//!
//! Forwarding in XDP happens before netfilter: prerouting, forward,
//! postrouting, conntrack and the netdev ingress/egress chains never see
//! the packet. So while any such hook exists in this namespace (an
//! nftables chain, an ip6tables table, conntrack, a flowtable), the fast
//! path leaves delegated traffic to the kernel. nftables announces each
//! ruleset change (`NFNLGRP_NFTABLES`); ip6tables-legacy and conntrack
//! announce nothing, so the agent also looks again every few seconds.
//!
//! Kernels without the hook subsystem (before 5.14, or built without
//! `CONFIG_NETFILTER_NETLINK_HOOK`, where `nft list hooks` prints nothing)
//! are read the next best way: the nftables ruleset's base chains and the
//! ip6tables-legacy tables of this namespace. That misses hooks nobody
//! configured as rules (BPF netfilter programs, conntrack held by ipvs or
//! openvswitch), which [`Netfilter::method`] says.

use std::fmt;

use rtnetlink::{packet_core::NLM_F_DUMP, sys::protocols::NETLINK_NETFILTER};

use crate::netlink::{attr_str, attrs, put_attr, NlError, NlSocket};

const NFNL_SUBSYS_HOOK: u16 = 12;
const NFNL_MSG_HOOK_GET: u16 = 0;
const NFNLA_HOOK_HOOKNUM: u16 = 1;
const NFNLA_HOOK_DEV: u16 = 3;
const NFNLA_HOOK_FUNCTION_NAME: u16 = 4;
const NFNLA_HOOK_MODULE_NAME: u16 = 5;
const NFNLA_HOOK_CHAIN_INFO: u16 = 6;
const NFNLA_HOOK_INFO_DESC: u16 = 1;
const NFNLA_HOOK_INFO_TYPE: u16 = 2;
const NFNLA_CHAIN_TABLE: u16 = 1;
const NFNLA_CHAIN_FAMILY: u16 = 2;
const NFNLA_CHAIN_NAME: u16 = 3;
/// `NFNL_HOOK_TYPE_*`: what registered a hook.
const HOOK_TYPE_NFTABLES: u32 = 1;
/// The description holds a program id, not a chain.
const HOOK_TYPE_BPF: u32 = 2;
const HOOK_TYPE_NFT_FLOWTABLE: u32 = 3;
const NFNLA_HOOK_BPF_ID: u16 = 1;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_NETDEV: u8 = 5;
const NFPROTO_BRIDGE: u8 = 7;
const NFPROTO_IPV6: u8 = 10;

/// Hooks every namespace carries that decide nothing about the packets
/// the fast path forwards:
/// - `ip_sabotage_in`: br_netfilter (Docker loads it) keeps bridged frames
///   from passing the IP hooks twice;
/// - `apparmor_ip_postroute`, `selinux_ip_forward`, `selinux_ip_postroute`:
///   the security modules' network mediation, which only acts on labelled
///   packets (SECMARK rules, which are hooks of their own, or labelled
///   IPsec). Debian's kernels enable AppArmor by default.
const BENIGN_HOOKS: [&str; 4] = [
    "ip_sabotage_in",
    "apparmor_ip_postroute",
    "selinux_ip_forward",
    "selinux_ip_postroute",
];

fn is_benign(h: &Hook) -> bool {
    BENIGN_HOOKS.iter().any(|f| {
        let f = format!("kernel function {f}");
        h.owner == f || h.owner.starts_with(&format!("{f} ("))
    })
}

/// `NFNLGRP_NFTABLES`: every nf_tables ruleset change.
pub const NFNLGRP_NFTABLES: u32 = 7;

/// The IPv6 hooks a forwarded packet passes (`NF_INET_*`).
const IPV6_FORWARD_PATH: [(u32, &str); 3] = [(0, "prerouting"), (2, "forward"), (4, "postrouting")];
/// The netdev hooks (`NF_NETDEV_*`) of the devices a forwarded packet
/// crosses; egress exists from 5.16.
const NETDEV_HOOKS: [(u32, &str); 2] = [(0, "ingress"), (1, "egress")];

/// One function registered on a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `ip6 forward`, `netdev ingress lan0`, ...
    pub place: String,
    /// What registered it: an nftables chain, a BPF program, or the
    /// kernel function (ip6tables, conntrack, ...) and its module.
    pub owner: String,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.owner)
    }
}

pub struct Netfilter {
    sock: NlSocket,
    /// The kernel has no hook subsystem: read the ruleset instead.
    no_hook_list: bool,
}

/// `/proc/net/ip6_tables_names`: the ip6tables-legacy tables of the
/// reading process's namespace.
const IP6_TABLES_NAMES: &str = "/proc/net/ip6_tables_names";

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_DEV: u16 = 3;
const NFTA_HOOK_DEVS: u16 = 4;
/// `NF_INET_INGRESS`: an inet chain bound to a device's ingress (5.10+).
const NF_INET_INGRESS: u32 = 5;

impl Netfilter {
    pub fn open() -> Result<Self, NlError> {
        Ok(Netfilter {
            sock: NlSocket::open(NETLINK_NETFILTER)?,
            no_hook_list: false,
        })
    }

    /// How the hooks are found.
    pub fn method(&self) -> &'static str {
        if self.no_hook_list {
            "nftables base chains and ip6tables-legacy tables (this kernel cannot list netfilter hooks: \
             BPF netfilter programs and conntrack used outside the ruleset are not seen)"
        } else {
            "netfilter hook list"
        }
    }

    /// Every hook a packet forwarded between `devices` passes. An error
    /// means neither the hooks nor the ruleset could be read.
    pub fn forward_path(&mut self, devices: &[String]) -> Result<Vec<Hook>, NlError> {
        if !self.no_hook_list {
            match self.hook_list(devices) {
                // The hook subsystem is missing (EINVAL for every request).
                Err(NlError::Errno(libc::EINVAL)) => self.no_hook_list = true,
                r => return r,
            }
        }
        let mut out = self.ruleset_chains(devices)?;
        out.extend(legacy_tables(
            &std::fs::read_to_string(IP6_TABLES_NAMES).unwrap_or_default(),
        ));
        Ok(out)
    }

    fn hook_list(&mut self, devices: &[String]) -> Result<Vec<Hook>, NlError> {
        let mut out = Vec::new();
        for (num, name) in IPV6_FORWARD_PATH {
            for h in self.dump(NFPROTO_IPV6, num, None)? {
                out.push(Hook {
                    place: format!("ip6 {name}"),
                    ..h
                });
            }
        }
        for dev in devices {
            for (num, name) in NETDEV_HOOKS {
                match self.dump(NFPROTO_NETDEV, num, Some(dev)) {
                    Ok(hooks) => out.extend(hooks.into_iter().map(|h| Hook {
                        place: format!("netdev {name} {dev}"),
                        ..h
                    })),
                    // The device went away, or the kernel has no egress hook
                    // (before 5.16: EOPNOTSUPP; without CONFIG_NETFILTER_EGRESS:
                    // EPROTONOSUPPORT).
                    Err(e)
                        if matches!(
                            e.errno(),
                            Some(libc::ENODEV | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // An inet chain is registered for IPv4 and IPv6 alike; list it once.
        let mut seen = std::collections::HashSet::new();
        out.retain(|h| seen.insert((h.place.clone(), h.owner.clone())));
        out.retain(|h| !is_benign(h));
        Ok(out)
    }

    /// The nftables base chains a forwarded packet passes: ip6 and inet
    /// prerouting, forward, postrouting; inet and netdev chains bound to
    /// one of `devices`.
    fn ruleset_chains(&mut self, devices: &[String]) -> Result<Vec<Hook>, NlError> {
        let req = [0u8, 0, 0, 0]; // nfgenmsg: every family
        let replies = self.sock.call(
            NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN,
            NLM_F_DUMP,
            &req,
        )?;
        Ok(replies
            .iter()
            .filter_map(|p| parse_base_chain(p))
            .filter_map(|c| c.on_forward_path(devices))
            .collect())
    }

    fn dump(&mut self, family: u8, hooknum: u32, dev: Option<&str>) -> Result<Vec<Hook>, NlError> {
        // nfgenmsg: family, version 0, resource id 0 (big endian).
        let mut req = vec![family, 0, 0, 0];
        put_attr(&mut req, NFNLA_HOOK_HOOKNUM, &hooknum.to_be_bytes());
        if let Some(d) = dev {
            put_attr(&mut req, NFNLA_HOOK_DEV, format!("{d}\0").as_bytes());
        }
        let replies =
            self.sock
                .call(NFNL_SUBSYS_HOOK << 8 | NFNL_MSG_HOOK_GET, NLM_F_DUMP, &req)?;
        Ok(replies.iter().filter_map(|p| parse_hook(p)).collect())
    }

    /// Ticks on every nftables ruleset change.
    pub fn listen() -> Result<tokio::sync::mpsc::Receiver<()>, NlError> {
        crate::netlink::listen(NETLINK_NETFILTER, &[NFNLGRP_NFTABLES])
    }
}

/// A base chain of the nftables ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseChain {
    family: u8,
    table: String,
    name: String,
    hooknum: u32,
    devices: Vec<String>,
}

impl BaseChain {
    fn on_forward_path(&self, devices: &[String]) -> Option<Hook> {
        let on_dev = || self.devices.iter().any(|d| devices.contains(d));
        let place = match (self.family, self.hooknum) {
            (NFPROTO_IPV6 | NFPROTO_INET, n) if n < 5 => {
                let (_, name) = IPV6_FORWARD_PATH.iter().find(|(num, _)| *num == n)?;
                format!("ip6 {name}")
            }
            (NFPROTO_INET, NF_INET_INGRESS) if on_dev() => {
                format!("inet ingress {}", self.devices.join(","))
            }
            (NFPROTO_NETDEV, n) if on_dev() => {
                let (_, name) = NETDEV_HOOKS.iter().find(|(num, _)| *num == n)?;
                format!("netdev {name} {}", self.devices.join(","))
            }
            _ => return None,
        };
        Some(Hook {
            place,
            owner: format!(
                "nftables chain {} {} {}",
                family_name(self.family),
                self.table,
                self.name
            ),
        })
    }
}

/// A chain of a GETCHAIN dump, if it is a base chain (has a hook).
fn parse_base_chain(p: &[u8]) -> Option<BaseChain> {
    let family = *p.first()?;
    let (mut table, mut name, mut hook) = (String::new(), String::new(), None);
    for (k, v) in attrs(p.get(4..)?) {
        match k {
            NFTA_CHAIN_TABLE => table = attr_str(v),
            NFTA_CHAIN_NAME => name = attr_str(v),
            NFTA_CHAIN_HOOK => hook = Some(v),
            _ => {}
        }
    }
    let mut hooknum = None;
    let mut devices = Vec::new();
    for (k, v) in attrs(hook?) {
        match k {
            NFTA_HOOK_HOOKNUM => hooknum = Some(u32::from_be_bytes(v.get(0..4)?.try_into().ok()?)),
            NFTA_HOOK_DEV => devices.push(attr_str(v)),
            NFTA_HOOK_DEVS => devices.extend(attrs(v).map(|(_, d)| attr_str(d))),
            _ => {}
        }
    }
    Some(BaseChain {
        family,
        table,
        name,
        hooknum: hooknum?,
        devices,
    })
}

/// One hook per ip6tables-legacy table (`/proc/net/ip6_tables_names`):
/// a loaded table has its hooks registered.
fn legacy_tables(names: &str) -> Vec<Hook> {
    names
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| Hook {
            place: "ip6".into(),
            owner: format!("ip6tables-legacy table {n}"),
        })
        .collect()
}

fn family_name(f: u8) -> &'static str {
    match f {
        NFPROTO_INET => "inet",
        NFPROTO_IPV4 => "ip",
        NFPROTO_NETDEV => "netdev",
        NFPROTO_BRIDGE => "bridge",
        NFPROTO_IPV6 => "ip6",
        _ => "?",
    }
}

/// One hook of a dump (payload after the netlink header: nfgenmsg, then
/// attributes).
fn parse_hook(p: &[u8]) -> Option<Hook> {
    let mut function = String::new();
    let mut module = String::new();
    let mut chain = None;
    for (k, v) in attrs(p.get(4..)?) {
        match k {
            NFNLA_HOOK_FUNCTION_NAME => function = attr_str(v),
            NFNLA_HOOK_MODULE_NAME => module = attr_str(v),
            NFNLA_HOOK_CHAIN_INFO => chain = parse_chain(v),
            _ => {}
        }
    }
    let owner = match chain {
        Some(c) => c,
        None if function.is_empty() => "a hook the kernel does not name".into(),
        None if module.is_empty() => format!("kernel function {function}"),
        None => format!("kernel function {function} (module {module})"),
    };
    Some(Hook {
        place: String::new(),
        owner,
    })
}

/// `nftables chain inet filter forward`, or `BPF program 42`.
fn parse_chain(v: &[u8]) -> Option<String> {
    let mut ty = HOOK_TYPE_NFTABLES;
    let mut desc = None;
    for (k, a) in attrs(v) {
        match k {
            NFNLA_HOOK_INFO_TYPE => ty = u32::from_be_bytes(a.get(0..4)?.try_into().ok()?),
            NFNLA_HOOK_INFO_DESC => desc = Some(a),
            _ => {}
        }
    }
    let desc = desc?;
    if ty == HOOK_TYPE_BPF {
        let id = attrs(desc)
            .find(|(k, _)| *k == NFNLA_HOOK_BPF_ID)
            .and_then(|(_, a)| Some(u32::from_be_bytes(a.get(0..4)?.try_into().ok()?)))?;
        return Some(format!("BPF program {id}"));
    }
    let (mut table, mut family, mut name) = (String::new(), 0, String::new());
    for (k, a) in attrs(desc) {
        match k {
            NFNLA_CHAIN_TABLE => table = attr_str(a),
            NFNLA_CHAIN_FAMILY => family = *a.first()?,
            NFNLA_CHAIN_NAME => name = attr_str(a),
            _ => {}
        }
    }
    let what = if ty == HOOK_TYPE_NFT_FLOWTABLE {
        "flowtable"
    } else {
        "chain"
    };
    Some(format!(
        "nftables {what} {} {table} {name}",
        family_name(family)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(attrs_: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![NFPROTO_IPV6, 0, 0, 0];
        for (k, v) in attrs_ {
            put_attr(&mut p, *k, v);
        }
        p
    }

    #[test]
    fn nftables_chain_is_named_by_table_and_chain() {
        let mut desc = Vec::new();
        put_attr(&mut desc, NFNLA_CHAIN_TABLE, b"filter\0");
        put_attr(&mut desc, NFNLA_CHAIN_FAMILY, &[NFPROTO_INET]);
        put_attr(&mut desc, NFNLA_CHAIN_NAME, b"forward\0");
        let mut info = Vec::new();
        put_attr(&mut info, NFNLA_HOOK_INFO_DESC | 0x8000, &desc);
        put_attr(&mut info, NFNLA_HOOK_INFO_TYPE, &1u32.to_be_bytes());
        let p = hook(&[
            (NFNLA_HOOK_FUNCTION_NAME, b"nft_do_chain_inet\0".to_vec()),
            (NFNLA_HOOK_MODULE_NAME, b"nf_tables\0".to_vec()),
            (NFNLA_HOOK_HOOKNUM, 2u32.to_be_bytes().to_vec()),
            (2, (-150i32).to_be_bytes().to_vec()), // NFNLA_HOOK_PRIORITY
            (NFNLA_HOOK_CHAIN_INFO | 0x8000, info),
        ]);
        let h = parse_hook(&p).unwrap();
        assert_eq!(h.owner, "nftables chain inet filter forward");
    }

    fn chain(family: u8, table: &str, name: &str, hooknum: u32, devs: &[&str]) -> Vec<u8> {
        let mut hook = Vec::new();
        put_attr(&mut hook, NFTA_HOOK_HOOKNUM, &hooknum.to_be_bytes());
        put_attr(&mut hook, 2, &0i32.to_be_bytes());
        match devs {
            [] => {}
            [d] => put_attr(&mut hook, NFTA_HOOK_DEV, format!("{d}\0").as_bytes()),
            ds => {
                let mut list = Vec::new();
                for d in ds {
                    put_attr(&mut list, 1, format!("{d}\0").as_bytes());
                }
                put_attr(&mut hook, NFTA_HOOK_DEVS | 0x8000, &list);
            }
        }
        let mut p = vec![family, 0, 0, 0];
        put_attr(&mut p, NFTA_CHAIN_TABLE, format!("{table}\0").as_bytes());
        put_attr(&mut p, NFTA_CHAIN_NAME, format!("{name}\0").as_bytes());
        put_attr(&mut p, NFTA_CHAIN_HOOK | 0x8000, &hook);
        p
    }

    #[test]
    fn ruleset_chains_on_the_forwarding_path() {
        let devs = ["lan0".to_string(), "wan0".to_string()];
        let on = |p: Vec<u8>| parse_base_chain(&p).and_then(|c| c.on_forward_path(&devs));
        let h = on(chain(NFPROTO_INET, "filter", "forward", 2, &[])).unwrap();
        assert_eq!(
            h.to_string(),
            "ip6 forward: nftables chain inet filter forward"
        );
        assert!(on(chain(NFPROTO_IPV6, "nat", "post", 4, &[])).is_some());
        assert!(on(chain(NFPROTO_NETDEV, "edge", "in", 0, &["wan0"])).is_some());
        assert!(on(chain(NFPROTO_NETDEV, "edge", "in", 0, &["eth9", "lan0"])).is_some());
        assert!(on(chain(
            NFPROTO_INET,
            "edge",
            "in",
            NF_INET_INGRESS,
            &["lan0"]
        ))
        .is_some());
        // Not on the path: input/output, IPv4-only tables, other devices.
        assert!(on(chain(NFPROTO_INET, "filter", "input", 1, &[])).is_none());
        assert!(on(chain(NFPROTO_INET, "filter", "output", 3, &[])).is_none());
        assert!(on(chain(NFPROTO_IPV4, "filter", "forward", 2, &[])).is_none());
        assert!(on(chain(NFPROTO_NETDEV, "edge", "in", 0, &["eth9"])).is_none());
        // A regular chain has no hook.
        let mut p = vec![NFPROTO_INET, 0, 0, 0];
        put_attr(&mut p, NFTA_CHAIN_NAME, b"jump_target\0");
        assert!(parse_base_chain(&p).is_none());
    }

    #[test]
    fn legacy_tables_each_count() {
        let h = legacy_tables("filter\nmangle\n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].to_string(), "ip6: ip6tables-legacy table filter");
        assert!(legacy_tables("").is_empty());
    }

    #[test]
    fn other_hooks_are_named_by_function_and_module() {
        let p = hook(&[
            (NFNLA_HOOK_FUNCTION_NAME, b"ipv6_conntrack_in\0".to_vec()),
            (NFNLA_HOOK_MODULE_NAME, b"nf_conntrack\0".to_vec()),
        ]);
        assert_eq!(
            parse_hook(&p).unwrap().owner,
            "kernel function ipv6_conntrack_in (module nf_conntrack)"
        );
        // Without kallsyms nothing names it, but it is still a hook.
        assert_eq!(
            parse_hook(&hook(&[])).unwrap().owner,
            "a hook the kernel does not name"
        );
        // br_netfilter's hook filters nothing routed; conntrack's does.
        let sabotage = parse_hook(&hook(&[
            (NFNLA_HOOK_FUNCTION_NAME, b"ip_sabotage_in\0".to_vec()),
            (NFNLA_HOOK_MODULE_NAME, b"br_netfilter\0".to_vec()),
        ]))
        .unwrap();
        assert!(is_benign(&sabotage));
        let apparmor = parse_hook(&hook(&[(
            NFNLA_HOOK_FUNCTION_NAME,
            b"apparmor_ip_postroute\0".to_vec(),
        )]))
        .unwrap();
        assert!(is_benign(&apparmor));
        assert!(!is_benign(&parse_hook(&p).unwrap()));
    }
}
