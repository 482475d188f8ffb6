//! Keeping the kernel's routing table true for the bindings (a delegated
//! prefix's route via its client, an acquired prefix's unreachable route):
//! which prefixes another protocol's route holds, which of our routes
//! vanished and are being put back, and what to look at again. Pure state;
//! the agent does the netlink work and feeds it what the kernel says.
//!
//! The rules (each has a unit test below):
//! - our route goes in at our metric, exclusively: a route of another
//!   protocol already at that prefix, table and metric wins, and ours is
//!   withheld until it goes (`conflict: ...`);
//! - a route of another protocol at another metric is a conflict too, shown
//!   as such, but both stay: the kernel prefers the lower metric;
//! - a route of ours that vanishes (deleted, flushed, replaced) while its
//!   binding lives is put back, unless another protocol now holds its slot;
//! - a route of another protocol is never changed or removed;
//! - for an acquired prefix's unreachable route, a route of another
//!   protocol at another metric is no conflict: the LAN's on-link route
//!   for the same /64 is meant to win.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv6Net;

use crate::route::{KernelRoute, Target};

/// Another protocol's route for a binding's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub route: KernelRoute,
    /// It holds our slot (same metric): ours is not installed.
    pub withheld: bool,
}

/// Route upkeep, as `stats` shows it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct KeeperStats {
    /// Routes of ours put back after someone removed or replaced them.
    pub restored: u64,
    /// Routes of other protocols seen for a binding's prefix.
    pub conflicts_seen: u64,
    /// Periodic checks of our routes against the bindings.
    pub scans: u64,
    /// Route notifications lost (socket overrun), each followed by a scan.
    pub overruns: u64,
}

#[derive(Debug, Default)]
pub struct Keeper {
    metric: u32,
    conflicts: BTreeMap<Ipv6Net, Conflict>,
    missing: BTreeSet<Ipv6Net>,
    /// Prefixes to bring in line with their binding soon.
    pub dirty: BTreeSet<Ipv6Net>,
    pub stats: KeeperStats,
}

impl Keeper {
    /// `metric`: the one our routes carry.
    pub fn new(metric: u32) -> Self {
        Keeper {
            metric,
            ..Default::default()
        }
    }

    /// A route change the kernel announced (or a start-up dump showed) for
    /// `route.prefix`, whose binding wants `wanted`; `None`: no binding,
    /// nothing to keep.
    pub fn on_route(
        &mut self,
        route: &KernelRoute,
        ours: bool,
        deleted: bool,
        wanted: Option<Target>,
    ) {
        let p = route.prefix;
        let Some(want) = wanted else {
            return;
        };
        if !ours && want == Target::Unreachable && route.metric != self.metric {
            return;
        }
        match (ours, deleted) {
            (true, true) => {
                if !self.withheld(p) {
                    self.missing.insert(p);
                    self.dirty.insert(p);
                }
            }
            (true, false) => {
                if route.target() == Some(want) {
                    self.missing.remove(&p);
                } else {
                    self.dirty.insert(p);
                }
            }
            (false, false) => {
                let withheld = route.metric == self.metric;
                if !withheld && self.withheld(p) {
                    // The route holding our slot matters more; the scan's
                    // recheck follows both.
                    return;
                }
                let new = self.conflicts.get(&p).map(|c| &c.route) != Some(route);
                if new {
                    self.stats.conflicts_seen += 1;
                }
                if withheld {
                    // It took our slot (an add or replace of its own).
                    self.missing.remove(&p);
                }
                self.conflicts.insert(
                    p,
                    Conflict {
                        route: route.clone(),
                        withheld,
                    },
                );
            }
            (false, true) => {
                if self
                    .conflicts
                    .get(&p)
                    .is_some_and(|c| c.route.proto == route.proto && c.route.metric == route.metric)
                {
                    self.conflicts.remove(&p);
                    // Its slot may be free now: ours goes back in.
                    self.dirty.insert(p);
                }
            }
        }
    }

