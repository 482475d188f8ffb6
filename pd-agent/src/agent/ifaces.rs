//! Managed interfaces: attaching the programs, following links that are
//! deleted, recreated or readdressed, and the flags the fast path reads.

use ipnet::Ipv6Net;
use tracing::{info, warn};

use super::Agent;
use crate::link::LinkEvent;
use crate::{
    binding::Kind,
    datapath::{self, FastPathMode, LinkKind},
    ebpf::{self, Attached, Programs},
    snoop,
    state::Change,
};

/// Attach both programs to `name` through pinned links, reusing an earlier
/// agent's. Downstream egress carries Replies to clients; upstream egress
/// this host's own Release/Decline (for acquired prefixes).
pub(super) fn attach(
    progs: &mut Programs,
    name: &str,
    links: &std::path::Path,
) -> Result<(), ebpf::LoadError> {
    let how = |a: Attached| match a {
        Attached::New(_) => "new pinned link",
        Attached::Reused => "pinned link reused, program replaced atomically",
        Attached::Unpinned(_) => "netlink XDP (no bpf_link on this kernel)",
        Attached::Netlink => "clsact filter at a fixed priority (no tcx on this kernel)",
        Attached::Replaced => "clsact filter of an earlier agent, program replaced",
    };
    let x = progs.attach_xdp_pinned(name, links)?;
    let mode = match x {
        Attached::New(m) | Attached::Unpinned(m) => m.map(|m| format!("{m:?}")),
        Attached::Reused | Attached::Netlink | Attached::Replaced => None,
    };
    info!(iface = %name, mode = mode.as_deref().unwrap_or("as before"), how = how(x), "XDP attached");
    let t = progs.attach_tc_pinned(name, links)?;
    info!(iface = %name, how = how(t), "TC egress attached");
    Ok(())
}

/// Why the programs cannot read a link that appeared.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error(transparent)]
    Unsupported(#[from] datapath::UnsupportedLink),
    #[error(
        "it carries bare IP packets and the programs were loaded for Ethernet links only; \
         restart pd-agent to read it"
    )]
    LoadedForEthernet,
}

impl Agent {
    /// A managed interface deleted, or created again under its name with a
    /// new index: attach the programs again and move its bindings, routes
    /// and map entries over. A link coming back up gets its routes back.
    pub(super) async fn link_event(&mut self, ev: LinkEvent) {
        match ev {
            // On-link prefixes (strict SAV, next-hop checks) and this host's
            // own addresses follow the interfaces' addresses.
            LinkEvent::Address { index } => {
                if self.ifaces.name(index).is_some() {
                    self.refresh_addresses().await;
                }
            }
            LinkEvent::Deleted { index } => {
                if let Some(name) = self.ifaces.name(index) {
                    warn!(
                        iface = %name,
                        ifindex = index,
                        "interface deleted; its bindings are kept until it returns or they expire"
                    );
                }
            }
            LinkEvent::Changed {
                index,
                name,
                up,
                link_type,
            } => {
                if let Some(known) = self.ifaces.name(index).cloned() {
                    self.link_changed(index, &known, up).await;
                } else if let Some(name) = name {
                    self.link_recreated(index, name, up, link_type).await;
                }
            }
        }
    }

    /// A managed link changed: an attach that failed when it appeared is
    /// tried again, and a downstream link coming up gets its routes back.
    async fn link_changed(&mut self, index: u32, name: &str, up: bool) {
        if self.unattached.contains(&index) {
            match attach(&mut self.progs, name, &self.links_dir) {
                Ok(()) => {
                    self.unattached.remove(&index);
                }
                Err(e) => {
                    warn!(iface = %name, error = %crate::chain(&e), "attaching to the new interface, again")
                }
            }
        }
        if up && self.ifaces.downstream.contains_key(&index) {
            // The kernel drops IPv6 routes through a link that goes
            // down; put ours back when it returns.
            self.retry_routes(Some(index)).await;
        }
    }

