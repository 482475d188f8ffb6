//! The daemon: one instance ([`Agent`]) and its event loop.
//!
//! The instance wires the kernel programs, the binding table, the route
//! executor, the pinned maps, the state store and the control socket. Each
//! concern has its own file:
//!
//! - `startup`: loading and attaching, restoring the store, reconciling
//!   with the kernel's routes;
//! - `replay`: the ring buffer, lost messages and the kernel's records;
//! - `ifaces`: managed interfaces, their addresses and the fast path's flags;
//! - `exec`: carrying out actions on routes, the map and hooks, with retries;
//! - `journal`: what is written to the state store, and the clock readings.
//!
//! The operator's views (`stats`, `bindings`, metrics) live in
//! [`crate::control`] and [`crate::metrics`].

use std::{collections::HashSet, path::PathBuf, time::Duration};

use aya::maps::{HashMap as BpfHashMap, MapData};
use ipnet::Ipv6Net;
use pd_common::{ClientKey, ClientRecord};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    binding::{Ifaces, Table},
    clock::now,
    config::Config,
    control::{self, Call},
    datapath::{self, FastPathMode, LinkKind, Monitor},
    ebpf::{Counters, Programs},
    hooks::Hooks,
    keeper::Keeper,
    maps::{RouteMap, SavMaps},
    metrics::{self, Metrics},
    resync::SeqTracker,
    route::Routes,
    snoop::Assembler,
    state::Store,
    systemd::Notifier,
};

mod exec;
mod ifaces;
mod journal;
mod replay;
mod startup;

pub use startup::AgentError;

use exec::Retry;
use replay::{ResyncStats, PRUNE};

