//! The daemon: wires the kernel programs, the binding table, the route
//! executor, the pinned map, the state store and the control socket.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use ipnet::Ipv6Net;
use pd_common::{ClientKey, ClientRecord, Counter};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    binding::{Action, BindingView, Ifaces, Kind, Policy, Table},
    control::{self, Call, Request},
    datapath::{self, FastPathMode, LinkKind, Monitor},
    ebpf::{self, Attached, Counters, LoadOptions, Programs},
    hooks::{HookEvent, Hooks},
    keeper::Keeper,
    maps::{RouteMap, SavMaps},
    metrics::{self, Metrics},
    resync::{self, Seen, SeqTracker},
    route::{KernelRoute, RouteChange, RouteEvent, RouteFailure, Routes},
    snoop::{self, Assembler, Message},
    state::{Change, SeenMark, Store},
};

#[derive(Debug, Clone)]
pub struct Config {
    pub downstream: Vec<String>,
    pub upstream: Vec<String>,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub control: PathBuf,
    pub proto: u8,
    /// Metric of our routes (their slot: prefix, table, metric).
    pub route_metric: u32,
    pub hooks: Vec<PathBuf>,
    pub hook_timeout: Duration,
    /// Forward delegated prefixes in XDP.
    pub fast_path: FastPathMode,
    /// Source-address validation for downstream interfaces without an override.
    pub sav: SavMode,
    /// Per-interface overrides.
    pub sav_iface: Vec<(String, SavMode)>,
    /// Delegations must lie inside one of these (empty: anything).
    pub allow: Vec<Ipv6Net>,
    /// Most bindings one interface may hold.
    pub max_bindings_per_iface: Option<usize>,
    /// On SIGTERM/SIGINT remove every route and map entry the agent added
    /// (and the bindings), instead of keeping them for a seamless restart.
    pub flush_on_exit: bool,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// A Reply must answer a client message seen with its xid and Client-ID.
    pub require_client_message: bool,
    /// Ring buffer bytes (None: the object's default).
    pub ring_bytes: Option<u32>,
    /// Entries of the kernel's per-client records (None: the default).
    pub client_records: Option<u32>,
    /// Entries of the forwarding counters (None: the default).
    pub forwarding_counters: Option<u32>,
}

/// Source-address validation on a downstream interface (RFC 8987 §3.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SavMode {
    /// No validation.
    Off,
    /// Drop sources inside a prefix delegated on another interface.
    On,
    /// Also drop sources neither delegated nor on-link on this interface.
    Strict,
}

impl SavMode {
    fn flags(self) -> u32 {
        match self {
            SavMode::Off => 0,
            SavMode::On => pd_common::ifflags::SAV,
            SavMode::Strict => pd_common::ifflags::SAV | pd_common::ifflags::SAV_STRICT,
        }
    }
}

/// The lease clock (CLOCK_BOOTTIME seconds): see [`crate::clock`].
use crate::clock::now;

/// Lost-event recovery, as shown by `stats`.
#[derive(Debug, Default, serde::Serialize)]
struct ResyncStats {
    /// Resynchronisations from `pd_clients_v1` (one at start, then one
    /// after each detected loss, at most once a second).
    runs: u64,
    /// Messages replayed from the kernel's records.
    replayed: u64,
    /// Replies from the ring buffer that answered no client message seen
    /// while messages were known lost: left for the replay, which applies
    /// their records after the client messages that came before them.
    deferred: u64,
    /// Messages known lost whose records had been superseded or evicted.
    given_up: u64,
    /// Ring buffer messages skipped because a replay had applied them.
    duplicates: u64,
    /// Records deleted from `pd_clients_v1` because the store covers them.
    pruned: u64,
}

/// How often the kernel's records the store covers are deleted
/// (`PD_AGENT_PRUNE_SECS` overrides it, for tests).
const PRUNE: Duration = Duration::from_secs(60);

/// How old the store's latest clock reading may get before a new one is
/// written (what a reboot may count short, with no wall clock to go by).
const CLOCK_READING: Duration = Duration::from_secs(600);

/// How long before the store's seen mark a record is kept: the second the
/// catch-up and the resync look back across CPUs, the client-message
/// window the catch-up replays, and a minute of slack
/// (`PD_AGENT_RECORD_KEEP_SECS` overrides it, for tests).
const RECORD_KEEP_SECS: u64 = 1 + crate::binding::CLIENT_MESSAGE_WINDOW_SECS + 60;

/// A duration in seconds from the environment, else `default`.
fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records older than this (kernel ns) may go, given the store's mark.
fn prune_cutoff(journaled_ns: u64, keep_secs: u64) -> u64 {
    journaled_ns.saturating_sub(keep_secs.saturating_mul(1_000_000_000))
}

struct Agent {
    table: Table,
    ifaces: Ifaces,
    progs: Programs,
    links_dir: PathBuf,
    /// Names of managed interfaces -> their own `pd_ifaces_v1` flags
    /// (source validation, upstream); the fast path's are added on write.
    iface_flags: std::collections::HashMap<String, u32>,
    /// Link kind of each managed interface, by ifindex (absent: a type the
    /// programs cannot read, so not attached).
    link_kinds: std::collections::HashMap<u32, LinkKind>,
    /// What the fast path may do, kept current from the kernel's reports.
    datapath: Monitor,
    /// The programs read links without Ethernet header (loaded so).
    bare_links: bool,
    /// `pd_fwd_lease_v1`: renewed while the readings are kept current.
    lease: aya::maps::Array<MapData, u64>,
    /// The flags last written to `pd_ifaces_v1`, by ifindex.
    written_flags: std::collections::HashMap<u32, u32>,
    /// The fast path's state as last logged: forwarding (or why not), and
    /// each interface's redirect verdict.
    logged_forwarding: Option<Result<(), String>>,
    logged_targets: std::collections::HashMap<u32, Result<(), String>>,
    clients: BpfHashMap<MapData, ClientKey, ClientRecord>,
    /// Entries of the pinned `pd_clients_v1`.
    client_records: u32,
    /// The kernel's per-CPU message counters (`pd_seq_v1`).
    seq: aya::maps::PerCpuArray<MapData, u64>,
    /// Recreated interfaces the programs could not be attached to yet.
    unattached: HashSet<u32>,
    tracker: SeqTracker,
    /// Records at or before this kernel time were applied by an earlier
    /// agent (from the store's seen mark; 0 after a reboot).
    floor_ns: u64,
    /// Newest kernel time applied, and the one last written to the store.
    seen_ns: u64,
    journaled_ns: u64,
    boot_id: String,
    /// The clock reading the store's times are anchored to (last written).
    clock: crate::clock::Anchor,
    ringbuf_full_seen: u64,
    resync: ResyncStats,
    routes: Routes,
    map: RouteMap,
    sav: SavMaps,
    store: Store,
    counters: Counters,
    hooks: Hooks,
    metrics: Metrics,
    /// Routes whose installation failed, retried with backoff.
    retries: std::collections::BTreeMap<Ipv6Net, Retry>,
    /// The routing table as the bindings want it, against what is there.
    keeper: Keeper,
    /// `net.ipv6.conf.all.forwarding`, as last read.
    ipv6_forwarding: Option<bool>,
    route_errors: u64,
    decode_errors: u64,
}

