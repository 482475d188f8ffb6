//! The binding table: the pure core of the agent.
//!
//! It takes [`Message`]s and the time, and returns [`Action`]s (install a
//! route, refresh a binding's lifetimes, remove a route). It does no I/O, so
//! every rule below is tested without sockets:
//!
//! - a Reply counts only travelling server -> client: TC egress on a
//!   downstream interface, or a Relay-Reply arriving on an upstream one;
//! - the next hop is the Reply's IPv6 destination (or, for a Relay-Reply
//!   seen arriving upstream, the peer-address our relay forwards it to),
//!   never derived from a DUID or MAC;
//! - lifetimes are refreshed by every Reply; valid lifetime 0 withdraws
//!   (RFC 8415 §18.2.10.1); a prefix missing from a Reply that renews its IA
//!   is replaced;
//! - a Release is remembered by (transaction id, client DUID) and takes
//!   effect when the server's Reply with Success answers it (§18.3.7);
//!   a Decline removes the prefixes it names at once;
//! - a plain Reply arriving upstream addressed to one of this host's own
//!   addresses delegates to this host: an `acquired` binding (routed
//!   `unreachable`, RFC 7084 WPD-5, unless turned off);
//!   this host's own Release/Decline are seen leaving upstream.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv6Addr,
};

use ipnet::Ipv6Net;
use pd_common::{hook, msg, status, INFINITY};
use serde::{Deserialize, Serialize};

use crate::snoop::Message;

/// How long a client's Release waits for the server's Reply.
pub const RELEASE_WINDOW_SECS: u64 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Delegated by a server to a client on one of our downstream links:
    /// routed via the client.
    Delegated,
    /// Delegated to this host by a server on an upstream link: recorded,
    /// passed to hooks, and routed `unreachable` (RFC 7084 WPD-5): what
    /// no more specific route claims is refused, not sent back upstream.
    Acquired,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delegated => "delegated",
            Kind::Acquired => "acquired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BindingKey {
    #[serde(with = "hex_bytes")]
    pub client_duid: Vec<u8>,
    pub iaid: u32,
    pub prefix: Ipv6Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub prefix: Ipv6Net,
    pub kind: Kind,
    pub iface: String,
    pub ifindex: u32,
    pub next_hop: Ipv6Addr,
    #[serde(with = "hex_bytes")]
    pub client_duid: Vec<u8>,
    pub iaid: u32,
    pub t1: u32,
    pub t2: u32,
    pub preferred_lifetime: u32,
    pub valid_lifetime: u32,
    /// When the valid lifetime ends, in lease-clock seconds
    /// (CLOCK_BOOTTIME, see `clock`); `None` = infinite. Operators see it
    /// in unix seconds ([`BindingView`]).
    pub expires_at: Option<u64>,
    /// When the Reply that created or last refreshed it was seen
    /// (lease clock, like `expires_at`).
    pub updated_at: u64,
}

/// A binding as `pd-agent bindings` shows it: with the fast path's
/// counters for delegated prefixes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingView {
    /// The binding, its `expires_at` and `updated_at` in unix seconds by
    /// the wall clock at the time of asking.
    #[serde(flatten)]
    pub binding: Binding,
    /// Seconds of valid lifetime left (`None`: infinite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    /// Route state of a routed binding: "installed", or why not yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The route's type where it is not via the next hop: "unreachable"
    /// for an acquired prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

impl Binding {
    pub fn key(&self) -> BindingKey {
        BindingKey {
            client_duid: self.client_duid.clone(),
            iaid: self.iaid,
            prefix: self.prefix,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoveReason {
    Expired,
    /// A Reply gave valid lifetime 0.
    Withdrawn,
    Released,
    Declined,
    Replaced,
    /// Removed by the operator.
    Deleted,
}

impl RemoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoveReason::Expired => "expired",
            RemoveReason::Withdrawn => "withdrawn",
            RemoveReason::Released => "released",
            RemoveReason::Declined => "declined",
            RemoveReason::Replaced => "replaced",
            RemoveReason::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// New binding, or its route (next hop / interface) changed.
    Install(Binding),
    /// Same route, new lifetimes.
    Refresh(Binding),
    Remove(Binding, RemoveReason),
}

/// What the table knows about our interfaces.
#[derive(Debug, Clone, Default)]
pub struct Ifaces {
    pub downstream: BTreeMap<u32, String>,
    pub upstream: BTreeMap<u32, String>,
    /// On-link prefixes of downstream interfaces (to map a relay
    /// link-address to the interface it names).
    pub downstream_prefixes: Vec<(u32, Ipv6Net)>,
    /// This host's own addresses (a Reply to one of them is acquired).
    pub local_addrs: std::collections::HashSet<Ipv6Addr>,
}

impl Ifaces {
    /// The name of a managed interface (downstream or upstream).
    pub fn name(&self, ifindex: u32) -> Option<&String> {
        self.downstream
            .get(&ifindex)
            .or(self.upstream.get(&ifindex))
    }

    fn downstream_for_link_addr(&self, a: Ipv6Addr) -> Option<u32> {
        if self.downstream.len() == 1 && a.is_unspecified() {
            return self.downstream.keys().next().copied();
        }
        self.downstream_prefixes
            .iter()
            .find(|(_, p)| p.contains(&a))
            .map(|(i, _)| *i)
    }
}

/// The downstream link an upstream Relay-Reply goes down to: where its
/// (innermost) link-address is on-link, or, through two relays or more
/// (this host's layer then has link-address 0 when the lower relay's
/// source was global, RFC 9915 §19.1.2, and the innermost names a link
/// beyond the lower relay), first where the outer layer's peer, the lower
/// relay, is on-link. The TC program's copy of the Reply leaving settles
/// it too, unless that goes to a port it does not watch (RFC 8357).
fn relay_reply_link(m: &Message, ifaces: &Ifaces) -> Option<u32> {
    let by_peer = || {
        (!m.outer_peer_addr.is_unspecified())
            .then(|| {
                ifaces
                    .downstream_prefixes
                    .iter()
                    .find(|(_, p)| p.contains(&m.outer_peer_addr))
                    .map(|(i, _)| *i)
            })
            .flatten()
    };
    if m.relay_depth > 1 {
        if let Some(i) = by_peer() {
            return Some(i);
        }
    }
    ifaces
        .downstream_for_link_addr(m.link_addr)
        .or_else(by_peer)
}

/// Why a message changed nothing: counted, shown by `pd-agent stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub messages: u64,
    /// Replies seen arriving from a downstream link (rogue or misrouted).
    pub untrusted_replies: u64,
    /// Replies whose next hop was not a unicast address.
    pub bad_next_hop: u64,
    /// Replies with a top-level error status.
    pub error_status: u64,
    /// Replies without a Client Identifier.
    pub no_client_id: u64,
    /// Relay-Replies arriving upstream that were applied.
    pub upstream_relay_replies: u64,
    /// Upstream Relay-Replies whose downstream link could not be found
    /// (the TC egress copy of the same Reply still counts).
    pub relay_reply_unmapped: u64,
    /// Plain Replies arriving upstream for another host (not ours to act on).
    pub upstream_replies: u64,
    /// Replies arriving upstream for this host (acquired prefixes).
    pub acquired_replies: u64,
    pub releases_seen: u64,
    pub releases_matched: u64,
    pub declines: u64,
    pub other: u64,
    /// Prefixes outside `--allow` (RFC 8987 §3.2 trust boundary).
    pub not_allowed: u64,
    /// Delegations refused by `--max-bindings-per-iface`.
    pub limit_reached: u64,
    /// Replies answering no client message seen (forged or replayed).
    pub unsolicited_replies: u64,
    /// Releases/Declines from an address other than the binding's client.
    pub foreign_releases: u64,
    /// DHCPv6 messages leaving an interface that this host forwarded from
    /// a link other than an upstream one rather than sent (a rogue host's
    /// hairpin).
    pub forwarded_messages: u64,
}

/// What the operator allows (RFC 8987 §3.2, §3.3).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Delegated or acquired prefixes must lie inside one of these (empty:
    /// anything).
    pub allow: Vec<Ipv6Net>,
    /// Most bindings one interface may hold.
    pub max_bindings_per_iface: Option<usize>,
    /// A Reply counts only if it answers a client message (Request, Renew,
    /// Rebind, Solicit with Rapid Commit, Release) seen with the same
    /// transaction id and Client-ID within [`CLIENT_MESSAGE_WINDOW_SECS`].
    pub require_client_message: bool,
}