/// The running agent: every piece of state the event loop works on.
pub(crate) struct Agent {
    pub(crate) table: Table,
    pub(crate) ifaces: Ifaces,
    pub(crate) progs: Programs,
    pub(crate) links_dir: PathBuf,
    /// Names of managed interfaces -> their own `pd_ifaces_v1` flags
    /// (source validation, upstream); the fast path's are added on write.
    pub(crate) iface_flags: std::collections::HashMap<String, u32>,
    /// Link kind of each managed interface, by ifindex (absent: a type the
    /// programs cannot read, so not attached).
    pub(crate) link_kinds: std::collections::HashMap<u32, LinkKind>,
    /// What the fast path may do, kept current from the kernel's reports.
    pub(crate) datapath: Monitor,
    /// The programs read links without Ethernet header (loaded so).
    pub(crate) bare_links: bool,
    /// `pd_fwd_lease_v1`: renewed while the readings are kept current.
    pub(crate) lease: aya::maps::Array<MapData, u64>,
    /// The flags last written to `pd_ifaces_v1`, by ifindex.
    pub(crate) written_flags: std::collections::HashMap<u32, u32>,
    /// The fast path's state as last logged: forwarding (or why not), and
    /// each interface's redirect verdict.
    pub(crate) logged_forwarding: Option<Result<(), String>>,
    pub(crate) logged_targets: std::collections::HashMap<u32, Result<(), String>>,
    pub(crate) clients: BpfHashMap<MapData, ClientKey, ClientRecord>,
    /// Entries of the pinned `pd_clients_v1`.
    pub(crate) client_records: u32,
    /// The kernel's per-CPU message counters (`pd_seq_v1`).
    pub(crate) seq: aya::maps::PerCpuArray<MapData, u64>,
    /// Recreated interfaces the programs could not be attached to yet.
    pub(crate) unattached: HashSet<u32>,
    pub(crate) tracker: SeqTracker,
    /// Records at or before this kernel time were applied by an earlier
    /// agent (from the store's seen mark; 0 after a reboot).
    pub(crate) floor_ns: u64,
    /// Newest kernel time applied, and the one last written to the store.
    pub(crate) seen_ns: u64,
    pub(crate) journaled_ns: u64,
    pub(crate) boot_id: String,
    /// The clock reading the store's times are anchored to (last written).
    pub(crate) clock: crate::clock::Anchor,
    pub(crate) ringbuf_full_seen: u64,
    pub(crate) resync: ResyncStats,
    pub(crate) routes: Routes,
    pub(crate) map: RouteMap,
    pub(crate) sav: SavMaps,
    pub(crate) store: Store,
    pub(crate) counters: Counters,
    pub(crate) hooks: Hooks,
    pub(crate) metrics: Metrics,
    /// Routes whose installation failed, retried with backoff.
    pub(crate) retries: std::collections::BTreeMap<Ipv6Net, Retry>,
    /// The routing table as the bindings want it, against what is there.
    pub(crate) keeper: Keeper,
    /// Acquired prefixes are routed `unreachable` (RFC 7084 WPD-5).
    pub(crate) unreachable_route: bool,
    /// `net.ipv6.conf.all.forwarding`, as last read.
    pub(crate) ipv6_forwarding: Option<bool>,
    pub(crate) route_errors: u64,
    pub(crate) decode_errors: u64,
    /// Reassembles messages split over several ring buffer records.
    pub(crate) asm: Assembler,
    /// The relay's counters, when pd-agent relays (`--relay-to`).
    pub(crate) relay: Option<crate::relay::SharedStats>,
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    // The relay's port is taken before anything is attached (a conflict
    // fails the start at once); relaying starts once the programs see
    // what it sends.
    let relay = match &cfg.relay {
        Some(r) => Some(crate::relay::bind(
            r.clone(),
            &cfg.downstream,
            &cfg.upstream,
        )?),
        None => None,
    };
    let mut notifier = Notifier::from_env();
    notifier.status("starting: attaching the programs, reconciling the routes");
    let (mut agent, ring, mut listeners) = Agent::start(&cfg).await?;
    if let Some(r) = relay {
        let macs = agent
            .progs
            .take_relay_macs()
            .map_err(|e| warn!("relaying without client MACs (option 79): {e}"))
            .ok();
        agent.relay = Some(r.spawn(macs)?.stats);
    }
    let (call_tx, mut call_rx) = mpsc::channel::<Call>(16);
    if let Some(addr) = cfg.metrics {
        metrics::serve(addr, call_tx.clone())
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        info!(%addr, "serving Prometheus metrics at /metrics");
    }
    control::serve(&cfg.control, call_tx)?;
    info!(control = %cfg.control.display(), "ready");
    // Units ordered after pd-agent find the programs attached and the
    // routes reconciled.
    notifier.ready(agent.table.len());
    // The watchdog is pinged from an arm of the event loop below, so a
    // loop that stops turning stops the pings and the manager restarts us.
    let mut watchdog = notifier.watchdog_every().map(|every| {
        let mut i = tokio::time::interval(every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });

    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // for as long as the RingBuf lives inside the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| AgentError::Io {
        what: "registering the ring buffer fd",
        source: e.into(),
    })?;
    let mut links = crate::link::link_events()?;
    let mut route_events = crate::route::route_events(cfg.proto)?;
    let mut route_scan = tokio::time::interval(exec::ROUTE_SCAN);
    route_scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Route changes of a burst (a flush) are handled together.
    let mut converge_at: Option<tokio::time::Instant> = None;
    // Losses the catch-up could not settle (messages after its snapshot).
    let mut resync_at: Option<tokio::time::Instant> = agent
        .lost_events()
        .then(|| tokio::time::Instant::now() + Duration::from_millis(50));
    let mut last_resync = tokio::time::Instant::now();
    let signal_of = |kind| {
        signal(kind).map_err(|source| AgentError::Io {
            what: "installing a signal handler",
            source,
        })
    };
    let mut term = signal_of(SignalKind::terminate())?;
    let mut int = signal_of(SignalKind::interrupt())?;
    let mut prune = tokio::time::interval(Duration::from_secs(
        replay::env_secs("PD_AGENT_PRUNE_SECS", PRUNE.as_secs()).max(1),
    ));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut datapath_poll = tokio::time::interval(datapath::POLL);
    datapath_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        notifier.bindings(agent.table.len());
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
                let mut guard = guard.map_err(|source| AgentError::Io { what: "waiting for the ring buffer", source })?;
                let msgs = agent.drain(guard.get_inner_mut());
                guard.clear_ready();
                agent.ingest(msgs, replay::Timing::Now, None).await;
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
                agent.resync(ring.get_mut()).await;
            }
            _ = tokio::time::sleep(sleep) => {
                let actions = agent.table.expire(now());
                agent.apply(actions).await;
            }
            Some((req, reply)) = call_rx.recv() => {
                let _ = reply.send(agent.answer(req).await);
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
            _ = every(&mut watchdog) => notifier.watchdog(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notifier.stopping(cfg.flush_on_exit);
    agent.stop(cfg.flush_on_exit).await;
    let _ = std::fs::remove_file(&cfg.control);
    Ok(())
}

/// The next tick of an optional timer (never, when there is none).
async fn every(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next tick of an optional listener; `None` once it has stopped
/// (never, when there is no listener).
async fn tick(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