    /// A link of a managed interface's name with a new index: the
    /// interface was created again. Its flags are written and the programs
    /// attached before its bindings, routes and map entries move over.
    async fn link_recreated(&mut self, index: u32, name: String, up: bool, link_type: u16) {
        let old = self
            .ifaces
            .downstream
            .iter()
            .chain(self.ifaces.upstream.iter())
            .find(|(_, n)| **n == name)
            .map(|(i, _)| *i);
        let Some(old) = old else { return };
        let side = if let Some(n) = self.ifaces.downstream.remove(&old) {
            self.ifaces.downstream.insert(index, n);
            "downstream"
        } else {
            self.ifaces.upstream.remove(&old);
            self.ifaces.upstream.insert(index, name.clone());
            "upstream"
        };
        info!(iface = %name, side, old_ifindex = old, ifindex = index, "interface created again; attaching the programs");
        // Its flags (link type first) before the programs see a packet.
        self.link_kinds.remove(&old);
        self.written_flags.remove(&old);
        let _ = self.sav.set_iface(old, 0);
        let kind = self.readable_kind(link_type);
        if let Ok(k) = kind {
            self.link_kinds.insert(index, k);
        }
        self.datapath.refresh();
        if let Err(e) = self.write_iface_flags() {
            warn!(error = %crate::chain(&e), "map");
        }
        match kind {
            Err(why) => {
                warn!(iface = %name, reason = %why, "the new interface is of a link type pd-agent cannot read: programs not attached");
            }
            Ok(_) => {
                if let Err(e) = attach(&mut self.progs, &name, &self.links_dir) {
                    warn!(iface = %name, error = %crate::chain(&e), "attaching to the new interface; will retry when it changes");
                    self.unattached.insert(index);
                }
            }
        }
        let moved = self.table.reindex(old, index);
        let changes: Vec<Change> = moved
            .iter()
            .map(|b| Change::Put { binding: b.clone() })
            .collect();
        if let Err(e) = self.store.append(&changes).and_then(|()| self.store.sync()) {
            warn!(error = %crate::chain(&e), "writing the state journal");
        }
        for b in moved.iter().filter(|b| b.kind == Kind::Delegated) {
            if let Err(e) = self.map.insert(b) {
                warn!(error = %crate::chain(&e), "map");
            }
        }
        self.refresh_addresses().await;
        if up {
            self.retry_routes(Some(index)).await;
        }
    }

    /// The link kind of a new link, if the loaded programs can read it.
    fn readable_kind(&self, link_type: u16) -> Result<LinkKind, Unreadable> {
        match datapath::link_kind(link_type)? {
            LinkKind::Bare if !self.bare_links => Err(Unreadable::LoadedForEthernet),
            k => Ok(k),
        }
    }

    /// A Reply arriving upstream for an address we have not seen yet (the
    /// link-local of an interface that came up after the last refresh).
    pub(super) fn needs_addresses(&self, m: &snoop::Message) -> bool {
        m.hook == pd_common::hook::XDP_INGRESS
            && m.msg_type == pd_common::msg::REPLY
            && self.ifaces.upstream.contains_key(&m.ifindex)
            && !self.ifaces.local_addrs.contains(&m.dst)
    }

    pub(super) async fn refresh_addresses(&mut self) {
        match self.routes.addresses().await {
            Ok(addrs) => {
                self.ifaces.local_addrs = addrs.iter().map(|(_, a, _)| *a).collect();
                self.ifaces.downstream_prefixes = addrs
                    .iter()
                    .filter(|(i, a, _)| {
                        self.ifaces.downstream.contains_key(i) && !a.is_unicast_link_local()
                    })
                    .filter_map(|(i, a, l)| Some((*i, Ipv6Net::new(*a, *l).ok()?.trunc())))
                    .collect();
                if let Err(e) = self.sav.set_onlink(&self.ifaces.downstream_prefixes) {
                    warn!(error = %crate::chain(&e), "on-link prefixes");
                }
            }
            Err(e) => warn!(error = %crate::chain(&e), "reading this host's addresses"),
        }
    }

