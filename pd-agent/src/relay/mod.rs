//! The DHCPv6 relay agent (RFC 9915 §19): pd-agent relays between clients
//! on the downstream interfaces and the servers given by `--relay-to`, so
//! that one daemon replaces dhcrelay and the route scripts.
//!
//! Routes do not come from here. The Reply this relay sends down leaves
//! through a downstream interface, where the TC program sees it like any
//! other server's or relay's: there is one route logic, whoever relays.
//!
//! What is decided ([`Relay::decide`]) is kept apart from the socket, so
//! every rule is tested without one:
//!
//! - up (§19.1.1, §19.1.2): a client's message, or a lower relay's
//!   Relay-Forw on an interface trusted for it, is wrapped in a Relay-Forw
//!   with an Interface-ID (the interface's name) and sent to every server;
//! - down (§19.2): a Relay-Reply from a configured server, on an upstream
//!   interface, gives up its Relay Message, which goes unmodified to the
//!   peer-address on the interface its Interface-ID names (port 546, or
//!   547 for a relay);
//! - everything else is dropped and counted by reason, and nothing
//!   malformed is sent on.

pub mod codec;
mod socket;

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv6Addr, SocketAddrV6},
    sync::{Arc, Mutex},
};

use codec::{option, Relay as RelayMsg, HOP_COUNT_LIMIT, RELAY_FORW, RELAY_REPL};
use serde::Serialize;

pub use socket::{bind, port_owner, read_links, Bound, RelayError, Running};

const ADVERTISE: u8 = 2;
const REPLY: u8 = 7;
const RECONFIGURE: u8 = 10;

/// The DHCPv6 server port, on which relays listen and servers answer.
pub const SERVER_PORT: u16 = 547;
/// The client port.
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers (RFC 9915 §7.1).
pub const ALL_RELAYS_AND_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Where relayed messages go: a server's (or an upper relay's) address,
/// or a multicast group such as All_DHCP_Servers (ff05::1:3), with the
/// interface to send on (needed for link-local and multicast addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub addr: Ipv6Addr,
    pub iface: Option<String>,
}

impl std::str::FromStr for Server {
    type Err = String;

    /// `ADDR` or `ADDR%IFACE`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, iface) = match s.split_once('%') {
            Some((a, i)) if !i.is_empty() => (a, Some(i.to_string())),
            Some(_) => return Err(format!("relay target {s:?}: empty interface after %")),
            None => (s, None),
        };
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|e| format!("relay target {s:?}: {e}"))?;
        if addr.is_unspecified() {
            return Err(format!("relay target {s:?}: not a server address"));
        }
        if is_link_local(addr) && iface.is_none() {
            return Err(format!(
                "relay target {s:?}: a link-local address needs %IFACE"
            ));
        }
        Ok(Server { addr, iface })
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.iface {
            Some(i) => write!(f, "{}%{i}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Options added to each Relay-Forw from one downstream interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceOptions {
    /// Remote-ID (RFC 4649): enterprise number, then the id.
    pub remote_id: Option<Vec<u8>>,
    /// Subscriber-ID (RFC 4580).
    pub subscriber_id: Option<Vec<u8>>,
}

/// The relay's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayConfig {
    pub servers: Vec<Server>,
    /// Downstream interfaces on which a lower relay's Relay-Forw is relayed.
    pub trust: Vec<String>,
    /// UDP port the relay sends to the servers from, and hears their
    /// Relay-Replies on: 547, the one clients reach, or another, which adds
    /// the Relay Source Port option (RFC 8357).
    pub port: u16,
    pub options: BTreeMap<String, IfaceOptions>,
    /// Client messages per second each downstream interface takes (0: no
    /// limit), enforced in XDP; bursts of twice as many pass.
    pub iface_rate: u32,
    /// Client messages per second one client MAC may send (0: no limit).
    pub client_rate: u32,
}

/// Default [`RelayConfig::iface_rate`].
pub const DEFAULT_IFACE_RATE: u32 = 1000;
/// Default [`RelayConfig::client_rate`]: a client's exchange is a few
/// messages, its retransmissions seconds apart.
pub const DEFAULT_CLIENT_RATE: u32 = 20;