    /// Our route for `p` is in; `added`: by an add of ours, which only
    /// succeeds into an empty slot. Returns whether that restored a route
    /// that had gone missing (counted).
    pub fn installed(&mut self, p: Ipv6Net, added: bool) -> bool {
        let metric = self.metric;
        if self
            .conflicts
            .get(&p)
            .is_some_and(|c| c.withheld || c.route.metric == metric)
        {
            // Ours holds the slot, so whatever held it is gone from it.
            self.conflicts.remove(&p);
        }
        let was_missing = self.missing.remove(&p);
        let restored = was_missing && added;
        if restored {
            self.stats.restored += 1;
        }
        restored
    }

    /// Another protocol's `route` holds our slot for `p`. Returns whether
    /// that is news (another holder than before).
    pub fn withhold(&mut self, p: Ipv6Net, route: KernelRoute) -> bool {
        self.missing.remove(&p);
        let news = self
            .conflicts
            .get(&p)
            .is_none_or(|c| c.route != route || !c.withheld);
        if news {
            self.stats.conflicts_seen += 1;
        }
        self.conflicts.insert(
            p,
            Conflict {
                route,
                withheld: true,
            },
        );
        news
    }

    /// Our route for `p` is not where it should be (a periodic check).
    pub fn lost(&mut self, p: Ipv6Net) {
        if !self.withheld(p) {
            self.missing.insert(p);
            self.dirty.insert(p);
        }
    }

    /// The binding of `p` is gone: nothing to keep there any more.
    pub fn forget(&mut self, p: Ipv6Net) {
        self.conflicts.remove(&p);
        self.missing.remove(&p);
        self.dirty.remove(&p);
    }

    pub fn withheld(&self, p: Ipv6Net) -> bool {
        self.conflicts.get(&p).is_some_and(|c| c.withheld)
    }