    /// Managed interfaces: (ifindex, name).
    pub(crate) fn managed(&self) -> Vec<(u32, String)> {
        self.ifaces
            .downstream
            .iter()
            .chain(self.ifaces.upstream.iter())
            .map(|(i, n)| (*i, n.clone()))
            .collect()
    }

    /// Write every managed interface's flags: its own (source validation,
    /// upstream) and the fast path's (link type, may forward from, may
    /// redirect into). Logs what changed in the fast path's verdicts.
    pub(super) fn write_iface_flags(&mut self) -> Result<(), crate::maps::MapOpError> {
        self.log_datapath();
        for (idx, name) in self.managed() {
            let own = self.iface_flags.get(&name).copied().unwrap_or(0);
            let flags = match self.link_kinds.get(&idx) {
                Some(kind) => own | self.datapath.state.flags(idx, *kind),
                None => own,
            };
            if self.written_flags.get(&idx) != Some(&flags) {
                self.sav.set_iface(idx, flags)?;
                self.written_flags.insert(idx, flags);
            }
        }
        Ok(())
    }

    /// Log the fast path's state where it changed.
    fn log_datapath(&mut self) {
        if self.datapath.state.mode == FastPathMode::Off {
            return;
        }
        let fwd = self.datapath.state.forwarding();
        if self.logged_forwarding.as_ref() != Some(&fwd) {
            match &fwd {
                Ok(()) if self.datapath.state.mode == FastPathMode::BypassFirewall => warn!(
                    mode = "bypass-firewall",
                    "fast path forwarding in XDP; netfilter (firewall, conntrack) never sees that traffic"
                ),
                Ok(()) => info!(mode = "auto", "fast path forwarding in XDP: no netfilter hook on the forwarding path"),
                Err(why) => info!(mode = self.datapath.state.mode.as_str(), reason = %why, "fast path not forwarding"),
            }
            self.logged_forwarding = Some(fwd);
        }
        for (idx, name) in self.managed() {
            if !self.ifaces.downstream.contains_key(&idx) {
                continue;
            }
            let Some(kind) = self.link_kinds.get(&idx).copied() else {
                continue;
            };
            let t = self.datapath.state.redirect_target(idx, kind);
            if self.logged_targets.get(&idx) != Some(&t) {
                match &t {
                    Ok(()) => {
                        info!(iface = %name, "redirect target: the fast path may forward into it")
                    }
                    Err(why) => {
                        info!(iface = %name, reason = %why, "not a redirect target: the kernel forwards into it")
                    }
                }
                self.logged_targets.insert(idx, t);
            }
        }
    }

    /// Read the data path's readings again (a notification, or the poll),
    /// and vouch for the flags for another lease.
    pub(super) fn refresh_datapath(&mut self) {
        self.datapath.refresh();
        match self.write_iface_flags() {
            Ok(()) => self.renew_lease(),
            Err(e) => warn!(error = %crate::chain(&e), "writing interface flags"),
        }
    }

    /// Let the fast path forward for [`datapath::LEASE`] more: the flags are
    /// current. An agent that stops renewing (crashed, hung, killed) stops
    /// XDP forwarding when the lease runs out.
    pub(super) fn renew_lease(&mut self) {
        if self.datapath.state.mode == FastPathMode::Off {
            return;
        }
        let until = crate::clock::boot_ns() + datapath::LEASE.as_nanos() as u64;
        if let Err(e) = self.lease.set(0, until, 0) {
            warn!(error = %crate::chain(&e), "renewing {}", pd_common::maps::FWD_LEASE);
        }
    }

    /// Stop forwarding in XDP now (the agent is going): nothing would
    /// notice a firewall loaded meanwhile. Link types and snooping stay.
    pub(super) fn revoke_lease(&mut self) {
        let _ = self.lease.set(0, 0, 0);
    }
}
