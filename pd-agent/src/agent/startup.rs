//! Start-up: check the interfaces, load and attach the kernel programs,
//! restore the store, catch up with the kernel, and reconcile the routing
//! table with the bindings.

use std::collections::{HashMap, HashSet};

use aya::maps::{MapData, RingBuf};
use ipnet::Ipv6Net;
use pd_common::Counter;
use tracing::{info, warn};

use super::{exec::run_route_ops, ifaces::attach, Agent, ResyncStats};
use crate::{
    binding::{Action, Ifaces, Kind, Policy, Table},
    clock::now,
    config::{Config, SavMode},
    datapath::{self, FastPathMode, LinkKind, Listeners, Monitor},
    ebpf::{self, LoadOptions, Programs},
    hooks::Hooks,
    keeper::Keeper,
    maps::{RouteMap, SavMaps},
    metrics::Metrics,
    resync::{self, SeqTracker},
    route::{KernelRoute, RouteChange, Routes, Target, FORMER_PROTO},
    snoop::Assembler,
    state::{Change, Store},
};

/// Why the agent could not start (or stopped), with the interface, file or
/// call concerned.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no interface given: use --downstream (and --upstream)")]
    NoInterface,
    #[error("interface {0} is given as both --downstream and --upstream")]
    BothSides(String),
    #[error("--sav-iface {0}: not a --downstream interface")]
    SavNotDownstream(String),
    #[error("reading the link type of {iface}")]
    LinkType {
        iface: String,
        #[source]
        source: crate::route::RouteError,
    },
    #[error("interface {iface}")]
    UnsupportedLink {
        iface: String,
        #[source]
        source: datapath::UnsupportedLink,
    },
    #[error(transparent)]
    Load(#[from] ebpf::LoadError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Map(#[from] crate::maps::MapOpError),
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Relay(#[from] crate::relay::RelayError),
    #[error("metrics listener on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Agent {
    /// Everything up to serving: the interfaces checked, the programs
    /// loaded and attached, the store restored, what the kernel saw while
    /// no agent ran applied, the routes reconciled. Returns the agent, the
    /// ring buffer and the fast path's listeners.
    pub(crate) async fn start(
        cfg: &Config,
    ) -> Result<(Agent, RingBuf<MapData>, Listeners), AgentError> {
        let ifaces = managed_ifaces(cfg)?;
        // Every interface's link type first: one the programs cannot read is
        // refused before anything is attached anywhere.
        let routes = Routes::new(cfg.proto, cfg.route_metric)?;
        let link_kinds = link_kinds(&routes, &ifaces).await?;
        let bare_links = link_kinds.values().any(|k| *k == LinkKind::Bare);
        let mut progs = load(cfg, bare_links)?;
        let names: Vec<String> = cfg
            .downstream
            .iter()
            .chain(&cfg.upstream)
            .cloned()
            .collect();
        let links_dir = cfg.pin_dir.join(ebpf::LINKS_DIR);
        for gone in ebpf::prune_links(&links_dir, &names) {
            info!(link = %gone, "unpinned the link of an interface no longer managed");
        }
        let mut ring = progs.take_events()?;
        let map = RouteMap::new(progs.take_routes()?, progs.take_fwd_stats()?);
        let sav = SavMaps {
            ifaces: progs.take_ifaces()?,
            onlink: progs.take_onlink()?,
        };
        for (idx, name) in ifaces.downstream.iter().chain(ifaces.upstream.iter()) {
            info!(iface = %name, link = ?link_kinds[idx], "link type");
        }
        let (monitor, listeners) = Monitor::start(cfg.fast_path, names.clone());
        info!(fast_path = cfg.fast_path.as_str(), sav = ?cfg.sav, "data path options");
        let counters = progs.take_counters()?;
        let mut table = Table::new();
        table.policy = Policy {
            allow: cfg.allow.clone(),
            max_bindings_per_iface: cfg.max_bindings_per_iface,
            require_client_message: cfg.require_client_message,
        };
        let boot_id = resync::boot_id();
        let mut agent = Agent {
            table,
            iface_flags: own_flags(cfg, &ifaces),
            ifaces,
            links_dir,
            link_kinds,
            datapath: monitor,
            bare_links,
            lease: progs.take_lease()?,
            written_flags: Default::default(),
            logged_forwarding: None,
            logged_targets: Default::default(),
            client_records: progs.client_records(),
            seq: progs.take_seq()?,
            clients: progs.take_clients()?,
            progs,
            unattached: HashSet::new(),
            tracker: SeqTracker::default(),
            floor_ns: 0,
            seen_ns: 0,
            journaled_ns: 0,
            clock: crate::clock::Anchor::now(&boot_id),
            boot_id,
            ringbuf_full_seen: counters.get(Counter::RingbufFull),
            resync: ResyncStats::default(),
            routes,
            map,
            sav,
            store: Store::open(&cfg.state_dir)?,
            counters,
            hooks: Hooks::start(cfg.hooks.clone(), cfg.hook_timeout),
            metrics: Metrics::new(),
            retries: Default::default(),
            keeper: Keeper::new(cfg.route_metric),
            unreachable_route: cfg.unreachable_route,
            ipv6_forwarding: None,
            route_errors: 0,
            decode_errors: 0,
            asm: Assembler::default(),
            relay: None,
        };
        agent.bring_up(&names, &mut ring).await?;
        Ok((agent, ring, listeners))
    }

    /// Attach to every interface, restore the store and catch up with the
    /// kernel, then reconcile the routing table.
    async fn bring_up(
        &mut self,
        names: &[String],
        ring: &mut RingBuf<MapData>,
    ) -> Result<(), AgentError> {
        // Every interface's flags (link type first) before the programs see a
        // packet there; entries of interfaces no longer managed go (their
        // xdp-features are no longer watched).
        let managed: HashSet<u32> = self.managed().into_iter().map(|(i, _)| i).collect();
        self.sav.retain_ifaces(&managed)?;
        self.write_iface_flags()?;
        self.renew_lease();
        for name in names {
            attach(&mut self.progs, name, &self.links_dir)?;
        }
        self.refresh_addresses().await;
        let restored = self.restore()?;
        // What the kernel saw while no agent was running, applied to the
        // stored bindings before anything is judged expired or stale: first
        // the ring buffer's backlog, in order, then whatever it could not
        // hold, from the per-client records.
        self.catch_up(ring).await;
        self.reconcile(restored).await
    }

    /// Stopping: forwarding in XDP ends, a last clock reading is written,
    /// and with `flush` every binding, route and map entry goes and the
    /// programs are detached; otherwise all is kept for the next agent.
    pub(crate) async fn stop(&mut self, flush: bool) {
        // Nobody watches the firewall once the agent is gone: the kernel
        // forwards until the next agent has looked (after a crash, once the
        // lease runs out).
        self.revoke_lease();
        // The last reading: after a reboot, the time since is counted from here.
        self.note_clock(true);
        if flush {
            let all: Vec<Ipv6Net> = self.table.iter().map(|b| b.prefix).collect();
            let mut actions = Vec::new();
            for p in all {
                actions.extend(self.table.delete_prefix(p));
            }
            let n = actions.len();
            self.apply(actions).await;
            let names: Vec<String> = self
                .ifaces
                .downstream
                .values()
                .chain(self.ifaces.upstream.values())
                .cloned()
                .collect();
            ebpf::unpin_links(&self.links_dir, &names);
            info!(removed = n, "stopping; --flush-on-exit removed every binding, route and map entry, and detached the programs");
        } else {
            info!(
                bindings = self.table.len(),
                "stopping; routes, state and the programs (pinned links) are kept"
            );
        }
    }

    /// Start-up, first step: put back what the store knows (expired or not:
    /// messages the kernel saw meanwhile may have renewed it). Returns how
    /// many bindings were restored.
    pub(super) fn restore(&mut self) -> Result<usize, AgentError> {
        let loaded = self.store.load()?;
        if let Some(mark) = &loaded.seen {
            if !mark.boot_id.is_empty() && mark.boot_id == self.boot_id {
                self.floor_ns = mark.ns;
                self.seen_ns = mark.ns;
                self.journaled_ns = mark.ns;
            }
        }
        // Times are lease-clock seconds of the boot that wrote them: carry
        // them into this boot (see `clock::rebase`).
        let here = crate::clock::Anchor::now(&self.boot_id);
        let same_boot = !here.boot_id.is_empty()
            && loaded
                .clock
                .as_ref()
                .is_some_and(|a| a.boot_id == here.boot_id);
        let mut bindings = loaded.bindings;
        if !same_boot {
            // What the store proves the previous boot ran past its anchor.
            let ran = loaded.clock.as_ref().map_or(0, |a| {
                let mut last = bindings.iter().map(|b| b.updated_at).max().unwrap_or(0);
                if let Some(m) = loaded.seen.as_ref().filter(|m| m.boot_id == a.boot_id) {
                    last = last.max(crate::clock::of_kernel(m.ns));
                }
                last.saturating_sub(a.boot)
            });
            // An older version's unix times, converted by a wall clock
            // that may read 1970 (no RTC, before NTP): never earlier than
            // the newest time the store holds.
            let mut wall = here.clone();
            if loaded.clock.is_none() {
                wall.unix = wall
                    .unix
                    .max(bindings.iter().map(|b| b.updated_at).max().unwrap_or(0));
            }
            let shift = crate::clock::rebase(loaded.clock.as_ref(), &wall, ran);
            for b in &mut bindings {
                b.expires_at = b.expires_at.map(|t| crate::clock::shifted(t, shift));
                b.updated_at = crate::clock::shifted(b.updated_at, shift);
            }
            if !bindings.is_empty() {
                info!(
                    bindings = bindings.len(),
                    shift,
                    "state store of another boot (or an older version): lifetimes carried over by the wall clock"
                );
            }
            // From here on the store's times are this boot's: rewrite it
            // before anything is appended.
            self.store
                .compact(bindings.iter(), loaded.seen.clone(), here.clone())?;
            self.clock = here;
        } else if let Some(a) = &loaded.clock {
            // A step while no agent ran is written with the reconcile.
            self.clock = a.clone();
        }
        let mut restored = 0;
        for mut b in bindings {
            // Interface indexes change across reboots: trust the name.
            let side = match b.kind {
                Kind::Delegated => &self.ifaces.downstream,
                Kind::Acquired => &self.ifaces.upstream,
            };
            match side.iter().find(|(_, n)| **n == b.iface) {
                Some((i, _)) => b.ifindex = *i,
                None => {
                    warn!(prefix = %b.prefix, iface = %b.iface, "stored binding on an interface we do not manage; dropped");
                    continue;
                }
            }
            self.table.restore(b);
            restored += 1;
        }
        Ok(restored)
    }

    /// Start-up, last step: drop what expired while no agent ran, remove
    /// routes of ours that nothing explains, re-add missing ones, rebuild
    /// the map.
    pub(super) async fn reconcile(&mut self, restored: usize) -> Result<(), AgentError> {
        let gone = self.table.expire(now());
        let expired = gone.len();
        // Recorded as journal lines: rewriting the whole snapshot here
        // would cost a restart with a million bindings seconds of writing
        // and fsync for nothing; compaction follows its usual rule.
        let mut changes: Vec<Change> = gone
            .iter()
            .filter_map(|a| match a {
                Action::Remove(b, _) => Some(Change::Del { key: b.key() }),
                _ => None,
            })
            .collect();
        // Routes of ours the kernel already has, exactly as a binding wants
        // them, are left alone (a restart without a reboot touches nothing);
        // other protocols' routes for a binding's prefix are conflicts.
        let mut present: HashSet<(Ipv6Net, Target)> = HashSet::new();
        let mut ops = Vec::new();
        let (mut stale, mut taken_over) = (0, 0);
        let ours = (self.routes.proto(), self.routes.metric());
        for r in self.routes.dump_all().await? {
            let wanted = self.wanted(r.prefix);
            match judge(&r, ours, wanted) {
                Found::Present(p, t) => {
                    present.insert((p, t));
                }
                Found::TakeOver(p, t) => {
                    ops.push(RouteChange::Replace(p, t));
                    present.insert((p, t));
                    taken_over += 1;
                }
                Found::Group | Found::Unrelated => {}
                Found::Foreign => self.keeper.on_route(&r, false, false, wanted),
                Found::Stale => {
                    ops.extend(r.deletes());
                    stale += 1;
                }
            }
        }
        let failed = run_route_ops(&self.routes, &self.metrics, ops).await;
        self.note_failures(failed);
        self.ipv6_forwarding = crate::route::ipv6_forwarding();
        if self.ipv6_forwarding == Some(false) {
            warn!("IPv6 forwarding is off in this namespace (net.ipv6.conf.all.forwarding=0): the delegated prefixes' routes cannot carry traffic; pd-agent does not change it");
        }
        // The map holds delegated prefixes only.
        for (p, _, _) in self.map.entries() {
            if self.table.delegated(p).is_none() {
                self.map.remove(p)?;
            }
        }
        let all: Vec<_> = self
            .table
            .iter()
            .filter(|b| b.kind == Kind::Delegated)
            .cloned()
            .collect();
        let missing: Vec<Ipv6Net> = self
            .table
            .iter()
            .filter_map(|b| Some((b.prefix, self.target_of(b)?)))
            .filter(|pt| !present.contains(pt))
            .map(|(p, _)| p)
            .collect();
        let readded = missing.len();
        self.converge(missing, false).await;
        for b in &all {
            self.map.insert(b)?;
        }
        changes.extend(self.seen_mark().map(|mark| Change::Seen { mark }));
        let reading = self.clock_due(false);
        changes.extend(reading.clone().map(|clock| Change::Clock { clock }));
        self.store.append(&changes)?;
        self.store.sync()?;
        if let Some(r) = reading {
            self.clock = r;
        }
        self.journaled_ns = self.seen_ns;
        if self.store.needs_compaction(self.table.len()) {
            self.clock = crate::clock::Anchor::now(&self.boot_id);
            self.store
                .compact(self.table.iter(), self.seen_mark(), self.clock.clone())?;
        }
        info!(
            restored,
            expired,
            routes_readded = readded,
            stale_routes_removed = stale,
            routes_taken_over = taken_over,
            conflicts = self.keeper.conflicts(),
            "reconciled with the kernel"
        );
        Ok(())
    }
}

/// The managed interfaces by index, each on one side only; `--sav-iface`
/// names downstream ones only.
fn managed_ifaces(cfg: &Config) -> Result<Ifaces, AgentError> {
    if cfg.downstream.is_empty() && cfg.upstream.is_empty() {
        return Err(AgentError::NoInterface);
    }
    let mut ifaces = Ifaces::default();
    for name in &cfg.downstream {
        ifaces
            .downstream
            .insert(ebpf::if_index(name)?, name.clone());
    }
    for name in &cfg.upstream {
        let idx = ebpf::if_index(name)?;
        if ifaces.downstream.contains_key(&idx) {
            return Err(AgentError::BothSides(name.clone()));
        }
        ifaces.upstream.insert(idx, name.clone());
    }
    if let Some((n, _)) = cfg
        .sav_iface
        .iter()
        .find(|(n, _)| !cfg.downstream.contains(n))
    {
        return Err(AgentError::SavNotDownstream(n.clone()));
    }
    Ok(ifaces)
}

/// Each managed interface's link kind; an error names one the programs
/// cannot read.
async fn link_kinds(
    routes: &Routes,
    ifaces: &Ifaces,
) -> Result<HashMap<u32, LinkKind>, AgentError> {
    let mut kinds = HashMap::new();
    for (idx, name) in ifaces.downstream.iter().chain(ifaces.upstream.iter()) {
        let t = routes
            .link_type(*idx)
            .await
            .map_err(|source| AgentError::LinkType {
                iface: name.clone(),
                source,
            })?;
        let kind = datapath::link_kind(t).map_err(|source| AgentError::UnsupportedLink {
            iface: name.clone(),
            source,
        })?;
        kinds.insert(*idx, kind);
    }
    Ok(kinds)
}

/// Load the kernel programs (maps pinned under `cfg.pin_dir`) with what
/// this configuration switches on.
fn load(cfg: &Config, bare_links: bool) -> Result<Programs, AgentError> {
    let opts = LoadOptions {
        fast_path: cfg.fast_path != FastPathMode::Off,
        sav: cfg.downstream.iter().any(|n| cfg.sav_of(n) != SavMode::Off),
        bare_links,
        ring_bytes: cfg.ring_bytes,
        client_entries: cfg.client_records,
        fwd_counters: cfg.forwarding_counters,
        kernel_log: cfg.kernel_debug,
        relay: cfg.relay.is_some(),
        force_compat: false,
    };
    let mut progs = Programs::load_with(&cfg.pin_dir, opts)?;
    if let Some(r) = &cfg.relay {
        progs.set_relay_limits(r.limits())?;
    }
    // Loading parsed the kernel's BTF (aya does, even unused): ~10 MiB
    // of heap, freed now; give it back rather than keep it for ever.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    for note in &progs.notes {
        warn!("{note}");
    }
    let (xi, ti) = progs.verified_instructions();
    info!(
        xdp = progs.xdp_name(),
        tc = progs.tc_name(),
        xdp_insns = xi,
        tc_insns = ti,
        pin_dir = %cfg.pin_dir.display(),
        "kernel programs loaded"
    );
    let fallbacks = progs.fallbacks.describe();
    if fallbacks.is_empty() {
        info!("kernel fallbacks: none");
    }
    for f in fallbacks {
        info!("kernel fallback: {f}");
    }
    if cfg.kernel_debug {
        read_kernel_log(&mut progs)?;
    }
    Ok(progs)
}