/// How long a client message waits for the Reply that answers it.
pub const CLIENT_MESSAGE_WINDOW_SECS: u64 = 60;

impl Policy {
    fn allows(&self, p: Ipv6Net) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|a| a.contains(&p))
    }
}

/// Bindings with the indexes the rules need, so that no rule scans the
/// whole table: by prefix (one owner per prefix), by (DUID, IAID) (a range
/// of the key order) and by expiry.
#[derive(Default)]
struct Index {
    map: BTreeMap<BindingKey, Binding>,
    by_prefix: HashMap<Ipv6Net, Vec<BindingKey>>,
    by_expiry: BTreeSet<(u64, BindingKey)>,
    per_iface: HashMap<u32, usize>,
}

impl Index {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn get(&self, k: &BindingKey) -> Option<&Binding> {
        self.map.get(k)
    }

    fn insert(&mut self, b: Binding) {
        let k = b.key();
        self.remove(&k);
        *self.per_iface.entry(b.ifindex).or_default() += 1;
        self.by_prefix.entry(k.prefix).or_default().push(k.clone());
        if let Some(e) = b.expires_at {
            self.by_expiry.insert((e, k.clone()));
        }
        self.map.insert(k, b);
    }

    fn remove(&mut self, k: &BindingKey) -> Option<Binding> {
        let b = self.map.remove(k)?;
        if let Some(n) = self.per_iface.get_mut(&b.ifindex) {
            *n -= 1;
        }
        if let Some(v) = self.by_prefix.get_mut(&k.prefix) {
            v.retain(|x| x != k);
            if v.is_empty() {
                self.by_prefix.remove(&k.prefix);
            }
        }
        if let Some(e) = b.expires_at {
            self.by_expiry.remove(&(e, k.clone()));
        }
        Some(b)
    }

    fn keys_for_prefix(&self, p: Ipv6Net) -> Vec<BindingKey> {
        self.by_prefix.get(&p).cloned().unwrap_or_default()
    }

    fn keys_for_ia(&self, duid: &[u8], iaid: u32) -> Vec<BindingKey> {
        let start = BindingKey {
            client_duid: duid.to_vec(),
            iaid,
            prefix: Ipv6Net::default(),
        };
        self.map
            .range(start..)
            .map(|(k, _)| k)
            .take_while(|k| k.client_duid == duid && k.iaid == iaid)
            .cloned()
            .collect()
    }

    fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.first().map(|(e, _)| *e)
    }

    fn expired(&self, now: u64) -> Vec<BindingKey> {
        self.by_expiry
            .iter()
            .take_while(|(e, _)| *e <= now)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// A Release awaiting the server's answer: the (iaid, prefix) pairs it
/// lists, the address it came from (None: this host's own), seen at.
type PendingRelease = (Vec<(u32, Ipv6Net)>, Option<Ipv6Addr>, u64);

/// What [`Table::handle`] decided about one message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// What to carry out, in order.
    pub actions: Vec<Action>,
    /// Delegations refused, with the reason (the agent logs them).
    pub refusals: Vec<Refusal>,
    /// An unsolicited Reply left for later (see [`Table::handle`]).
    pub deferred: bool,
}

/// A delegation the table refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub prefix: Ipv6Net,
    pub reason: &'static str,
}

impl Outcome {
    fn refuse(&mut self, prefix: Ipv6Net, reason: &'static str) {
        self.refusals.push(Refusal { prefix, reason });
    }

    /// Refuse a whole Reply, named by its first prefix.
    fn refuse_first(&mut self, m: &Message, reason: &'static str) {
        if let Some(p) = m.prefixes.first().and_then(|p| net(p.prefix, p.len)) {
            self.refuse(p, reason);
        }
    }
}

/// Where a Reply's prefixes are bound: the binding's kind, interface and
/// next hop.
struct Target {
    kind: Kind,
    ifindex: u32,
    iface: String,
    next_hop: Ipv6Addr,
}

/// How a Reply is taken: when, and whether an unsolicited one is deferred.
#[derive(Clone, Copy)]
struct Replying {
    defer_unsolicited: bool,
    now: u64,
}

/// Most client messages remembered while awaiting their Reply.
const MAX_ASKED: usize = 1_000_000;