impl RelayConfig {
    /// The limits as the XDP program reads them (bursts twice the rates).
    pub fn limits(&self) -> pd_common::RelayLimits {
        let burst = |r: u32| r.saturating_mul(2).min(pd_common::RELAY_RATE_MAX);
        pd_common::RelayLimits {
            iface_rate: self.iface_rate,
            iface_burst: burst(self.iface_rate),
            client_rate: self.client_rate,
            client_burst: burst(self.client_rate),
        }
    }
}

/// Why a packet was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drop {
    /// A Relay-Reply arriving on a downstream interface.
    RelayReplyFromDownstream,
    /// A server's message (Advertise, Reply, Reconfigure) arriving on a
    /// downstream interface: servers discard them anyway (RFC 9915 §16).
    ServerMessageFromDownstream,
    /// A Relay-Forw on a downstream interface not trusted for relays.
    UntrustedRelayForw,
    /// A Relay-Forw whose hop-count is at HOP_COUNT_LIMIT.
    HopLimit,
    /// Shorter than its header, or options that do not fill it exactly.
    Malformed,
    /// A Relay-Reply from a source that is no configured server.
    UnknownServer,
    /// A Relay-Reply whose Interface-ID (or link-address) names no
    /// downstream interface.
    UnknownInterface,
    /// A Relay-Reply whose peer-address cannot be sent to.
    BadPeer,
    /// Anything but a Relay-Reply on an upstream interface.
    NotRelayReplyUpstream,
    /// Arrived on an interface that is neither downstream nor upstream.
    ForeignInterface,
    /// The message would outgrow a datagram once wrapped.
    TooBig,
}

impl Drop {
    pub fn name(self) -> &'static str {
        match self {
            Drop::RelayReplyFromDownstream => "relay_reply_from_downstream",
            Drop::ServerMessageFromDownstream => "server_message_from_downstream",
            Drop::UntrustedRelayForw => "untrusted_relay_forw",
            Drop::HopLimit => "hop_limit",
            Drop::Malformed => "malformed",
            Drop::UnknownServer => "unknown_server",
            Drop::UnknownInterface => "unknown_interface",
            Drop::BadPeer => "bad_peer",
            Drop::NotRelayReplyUpstream => "not_relay_reply_upstream",
            Drop::ForeignInterface => "foreign_interface",
            Drop::TooBig => "too_big",
        }
    }
}

/// Messages relayed and dropped, for `pd-agent stats` and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayStats {
    /// Relayed towards the servers: receiving interface -> message type -> count.
    pub up: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Relayed to clients or lower relays: sending interface -> message type -> count.
    pub down: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Dropped, by reason.
    pub drops: BTreeMap<&'static str, u64>,
    /// Datagrams the kernel refused to send (no route, interface gone).
    pub send_errors: u64,
}

impl RelayStats {
    fn relayed(&mut self, dir: Dir, iface: &str, msg_type: u8) {
        let m = match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        };
        *m.entry(iface.to_string())
            .or_default()
            .entry(type_name(msg_type))
            .or_default() += 1;
    }

    fn dropped(&mut self, why: Drop) {
        *self.drops.entry(why.name()).or_default() += 1;
    }
}

/// Shared between the relay task and the agent's views.
pub type SharedStats = Arc<Mutex<RelayStats>>;

/// A message type's name, for counters.
pub fn type_name(t: u8) -> &'static str {
    match t {
        1 => "solicit",
        2 => "advertise",
        3 => "request",
        4 => "confirm",
        5 => "renew",
        6 => "rebind",
        7 => "reply",
        8 => "release",
        9 => "decline",
        10 => "reconfigure",
        11 => "information_request",
        12 => "relay_forw",
        13 => "relay_repl",
        _ => "other",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub to: SocketAddrV6,
    /// Interface to send on (0: the routing table decides).
    pub ifindex: u32,
    pub payload: Vec<u8>,
    pub dir: Dir,
    /// The interface counted: where it came from (up) or goes (down).
    pub iface: String,
    /// The type of the message relayed (the Relay-Forw's inner one going up).
    pub msg_type: u8,
}

/// An interface as the relay sees it: its role and its global (or ULA)
/// addresses, the link-address candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub role: Role,
    pub globals: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Downstream,
    Upstream,
}

/// The managed interfaces by ifindex.
pub type Links = HashMap<u32, Link>;