/// Log what the programs log (`--kernel-debug`), as it comes, on a thread
/// of its own: under a flood of logged packets it may fall behind (the
/// kernel then drops records) or wait for the log writer, but never holds
/// up the event loop.
fn read_kernel_log(progs: &mut Programs) -> Result<(), AgentError> {
    use std::os::fd::AsRawFd;
    let mut logger = progs.take_kernel_log(crate::klog::KernelLog)?;
    let mut reader = move || loop {
        let mut pfd = libc::pollfd {
            fd: logger.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the logger's ring buffer fd, which
        // the logger keeps open.
        if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return e.to_string();
            }
        }
        // aya-log panics on a record it cannot decode.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush())).is_err() {
            return "a kernel log record could not be decoded".to_string();
        }
    };
    std::thread::Builder::new()
        .name("kernel-log".into())
        .spawn(move || {
            let why = reader();
            warn!(reason = %why, "kernel debug logging stopped");
        })
        .map_err(|source| AgentError::Io {
            what: "starting the kernel log reader",
            source,
        })?;
    warn!("kernel debug logging is on: every packet the programs pass on without an event, or leave to the kernel, is logged (target \"kernel\"); this costs time per packet");
    Ok(())
}

/// Each managed interface's own `pd_ifaces_v1` flags: source validation
/// downstream; upstream links are marked so that the kernel records
/// Replies forwarded from them (the only forwarded ones trusted).
fn own_flags(cfg: &Config, ifaces: &Ifaces) -> HashMap<String, u32> {
    let relay = if cfg.relay.is_some() {
        pd_common::ifflags::RELAY
    } else {
        0
    };
    let down = ifaces
        .downstream
        .values()
        .map(|n| (n.clone(), cfg.sav_of(n).flags() | relay));
    let up = ifaces
        .upstream
        .values()
        .map(|n| (n.clone(), pd_common::ifflags::UPSTREAM));
    down.chain(up).collect()
}