#[derive(Default)]
pub struct Table {
    bindings: Index,
    /// (xid, client DUID) -> (iaid, prefix) listed in the Release, the
    /// address it came from (None: this host's own), seen at.
    releases: HashMap<(u32, Vec<u8>), PendingRelease>,
    /// (xid, client DUID) of client messages awaiting a Reply -> seen at.
    asked: HashMap<(u32, Vec<u8>), u64>,
    pub stats: Stats,
    pub policy: Policy,
}

fn is_error(st: u16) -> bool {
    st != status::ABSENT && st != status::SUCCESS
}

/// Where a client message came from: the innermost relay layer's
/// peer-address when relayed, else the packet's source.
fn client_address(m: &Message) -> Ipv6Addr {
    if m.relay_depth > 0 {
        m.peer_addr
    } else {
        m.src
    }
}

fn net(prefix: Ipv6Addr, len: u8) -> Option<Ipv6Net> {
    Ipv6Net::new(prefix, len).ok().map(|n| n.trunc())
}

fn expires(now: u64, valid: u32) -> Option<u64> {
    (valid != INFINITY).then(|| now + valid as u64)
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// The delegated binding of `prefix`, if any (read in place: the route
    /// checks ask this for every route in the table).
    pub fn delegated(&self, prefix: Ipv6Net) -> Option<&Binding> {
        self.of_kind(prefix, Kind::Delegated)
    }

    /// The acquired binding of `prefix`, if any.
    pub fn acquired(&self, prefix: Ipv6Net) -> Option<&Binding> {
        self.of_kind(prefix, Kind::Acquired)
    }

    fn of_kind(&self, prefix: Ipv6Net, kind: Kind) -> Option<&Binding> {
        self.bindings
            .by_prefix
            .get(&prefix)?
            .iter()
            .filter_map(|k| self.bindings.get(k))
            .find(|b| b.kind == kind)
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.map.values()
    }

    /// Put back a binding from the state store (at start).
    pub fn restore(&mut self, b: Binding) {
        self.bindings.insert(b);
    }

    /// An interface was deleted and created again under the same name with
    /// a new index: its bindings move to the new index. Returns them.
    pub fn reindex(&mut self, old: u32, new: u32) -> Vec<Binding> {
        let keys: Vec<BindingKey> = self
            .bindings
            .map
            .iter()
            .filter(|(_, b)| b.ifindex == old)
            .map(|(k, _)| k.clone())
            .collect();
        let mut moved = Vec::new();
        for k in keys {
            if let Some(mut b) = self.bindings.remove(&k) {
                b.ifindex = new;
                moved.push(b.clone());
                self.bindings.insert(b);
            }
        }
        moved
    }

    /// Remove every binding for `prefix` (operator's `delete`).
    pub fn delete_prefix(&mut self, prefix: Ipv6Net) -> Vec<Action> {
        let keys = self.bindings.keys_for_prefix(prefix);
        keys.into_iter()
            .filter_map(|k| self.bindings.remove(&k))
            .map(|b| Action::Remove(b, RemoveReason::Deleted))
            .collect()
    }

    /// Earliest expiry among bindings and pending releases.
    pub fn next_deadline(&self) -> Option<u64> {
        let b = self.bindings.next_expiry();
        let r = self
            .releases
            .values()
            .map(|(_, _, t)| t + RELEASE_WINDOW_SECS)
            .min();
        match (b, r) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Remove what has run out by `now`.
    pub fn expire(&mut self, now: u64) -> Vec<Action> {
        self.releases
            .retain(|_, (_, _, t)| *t + RELEASE_WINDOW_SECS > now);
        self.asked
            .retain(|_, t| *t + CLIENT_MESSAGE_WINDOW_SECS > now);
        let gone = self.bindings.expired(now);
        gone.into_iter()
            .filter_map(|k| self.bindings.remove(&k))
            .map(|b| Action::Remove(b, RemoveReason::Expired))
            .collect()
    }

    /// Apply one message seen at `now` (lease-clock seconds), and say what
    /// was decided. With `defer_unsolicited`, a Reply that answers no
    /// client message seen changes nothing, is not counted as unsolicited
    /// (only as a message), and comes back as [`Outcome::deferred`]: its
    /// client message may be among messages known lost, and the caller
    /// applies it again later.
    pub fn handle(
        &mut self,
        m: &Message,
        ifaces: &Ifaces,
        now: u64,
        defer_unsolicited: bool,
    ) -> Outcome {
        let mut out = Outcome::default();
        self.stats.messages += 1;
        // What leaves an interface counts as this host's (its server's,
        // relay's or client's) only if this host sent it, or forwarded it
        // from an upstream link. A downstream host can send a forged Reply
        // to the router's MAC addressed to a neighbour on its own link; the
        // kernel forwards it back out of the same link (with a redirect),
        // past TC egress. Links we do not manage are not trusted either.
        if m.hook == hook::TC_EGRESS
            && m.in_ifindex != 0
            && !ifaces.upstream.contains_key(&m.in_ifindex)
        {
            self.stats.forwarded_messages += 1;
            if m.msg_type == msg::REPLY {
                out.refuse_first(
                    m,
                    "Reply forwarded from a downstream link, not sent by this host",
                );
            }
            return out;
        }
        if m.msg_type == msg::REPLY {
            let to = Replying {
                defer_unsolicited,
                now,
            };
            self.handle_reply(m, ifaces, to, &mut out);
            return out;
        }
        // Client messages count coming in from a downstream client, or
        // going out upstream from this host's own client.
        let client_side = match m.hook {
            hook::XDP_INGRESS => ifaces.downstream.contains_key(&m.ifindex),
            hook::TC_EGRESS => ifaces.upstream.contains_key(&m.ifindex),
            _ => false,
        };
        if !client_side {
            self.stats.other += 1;
            return out;
        }
        // A Release or Decline sent by this host itself carries no address
        // to check; one from a downstream client must come from the client.
        let from = (m.hook == hook::XDP_INGRESS).then(|| client_address(m));
        match m.msg_type {
            // Client messages a Reply may answer.
            msg::REQUEST | msg::RENEW | msg::REBIND | msg::SOLICIT => {
                if self.asked.len() < MAX_ASKED {
                    self.asked.insert((m.xid, m.duid_key()), now);
                }
            }
            msg::RELEASE => {
                self.stats.releases_seen += 1;
                let listed = m
                    .prefixes
                    .iter()
                    .filter_map(|p| Some((p.iaid, net(p.prefix, p.len)?)))
                    .collect();
                self.releases
                    .insert((m.xid, m.duid_key()), (listed, from, now));
            }
            msg::DECLINE => {
                self.stats.declines += 1;
                let duid = m.duid_key();
                for p in &m.prefixes {
                    let Some(prefix) = net(p.prefix, p.len) else {
                        continue;
                    };
                    let key = BindingKey {
                        client_duid: duid.clone(),
                        iaid: p.iaid,
                        prefix,
                    };
                    self.remove_for_client(&key, from, RemoveReason::Declined, &mut out);
                }
            }
            _ => self.stats.other += 1,
        }
        out
    }

    /// A Reply: which binding it is for (delegated downstream, acquired by
    /// this host, or nothing of ours), then [`Table::reply`].
    fn handle_reply(&mut self, m: &Message, ifaces: &Ifaces, to: Replying, out: &mut Outcome) {
        let down = ifaces.downstream.get(&m.ifindex);
        let up = ifaces.upstream.get(&m.ifindex);
        let target = match (m.hook, up, down) {
            (hook::XDP_INGRESS, Some(iface), _) if m.outer_msg_type != msg::RELAY_REPL => {
                if !ifaces.local_addrs.contains(&m.dst) {
                    self.stats.upstream_replies += 1;
                    return;
                }
                self.stats.acquired_replies += 1;
                Target {
                    kind: Kind::Acquired,
                    ifindex: m.ifindex,
                    iface: iface.clone(),
                    next_hop: m.src,
                }
            }
            (hook::XDP_INGRESS, Some(_), _) => {
                // An interface index left from before the interface was
                // recreated maps to no managed interface: not routed.
                let link =
                    relay_reply_link(m, ifaces).and_then(|i| Some((i, ifaces.downstream.get(&i)?)));
                let Some((ifindex, iface)) = link else {
                    self.stats.relay_reply_unmapped += 1;
                    return;
                };
                self.stats.upstream_relay_replies += 1;
                Target {
                    kind: Kind::Delegated,
                    ifindex,
                    iface: iface.clone(),
                    next_hop: m.outer_peer_addr,
                }
            }
            (hook::XDP_INGRESS, None, Some(_)) => {
                self.stats.untrusted_replies += 1;
                return;
            }
            (hook::TC_EGRESS, _, Some(iface)) => {
                // Relayed Replies leave downstream as Relay-Reply to a lower
                // relay: the packet's destination is then that relay.
                if m.relay_depth > 0 && m.outer_msg_type != msg::RELAY_REPL {
                    self.stats.other += 1;
                    return;
                }
                Target {
                    kind: Kind::Delegated,
                    ifindex: m.ifindex,
                    iface: iface.clone(),
                    next_hop: m.dst,
                }
            }
            _ => {
                self.stats.other += 1;
                return;
            }
        };
        self.reply(m, ifaces, &target, to, out);
    }

    /// A client's Release or Decline of `key`, sent `from` (None: this
    /// host's own). Only the client itself (its address is the next hop)
    /// gives its binding up: a rogue host claiming its DUID on the same
    /// link does not.
    fn remove_for_client(
        &mut self,
        key: &BindingKey,
        from: Option<Ipv6Addr>,
        why: RemoveReason,
        out: &mut Outcome,
    ) {
        let Some(b) = self.bindings.get(key) else {
            return;
        };
        if from.is_some_and(|f| f != b.next_hop) {
            self.stats.foreign_releases += 1;
            let reason = if why == RemoveReason::Declined {
                "Decline from an address other than the client's"
            } else {
                "Release from an address other than the client's"
            };
            out.refuse(key.prefix, reason);
            return;
        }
        out.actions
            .extend(self.bindings.remove(key).map(|b| Action::Remove(b, why)));
    }

    /// A successful Reply for `target`: it answers a pending Release, or
    /// (if it answers a client message, when that is required) binds,
    /// renews or withdraws each of its prefixes.
    fn reply(
        &mut self,
        m: &Message,
        ifaces: &Ifaces,
        target: &Target,
        to: Replying,
        out: &mut Outcome,
    ) {
        if !m.success() {
            self.stats.error_status += 1;
            return;
        }
        let duid = m.duid_key();
        if duid.is_empty() {
            self.stats.no_client_id += 1;
            return;
        }
        if let Some((listed, from, _)) = self.releases.remove(&(m.xid, duid.clone())) {
            self.stats.releases_matched += 1;
            for (iaid, prefix) in listed {
                let key = BindingKey {
                    client_duid: duid.clone(),
                    iaid,
                    prefix,
                };
                self.remove_for_client(&key, from, RemoveReason::Released, out);
            }
            return;
        }
        if self.policy.require_client_message {
            if self.asked.remove(&(m.xid, duid.clone())).is_none() {
                if to.defer_unsolicited {
                    out.deferred = true;
                    return;
                }
                self.stats.unsolicited_replies += 1;
                out.refuse_first(m, "Reply answers no client message seen");
                return;
            }
            // Keep a retransmitted Reply working: the entry is consumed by
            // the first Reply, so note it again until the window ends.
            self.asked.insert((m.xid, duid.clone()), to.now);
        }
        if m.prefixes.is_empty() {
            return;
        }
        // A next hop must be the client itself: link-local, or an address
        // on-link on the interface the prefix is delegated on.
        let on_link = target.next_hop.is_unicast_link_local()
            || ifaces
                .downstream_prefixes
                .iter()
                .any(|(i, p)| *i == target.ifindex && p.contains(&target.next_hop));
        if target.kind == Kind::Delegated && !on_link {
            self.stats.bad_next_hop += 1;
            out.refuse_first(m, "next hop is neither link-local nor on-link");
            return;
        }
        let mut renewed: BTreeMap<u32, Vec<Ipv6Net>> = BTreeMap::new();
        for p in &m.prefixes {
            if is_error(p.ia_status) {
                continue;
            }
            let Some(prefix) = net(p.prefix, p.len) else {
                continue;
            };
            if self.bind(&duid, p, prefix, target, to.now, out) {
                renewed.entry(p.iaid).or_default().push(prefix);
            }
        }
        // RFC 8415 §18.2.10.1: the Reply lists the IA's prefixes; one the
        // client held that is missing has been replaced. Unless the list is
        // incomplete: more prefixes than the kernel reports.
        if m.flags & pd_common::flags::PREFIXES_DROPPED != 0 {
            renewed.clear();
        }
        for (iaid, keep) in renewed {
            let gone: Vec<_> = self
                .bindings
                .keys_for_ia(&duid, iaid)
                .into_iter()
                .filter(|k| !keep.contains(&k.prefix))
                .collect();
            for b in gone.iter().filter_map(|k| self.bindings.remove(k)) {
                // Remove before the new route goes in only matters when they
                // overlap; order removals first so a shrinking prefix is clean.
                out.actions
                    .insert(0, Action::Remove(b, RemoveReason::Replaced));
            }
        }
    }

    /// One prefix of a Reply for `target`: refused by policy, withdrawn
    /// (valid lifetime 0), or bound. Returns whether the client holds it
    /// now (it then counts as listed in its IA).
    fn bind(
        &mut self,
        duid: &[u8],
        p: &crate::snoop::PrefixInfo,
        prefix: Ipv6Net,
        target: &Target,
        now: u64,
        out: &mut Outcome,
    ) -> bool {
        if !self.policy.allows(prefix) {
            self.stats.not_allowed += 1;
            out.refuse(prefix, "outside --allow");
            return false;
        }
        let key = BindingKey {
            client_duid: duid.to_vec(),
            iaid: p.iaid,
            prefix,
        };
        if p.valid == 0 {
            if let Some(b) = self.bindings.remove(&key) {
                out.actions.push(Action::Remove(b, RemoveReason::Withdrawn));
            }
            return false;
        }
        let old = self.bindings.get(&key);
        if let (None, Some(max)) = (old, self.policy.max_bindings_per_iface) {
            if self
                .bindings
                .per_iface
                .get(&target.ifindex)
                .copied()
                .unwrap_or(0)
                >= max
            {
                self.stats.limit_reached += 1;
                out.refuse(prefix, "--max-bindings-per-iface reached");
                return false;
            }
        }
        let same_route =
            old.is_some_and(|o| o.ifindex == target.ifindex && o.next_hop == target.next_hop);
        let b = Binding {
            prefix,
            kind: target.kind,
            iface: target.iface.clone(),
            ifindex: target.ifindex,
            next_hop: target.next_hop,
            client_duid: duid.to_vec(),
            iaid: p.iaid,
            t1: p.t1,
            t2: p.t2,
            preferred_lifetime: p.preferred,
            valid_lifetime: p.valid,
            expires_at: expires(now, p.valid),
            updated_at: now,
        };
        // Another client's binding for the same prefix loses it: one
        // prefix, one route.
        for k in self.bindings.keys_for_prefix(prefix) {
            if k != key {
                if let Some(old) = self.bindings.remove(&k) {
                    out.actions
                        .push(Action::Remove(old, RemoveReason::Replaced));
                }
            }
        }
        self.bindings.insert(b.clone());
        out.actions.push(if same_route {
            Action::Refresh(b)
        } else {
            Action::Install(b)
        });
        true
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snoop::PrefixInfo;

    impl Table {
        /// What `handle` decided to do, for tests that look at nothing else.
        fn act(&mut self, m: &Message, ifaces: &Ifaces, now: u64) -> Vec<Action> {
            self.handle(m, ifaces, now, false).actions
        }
    }

    const DOWN: u32 = 5;
    const UP: u32 = 2;

    fn ifaces() -> Ifaces {
        let mut i = Ifaces::default();
        i.downstream.insert(DOWN, "lan0".into());
        i.upstream.insert(UP, "wan0".into());
        i.downstream_prefixes
            .push((DOWN, "2001:db8:ffff::/64".parse().unwrap()));
        i
    }

    fn client() -> Ipv6Addr {
        "fe80::1c2d:3eff:fe4f:5a6b".parse().unwrap()
    }

    fn pfx(p: &str, len: u8, valid: u32) -> PrefixInfo {
        PrefixInfo {
            iaid: 1,
            t1: 100,
            t2: 160,
            ia_status: status::ABSENT,
            prefix: p.parse().unwrap(),
            len,
            preferred: valid / 2,
            valid,
        }
    }

    fn message(hook_id: u8, ifindex: u32, t: u8, xid: u32, prefixes: Vec<PrefixInfo>) -> Message {
        Message {
            seq: 0,
            ts_ns: 0,
            from_record: false,
            hook: hook_id,
            ifindex,
            in_ifindex: 0,
            msg_type: t,
            outer_msg_type: t,
            xid,
            relay_depth: 0,
            flags: 0,
            src: "fe80::1".parse().unwrap(),
            dst: client(),
            dst_mac: [0; 6],
            peer_addr: Ipv6Addr::UNSPECIFIED,
            link_addr: Ipv6Addr::UNSPECIFIED,
            outer_peer_addr: Ipv6Addr::UNSPECIFIED,
            status: status::ABSENT,
            ia_status: status::ABSENT,
            iaid: 1,
            client_duid: vec![0, 1, 0, 1, 0xaa, 0xbb],
            client_duid_len: 6,
            server_duid: vec![],
            prefixes,
        }
    }

    fn reply(prefixes: Vec<PrefixInfo>) -> Message {
        message(hook::TC_EGRESS, DOWN, msg::REPLY, 0x1234, prefixes)
    }

    fn installed(a: &[Action]) -> Vec<String> {
        a.iter()
            .map(|a| match a {
                Action::Install(b) => {
                    format!("install {} via {} dev {}", b.prefix, b.next_hop, b.iface)
                }
                Action::Refresh(b) => format!("refresh {} valid {}", b.prefix, b.valid_lifetime),
                Action::Remove(b, r) => format!("remove {} {}", b.prefix, r.as_str()),
            })
            .collect()
    }

    #[test]
    fn reply_on_downstream_egress_installs_route_to_its_destination() {
        let mut t = Table::new();
        let a = t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        assert_eq!(
            installed(&a),
            ["install 2001:db8:100::/56 via fe80::1c2d:3eff:fe4f:5a6b dev lan0"]
        );
        let b = t.iter().next().unwrap();
        assert_eq!(b.expires_at, Some(1060));
        assert_eq!(b.kind, Kind::Delegated);
    }

    #[test]
    fn renew_refreshes_lifetime_and_expiry_removes() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        let a = t.act(&reply(vec![pfx("2001:db8:100::", 56, 90)]), &ifaces(), 1030);
        assert_eq!(installed(&a), ["refresh 2001:db8:100::/56 valid 90"]);
        assert_eq!(t.next_deadline(), Some(1120));
        assert!(t.expire(1119).is_empty());
        assert_eq!(
            installed(&t.expire(1120)),
            ["remove 2001:db8:100::/56 expired"]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn infinite_lifetime_never_expires() {
        let mut t = Table::new();
        t.act(
            &reply(vec![pfx("2001:db8:100::", 56, INFINITY)]),
            &ifaces(),
            1000,
        );
        assert_eq!(t.next_deadline(), None);
        assert!(t.expire(u64::MAX - 1).is_empty());
    }

    #[test]
    fn zero_valid_lifetime_withdraws() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        let a = t.act(&reply(vec![pfx("2001:db8:100::", 56, 0)]), &ifaces(), 1010);
        assert_eq!(installed(&a), ["remove 2001:db8:100::/56 withdrawn"]);
    }

    #[test]
    fn release_is_matched_by_xid_and_duid() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        let mut rel = message(
            hook::XDP_INGRESS,
            DOWN,
            msg::RELEASE,
            0x777,
            vec![pfx("2001:db8:100::", 56, 0)],
        );
        rel.src = client();
        assert!(t.act(&rel, &ifaces(), 1001).is_empty());
        // A Reply with another xid does not match.
        let mut other = reply(vec![]);
        other.xid = 0x778;
        assert!(t.act(&other, &ifaces(), 1002).is_empty());
        // Another client's Reply with the same xid does not match either.
        let mut other = reply(vec![]);
        other.xid = 0x777;
        other.client_duid = vec![9, 9];
        assert!(t.act(&other, &ifaces(), 1002).is_empty());
        assert_eq!(t.len(), 1);
        let mut ok = reply(vec![]);
        ok.xid = 0x777;
        assert_eq!(
            installed(&t.act(&ok, &ifaces(), 1002)),
            ["remove 2001:db8:100::/56 released"]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn release_answered_with_error_keeps_binding() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        let mut rel = message(
            hook::XDP_INGRESS,
            DOWN,
            msg::RELEASE,
            0x777,
            vec![pfx("2001:db8:100::", 56, 0)],
        );
        rel.src = client();
        t.act(&rel, &ifaces(), 1001);
        let mut r = reply(vec![]);
        r.xid = 0x777;
        r.status = 1; // UnspecFail
        assert!(t.act(&r, &ifaces(), 1002).is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn reindex_moves_an_interfaces_bindings() {
        let mut t = Table::new();
        t.act(
            &reply(vec![pfx("2001:db8:100::", 56, 100)]),
            &ifaces(),
            1000,
        );
        let moved = t.reindex(DOWN, 9);
        assert_eq!(moved.len(), 1);
        assert!(t.iter().all(|b| b.ifindex == 9));
        assert_eq!(t.bindings.per_iface.get(&9), Some(&1));
        assert_eq!(t.bindings.per_iface.get(&DOWN), Some(&0));
    }

    #[test]
    fn reply_forwarded_from_a_downstream_link_is_ignored() {
        let mut t = Table::new();
        let mut m = reply(vec![pfx("2001:db8:100::", 56, 100)]);
        m.in_ifindex = DOWN;
        assert!(t.act(&m, &ifaces(), 1000).is_empty());
        assert_eq!(t.stats.forwarded_messages, 1);
        // Forwarded from a link we do not manage: not trusted either.
        m.in_ifindex = 77;
        assert!(t.act(&m, &ifaces(), 1000).is_empty());
        assert_eq!(t.stats.forwarded_messages, 2);
        // Forwarded from upstream (a server's unicast Reply routed in): trusted.
        m.in_ifindex = UP;
        assert_eq!(installed(&t.act(&m, &ifaces(), 1000)).len(), 1);
    }

    #[test]
    fn decline_removes_at_once() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        let mut d = message(
            hook::XDP_INGRESS,
            DOWN,
            msg::DECLINE,
            0x9,
            vec![pfx("2001:db8:100::", 56, 0)],
        );
        d.src = "fe80::bad".parse().unwrap();
        assert!(
            t.act(&d, &ifaces(), 1001).is_empty(),
            "a Decline from another host changes nothing"
        );
        assert_eq!(t.stats.foreign_releases, 1);
        d.src = client();
        assert_eq!(
            installed(&t.act(&d, &ifaces(), 1001)),
            ["remove 2001:db8:100::/56 declined"]
        );
    }

    #[test]
    fn renewal_with_new_prefix_replaces_old() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        let a = t.act(&reply(vec![pfx("2001:db8:200::", 56, 60)]), &ifaces(), 1010);
        assert_eq!(
            installed(&a),
            [
                "remove 2001:db8:100::/56 replaced",
                "install 2001:db8:200::/56 via fe80::1c2d:3eff:fe4f:5a6b dev lan0"
            ]
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn other_ia_of_same_client_is_kept() {
        let mut t = Table::new();
        let mut p2 = pfx("2001:db8:200::", 56, 60);
        p2.iaid = 2;
        t.act(
            &reply(vec![pfx("2001:db8:100::", 56, 60), p2]),
            &ifaces(),
            1000,
        );
        let a = t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1010);
        assert_eq!(installed(&a), ["refresh 2001:db8:100::/56 valid 60"]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn next_hop_change_reinstalls() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1000);
        let mut r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        r.dst = "fe80::99".parse().unwrap();
        assert_eq!(
            installed(&t.act(&r, &ifaces(), 1001)),
            ["install 2001:db8:100::/56 via fe80::99 dev lan0"]
        );
    }

    #[test]
    fn reply_from_downstream_client_is_ignored() {
        let mut t = Table::new();
        let mut r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        r.hook = hook::XDP_INGRESS;
        assert!(t.act(&r, &ifaces(), 1000).is_empty());
        assert_eq!(t.stats.untrusted_replies, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn relay_reply_from_upstream_routes_to_outer_peer() {
        let mut t = Table::new();
        let mut r = message(
            hook::XDP_INGRESS,
            UP,
            msg::REPLY,
            5,
            vec![pfx("2001:db8:c000::", 56, 60)],
        );
        r.outer_msg_type = msg::RELAY_REPL;
        r.relay_depth = 1;
        r.link_addr = "2001:db8:ffff::1".parse().unwrap();
        r.outer_peer_addr = "fe80::77".parse().unwrap();
        assert_eq!(
            installed(&t.act(&r, &ifaces(), 1)),
            ["install 2001:db8:c000::/56 via fe80::77 dev lan0"]
        );
        // An unmapped link-address changes nothing.
        r.link_addr = "2001:db8:eeee::1".parse().unwrap();
        r.prefixes = vec![pfx("2001:db8:d000::", 56, 60)];
        assert!(t.act(&r, &ifaces(), 1).is_empty());
        assert_eq!(t.stats.relay_reply_unmapped, 1);
        // A stale on-link entry (its interface recreated under another
        // index, its addresses not re-read yet) maps to no managed
        // interface: nothing routed, no panic.
        let mut stale = ifaces();
        stale
            .downstream_prefixes
            .push((99, "2001:db8:eeee::/64".parse().unwrap()));
        assert!(t.act(&r, &stale, 1).is_empty());
        assert_eq!(t.stats.relay_reply_unmapped, 2);
    }

    /// Through two relays, this host's layer names the lower relay as its
    /// peer and the innermost link-address a link beyond it: the route
    /// goes via the lower relay on the link it is on.
    #[test]
    fn relay_reply_through_two_relays_routes_to_the_lower_relay() {
        let mut t = Table::new();
        let mut r = message(
            hook::XDP_INGRESS,
            UP,
            msg::REPLY,
            5,
            vec![pfx("2001:db8:c000::", 56, 60)],
        );
        r.outer_msg_type = msg::RELAY_REPL;
        r.relay_depth = 2;
        r.link_addr = "2001:db8:77::1".parse().unwrap();
        r.outer_peer_addr = "2001:db8:ffff::9".parse().unwrap();
        assert_eq!(
            installed(&t.act(&r, &ifaces(), 1)),
            ["install 2001:db8:c000::/56 via 2001:db8:ffff::9 dev lan0"]
        );
    }

    #[test]
    fn plain_reply_from_upstream_to_another_host_is_ignored() {
        let mut t = Table::new();
        let r = message(
            hook::XDP_INGRESS,
            UP,
            msg::REPLY,
            5,
            vec![pfx("2001:db8:c000::", 56, 60)],
        );
        assert!(t.act(&r, &ifaces(), 1).is_empty());
        assert_eq!(t.stats.upstream_replies, 1);
    }

    fn acquired_reply(prefixes: Vec<PrefixInfo>) -> (Message, Ifaces) {
        let mut i = ifaces();
        let me: Ipv6Addr = "fe80::b0:1".parse().unwrap();
        i.local_addrs.insert(me);
        let mut r = message(hook::XDP_INGRESS, UP, msg::REPLY, 5, prefixes);
        r.dst = me;
        r.src = "fe80::15b".parse().unwrap();
        (r, i)
    }

    #[test]
    fn reply_to_this_host_is_acquired() {
        let mut t = Table::new();
        let (r, i) = acquired_reply(vec![pfx("2001:db8:1000::", 56, 60)]);
        let a = t.act(&r, &i, 1);
        assert_eq!(
            installed(&a),
            ["install 2001:db8:1000::/56 via fe80::15b dev wan0"]
        );
        let b = t.iter().next().unwrap();
        assert_eq!((b.kind, b.expires_at), (Kind::Acquired, Some(61)));
        assert_eq!(t.stats.acquired_replies, 1);
        // Renewed like any binding, and expires like one.
        let a = t.act(&r, &i, 30);
        assert_eq!(installed(&a), ["refresh 2001:db8:1000::/56 valid 60"]);
        assert_eq!(
            installed(&t.expire(90)),
            ["remove 2001:db8:1000::/56 expired"]
        );
    }

    #[test]
    fn own_release_going_upstream_releases_acquired() {
        let mut t = Table::new();
        let (r, i) = acquired_reply(vec![pfx("2001:db8:1000::", 56, 60)]);
        t.act(&r, &i, 1);
        let rel = message(
            hook::TC_EGRESS,
            UP,
            msg::RELEASE,
            0x42,
            vec![pfx("2001:db8:1000::", 56, 0)],
        );
        assert!(t.act(&rel, &i, 2).is_empty());
        let (mut ok, _) = acquired_reply(vec![]);
        ok.xid = 0x42;
        assert_eq!(
            installed(&t.act(&ok, &i, 3)),
            ["remove 2001:db8:1000::/56 released"]
        );
    }

    #[test]
    fn error_status_and_multicast_next_hop_are_ignored() {
        let mut t = Table::new();
        let mut r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        r.status = 2;
        assert!(t.act(&r, &ifaces(), 1).is_empty());
        let mut r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        r.dst = "ff02::1:2".parse().unwrap();
        assert!(t.act(&r, &ifaces(), 1).is_empty());
        let mut r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        r.prefixes[0].ia_status = status::NO_PREFIX_AVAIL;
        assert!(t.act(&r, &ifaces(), 1).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn replacement_only_looks_at_the_same_duid_and_iaid() {
        // DUIDs where one is a prefix of the other sort next to each other.
        let mut t = Table::new();
        let mut a = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        a.client_duid = vec![1, 2];
        let mut b = reply(vec![pfx("2001:db8:200::", 56, 60)]);
        b.client_duid = vec![1, 2, 3];
        b.dst = "fe80::2".parse().unwrap();
        t.act(&a, &ifaces(), 1);
        t.act(&b, &ifaces(), 1);
        let mut a2 = reply(vec![pfx("2001:db8:300::", 56, 60)]);
        a2.client_duid = vec![1, 2];
        let acts = installed(&t.act(&a2, &ifaces(), 2));
        assert_eq!(
            acts,
            [
                "remove 2001:db8:100::/56 replaced",
                "install 2001:db8:300::/56 via fe80::1c2d:3eff:fe4f:5a6b dev lan0"
            ]
        );
        assert_eq!(t.len(), 2);
        // Expiry order follows the index.
        assert_eq!(t.next_deadline(), Some(61));
        assert_eq!(
            installed(&t.expire(61)),
            ["remove 2001:db8:200::/56 expired"]
        );
        assert_eq!(t.next_deadline(), Some(62));
    }

    #[test]
    fn forged_release_from_another_host_removes_nothing() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1);
        let mut rel = message(
            hook::XDP_INGRESS,
            DOWN,
            msg::RELEASE,
            0x31,
            vec![pfx("2001:db8:100::", 56, 0)],
        );
        rel.src = "fe80::bad".parse().unwrap(); // same DUID, another host
        t.act(&rel, &ifaces(), 2);
        let mut ok = reply(vec![]);
        ok.xid = 0x31;
        assert!(t.act(&ok, &ifaces(), 3).is_empty());
        assert_eq!((t.len(), t.stats.foreign_releases), (1, 1));
        // Relayed: the innermost peer-address is the client.
        let mut rel = message(
            hook::XDP_INGRESS,
            DOWN,
            msg::RELEASE,
            0x32,
            vec![pfx("2001:db8:100::", 56, 0)],
        );
        rel.relay_depth = 1;
        rel.peer_addr = client();
        t.act(&rel, &ifaces(), 4);
        let mut ok = reply(vec![]);
        ok.xid = 0x32;
        assert_eq!(
            installed(&t.act(&ok, &ifaces(), 5)),
            ["remove 2001:db8:100::/56 released"]
        );
    }

    #[test]
    fn reply_must_answer_a_client_message_when_required() {
        let mut t = Table::new();
        t.policy.require_client_message = true;
        // Unsolicited (forged or replayed): nothing.
        assert!(t
            .act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1)
            .is_empty());
        assert_eq!(t.stats.unsolicited_replies, 1);
        // A Request with that xid and Client-ID, then the Reply: installed.
        let mut req = message(hook::XDP_INGRESS, DOWN, msg::REQUEST, 0x1234, vec![]);
        req.src = client();
        assert!(t.act(&req, &ifaces(), 2).is_empty());
        assert_eq!(
            t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 3)
                .len(),
            1
        );
        // A retransmitted Reply within the window still counts.
        assert_eq!(
            t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 4)
                .len(),
            1
        );
        // Once the window has passed, a replay does not.
        t.expire(3 + CLIENT_MESSAGE_WINDOW_SECS + 1);
        assert!(t
            .act(
                &reply(vec![pfx("2001:db8:100::", 56, 60)]),
                &ifaces(),
                3 + CLIENT_MESSAGE_WINDOW_SECS + 1
            )
            .is_empty());
        // Another client's xid does not open the door.
        let mut req = message(hook::XDP_INGRESS, DOWN, msg::RENEW, 0x1234, vec![]);
        req.client_duid = vec![9];
        t.act(&req, &ifaces(), 100);
        assert!(t
            .act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 101)
            .is_empty());
    }

    #[test]
    fn prefixes_outside_allow_are_refused() {
        let mut t = Table::new();
        t.policy.allow = vec!["2001:db8:100::/40".parse().unwrap()];
        let out = t.handle(
            &reply(vec![
                pfx("2001:db8:100::", 56, 60),
                pfx("2001:db8:9900::", 56, 60),
            ]),
            &ifaces(),
            1,
            false,
        );
        assert_eq!(
            installed(&out.actions),
            ["install 2001:db8:100::/56 via fe80::1c2d:3eff:fe4f:5a6b dev lan0"]
        );
        assert_eq!(t.stats.not_allowed, 1);
        assert_eq!(
            out.refusals,
            [Refusal {
                prefix: "2001:db8:9900::/56".parse().unwrap(),
                reason: "outside --allow"
            }]
        );
    }

    /// Deferring: an unsolicited Reply is neither counted nor refused, and
    /// applies once its client message has been seen.
    #[test]
    fn an_unsolicited_reply_can_be_deferred() {
        let mut t = Table::new();
        t.policy.require_client_message = true;
        let r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        let out = t.handle(&r, &ifaces(), 1, true);
        assert!(out.deferred && out.actions.is_empty() && out.refusals.is_empty());
        assert_eq!(t.stats.unsolicited_replies, 0);
        let out = t.handle(&r, &ifaces(), 1, false);
        assert!(!out.deferred && out.actions.is_empty());
        assert_eq!(out.refusals.len(), 1);
        assert_eq!(t.stats.unsolicited_replies, 1);
        let mut req = message(hook::XDP_INGRESS, DOWN, msg::REQUEST, 0x1234, vec![]);
        req.src = client();
        t.handle(&req, &ifaces(), 2, true);
        assert_eq!(
            installed(&t.handle(&r, &ifaces(), 3, true).actions).len(),
            1
        );
    }

    #[test]
    fn max_bindings_per_iface_caps_new_ones_but_renews_old_ones() {
        let mut t = Table::new();
        t.policy.max_bindings_per_iface = Some(1);
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1);
        let mut other = reply(vec![pfx("2001:db8:200::", 56, 60)]);
        other.client_duid = vec![7];
        other.dst = "fe80::7".parse().unwrap();
        assert!(t.act(&other, &ifaces(), 2).is_empty());
        assert_eq!(t.stats.limit_reached, 1);
        // The existing binding still renews.
        assert_eq!(
            installed(&t.act(&reply(vec![pfx("2001:db8:100::", 56, 90)]), &ifaces(), 3)),
            ["refresh 2001:db8:100::/56 valid 90"]
        );
        // After it is gone, there is room again.
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 0)]), &ifaces(), 4);
        assert_eq!(t.act(&other, &ifaces(), 5).len(), 1);
    }

    #[test]
    fn next_hop_must_be_link_local_or_on_link() {
        let mut t = Table::new();
        let mut r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        r.dst = "2001:db8:ffff::77".parse().unwrap(); // on-link on lan0
        assert_eq!(t.act(&r, &ifaces(), 1).len(), 1);
        let mut r = reply(vec![pfx("2001:db8:200::", 56, 60)]);
        r.dst = "2001:db8:5555::1".parse().unwrap(); // nowhere near lan0
        assert!(t.act(&r, &ifaces(), 1).is_empty());
        assert_eq!(t.stats.bad_next_hop, 1);
    }

    #[test]
    fn host_bits_are_masked() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::1", 56, 60)]), &ifaces(), 1);
        assert_eq!(
            t.iter().next().unwrap().prefix.to_string(),
            "2001:db8:100::/56"
        );
    }

    #[test]
    fn same_prefix_to_new_client_replaces_old_owner() {
        let mut t = Table::new();
        t.act(&reply(vec![pfx("2001:db8:100::", 56, 60)]), &ifaces(), 1);
        let mut r = reply(vec![pfx("2001:db8:100::", 56, 60)]);
        r.client_duid = vec![1, 2, 3];
        r.dst = "fe80::2".parse().unwrap();
        let a = installed(&t.act(&r, &ifaces(), 2));
        assert_eq!(
            a,
            [
                "remove 2001:db8:100::/56 replaced",
                "install 2001:db8:100::/56 via fe80::2 dev lan0"
            ]
        );
        assert_eq!(t.len(), 1);
    }
}
