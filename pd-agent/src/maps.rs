//! The pinned BPF maps the agent writes: `pd_routes_v1`, an LPM trie of
//! delegated prefixes (`bpftool map dump pinned <pin-dir>/pd_routes_v1`).

use std::net::Ipv6Addr;

use aya::maps::{lpm_trie::Key, LpmTrie, MapData, MapError};
use ipnet::Ipv6Net;
use pd_common::RouteValue;

use crate::binding::Binding;

pub struct RouteMap(LpmTrie<MapData, [u8; 16], RouteValue>);

#[derive(Debug, thiserror::Error)]
#[error("BPF map pd_routes_v1, prefix {prefix}: {source}")]
pub struct MapOpError {
    pub prefix: Ipv6Net,
    #[source]
    pub source: MapError,
}

fn key(p: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(p.prefix_len() as u32, p.network().octets())
}

impl RouteMap {
    pub fn new(m: LpmTrie<MapData, [u8; 16], RouteValue>) -> Self {
        RouteMap(m)
    }

    pub fn insert(&mut self, b: &Binding) -> Result<(), MapOpError> {
        let v = RouteValue {
            next_hop: b.next_hop.octets(),
            expires_at: b.expires_at.unwrap_or(u64::MAX),
            ifindex: b.ifindex,
            iaid: b.iaid,
        };
        self.0.insert(&key(b.prefix), v, 0).map_err(|source| MapOpError { prefix: b.prefix, source })
    }

    pub fn remove(&mut self, prefix: Ipv6Net) -> Result<(), MapOpError> {
        match self.0.remove(&key(prefix)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(MapOpError { prefix, source }),
        }
    }

    /// Every prefix in the map, with its next hop and interface.
    pub fn entries(&self) -> Vec<(Ipv6Net, Ipv6Addr, u32)> {
        self.0
            .iter()
            .filter_map(|r| r.ok())
            .filter_map(|(k, v)| {
                let net = Ipv6Net::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8).ok()?;
                Some((net, Ipv6Addr::from(v.next_hop), v.ifindex))
            })
            .collect()
    }
}