pub async fn run(cfg: Config) -> Result<()> {
    if cfg.downstream.is_empty() && cfg.upstream.is_empty() {
        bail!("no interface given: use --downstream (and --upstream)");
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
            bail!("interface {name} is given as both --downstream and --upstream");
        }
        ifaces.upstream.insert(idx, name.clone());
    }

    let sav_of = |name: &str| {
        cfg.sav_iface
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, m)| *m)
            .unwrap_or(cfg.sav)
    };
    for (n, _) in &cfg.sav_iface {
        if !cfg.downstream.contains(n) {
            bail!("--sav-iface {n}: not a --downstream interface");
        }
    }
    let any_sav = cfg.downstream.iter().any(|n| sav_of(n) != SavMode::Off);
    // Every interface's link type first: one the programs cannot read is
    // refused before anything is attached anywhere.
    let routes = Routes::new(cfg.proto, cfg.route_metric)?;
    let mut link_kinds = std::collections::HashMap::new();
    for (idx, name) in ifaces.downstream.iter().chain(ifaces.upstream.iter()) {
        let t = routes
            .link_type(*idx)
            .await
            .with_context(|| format!("reading the link type of {name}"))?;
        let kind = datapath::link_kind(t).map_err(|e| anyhow::anyhow!("interface {name}: {e}"))?;
        link_kinds.insert(*idx, kind);
    }
    let bare_links = link_kinds.values().any(|k| *k == LinkKind::Bare);
    let opts = LoadOptions {
        fast_path: cfg.fast_path != FastPathMode::Off,
        sav: any_sav,
        bare_links,
        ring_bytes: cfg.ring_bytes,
        client_entries: cfg.client_records,
        fwd_counters: cfg.forwarding_counters,
    };
    let mut progs = Programs::load_with(&cfg.pin_dir, opts)?;
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
    info!(xdp_insns = xi, tc_insns = ti, pin_dir = %cfg.pin_dir.display(), "kernel programs loaded");
    let links_dir = cfg.pin_dir.join(ebpf::LINKS_DIR);
    let names: Vec<String> = cfg
        .downstream
        .iter()
        .chain(&cfg.upstream)
        .cloned()
        .collect();
    for gone in ebpf::prune_links(&links_dir, &names) {
        info!(link = %gone, "unpinned the link of an interface no longer managed");
    }
    let mut ring = progs.take_events()?;
    let map = RouteMap::new(progs.take_routes()?, progs.take_fwd_stats()?);
    let sav = SavMaps {
        ifaces: progs.take_ifaces()?,
        onlink: progs.take_onlink()?,
    };
    let mut iface_flags = std::collections::HashMap::new();
    for (idx, name) in ifaces.downstream.iter().chain(ifaces.upstream.iter()) {
        let mode = if ifaces.downstream.contains_key(idx) {
            sav_of(name)
        } else {
            SavMode::Off
        };
        // Upstream links are marked so that the kernel records Replies
        // forwarded from them (the only forwarded ones trusted).
        let flags = if ifaces.downstream.contains_key(idx) {
            mode.flags()
        } else {
            pd_common::ifflags::UPSTREAM
        };
        iface_flags.insert(name.clone(), flags);
    }
    for (idx, name) in ifaces.downstream.iter().chain(ifaces.upstream.iter()) {
        let kind = link_kinds[idx];
        info!(iface = %name, link = ?kind, "link type");
    }
    let (monitor, mut listeners) = Monitor::start(cfg.fast_path, names.clone());
    info!(fast_path = cfg.fast_path.as_str(), sav = ?cfg.sav, "data path options");
    let counters = progs.take_counters()?;
    let clients = progs.take_clients()?;
    let lease = progs.take_lease()?;

    let store = Store::open(&cfg.state_dir)?;
    let hooks = Hooks::start(cfg.hooks.clone(), cfg.hook_timeout);

    let mut table = Table::new();
    table.policy = Policy {
        allow: cfg.allow.clone(),
        max_bindings_per_iface: cfg.max_bindings_per_iface,
        require_client_message: cfg.require_client_message,
    };
    let ringbuf_full_seen = counters.get(Counter::RingbufFull);
    let client_records = progs.client_records();
    let seq = progs.take_seq()?;
    let mut agent = Agent {
        table,
        ifaces,
        progs,
        links_dir,
        iface_flags,
        link_kinds,
        datapath: monitor,
        bare_links,
        lease,
        written_flags: Default::default(),
        logged_forwarding: None,
        logged_targets: Default::default(),
        client_records,
        seq,
        clients,
        unattached: HashSet::new(),
        tracker: SeqTracker::default(),
        floor_ns: 0,
        seen_ns: 0,
        journaled_ns: 0,
        clock: crate::clock::Anchor::now(&resync::boot_id()),
        boot_id: resync::boot_id(),
        ringbuf_full_seen,
        resync: ResyncStats::default(),
        routes,
        map,
        sav,
        store,
        counters,
        hooks,
        metrics: Metrics::new(),
        retries: Default::default(),
        keeper: Keeper::new(cfg.route_metric),
        ipv6_forwarding: None,
        route_errors: 0,
        decode_errors: 0,
    };
    // Every interface's flags (link type first) before the programs see a
    // packet there; entries of interfaces no longer managed go (their
    // xdp-features are no longer watched).
    let managed: HashSet<u32> = agent.managed().into_iter().map(|(i, _)| i).collect();
    agent.sav.retain_ifaces(&managed)?;
    agent.write_iface_flags()?;
    agent.renew_lease();
    for name in &names {
        attach(&mut agent.progs, name, &agent.links_dir)?;
    }
    agent.refresh_addresses().await;
    let restored = agent.restore()?;
    // What the kernel saw while no agent was running, applied to the
    // stored bindings before anything is judged expired or stale: first
    // the ring buffer's backlog, in order, then whatever it could not
    // hold, from the per-client records.
    let mut asm = Assembler::default();
    agent.catch_up(&mut ring, &mut asm).await;
    agent.reconcile(restored).await?;

    let (call_tx, mut call_rx) = mpsc::channel::<Call>(16);
    if let Some(addr) = cfg.metrics {
        metrics::serve(addr, call_tx.clone())
            .await
            .with_context(|| format!("metrics listener on {addr}"))?;
        info!(%addr, "serving Prometheus metrics at /metrics");
    }
    control::serve(&cfg.control, call_tx)?;
    info!(control = %cfg.control.display(), "ready");

    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the RingBuf lives inside the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(std::io::Error::from)
        .context("ring buffer fd")?;
    let mut links = crate::route::link_events()?;
    let mut route_events = crate::route::route_events(cfg.proto)?;
    let mut route_scan = tokio::time::interval(ROUTE_SCAN);
    route_scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Route changes of a burst (a flush) are handled together.
    let mut converge_at: Option<tokio::time::Instant> = None;
    // Losses the catch-up could not settle (messages after its snapshot).
    let mut resync_at: Option<tokio::time::Instant> = agent
        .lost_events()
        .then(|| tokio::time::Instant::now() + Duration::from_millis(50));
    let mut last_resync = tokio::time::Instant::now();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut prune = tokio::time::interval(Duration::from_secs(
        env_secs("PD_AGENT_PRUNE_SECS", PRUNE.as_secs()).max(1),
    ));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut datapath_poll = tokio::time::interval(datapath::POLL);
    datapath_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if converge_at.is_none() && !agent.keeper.dirty.is_empty() {
            converge_at = Some(tokio::time::Instant::now() + Duration::from_millis(20));
        }
        // Due now when the deadline has come: `expire` then removes all
        // that is due, so the next deadline lies ahead. (A floor here would
        // let anything arriving more often, such as a monitor polling the
        // control socket, put expiry off for ever.)
        let sleep = match agent.table.next_deadline() {
            Some(t) => Duration::from_secs(t.saturating_sub(now())),
            None => Duration::from_secs(3600),
        };
        let retry_in = agent
            .retries
            .values()
            .map(|r| r.at.saturating_duration_since(std::time::Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => agent.retry_routes(None).await,
            Some(ev) = route_events.recv() => {
                if agent.route_event(ev) {
                    agent.scan_routes().await;
                }
            }
            _ = tokio::time::sleep_until(converge_at.unwrap_or_else(tokio::time::Instant::now)), if converge_at.is_some() => {
                converge_at = None;
                let dirty: Vec<Ipv6Net> = agent.keeper.dirty.iter().copied().collect();
                agent.converge(dirty, false).await;
            }
            _ = route_scan.tick() => agent.scan_routes().await,
            _ = prune.tick() => {
                agent.prune_records();
                agent.note_clock(false);
            }
            Some(ev) = links.recv() => agent.link_event(ev).await,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let msgs = drain(guard.get_inner_mut(), &mut asm, &mut agent.decode_errors);
                guard.clear_ready();
                agent.ingest(msgs, Timing::Now, None).await;
                // Lost messages (a jump in sequence numbers, or the kernel
                // counting a full ring buffer): replay the kernel's records,
                // at most once a second while a storm goes on.
                if resync_at.is_none() && agent.lost_events() {
                    resync_at = Some((last_resync + Duration::from_secs(1)).max(tokio::time::Instant::now() + Duration::from_millis(50)));
                }
            }
            _ = tokio::time::sleep_until(resync_at.unwrap_or_else(tokio::time::Instant::now)), if resync_at.is_some() => {
                resync_at = None;
                last_resync = tokio::time::Instant::now();
                agent.resync(ring.get_mut(), &mut asm).await;
            }
            _ = tokio::time::sleep(sleep) => {
                let actions = agent.table.expire(now());
                agent.apply(actions).await;
            }
            Some((req, reply)) = call_rx.recv() => {
                let answer = match req {
                    Request::Delete { prefix } => {
                        let actions = agent.table.delete_prefix(prefix.trunc());
                        let deleted: Vec<String> = actions.iter().map(|a| match a {
                            Action::Install(b) | Action::Refresh(b) | Action::Remove(b, _) => b.prefix.to_string(),
                        }).collect();
                        agent.apply(actions).await;
                        if deleted.is_empty() {
                            serde_json::json!({"error": format!("no binding for {prefix}")})
                        } else {
                            serde_json::json!({"deleted": deleted})
                        }
                    }
                    req => agent.answer(req),
                };
                let _ = reply.send(answer);
            }
            r = tick(&mut listeners.features) => {
                if r.is_none() {
                    warn!("xdp-features notifications stopped; reading them every {}s", datapath::POLL.as_secs());
                    listeners.features = None;
                }
                agent.refresh_datapath();
            }
            r = tick(&mut listeners.firewall) => {
                if r.is_none() {
                    warn!("nftables notifications stopped; reading the hooks every {}s", datapath::POLL.as_secs());
                    listeners.firewall = None;
                }
                agent.refresh_datapath();
            }
            _ = datapath_poll.tick(), if cfg.fast_path != FastPathMode::Off => agent.refresh_datapath(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Nobody watches the firewall once the agent is gone: the kernel
    // forwards until the next agent has looked (after a crash, once the
    // lease runs out).
    agent.revoke_lease();
    // The last reading: after a reboot, the time since is counted from here.
    agent.note_clock(true);
    if cfg.flush_on_exit {
        let all: Vec<Ipv6Net> = agent.table.iter().map(|b| b.prefix).collect();
        let mut actions = Vec::new();
        for p in all {
            actions.extend(agent.table.delete_prefix(p));
        }
        let n = actions.len();
        agent.apply(actions).await;
        let names: Vec<String> = agent
            .ifaces
            .downstream
            .values()
            .chain(agent.ifaces.upstream.values())
            .cloned()
            .collect();
        ebpf::unpin_links(&agent.links_dir, &names);
        info!(removed = n, "stopping; --flush-on-exit removed every binding, route and map entry, and detached the programs");
    } else {
        info!(
            bindings = agent.table.len(),
            "stopping; routes, state and the programs (pinned links) are kept"
        );
    }
    let _ = std::fs::remove_file(&cfg.control);
    Ok(())
}

/// The next tick of an optional listener; `None` once it has stopped
/// (never, when there is no listener).
async fn tick(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// When a message's time is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// Now (live ring buffer messages).
    Now,
    /// When the kernel stamped it (backlog, replays).
    Kernel,
}

/// Is `seq` at or below its CPU's counter in `snap`?
fn settled(snap: &[u64], seq: u64) -> bool {
    let (cpu, n) = resync::split(seq);
    snap.get(cpu as usize).is_some_and(|&hw| n <= hw)
}

/// Attach both programs to `name` through pinned links, reusing an earlier
/// agent's. Downstream egress carries Replies to clients; upstream egress
/// this host's own Release/Decline (for acquired prefixes).
fn attach(progs: &mut Programs, name: &str, links: &std::path::Path) -> Result<()> {
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

/// Everything the ring buffer holds now, as whole messages.
fn drain(
    ring: &mut RingBuf<MapData>,
    asm: &mut Assembler,
    decode_errors: &mut u64,
) -> Vec<Message> {
    let mut msgs = Vec::new();
    while let Some(item) = ring.next() {
        match snoop::decode(&item) {
            Ok(ev) => msgs.extend(asm.push(&ev)),
            Err(e) => {
                *decode_errors += 1;
                warn!(error = %crate::chain(&e), "bad ring buffer record");
            }
        }
    }
    msgs
}

impl Agent {
    /// Apply messages from the ring buffer or replayed from the kernel's
    /// records. Messages this agent already applied are skipped, except
    /// during the catch-up at start (`settled`: the kernel's counters read
    /// before draining), whose caller removed duplicates itself.
    ///
    /// While messages are known lost, a Reply from the ring buffer that
    /// answers no client message seen is not refused: its client message
    /// may be among the lost. It is marked unseen again, so the replay
    /// applies its record in the kernel's order, after that client message.
    async fn ingest(
        &mut self,
        msgs: Vec<Message>,
        timing: Timing,
        settled_upto: Option<&[u64]>,
    ) -> usize {
        let mut fresh = Vec::with_capacity(msgs.len());
        for m in msgs {
            // A record holding only some of a message's prefixes does not
            // settle it: the whole message may still come from the ring.
            let partial = m.from_record && m.flags & pd_common::flags::PREFIXES_DROPPED != 0;
            let new = if settled_upto.is_some_and(|snap| settled(snap, m.seq)) {
                true
            } else if partial {
                self.tracker.is_new(m.seq)
            } else {
                self.tracker.observe(m.seq) == Seen::New
            };
            if new {
                fresh.push(m);
            } else {
                self.resync.duplicates += 1;
            }
        }
        if fresh.is_empty() {
            return 0;
        }
        if fresh.iter().any(|m| self.needs_addresses(m)) {
            self.refresh_addresses().await;
        }
        let defer = settled_upto.is_none() && self.lost_events();
        let at = now();
        let mut actions = Vec::new();
        for m in &fresh {
            tracing::debug!(?m, "message");
            let t = match timing {
                Timing::Now => at,
                Timing::Kernel => crate::clock::of_kernel(m.ts_ns),
            };
            self.seen_ns = self.seen_ns.max(m.ts_ns);
            let unsolicited = self.table.stats.unsolicited_replies;
            actions.extend(self.table.handle(m, &self.ifaces, t));
            let refusals = self.table.take_refusals();
            if defer && !m.from_record && self.table.stats.unsolicited_replies > unsolicited {
                self.table.stats.unsolicited_replies = unsolicited;
                self.tracker.unobserve(m.seq);
                self.resync.deferred += 1;
                continue;
            }
            self.log_refusals(m, refusals);
        }
        self.apply(actions).await;
        fresh.len()
    }

    fn log_refusals(&self, m: &Message, refusals: Vec<(Ipv6Net, &'static str)>) {
        for (prefix, why) in refusals {
            let iface = self.ifaces.name(m.ifindex);
            warn!(%prefix, iface = iface.map(String::as_str).unwrap_or("?"), next_hop = %m.dst, reason = why, "delegation ignored");
        }
    }

    /// The records in `pd_clients_v1` that `keep` accepts, in the order
    /// the kernel saw them (one per message).
    fn records(&self, keep: impl Fn(&ClientKey, &ClientRecord) -> bool) -> Vec<Message> {
        let mut recs: Vec<ClientRecord> = self
            .client_records()
            .filter(|(k, r)| keep(k, r))
            .map(|(_, r)| r)
            .collect();
        recs.sort_by_key(|r| (r.ev.ts_ns, r.ev.seq));
        let mut seen = HashSet::new();
        recs.iter()
            .filter(|r| seen.insert(r.ev.seq))
            .map(Message::from_record)
            .collect()
    }

    /// Start-up: apply what the kernel saw while no agent ran, before
    /// anything is judged expired or stale. The ring buffer's backlog and
    /// the records it could not hold are merged and applied in the order
    /// the kernel saw them; client messages of the last minute are
    /// replayed too (harmless if applied before), so that Replies in the
    /// backlog find the Request an earlier agent had seen.
    async fn catch_up(&mut self, ring: &mut RingBuf<MapData>, asm: &mut Assembler) {
        // Every message up to these counters is in the backlog, in a
        // record, or superseded; later ones come through the ring buffer.
        let snap = self.seq_snapshot();
        let full = self.counters.get(Counter::RingbufFull);
        let backlog = drain(ring, asm, &mut self.decode_errors);
        let n = backlog.len();
        let have: HashSet<u64> = backlog.iter().map(|m| m.seq).collect();
        // A second of margin: across CPUs, stamps are not in ring order.
        let floor = self.floor_ns.saturating_sub(1_000_000_000);
        // Client messages a Reply after the floor may answer.
        let window = crate::binding::CLIENT_MESSAGE_WINDOW_SECS * 1_000_000_000;
        let recs = self.records(|k, r| {
            settled(&snap, r.ev.seq)
                && !have.contains(&r.ev.seq)
                && (r.ev.ts_ns > floor
                    || (k.class == pd_common::class::CLIENT
                        && r.ev.ts_ns > floor.saturating_sub(window)))
        });
        let replayed = recs.len();
        let mut all = backlog;
        all.extend(recs);
        all.sort_by_key(|m| (m.ts_ns, m.seq));
        let applied = self.ingest(all, Timing::Kernel, Some(&snap)).await;
        for (cpu, hw) in snap.iter().enumerate() {
            self.tracker.seed(cpu as u16, *hw);
        }
        self.ringbuf_full_seen = full;
        self.resync.replayed += replayed as u64;
        info!(
            backlog = n,
            replayed, applied, "caught up with what the kernel saw while no agent ran"
        );
    }

    /// Every record in `pd_clients_v1`, until a read fails (logged). A
    /// hash map changing under iteration may restart it: bounded.
    fn client_records(&self) -> impl Iterator<Item = (ClientKey, ClientRecord)> + '_ {
        self.clients
            .iter()
            .take(2 * self.client_records as usize + 16)
            .map_while(|item| {
                item.map_err(
                    |e| warn!(error = %crate::chain(&e), "reading {}", pd_common::maps::CLIENTS),
                )
                .ok()
            })
    }

    /// Delete the kernel's records that no replay can want any more: older
    /// than the stored seen mark by [`RECORD_KEEP_SECS`]. The map then
    /// holds about the last few minutes' clients, not every client since
    /// boot.
    fn prune_records(&mut self) {
        let keep = env_secs("PD_AGENT_RECORD_KEEP_SECS", RECORD_KEEP_SECS);
        let cutoff = prune_cutoff(self.journaled_ns, keep);
        if cutoff == 0 {
            return;
        }
        let stale: Vec<ClientKey> = self
            .client_records()
            .filter(|(_, r)| r.ev.ts_ns < cutoff)
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            match self.clients.remove(k) {
                Ok(()) => self.resync.pruned += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    warn!(error = %crate::chain(&e), "pruning {}", pd_common::maps::CLIENTS);
                    break;
                }
            }
        }
    }

    /// The kernel's per-CPU message counters right now.
    fn seq_snapshot(&self) -> Vec<u64> {
        match self.seq.get(&0, 0) {
            Ok(v) => v.iter().copied().collect(),
            Err(e) => {
                warn!(error = %crate::chain(&e), "reading {}", pd_common::maps::SEQ);
                Vec::new()
            }
        }
    }

    /// Messages were lost since the last look.
    fn lost_events(&self) -> bool {
        self.tracker.missing() > 0
            || self.counters.get(Counter::RingbufFull) > self.ringbuf_full_seen
    }

    /// Replay, in the order the kernel saw them, the records in
    /// `pd_clients_v1` of messages this agent has not applied (and no
    /// earlier agent had, per the store's seen mark).
    async fn resync(&mut self, ring: &mut RingBuf<MapData>, asm: &mut Assembler) {
        let t = std::time::Instant::now();
        // Only messages up to these counters are judged: later ones may
        // still be in the ring buffer (and a loss among them shows later).
        let snap = self.seq_snapshot();
        let full = self.counters.get(Counter::RingbufFull);
        let msgs = drain(ring, asm, &mut self.decode_errors);
        self.ingest(msgs, Timing::Now, None).await;
        let missing = self.tracker.missing();
        let floor = self.floor_ns.saturating_sub(1_000_000_000);
        let msgs = self.records(|_, r| {
            settled(&snap, r.ev.seq) && r.ev.ts_ns > floor && self.tracker.is_new(r.ev.seq)
        });
        let replayed = self.ingest(msgs, Timing::Kernel, None).await;
        let given_up = self.tracker.forget_missing(&snap);
        let actions = self.table.expire(now());
        self.apply(actions).await;
        self.ringbuf_full_seen = full;
        self.resync.runs += 1;
        self.resync.replayed += replayed as u64;
        self.resync.given_up += given_up;
        if replayed > 0 || missing > 0 {
            info!(
                replayed,
                missing,
                given_up,
                ms = t.elapsed().as_millis() as u64,
                ring_buffer_full = full,
                "resynchronised from {}",
                pd_common::maps::CLIENTS
            );
        }
    }

    /// A managed interface deleted, or created again under its name with a
    /// new index: attach the programs again and move its bindings, routes
    /// and map entries over. A link coming back up gets its routes back.
    async fn link_event(&mut self, ev: crate::route::LinkEvent) {
        if ev.address {
            // On-link prefixes (strict SAV, next-hop checks) and this host's
            // own addresses follow the interfaces' addresses.
            if self.ifaces.name(ev.index).is_some() {
                self.refresh_addresses().await;
            }
            return;
        }
        let known = self.ifaces.name(ev.index).cloned();
        if ev.deleted {
            if let Some(name) = known {
                warn!(
                    iface = %name,
                    ifindex = ev.index,
                    "interface deleted; its bindings are kept until it returns or they expire"
                );
            }
            return;
        }
        if let Some(name) = known {
            // An attach that failed when the interface appeared: try again
            // on each change of it.
            if self.unattached.contains(&ev.index) {
                match attach(&mut self.progs, &name, &self.links_dir) {
                    Ok(()) => {
                        self.unattached.remove(&ev.index);
                    }
                    Err(e) => {
                        warn!(iface = %name, error = %format!("{e:#}"), "attaching to the new interface, again")
                    }
                }
            }
            if ev.up && self.ifaces.downstream.contains_key(&ev.index) {
                // The kernel drops IPv6 routes through a link that goes
                // down; put ours back when it returns.
                self.retry_routes(Some(ev.index)).await;
            }
            return;
        }
        let Some(name) = ev.name else { return };
        let old = self
            .ifaces
            .downstream
            .iter()
            .chain(self.ifaces.upstream.iter())
            .find(|(_, n)| **n == name)
            .map(|(i, _)| *i);
        let Some(old) = old else { return };
        let down = self.ifaces.downstream.remove(&old).is_some();
        if !down {
            self.ifaces.upstream.remove(&old);
        }
        let side = if down {
            &mut self.ifaces.downstream
        } else {
            &mut self.ifaces.upstream
        };
        side.insert(ev.index, name.clone());
        info!(iface = %name, old_ifindex = old, ifindex = ev.index, "interface created again; attaching the programs");
        // Its flags (link type first) before the programs see a packet.
        self.link_kinds.remove(&old);
        self.written_flags.remove(&old);
        let _ = self.sav.set_iface(old, 0);
        let kind = datapath::link_kind(ev.link_type)
            .map_err(|e| e.to_string())
            .and_then(|k| match k {
                // The programs were loaded for Ethernet links only.
                LinkKind::Bare if !self.bare_links => Err(
                    "it carries bare IP packets and the programs were loaded for Ethernet links \
                     only; restart pd-agent to read it"
                        .to_string(),
                ),
                k => Ok(k),
            });
        if let Ok(k) = kind {
            self.link_kinds.insert(ev.index, k);
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
                    warn!(iface = %name, error = %format!("{e:#}"), "attaching to the new interface; will retry when it changes");
                    self.unattached.insert(ev.index);
                }
            }
        }
        let moved = self.table.reindex(old, ev.index);
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
        if ev.up {
            self.retry_routes(Some(ev.index)).await;
        }
    }

    /// A Reply arriving upstream for an address we have not seen yet (the
    /// link-local of an interface that came up after the last refresh).
    fn needs_addresses(&self, m: &snoop::Message) -> bool {
        m.hook == pd_common::hook::XDP_INGRESS
            && m.msg_type == pd_common::msg::REPLY
            && self.ifaces.upstream.contains_key(&m.ifindex)
            && !self.ifaces.local_addrs.contains(&m.dst)
    }

    async fn refresh_addresses(&mut self) {
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

    /// Start-up, first step: put back what the store knows (expired or not:
    /// messages the kernel saw meanwhile may have renewed it). Returns how
    /// many bindings were restored.
    fn restore(&mut self) -> Result<usize> {
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
    async fn reconcile(&mut self, restored: usize) -> Result<()> {
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
        let mut stale = 0;
        let live: HashSet<Ipv6Net> = self
            .table
            .iter()
            .filter(|b| b.kind == Kind::Delegated)
            .map(|b| b.prefix)
            .collect();
        // Routes of ours the kernel already has, exactly as a binding wants
        // them, are left alone (a restart without a reboot touches nothing);
        // other protocols' routes for a binding's prefix are conflicts.
        let mut present: HashSet<(Ipv6Net, std::net::Ipv6Addr, u32)> = HashSet::new();
        let mut ops = Vec::new();
        let mut taken_over = 0;
        for r in self.routes.dump_all().await? {
            // A route an older pd-agent installed under its former protocol
            // number, exactly as a binding wants it: replaced in place by
            // ours (NLM_F_REPLACE, no gap). Any other route of that number
            // is another's (the kernel and iproute2 give it to Open/R).
            if r.proto == crate::route::FORMER_PROTO
                && self.routes.proto() != crate::route::FORMER_PROTO
                && r.metric == self.routes.metric()
            {
                if let (Some(nh), Some(i)) = (r.next_hop, r.ifindex) {
                    if self.wanted(r.prefix) == Some((nh, i)) {
                        ops.push(RouteChange::Replace(r.prefix, nh, i));
                        present.insert((r.prefix, nh, i));
                        taken_over += 1;
                        continue;
                    }
                }
            }
            if r.proto != self.routes.proto() {
                if live.contains(&r.prefix) {
                    let wanted = self.wanted(r.prefix);
                    self.keeper.on_route(&r, false, false, wanted);
                }
                continue;
            }
            match (self.routes.is_ours(&r), r.next_hop, r.ifindex) {
                (true, Some(nh), Some(i)) if live.contains(&r.prefix) => {
                    present.insert((r.prefix, nh, i));
                }
                // A multipath group of ours with another's next hop: the
                // binding's converge looks into it; nothing is deleted.
                (true, None, None) if live.contains(&r.prefix) => {}
                _ => {
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
        for (p, _, _) in self.map.entries() {
            if !live.contains(&p) {
                self.map.remove(p)?;
            }
        }
        let all: Vec<_> = self
            .table
            .iter()
            .filter(|b| b.kind == Kind::Delegated)
            .cloned()
            .collect();
        let missing: Vec<Ipv6Net> = all
            .iter()
            .filter(|b| !present.contains(&(b.prefix, b.next_hop, b.ifindex)))
            .map(|b| b.prefix)
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

    async fn apply(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        // The store first: a route is never ahead of the state that explains it.
        let mut changes: Vec<Change> = actions
            .iter()
            .map(|a| match a {
                Action::Install(b) | Action::Refresh(b) => Change::Put { binding: b.clone() },
                Action::Remove(b, _) => Change::Del { key: b.key() },
            })
            .collect();
        // The mark says "everything before this was applied": not while
        // messages are known lost (deferred Replies included). The counter
        // behind lost_events() is read only when there is a mark to write.
        let reading = self.clock_due(false);
        changes.extend(reading.clone().map(|clock| Change::Clock { clock }));
        let mut marked = false;
        if self.seen_ns > self.journaled_ns && !self.lost_events() {
            if let Some(mark) = self.seen_mark() {
                changes.push(Change::Seen { mark });
                marked = true;
            }
        }
        match self.store.append(&changes) {
            Ok(()) => {
                if marked {
                    self.journaled_ns = self.seen_ns;
                }
                if let Some(r) = reading {
                    self.clock = r;
                }
            }
            Err(e) => warn!(error = %crate::chain(&e), "writing the state journal"),
        }
        if self.store.needs_compaction(self.table.len()) {
            let mark = (self.journaled_ns > 0).then(|| SeenMark {
                boot_id: self.boot_id.clone(),
                ns: self.journaled_ns,
            });
            self.clock = crate::clock::Anchor::now(&self.boot_id);
            if let Err(e) = self
                .store
                .compact(self.table.iter(), mark, self.clock.clone())
            {
                warn!(error = %crate::chain(&e), "compacting the state store");
            }
        }
        // Map removals first, then the routes (independent prefixes in
        // parallel, each prefix's operations in order), then map inserts:
        // the fast path never points at a route that is not there yet.
        let mut ops = Vec::new();
        let mut inserts = Vec::new();
        for a in actions {
            let ev = HookEvent::from_action(&a);
            self.metrics
                .events
                .get_or_create(&Metrics::label("event", ev.event))
                .inc();
            let b = &ev.binding;
            if b.kind == Kind::Acquired {
                info!(event = ev.event, kind = "acquired", prefix = %b.prefix, from = %b.next_hop, iface = %b.iface,
                    valid = b.valid_lifetime, preferred = b.preferred_lifetime, "binding");
                self.hooks.send(ev);
                continue;
            }
            match &a {
                Action::Install(b) => {
                    info!(event = "delegated", prefix = %b.prefix, next_hop = %b.next_hop, iface = %b.iface,
                        valid = b.valid_lifetime, preferred = b.preferred_lifetime, iaid = b.iaid,
                        client_duid = %hex::encode(&b.client_duid), "binding");
                    ops.push(RouteChange::Add(b.prefix, b.next_hop, b.ifindex));
                    inserts.push(b.clone());
                }
                Action::Refresh(b) => {
                    info!(event = "renewed", prefix = %b.prefix, next_hop = %b.next_hop, iface = %b.iface,
                        valid = b.valid_lifetime, preferred = b.preferred_lifetime, "binding");
                    inserts.push(b.clone());
                }
                Action::Remove(b, why) => {
                    info!(event = why.as_str(), prefix = %b.prefix, next_hop = %b.next_hop, iface = %b.iface, "binding");
                    if let Err(e) = self.map.remove(b.prefix) {
                        warn!(error = %crate::chain(&e), "map");
                    }
                    inserts.retain(|i| i.prefix != b.prefix);
                    // Ours only: another protocol's route for the prefix stays.
                    let (nh, i) = (b.next_hop, b.ifindex);
                    ops.push(RouteChange::Delete(
                        b.prefix,
                        (!nh.is_unspecified()).then_some(nh),
                        (i != 0).then_some(i),
                        self.routes.metric(),
                    ));
                    self.keeper.forget(b.prefix);
                    self.retries.remove(&b.prefix);
                }
            }
            self.hooks.send(ev);
        }
        self.run_routes(ops).await;
        for b in inserts {
            if let Err(e) = self.map.insert(&b) {
                warn!(error = %crate::chain(&e), "map");
            }
        }
        if let Err(e) = self.store.sync() {
            warn!(error = %crate::chain(&e), "syncing the state journal");
        }
    }

    /// A new clock reading to write, if one is due: the wall clock
    /// stepped since the last one, the last is [`CLOCK_READING`] old, or
    /// `always` (stopping). After a reboot the time since is measured from
    /// the latest reading, so it should be recent and one the wall clock
    /// still agrees with. The caller records it once written.
    fn clock_due(&self, always: bool) -> Option<crate::clock::Anchor> {
        let here = crate::clock::Anchor::now(&self.boot_id);
        let stepped = here.stepped_since(&self.clock);
        if stepped {
            info!(
                step_secs = here.offset() - self.clock.offset(),
                "the wall clock stepped; lifetimes run on the boot clock and are unaffected"
            );
        }
        (always || stepped || here.boot >= self.clock.boot + CLOCK_READING.as_secs())
            .then_some(here)
    }

    /// Write a clock reading now if one is due (checked each minute, with
    /// every batch, and when stopping).
    fn note_clock(&mut self, always: bool) {
        if let Some(r) = self.clock_due(always) {
            let line = Change::Clock { clock: r.clone() };
            match self.store.append(&[line]).and_then(|()| self.store.sync()) {
                Ok(()) => self.clock = r,
                Err(e) => warn!(error = %crate::chain(&e), "writing the state journal"),
            }
        }
    }

    fn seen_mark(&self) -> Option<SeenMark> {
        (self.seen_ns > 0 && !self.boot_id.is_empty()).then(|| SeenMark {
            boot_id: self.boot_id.clone(),
            ns: self.seen_ns,
        })
    }

    /// Bindings as shown to operators (with forwarding counters), all or
    /// those of one prefix.
    fn views(&self, prefix: Option<Ipv6Net>) -> Vec<BindingView> {
        // Lease-clock times shown in wall-clock time as of now.
        let here = crate::clock::Anchor::now(&self.boot_id);
        self.table
            .iter()
            .filter(|b| prefix.is_none_or(|p| b.prefix == p))
            .map(|b| {
                let c = (b.kind == Kind::Delegated)
                    .then(|| self.map.counters(b.prefix))
                    .flatten();
                // What the kernel really holds: failed, conflict, missing,
                // else installed.
                let status =
                    (b.kind == Kind::Delegated).then(|| match self.retries.get(&b.prefix) {
                        Some(r) => format!(
                            "failed: {}, attempt {}, next in {}s",
                            r.error,
                            r.attempts,
                            r.at.saturating_duration_since(std::time::Instant::now())
                                .as_secs()
                        ),
                        None => self
                            .keeper
                            .status(b.prefix)
                            .unwrap_or_else(|| "installed".to_string()),
                    });
                let mut binding = b.clone();
                binding.expires_at = b.expires_at.map(|t| here.to_unix(t));
                binding.updated_at = here.to_unix(b.updated_at);
                BindingView {
                    binding,
                    expires_in: b.expires_at.map(|t| t.saturating_sub(here.boot)),
                    rx_packets: c.map(|c| c.0),
                    rx_bytes: c.map(|c| c.1),
                    status,
                }
            })
            .collect()
    }

    /// Copy the values that live elsewhere into the registry, encode it.
    fn scrape(&self) -> String {
        let m = &self.metrics;
        m.bindings.clear();
        m.forwarded_packets.clear();
        m.forwarded_bytes.clear();
        let mut fwd: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for b in self.table.iter() {
            m.bindings
                .get_or_create(&vec![
                    ("iface".into(), b.iface.clone()),
                    ("kind".into(), b.kind.as_str().into()),
                ])
                .inc();
            if b.kind == Kind::Delegated {
                let e = fwd.entry(b.iface.as_str()).or_default();
                if let Some((p, by)) = self.map.counters(b.prefix) {
                    e.0 += p;
                    e.1 += by;
                }
            }
        }
        for (iface, (p, by)) in fwd {
            Metrics::set(
                &m.forwarded_packets
                    .get_or_create(&Metrics::label("iface", iface)),
                p,
            );
            Metrics::set(
                &m.forwarded_bytes
                    .get_or_create(&Metrics::label("iface", iface)),
                by,
            );
        }
        let st = &self.datapath.state;
        m.fast_path_forwarding.clear();
        m.fast_path_forwarding
            .get_or_create(&vec![
                ("mode".into(), st.mode.as_str().into()),
                ("reason".into(), st.forwarding_reason().into()),
            ])
            .set(st.forwarding().is_ok() as i64);
        m.fast_path_redirect_target.clear();
        for (idx, name) in self.managed() {
            if let (Some(kind), true) = (
                self.link_kinds.get(&idx),
                self.ifaces.downstream.contains_key(&idx),
            ) {
                let yes = st.mode != FastPathMode::Off && st.redirect_target(idx, *kind).is_ok();
                m.fast_path_redirect_target
                    .get_or_create(&Metrics::label("iface", &name))
                    .set(yes as i64);
            }
        }
        for (name, v) in self.counters.read() {
            Metrics::set(&m.kernel.get_or_create(&Metrics::label("outcome", name)), v);
            if name == pd_common::Counter::RingbufFull.name() {
                Metrics::set(&m.ringbuf_drops, v);
            }
        }
        if let Ok(serde_json::Value::Object(st)) = serde_json::to_value(&self.table.stats) {
            for (k, v) in st {
                Metrics::set(
                    &m.agent.get_or_create(&Metrics::label("outcome", &k)),
                    v.as_u64().unwrap_or(0),
                );
            }
        }
        Metrics::set(&m.route_errors, self.route_errors);
        Metrics::set(&m.routes_restored, self.keeper.stats.restored);
        m.route_conflicts.set(self.keeper.conflicts() as i64);
        Metrics::set(
            &m.hook_runs,
            self.hooks
                .stats
                .runs
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        Metrics::set(
            &m.hook_failures,
            self.hooks
                .stats
                .failures
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        m.encode()
    }

    fn answer(&self, req: Request) -> control::Reply {
        match req {
            Request::Show { prefix } => {
                let views = self.views(Some(prefix.trunc()));
                if views.is_empty() {
                    serde_json::json!({"error": format!("no binding for {prefix}")})
                } else {
                    serde_json::to_value(views).unwrap_or_default()
                }
            }
            Request::Delete { .. } => serde_json::json!({"error": "handled by the event loop"}),
            Request::Metrics => serde_json::Value::String(self.scrape()),
            Request::Bindings => serde_json::to_value(self.views(None)).unwrap_or_default(),

            Request::Stats => {
                let kernel: serde_json::Map<String, serde_json::Value> = self
                    .counters
                    .read()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                serde_json::json!({
                    "kernel": kernel,
                    "agent": self.table.stats,
                    "bindings": self.table.len(),
                    "route_ops": self.metrics.route_ops.get(),
                    "route_errors": self.route_errors,
                    "hooks": &*self.hooks.stats,
                    "decode_errors": self.decode_errors,
                    "resync": &self.resync,
                    "routes": {
                        "metric": self.routes.metric(),
                        "restored": self.keeper.stats.restored,
                        "conflicts": self.keeper.conflicts(),
                        "conflicts_seen": self.keeper.stats.conflicts_seen,
                        "missing": self.keeper.missing(),
                        "failing": self.retries.len(),
                        "scans": self.keeper.stats.scans,
                        "overruns": self.keeper.stats.overruns,
                    },
                    "ipv6_forwarding": crate::route::ipv6_forwarding(),
                    "fast_path": self.fast_path_view(),
                })
            }
        }
    }
}

impl Agent {
    /// Managed interfaces: (ifindex, name).
    fn managed(&self) -> Vec<(u32, String)> {
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
    fn write_iface_flags(&mut self) -> Result<(), crate::maps::MapOpError> {
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
    fn refresh_datapath(&mut self) {
        self.datapath.refresh();
        match self.write_iface_flags() {
            Ok(()) => self.renew_lease(),
            Err(e) => warn!(error = %crate::chain(&e), "writing interface flags"),
        }
    }

    /// Let the fast path forward for [`datapath::LEASE`] more: the flags are
    /// current. An agent that stops renewing (crashed, hung, killed) stops
    /// XDP forwarding when the lease runs out.
    fn renew_lease(&mut self) {
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
    fn revoke_lease(&mut self) {
        let _ = self.lease.set(0, 0, 0);
    }

    /// The fast path as `stats` shows it.
    fn fast_path_view(&self) -> serde_json::Value {
        let st = &self.datapath.state;
        let mut ifs = serde_json::Map::new();
        for (idx, name) in self.managed() {
            let Some(kind) = self.link_kinds.get(&idx).copied() else {
                ifs.insert(
                    name,
                    serde_json::json!({"ifindex": idx, "link": "unsupported", "redirect_target": false}),
                );
                continue;
            };
            let target = if st.mode == FastPathMode::Off {
                Err("--fast-path off".to_string())
            } else {
                st.redirect_target(idx, kind)
            };
            let mut v = serde_json::json!({
                "ifindex": idx,
                "link": kind,
                "role": if self.ifaces.downstream.contains_key(&idx) { "downstream" } else { "upstream" },
                "redirect_target": target.is_ok(),
                "flags": self.written_flags.get(&idx).copied().unwrap_or(0),
            });
            if let Err(why) = target {
                v["why_not"] = why.into();
            }
            if let Some(f) = st.features.as_ref().and_then(|f| f.get(&idx)) {
                v["xdp_features"] = crate::xdp_features::describe(*f).into();
            }
            ifs.insert(name, v);
        }
        let fwd = st.forwarding();
        let mut v = serde_json::json!({
            "mode": st.mode.as_str(),
            "forwarding": fwd.is_ok(),
            "xdp_features_reported": st.features.is_some(),
            "interfaces": ifs,
        });
        if let Err(why) = fwd {
            v["reason"] = why.into();
        }
        if let datapath::Firewall::Hooks(h) = &st.firewall {
            v["netfilter_hooks"] = h.clone().into();
        }
        if let Some(how) = self.datapath.firewall_method() {
            v["netfilter_probe"] = how.into();
        }
        v
    }
}

/// A route that could not be installed, and when to try again.
#[derive(Debug, Clone)]
struct Retry {
    attempts: u32,
    at: std::time::Instant,
    error: String,
}

/// Longest wait between attempts to install a route.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// How often our routes are compared with the bindings, besides the
/// kernel's notifications (a safety net, as BIRD's kernel scan).
const ROUTE_SCAN: Duration = Duration::from_secs(10);

impl Agent {
    /// The next hop and interface a delegated binding of `p` wants.
    fn wanted(&self, p: Ipv6Net) -> Option<(std::net::Ipv6Addr, u32)> {
        self.table
            .by_prefix(p)
            .into_iter()
            .find(|b| b.kind == Kind::Delegated)
            .map(|b| (b.next_hop, b.ifindex))
    }

    /// Count failed route operations; failed installs are retried with backoff.
    fn note_failures(&mut self, failed: Vec<RouteFailure>) {
        for f in failed {
            self.route_errors += 1;
            warn!(prefix = %f.change.prefix(), error = %f, "route");
            if let RouteChange::Add(p, ..) | RouteChange::Replace(p, ..) = f.change {
                self.retry_later(p, f.to_string());
            }
        }
    }

    /// Try `p` again after a backoff (1 s doubling to a minute).
    fn retry_later(&mut self, p: Ipv6Net, error: String) {
        let attempts = self.retries.get(&p).map(|r| r.attempts + 1).unwrap_or(1);
        let backoff = Duration::from_secs(1u64 << attempts.min(6)).min(MAX_RETRY_BACKOFF);
        self.retries.insert(
            p,
            Retry {
                attempts,
                at: std::time::Instant::now() + backoff,
                error,
            },
        );
    }

    /// Bring each prefix's route in line with its binding: ours added
    /// exclusively at our metric, which can never displace another route.
    /// A prefix whose slot another protocol holds is left alone, unless
    /// `recheck`: then the exclusive add asks the kernel again (the holder
    /// may have gone without our seeing it).
    async fn converge(&mut self, prefixes: Vec<Ipv6Net>, recheck: bool) {
        let mut ops = Vec::new();
        for p in prefixes {
            self.keeper.dirty.remove(&p);
            match self.wanted(p) {
                Some(_) if self.keeper.withheld(p) && !recheck => {
                    self.retries.remove(&p);
                }
                Some((nh, i)) => ops.push(RouteChange::Add(p, nh, i)),
                None => {
                    self.keeper.forget(p);
                    self.retries.remove(&p);
                }
            }
        }
        self.run_routes(ops).await;
    }

    /// Carry out route changes. An add the kernel refuses because a route
    /// already holds the slot is looked into ([`Agent::resolve_taken`]);
    /// other failures are retried.
    async fn run_routes(&mut self, ops: Vec<RouteChange>) {
        if ops.is_empty() {
            return;
        }
        let adds: Vec<Ipv6Net> = ops
            .iter()
            .filter(|c| matches!(c, RouteChange::Add(..)))
            .map(|c| c.prefix())
            .collect();
        let failed = run_route_ops(&self.routes, &self.metrics, ops).await;
        let refused: HashSet<Ipv6Net> = failed.iter().map(|f| f.change.prefix()).collect();
        let (taken, other): (Vec<RouteFailure>, Vec<RouteFailure>) = failed
            .into_iter()
            .partition(|f| matches!(f.change, RouteChange::Add(..)) && f.errno == libc::EEXIST);
        for p in adds.into_iter().filter(|p| !refused.contains(p)) {
            // The add went in, so the slot was empty: if the binding had a
            // route before, someone had taken it away.
            self.route_in(p, true);
        }
        self.note_failures(other);
        if !taken.is_empty() {
            self.resolve_taken(taken.iter().map(|f| f.change.prefix()).collect())
                .await;
        }
    }

    /// Our route for `p` is in; `added`: by an add of ours just now (a
    /// restore, if it had gone missing).
    fn route_in(&mut self, p: Ipv6Net, added: bool) {
        if self.keeper.installed(p, added) {
            info!(prefix = %p, "our route had been removed or replaced by someone else; put back");
        }
        if self.retries.remove(&p).is_some() {
            info!(prefix = %p, "route installed after retry");
        }
    }

    /// Adds refused because a route holds the slot (prefix, table, metric):
    /// if it is ours, it stays (or gets our binding's next hop); if another
    /// protocol's, or a multipath group someone appended to, ours is
    /// withheld and the binding says so. Nothing of another's is touched.
    async fn resolve_taken(&mut self, taken: Vec<Ipv6Net>) {
        let metric = self.routes.metric();
        let ours: std::collections::HashMap<Ipv6Net, KernelRoute> =
            match self.routes.dump_ours().await {
                Ok(v) => v
                    .into_iter()
                    .filter(|r| r.metric == metric)
                    .map(|r| (r.prefix, r))
                    .collect(),
                Err(e) => {
                    let e = format!("reading our routes: {}", crate::chain(&e));
                    warn!(error = %e, "route");
                    for p in taken {
                        self.retry_later(p, e.clone());
                    }
                    return;
                }
            };
        let mut replace = Vec::new();
        let mut foreign = Vec::new();
        for p in taken {
            let Some((nh, i)) = self.wanted(p) else {
                continue;
            };
            match ours.get(&p) {
                Some(r) if !r.multipath.is_empty() => {
                    // Ours, with another's next hop appended beside it: a
                    // replace would take the whole group.
                    self.withhold(p, r.clone());
                }
                Some(r) if r.next_hop == Some(nh) && r.ifindex == Some(i) => {
                    self.route_in(p, false)
                }
                Some(_) => replace.push(RouteChange::Replace(p, nh, i)),
                None => foreign.push(p),
            }
        }
        if !foreign.is_empty() {
            // Which route holds each slot: the kernel's choice for the
            // prefix, else (a more specific route answers) the table's.
            let proto = self.routes.proto();
            let mut all: Option<Vec<KernelRoute>> = None;
            for p in foreign {
                let held = match self.routes.best_route(p).await {
                    Ok(Some(r)) if r.prefix == p && r.metric == metric && r.proto != proto => {
                        Some(r)
                    }
                    _ => {
                        if all.is_none() {
                            all = self.routes.dump_all().await.ok();
                        }
                        all.iter()
                            .flatten()
                            .find(|r| r.prefix == p && r.metric == metric && r.proto != proto)
                            .cloned()
                    }
                };
                match held {
                    Some(r) => self.withhold(p, r),
                    // Gone meanwhile, or not to be seen: try again later.
                    None => self.retry_later(
                        p,
                        format!(
                            "a route holds {p} at metric {metric}, but the table does not show it"
                        ),
                    ),
                }
            }
        }
        if !replace.is_empty() {
            let ps: Vec<Ipv6Net> = replace.iter().map(|c| c.prefix()).collect();
            let failed = run_route_ops(&self.routes, &self.metrics, replace).await;
            let refused: HashSet<Ipv6Net> = failed.iter().map(|f| f.change.prefix()).collect();
            for p in ps.into_iter().filter(|p| !refused.contains(p)) {
                self.route_in(p, false);
            }
            self.note_failures(failed);
        }
    }

    /// Another protocol's route (or a multipath group) holds `p`'s slot.
    fn withhold(&mut self, p: Ipv6Net, route: KernelRoute) {
        self.retries.remove(&p);
        if self.keeper.withhold(p, route.clone()) {
            warn!(prefix = %p, route = %route, "another protocol's route holds the prefix; ours is withheld until it goes");
        }
    }

    /// Install again the routes that are due for a retry, or (when a link
    /// came back) every route through `ifindex`.
    async fn retry_routes(&mut self, ifindex: Option<u32>) {
        let now = std::time::Instant::now();
        let prefixes: Vec<Ipv6Net> = match ifindex {
            Some(i) => self
                .table
                .iter()
                .filter(|b| b.kind == Kind::Delegated && b.ifindex == i)
                .map(|b| b.prefix)
                .collect(),
            None => self
                .retries
                .iter()
                .filter(|(_, r)| r.at <= now)
                .map(|(p, _)| *p)
                .collect(),
        };
        self.converge(prefixes, false).await;
    }

    /// A route change the kernel announced. Returns true when the table
    /// must be checked as a whole (notifications were lost).
    fn route_event(&mut self, ev: RouteEvent) -> bool {
        match ev {
            RouteEvent::Overrun => {
                self.keeper.stats.overruns += 1;
                warn!("route notifications were lost (socket overrun); checking every route");
                true
            }
            RouteEvent::Changed { route, deleted } => {
                // Our protocol at another metric: left by an earlier
                // setting, removed by the scan, not kept.
                if route.proto == self.routes.proto() && !self.routes.is_ours(&route) {
                    return false;
                }
                let ours = self.routes.is_ours(&route) && route.multipath.is_empty();
                let wanted = self.wanted(route.prefix);
                let had = self.keeper.status(route.prefix);
                self.keeper.on_route(&route, ours, deleted, wanted);
                if !ours && wanted.is_some() && self.keeper.status(route.prefix) != had {
                    match self.keeper.status(route.prefix) {
                        Some(st) => {
                            warn!(prefix = %route.prefix, status = %st, "another protocol's route for a delegated prefix")
                        }
                        None => info!(prefix = %route.prefix, "the other protocol's route is gone"),
                    }
                }
                false
            }
        }
    }

    /// Compare our routes (a kernel-filtered dump) with the bindings: put
    /// back what is missing, ask again where another protocol held the
    /// slot (its going may have been missed), remove what no binding
    /// explains.
    async fn scan_routes(&mut self) {
        self.keeper.stats.scans += 1;
        let fwd = crate::route::ipv6_forwarding();
        if fwd != self.ipv6_forwarding {
            if fwd == Some(false) {
                warn!("IPv6 forwarding is off in this namespace (net.ipv6.conf.all.forwarding=0): the delegated prefixes' routes cannot carry traffic; pd-agent does not change it");
            } else if fwd == Some(true) {
                info!("IPv6 forwarding is on");
            }
            self.ipv6_forwarding = fwd;
        }
        let ours = match self.routes.dump_ours().await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %crate::chain(&e), "reading our routes");
                return;
            }
        };
        let metric = self.routes.metric();
        let mut have = std::collections::HashMap::new();
        let mut stale = Vec::new();
        for r in ours {
            match self.wanted(r.prefix) {
                Some(_) if r.metric == metric => {
                    have.insert(r.prefix, r);
                }
                _ => stale.extend(r.deletes()),
            }
        }
        let bindings: Vec<(Ipv6Net, std::net::Ipv6Addr, u32)> = self
            .table
            .iter()
            .filter(|b| b.kind == Kind::Delegated)
            .map(|b| (b.prefix, b.next_hop, b.ifindex))
            .collect();
        let mut recheck = Vec::new();
        for (p, nh, i) in bindings {
            if self.retries.contains_key(&p) {
                continue;
            }
            if self.keeper.withheld(p) {
                recheck.push(p);
                continue;
            }
            match have.get(&p) {
                Some(r) if r.next_hop == Some(nh) && r.ifindex == Some(i) => {}
                _ => self.keeper.lost(p),
            }
        }
        if !stale.is_empty() {
            info!(
                routes = stale.len(),
                "removing routes of ours that no binding explains"
            );
            let failed = run_route_ops(&self.routes, &self.metrics, stale).await;
            self.note_failures(failed);
        }
        self.converge(recheck, true).await;
    }
}

/// Carry out `changes` in order, batched over netlink (the kernel applies a
/// batch's requests in order, so a prefix's operations keep theirs).
/// Returns the failures.
async fn run_route_ops(
    routes: &Routes,
    metrics: &Metrics,
    changes: Vec<RouteChange>,
) -> Vec<RouteFailure> {
    if changes.is_empty() {
        return vec![];
    }
    let t = std::time::Instant::now();
    let n = changes.len();
    let failed = routes.batch(changes).await;
    // Each operation waited for its whole batch.
    let took = t.elapsed();
    for _ in 0..n {
        metrics.observe_route_op(took);
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_what_a_replay_looks_back_to() {
        const S: u64 = 1_000_000_000;
        let mark = 10_000 * S;
        // The catch-up replays records after the mark less a second, and
        // client messages up to the client-message window before that.
        let oldest_wanted = mark - S - crate::binding::CLIENT_MESSAGE_WINDOW_SECS * S;
        assert!(prune_cutoff(mark, RECORD_KEEP_SECS) < oldest_wanted);
        // Nothing stored yet, or a mark younger than the keep time: none.
        assert_eq!(prune_cutoff(0, RECORD_KEEP_SECS), 0);
        assert_eq!(prune_cutoff(5 * S, 10), 0);
    }
}