pub(crate) fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Global or ULA: an address that may stand for a link (RFC 9915 §19.1.1).
pub(crate) fn is_global(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || is_link_local(a))
}

/// What the relay decides, from its settings and the interfaces' state.
pub struct Relay {
    pub cfg: RelayConfig,
    pub links: Links,
}

/// A datagram the relay received.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub payload: &'a [u8],
    pub src: SocketAddrV6,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// The sender's MAC, as the XDP program recorded it (client side).
    pub mac: Option<[u8; 6]>,
}

impl Relay {
    /// What to send for one received datagram, or why nothing.
    pub fn decide(&self, rx: Received) -> Result<Vec<Out>, Drop> {
        let link = self.links.get(&rx.ifindex).ok_or(Drop::ForeignInterface)?;
        let t = *rx.payload.first().ok_or(Drop::Malformed)?;
        match (link.role, t) {
            (Role::Downstream, RELAY_REPL) => Err(Drop::RelayReplyFromDownstream),
            (Role::Downstream, ADVERTISE | REPLY | RECONFIGURE) => {
                Err(Drop::ServerMessageFromDownstream)
            }
            (Role::Downstream, _) => self.up(rx, link),
            (Role::Upstream, RELAY_REPL) => self.down(rx),
            (Role::Upstream, _) => Err(Drop::NotRelayReplyUpstream),
        }
    }

