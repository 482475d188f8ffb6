//! The pinned BPF maps the agent writes (`bpftool map dump pinned
//! <pin-dir>/<name>` shows them):
//!
//! - `pd_routes_v1`: LPM trie of delegated prefixes -> next hop, interface,
//!   expiry and a counter slot; the fast path and source validation read it;
//! - `pd_fwd_stats_v1`: per-CPU forwarded packets/bytes, one slot per binding;
//! - `pd_ifaces_v1`: per-interface flags (source-address validation);
//! - `pd_onlink_v1`: on-link prefixes of downstream interfaces (strict mode).
//!
//! Slots are kept across agent restarts: they are read back from the
//! pinned trie, so a binding's counters survive a restart.

use std::{collections::HashMap, net::Ipv6Addr};

use aya::maps::{
    lpm_trie::Key, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues,
};
use ipnet::Ipv6Net;
use pd_common::{maps, FwdStats, RouteValue, NO_SLOT};

use crate::binding::Binding;

#[derive(Debug, thiserror::Error)]
#[error("BPF map {map}, {what}")]
pub struct MapOpError {
    pub map: &'static str,
    pub what: String,
    #[source]
    pub source: MapError,
}

/// A delete of a key that is not there (aya reports it either way).
fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn key(p: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(p.prefix_len() as u32, p.network().octets())
}

pub struct RouteMap {
    routes: LpmTrie<MapData, [u8; 16], RouteValue>,
    stats: PerCpuArray<MapData, FwdStats>,
    slots: HashMap<Ipv6Net, u32>,
    free: Vec<u32>,
    next_slot: u32,
}

impl RouteMap {
    /// Wrap the maps, taking over the slots of entries already pinned.
    pub fn new(
        routes: LpmTrie<MapData, [u8; 16], RouteValue>,
        stats: PerCpuArray<MapData, FwdStats>,
    ) -> Self {
        let mut m = RouteMap {
            routes,
            stats,
            slots: HashMap::new(),
            free: Vec::new(),
            next_slot: 0,
        };
        for (net, v) in m.entries_raw() {
            if v.slot != NO_SLOT && v.slot < m.stats.len() {
                m.slots.insert(net, v.slot);
                m.next_slot = m.next_slot.max(v.slot + 1);
            }
        }
        let used: std::collections::HashSet<u32> = m.slots.values().copied().collect();
        m.free = (0..m.next_slot).filter(|s| !used.contains(s)).collect();
        m
    }

    fn slot_for(&mut self, prefix: Ipv6Net) -> u32 {
        if let Some(s) = self.slots.get(&prefix) {
            return *s;
        }
        let s = match self.free.pop() {
            Some(s) => s,
            // Bindings past the map's entries are not counted.
            None if self.next_slot < self.stats.len() => {
                self.next_slot += 1;
                self.next_slot - 1
            }
            None => return NO_SLOT,
        };
        // A fresh slot starts from zero.
        if let Ok(n) = aya::util::nr_cpus() {
            if let Ok(zero) = PerCpuValues::try_from(vec![FwdStats::default(); n]) {
                let _ = self.stats.set(s, zero, 0);
            }
        }
        self.slots.insert(prefix, s);
        s
    }

    pub fn insert(&mut self, b: &Binding) -> Result<(), MapOpError> {
        let slot = self.slot_for(b.prefix);
        let v = RouteValue {
            next_hop: b.next_hop.octets(),
            expires_at: b.expires_at.unwrap_or(u64::MAX),
            ifindex: b.ifindex,
            iaid: b.iaid,
            slot,
            _pad: 0,
        };
        self.routes
            .insert(&key(b.prefix), v, 0)
            .map_err(|source| MapOpError {
                map: maps::ROUTES,
                what: b.prefix.to_string(),
                source,
            })
    }

    pub fn remove(&mut self, prefix: Ipv6Net) -> Result<(), MapOpError> {
        if let Some(s) = self.slots.remove(&prefix) {
            self.free.push(s);
        }
        match self.routes.remove(&key(prefix)) {
            Err(e) if !not_found(&e) => Err(MapOpError {
                map: maps::ROUTES,
                what: prefix.to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn entries_raw(&self) -> Vec<(Ipv6Net, RouteValue)> {
        self.routes
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(k, v)| {
                Some((
                    Ipv6Net::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8).ok()?,
                    v,
                ))
            })
            .collect()
    }

    /// Every prefix in the map, with its next hop and interface.
    pub fn entries(&self) -> Vec<(Ipv6Net, Ipv6Addr, u32)> {
        self.entries_raw()
            .into_iter()
            .map(|(n, v)| (n, Ipv6Addr::from(v.next_hop), v.ifindex))
            .collect()
    }

    /// Forwarded (packets, bytes) of a prefix, summed over CPUs.
    pub fn counters(&self, prefix: Ipv6Net) -> Option<(u64, u64)> {
        let s = *self.slots.get(&prefix)?;
        let v = self.stats.get(&s, 0).ok()?;
        Some(
            v.iter()
                .fold((0, 0), |(p, b), x| (p + x.packets, b + x.bytes)),
        )
    }
}

/// Per-interface flags and on-link prefixes for source-address validation.
pub struct SavMaps {
    pub ifaces: BpfHashMap<MapData, u32, u32>,
    pub onlink: LpmTrie<MapData, [u8; 16], u32>,
}

impl SavMaps {
    pub fn set_iface(&mut self, ifindex: u32, flags: u32) -> Result<(), MapOpError> {
        let r = if flags == 0 {
            match self.ifaces.remove(&ifindex) {
                Err(e) if not_found(&e) => Ok(()),
                r => r,
            }
        } else {
            self.ifaces.insert(ifindex, flags, 0)
        };
        r.map_err(|source| MapOpError {
            map: maps::IFACES,
            what: format!("ifindex {ifindex}"),
            source,
        })
    }

    /// Remove the flags of every interface not in `keep` (left by an
    /// earlier agent that managed more interfaces).
    pub fn retain_ifaces(
        &mut self,
        keep: &std::collections::HashSet<u32>,
    ) -> Result<(), MapOpError> {
        let stale: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(k))
            .collect();
        for k in stale {
            self.set_iface(k, 0)?;
        }
        Ok(())
    }

    /// Replace the on-link prefixes with `prefixes`.
    pub fn set_onlink(&mut self, prefixes: &[(u32, Ipv6Net)]) -> Result<(), MapOpError> {
        let old: Vec<Key<[u8; 16]>> = self.onlink.keys().filter_map(|k| k.ok()).collect();
        let want: std::collections::HashSet<(u32, [u8; 16])> = prefixes
            .iter()
            .map(|(_, p)| (p.prefix_len() as u32, p.network().octets()))
            .collect();
        for k in old {
            if !want.contains(&(k.prefix_len(), k.data())) {
                let _ = self.onlink.remove(&k);
            }
        }
        for (i, p) in prefixes {
            self.onlink
                .insert(&key(*p), *i, 0)
                .map_err(|source| MapOpError {
                    map: maps::ONLINK,
                    what: p.to_string(),
                    source,
                })?;
        }
        Ok(())
    }
}