/// What the start-up reconcile makes of one route in the kernel's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Ours, exactly as a binding wants it: left alone.
    Present(Ipv6Net, Target),
    /// An older pd-agent's, under its former protocol number, exactly as a
    /// binding wants it: replaced in place by ours (NLM_F_REPLACE, no gap).
    TakeOver(Ipv6Net, Target),
    /// A multipath group of ours with another's next hop beside it: the
    /// binding's converge looks into it; nothing is deleted.
    Group,
    /// Another protocol's route for a binding's prefix: watched.
    Foreign,
    /// Another protocol's route for no binding: none of ours.
    Unrelated,
    /// Ours, and no binding explains it (or at another metric): removed.
    Stale,
}

/// Judge route `r` against our (protocol, metric) and the route the
/// binding of its prefix wants (None: no binding).
fn judge(r: &KernelRoute, (proto, metric): (u8, u32), wanted: Option<Target>) -> Found {
    let exact = r.target();
    // Any route of the former number other than one a binding wants
    // exactly is another's (the kernel and iproute2 give it to Open/R).
    // Agents of that number made no unreachable routes.
    if r.proto == FORMER_PROTO && proto != FORMER_PROTO && r.metric == metric {
        if let Some(t) = exact.filter(|t| matches!(t, Target::Via(..)) && Some(*t) == wanted) {
            return Found::TakeOver(r.prefix, t);
        }
    }
    if r.proto != proto {
        return if wanted.is_some() {
            Found::Foreign
        } else {
            Found::Unrelated
        };
    }
    match (r.metric == metric, exact, wanted) {
        (true, Some(t), Some(_)) => Found::Present(r.prefix, t),
        (true, None, Some(_)) if !r.multipath.is_empty() => Found::Group,
        _ => Found::Stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(proto: u8, metric: u32, nh: Option<&str>, ifindex: Option<u32>) -> KernelRoute {
        KernelRoute {
            prefix: "2001:db8:100::/56".parse().unwrap(),
            kind: crate::route::RouteKind::Unicast,
            next_hop: nh.map(|a| a.parse().unwrap()),
            ifindex,
            proto,
            metric,
            multipath: vec![],
        }
    }

    #[test]
    fn routes_found_at_start_are_judged() {
        let ours = (57, 1024);
        let nh: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        let p: Ipv6Net = "2001:db8:100::/56".parse().unwrap();
        let want = Some(Target::Via(nh, 5));
        let via = |i| Target::Via(nh, i);
        let r = |proto, metric, ifindex| route(proto, metric, Some("fe80::1"), Some(ifindex));
        // Ours as wanted; ours through another next hop; ours for nothing.
        assert_eq!(
            judge(&r(57, 1024, 5), ours, want),
            Found::Present(p, via(5))
        );
        assert_eq!(judge(&r(57, 1024, 5), ours, None), Found::Stale);
        // Our protocol at another metric (an earlier setting): stale.
        assert_eq!(judge(&r(57, 100, 5), ours, want), Found::Stale);
        // Ours through another next hop: kept for converge to replace.
        assert_eq!(
            judge(&r(57, 1024, 6), ours, want),
            Found::Present(p, via(6))
        );
        // A multipath group of ours.
        let mut group = route(57, 1024, None, None);
        group.multipath = vec![(Some(nh), 5), ("fe80::2".parse().ok(), 5)];
        assert_eq!(judge(&group, ours, want), Found::Group);
        // An acquired prefix's unreachable route (on lo): ours when a
        // binding wants it, stale when none does; never taken over from
        // the former number.
        let mut unreach = route(57, 1024, None, Some(1));
        unreach.kind = crate::route::RouteKind::Unreachable;
        let u = Some(Target::Unreachable);
        assert_eq!(
            judge(&unreach, ours, u),
            Found::Present(p, Target::Unreachable)
        );
        assert_eq!(judge(&unreach, ours, None), Found::Stale);
        assert_eq!(
            judge(&unreach, ours, want),
            Found::Present(p, Target::Unreachable)
        );
        unreach.proto = 99;
        assert_eq!(judge(&unreach, ours, u), Found::Foreign);
        // The former number: taken over only when exactly as wanted.
        assert_eq!(
            judge(&r(99, 1024, 5), ours, want),
            Found::TakeOver(p, via(5))
        );
        assert_eq!(judge(&r(99, 1024, 6), ours, want), Found::Foreign);
        assert_eq!(judge(&r(99, 1024, 5), ours, None), Found::Unrelated);
        assert_eq!(judge(&r(99, 100, 5), ours, want), Found::Foreign);
        // Another protocol's.
        assert_eq!(judge(&r(2, 1024, 5), ours, want), Found::Foreign);
        assert_eq!(judge(&r(2, 1024, 5), ours, None), Found::Unrelated);
    }
}
