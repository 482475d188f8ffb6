//! Carrying out the binding table's actions: kernel routes (batched over
//! netlink, retried with backoff, checked against what others change), the
//! pinned route map and the hooks.

use std::{collections::HashSet, time::Duration};

use ipnet::Ipv6Net;
use tracing::{info, warn};

use super::Agent;
use crate::{
    binding::{Action, Binding, Kind},
    hooks::HookEvent,
    metrics::Metrics,
    route::{KernelRoute, RouteChange, RouteEvent, RouteFailure, Routes, Target},
};

/// A route that could not be installed, and when to try again.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    pub(crate) attempts: u32,
    pub(crate) at: std::time::Instant,
    pub(crate) error: String,
}

/// Longest wait between attempts to install a route.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// How often our routes are compared with the bindings, besides the
/// kernel's notifications (a safety net, as BIRD's kernel scan).
pub(super) const ROUTE_SCAN: Duration = Duration::from_secs(10);

impl Agent {
    pub(crate) async fn apply(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        // The store first: a route is never ahead of the state that explains it.
        self.record(&actions);
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
            let delegated = b.kind == Kind::Delegated;
            match &a {
                _ if !delegated => {
                    info!(event = ev.event, kind = "acquired", prefix = %b.prefix, from = %b.next_hop, iface = %b.iface,
                        valid = b.valid_lifetime, preferred = b.preferred_lifetime, "binding");
                }
                Action::Install(b) => {
                    info!(event = "delegated", prefix = %b.prefix, next_hop = %b.next_hop, iface = %b.iface,
                        valid = b.valid_lifetime, preferred = b.preferred_lifetime, iaid = b.iaid,
                        client_duid = %hex::encode(&b.client_duid), "binding");
                }
                Action::Refresh(b) => {
                    info!(event = "renewed", prefix = %b.prefix, next_hop = %b.next_hop, iface = %b.iface,
                        valid = b.valid_lifetime, preferred = b.preferred_lifetime, "binding");
                }
                Action::Remove(b, why) => {
                    info!(event = why.as_str(), prefix = %b.prefix, next_hop = %b.next_hop, iface = %b.iface, "binding");
                }
            }
            // The route follows the binding (via its client; unreachable
            // for an acquired prefix, RFC 7084 WPD-5) and is kept through
            // renewals; the map holds delegated prefixes only.
            let target = self.target_of(b);
            match &a {
                Action::Install(b) => {
                    if let Some(t) = target {
                        ops.push(RouteChange::Add(b.prefix, t));
                    }
                    if delegated {
                        inserts.push(b.clone());
                    }
                }
                Action::Refresh(b) => {
                    if delegated {
                        inserts.push(b.clone());
                    }
                }
                Action::Remove(b, _) => {
                    if delegated {
                        if let Err(e) = self.map.remove(b.prefix) {
                            warn!(error = %crate::chain(&e), "map");
                        }
                        inserts.retain(|i| i.prefix != b.prefix);
                    }
                    if let Some(t) = target {
                        // Ours only: another protocol's route for the prefix stays.
                        ops.push(RouteChange::delete(b.prefix, t, self.routes.metric()));
                        self.keeper.forget(b.prefix);
                        self.retries.remove(&b.prefix);
                    }
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

    /// The route binding `b` wants: via its client for a delegated
    /// prefix, unreachable for an acquired one (unless turned off).
    pub(crate) fn target_of(&self, b: &Binding) -> Option<Target> {
        match b.kind {
            Kind::Delegated => Some(Target::Via(b.next_hop, b.ifindex)),
            Kind::Acquired => self.unreachable_route.then_some(Target::Unreachable),
        }
    }

    /// The route the binding of `p` wants, if one does (a delegated
    /// binding's before an acquired one's).
    pub(super) fn wanted(&self, p: Ipv6Net) -> Option<Target> {
        self.table
            .delegated(p)
            .or_else(|| self.table.acquired(p))
            .and_then(|b| self.target_of(b))
    }

    /// Count failed route operations; failed installs are retried with backoff.
    pub(super) fn note_failures(&mut self, failed: Vec<RouteFailure>) {
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
    pub(super) async fn converge(&mut self, prefixes: Vec<Ipv6Net>, recheck: bool) {
        let mut ops = Vec::new();
        for p in prefixes {
            self.keeper.dirty.remove(&p);
            match self.wanted(p) {
                Some(_) if self.keeper.withheld(p) && !recheck => {
                    self.retries.remove(&p);
                }
                Some(t) => ops.push(RouteChange::Add(p, t)),
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
            let Some(want) = self.wanted(p) else {
                continue;
            };
            match ours.get(&p) {
                Some(r) if !r.multipath.is_empty() => {
                    // Ours, with another's next hop appended beside it: a
                    // replace would take the whole group.
                    self.withhold(p, r.clone());
                }
                Some(r) if r.target() == Some(want) => self.route_in(p, false),
                Some(_) => replace.push(RouteChange::Replace(p, want)),
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
    pub(super) fn withhold(&mut self, p: Ipv6Net, route: KernelRoute) {
        self.retries.remove(&p);
        if self.keeper.withhold(p, route.clone()) {
            warn!(prefix = %p, route = %route, "another protocol's route holds the prefix; ours is withheld until it goes");
        }
    }

    /// Install again the routes that are due for a retry, or (when a link
    /// came back) every route through `ifindex`.
    pub(super) async fn retry_routes(&mut self, ifindex: Option<u32>) {
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
    pub(super) fn route_event(&mut self, ev: RouteEvent) -> bool {
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
                            warn!(prefix = %route.prefix, status = %st, "another protocol's route for a binding's prefix")
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
    pub(super) async fn scan_routes(&mut self) {
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
        let bindings: Vec<(Ipv6Net, Target)> = self
            .table
            .iter()
            .filter_map(|b| Some((b.prefix, self.target_of(b)?)))
            .collect();
        let mut recheck = Vec::new();
        for (p, t) in bindings {
            if self.retries.contains_key(&p) {
                continue;
            }
            if self.keeper.withheld(p) {
                recheck.push(p);
                continue;
            }
            match have.get(&p) {
                Some(r) if r.target() == Some(t) => {}
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
pub(super) async fn run_route_ops(
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