    /// A client's message or a lower relay's Relay-Forw, wrapped for the
    /// servers (RFC 9915 §19.1.1, §19.1.2).
    fn up(&self, rx: Received, link: &Link) -> Result<Vec<Out>, Drop> {
        let src = *rx.src.ip();
        let first_global = link.globals.first().copied();
        let (hop_count, link_address, inner_type) = if rx.payload[0] == RELAY_FORW {
            if !self.cfg.trust.contains(&link.name) {
                return Err(Drop::UntrustedRelayForw);
            }
            let lower = RelayMsg::parse(rx.payload).map_err(|_| Drop::Malformed)?;
            if lower.hop_count >= HOP_COUNT_LIMIT {
                return Err(Drop::HopLimit);
            }
            // A lower relay with a global source is found by its own
            // address (link-address 0); one with a link-local source by
            // this link's (§19.1.2). The Interface-ID names the link either way.
            let link_address = if is_global(src) {
                Ipv6Addr::UNSPECIFIED
            } else {
                first_global.unwrap_or(Ipv6Addr::UNSPECIFIED)
            };
            (lower.hop_count + 1, link_address, RELAY_FORW)
        } else {
            codec::check_client_message(rx.payload).map_err(|_| Drop::Malformed)?;
            (
                0,
                first_global.unwrap_or(Ipv6Addr::UNSPECIFIED),
                rx.payload[0],
            )
        };
        let port_opt;
        let mut opts: Vec<(u16, &[u8])> = vec![(option::INTERFACE_ID, link.name.as_bytes())];
        // RFC 6939: the relay next to the client says its link-layer
        // address (hardware type 1, Ethernet).
        let lladdr;
        if let (Some(mac), false) = (rx.mac, rx.payload[0] == RELAY_FORW) {
            lladdr = [0, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]];
            opts.push((option::CLIENT_LINKLAYER_ADDR, &lladdr));
        }
        if let Some(o) = self.cfg.options.get(&link.name) {
            if let Some(r) = &o.remote_id {
                opts.push((option::REMOTE_ID, r));
            }
            if let Some(s) = &o.subscriber_id {
                opts.push((option::SUBSCRIBER_ID, s));
            }
        }
        // RFC 8357: a lower relay that sent from another port than 547
        // wants its Relay-Reply there; the option carries that port up
        // and back (the server echoes it). This relay, off 547 itself,
        // says so with 0.
        if rx.payload[0] == RELAY_FORW && rx.src.port() != SERVER_PORT {
            port_opt = rx.src.port().to_be_bytes();
            opts.push((option::RELAY_SOURCE_PORT, &port_opt));
        } else if self.cfg.port != SERVER_PORT {
            opts.push((option::RELAY_SOURCE_PORT, &[0, 0]));
        }
        let payload = codec::write(RELAY_FORW, hop_count, link_address, src, &opts, rx.payload);
        if payload.len() > MAX_DATAGRAM {
            return Err(Drop::TooBig);
        }
        Ok(self
            .targets()
            .map(|(to, ifindex)| Out {
                to,
                ifindex,
                payload: payload.clone(),
                dir: Dir::Up,
                iface: link.name.clone(),
                msg_type: inner_type,
            })
            .collect())
    }

    /// Each configured server as a socket address, with the interface to
    /// send on; a multicast server without an interface goes out of every
    /// upstream interface.
    fn targets(&self) -> impl Iterator<Item = (SocketAddrV6, u32)> + '_ {
        self.cfg.servers.iter().flat_map(move |s| {
            let ifaces: Vec<u32> = match &s.iface {
                Some(name) => self.index_of(name, None).into_iter().collect(),
                None if s.addr.is_multicast() => self
                    .links
                    .iter()
                    .filter(|(_, l)| l.role == Role::Upstream)
                    .map(|(i, _)| *i)
                    .collect(),
                None => vec![0],
            };
            ifaces.into_iter().map(move |i| {
                let scope = if s.addr.is_multicast() || is_link_local(s.addr) {
                    i
                } else {
                    0
                };
                (SocketAddrV6::new(s.addr, SERVER_PORT, 0, scope), i)
            })
        })
    }

    /// The ifindex of managed interface `name` (of `role`, if given).
    fn index_of(&self, name: &str, role: Option<Role>) -> Option<u32> {
        self.links
            .iter()
            .find(|(_, l)| l.name == name && role.is_none_or(|r| l.role == r))
            .map(|(i, _)| *i)
    }

    /// Is `rx` from a configured server? A unicast server by its address;
    /// a multicast one (any server answers) by the interface it was sent on.
    fn is_from_server(&self, rx: &Received) -> bool {
        let src = *rx.src.ip();
        self.cfg.servers.iter().any(|s| {
            if s.addr.is_multicast() {
                match &s.iface {
                    Some(name) => self.index_of(name, None) == Some(rx.ifindex),
                    None => true,
                }
            } else {
                s.addr == src
                    && s.iface
                        .as_ref()
                        .is_none_or(|n| self.index_of(n, None) == Some(rx.ifindex))
            }
        })
    }

    /// A server's Relay-Reply, unwrapped for the client or lower relay
    /// (RFC 9915 §19.2).
    fn down(&self, rx: Received) -> Result<Vec<Out>, Drop> {
        if !self.is_from_server(&rx) {
            return Err(Drop::UnknownServer);
        }
        let r = RelayMsg::parse(rx.payload).map_err(|_| Drop::Malformed)?;
        let ifindex = match r.option(option::INTERFACE_ID) {
            Some(id) => std::str::from_utf8(id)
                .ok()
                .and_then(|name| self.index_of(name, Some(Role::Downstream))),
            None if !r.link_address.is_unspecified() => self
                .links
                .iter()
                .find(|(_, l)| l.role == Role::Downstream && l.globals.contains(&r.link_address))
                .map(|(i, _)| *i),
            None => None,
        }
        .ok_or(Drop::UnknownInterface)?;
        let peer = r.peer_address;
        if peer.is_unspecified() || peer.is_multicast() || peer.is_loopback() {
            return Err(Drop::BadPeer);
        }
        let inner = r.inner_type();
        if inner == RELAY_REPL {
            // Only ever pass on a well-formed relay message.
            RelayMsg::parse(r.message).map_err(|_| Drop::Malformed)?;
        }
        let port = match (inner, r.option(option::RELAY_SOURCE_PORT)) {
            (RELAY_REPL, Some(&[hi, lo])) if u16::from_be_bytes([hi, lo]) != 0 => {
                u16::from_be_bytes([hi, lo])
            }
            (RELAY_REPL, _) => SERVER_PORT,
            _ => CLIENT_PORT,
        };
        let scope = if is_link_local(peer) { ifindex } else { 0 };
        Ok(vec![Out {
            to: SocketAddrV6::new(peer, port, 0, scope),
            ifindex,
            payload: r.message.to_vec(),
            dir: Dir::Down,
            iface: self.links[&ifindex].name.clone(),
            msg_type: inner,
        }])
    }
}

/// The largest message relayed: an IPv6 datagram's payload at most.
const MAX_DATAGRAM: usize = 65_535 - 8;

#[cfg(test)]
mod tests;