    pub fn conflicts(&self) -> usize {
        self.conflicts.len()
    }

    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// What `bindings` shows for `p` when its route is not simply
    /// `installed` (failures are the agent's to say).
    pub fn status(&self, p: Ipv6Net) -> Option<String> {
        if let Some(c) = self.conflicts.get(&p) {
            let m = self.metric;
            return Some(if c.withheld {
                format!(
                    "conflict: {} holds the prefix; ours is withheld until it goes",
                    c.route
                )
            } else if c.route.metric < m {
                format!(
                    "conflict: {} is preferred; ours is installed at metric {m}",
                    c.route
                )
            } else {
                format!(
                    "conflict: {} is also there; ours, at metric {m}, is preferred",
                    c.route
                )
            });
        }
        self.missing
            .contains(&p)
            .then(|| "missing (re-adding)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: u8 = 99;

    fn p() -> Ipv6Net {
        "2001:db8:a100::/56".parse().unwrap()
    }

    fn route(proto: u8, metric: u32, nh: &str) -> KernelRoute {
        KernelRoute {
            prefix: p(),
            kind: crate::route::RouteKind::Unicast,
            next_hop: Some(nh.parse().unwrap()),
            ifindex: Some(3),
            proto,
            metric,
            multipath: vec![],
        }
    }

    fn wanted() -> Option<Target> {
        Some(Target::Via("fe80::c".parse().unwrap(), 3))
    }

    fn unreachable(proto: u8, metric: u32) -> KernelRoute {
        KernelRoute {
            prefix: p(),
            kind: crate::route::RouteKind::Unreachable,
            next_hop: None,
            ifindex: Some(1),
            proto,
            metric,
            multipath: vec![],
        }
    }

    #[test]
    fn an_acquired_prefix_keeps_its_unreachable_route() {
        let mut k = Keeper::new(1024);
        let want = Some(Target::Unreachable);
        // Ours, announced back: in place.
        k.on_route(&unreachable(OURS, 1024), true, false, want);
        assert!(k.dirty.is_empty());
        // Deleted by someone: put back.
        k.on_route(&unreachable(OURS, 1024), true, true, want);
        assert!(k.dirty.contains(&p()));
        assert!(k.installed(p(), true));
        // The LAN's on-link route for the same prefix, at the kernel's
        // metric: meant to win, no conflict.
        k.dirty.clear();
        let mut lan = route(2, 256, "fe80::1");
        lan.next_hop = None;
        k.on_route(&lan, false, false, want);
        assert_eq!((k.conflicts(), k.status(p())), (0, None));
        // Another's unreachable route in our slot: ours is withheld.
        k.on_route(&unreachable(16, 1024), false, false, want);
        assert!(k.withheld(p()));
        // Ours with a next hop is not what an acquired prefix wants.
        let mut k = Keeper::new(1024);
        k.on_route(&route(OURS, 1024, "fe80::c"), true, false, want);
        assert!(k.dirty.contains(&p()));
    }

    #[test]
    fn our_route_deleted_is_put_back_and_counted() {
        let mut k = Keeper::new(1024);
        k.on_route(&route(OURS, 1024, "fe80::c"), true, true, wanted());
        assert!(k.dirty.contains(&p()));
        assert_eq!(k.status(p()).as_deref(), Some("missing (re-adding)"));
        assert!(k.installed(p(), true));
        assert_eq!(k.stats.restored, 1);
        // Found in place (not added): not a restore.
        k.on_route(&route(OURS, 1024, "fe80::c"), true, true, wanted());
        assert!(!k.installed(p(), false));
        assert_eq!(k.stats.restored, 1);
        assert_eq!(k.status(p()), None);
        // Our own add, announced back, changes nothing.
        k.dirty.clear();
        k.on_route(&route(OURS, 1024, "fe80::c"), true, false, wanted());
        assert!(k.dirty.is_empty());
    }

    #[test]
    fn a_foreign_route_in_our_slot_withholds_ours_and_its_removal_frees_it() {
        let mut k = Keeper::new(1024);
        let st = route(4, 1024, "fe80::99");
        k.on_route(&st, false, false, wanted());
        assert!(k.withheld(p()));
        let s = k.status(p()).unwrap();
        assert!(
            s.starts_with("conflict: 2001:db8:a100::/56 via fe80::99"),
            "{s}"
        );
        assert!(s.contains("proto static metric 1024"), "{s}");
        assert!(s.ends_with("withheld until it goes"), "{s}");
        // Ours vanishing now is expected: not re-added.
        k.dirty.clear();
        k.on_route(&route(OURS, 1024, "fe80::c"), true, true, wanted());
        assert!(k.dirty.is_empty());
        assert_eq!(k.missing(), 0);
        // The static route goes: ours goes back in.
        k.on_route(&st, false, true, wanted());
        assert!(!k.withheld(p()));
        assert!(k.dirty.contains(&p()));
        assert_eq!(k.stats.conflicts_seen, 1);
    }

    #[test]
    fn a_foreign_route_at_another_metric_is_a_conflict_but_ours_stays() {
        let mut k = Keeper::new(1024);
        k.on_route(&route(4, 100, "fe80::99"), false, false, wanted());
        assert!(!k.withheld(p()));
        assert!(k
            .status(p())
            .unwrap()
            .contains("is preferred; ours is installed at metric 1024"));
        k.on_route(&route(4, 100, "fe80::99"), false, true, wanted());
        assert_eq!(k.status(p()), None);
        k.on_route(&route(4, 2000, "fe80::99"), false, false, wanted());
        assert!(k
            .status(p())
            .unwrap()
            .contains("ours, at metric 1024, is preferred"));
    }

    #[test]
    fn routes_of_prefixes_without_binding_are_ignored() {
        let mut k = Keeper::new(1024);
        k.on_route(&route(OURS, 1024, "fe80::c"), true, true, None);
        k.on_route(&route(4, 1024, "fe80::99"), false, false, None);
        assert!(k.dirty.is_empty());
        assert_eq!((k.conflicts(), k.missing()), (0, 0));
    }

    #[test]
    fn withhold_then_forget() {
        let mut k = Keeper::new(1024);
        assert!(k.withhold(p(), route(4, 1024, "fe80::99")));
        assert!(!k.withhold(p(), route(4, 1024, "fe80::99")), "no news");
        // A route at another metric does not hide the one holding the slot.
        k.on_route(&route(4, 100, "fe80::77"), false, false, wanted());
        assert!(k.withheld(p()));
        // Our add went in: the slot was free after all.
        k.installed(p(), true);
        assert!(!k.withheld(p()));
        assert_eq!(k.status(p()), None);
        k.withhold(p(), route(4, 1024, "fe80::99"));
        k.lost(p());
        assert!(k.dirty.is_empty(), "a withheld route is not missing");
        k.forget(p());
        assert_eq!(k.status(p()), None);
    }
}
