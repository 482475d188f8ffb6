//! Kernel routes over rtnetlink: `prefix via next-hop dev iface proto N
//! metric M` for a delegated prefix, `unreachable prefix proto N metric
//! M` for an acquired one (RFC 7084 WPD-5), always tagged with our protocol number and metric, so that we
//! find, and only ever touch, our own routes. A route is added exclusively
//! (the kernel refuses it if any route already holds that prefix, table
//! and metric), replaced only where ours is, and deleted by protocol and
//! metric; another protocol's route is never overwritten or removed.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use futures::TryStreamExt;
use ipnet::Ipv6Net;
use rtnetlink::{
    packet_core::{Emitable, NLM_F_DUMP},
    packet_route::{
        address::AddressAttribute,
        route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType},
        AddressFamily,
    },
    Handle, RouteMessageBuilder,
};

use crate::netlink::{NlError, NlSocket};

/// Default protocol number: neither the kernel's UAPI (RTPROT_*) nor
/// iproute2's rt_protos names 57.
pub const DEFAULT_PROTO: u8 = 57;
/// The number pd-agent used before: RTPROT_OPENR to the kernel and
/// iproute2 (`proto openr`). Routes of ours carrying it are taken over at
/// start (see `Agent::reconcile`).
pub const FORMER_PROTO: u8 = 99;
/// Default metric: the kernel's own for IPv6 routes given without one.
pub const DEFAULT_METRIC: u32 = 1024;
const MAIN_TABLE: u32 = 254;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
/// `RTNLGRP_IPV6_ROUTE`: every IPv6 route change.
const RTNLGRP_IPV6_ROUTE: u32 = 11;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("dumping routes")]
    Dump(#[source] rtnetlink::Error),
    #[error("reading the routing table")]
    Table(#[source] NlError),
    #[error("listening to route changes")]
    Listen(#[source] NlError),
    #[error("interface with index {0} not found")]
    NoLink(u32),
}

/// Where a route of ours sends its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A delegated prefix: via the requesting router's address, on the
    /// link it was delegated on.
    Via(Ipv6Addr, u32),
    /// An acquired prefix (RFC 7084 WPD-5): what no more specific route
    /// claims is answered with ICMPv6 Destination Unreachable, instead of
    /// following the default route back upstream, where the upstream
    /// router's route for the prefix sends it here again.
    Unreachable,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Via(nh, i) => write!(f, "via {nh} dev ifindex {i}"),
            Target::Unreachable => write!(f, "unreachable"),
        }
    }
}

/// A route's type, of those we tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteKind {
    #[default]
    Unicast,
    Unreachable,
    Blackhole,
    Prohibit,
    Throw,
    Other,
}

impl From<RouteType> for RouteKind {
    fn from(t: RouteType) -> Self {
        match t {
            RouteType::Unicast | RouteType::Unspec => RouteKind::Unicast,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Prohibit => RouteKind::Prohibit,
            RouteType::Throw => RouteKind::Throw,
            _ => RouteKind::Other,
        }
    }
}

/// One route change for [`Routes::batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Add our route; the kernel refuses it (EEXIST) while any route holds
    /// the same prefix, table and metric.
    Add(Ipv6Net, Target),
    /// Replace the route at our prefix, table and metric: only where the
    /// route there is known to be ours.
    Replace(Ipv6Net, Target),
    /// Delete our route for the prefix at that metric (through that next
    /// hop and interface when given); one already gone is not an error. The
    /// protocol and metric are part of the request, so another's route
    /// never matches.
    Delete(Ipv6Net, Option<Ipv6Addr>, Option<u32>, u32),
}

impl RouteChange {
    /// The delete of our route for `prefix` to `t`: through its next hop
    /// and interface where known; an unreachable route by protocol and
    /// metric alone (the kernel keeps it on `lo`).
    pub fn delete(prefix: Ipv6Net, t: Target, metric: u32) -> RouteChange {
        match t {
            Target::Via(nh, i) => RouteChange::Delete(
                prefix,
                (!nh.is_unspecified()).then_some(nh),
                (i != 0).then_some(i),
                metric,
            ),
            Target::Unreachable => RouteChange::Delete(prefix, None, None, metric),
        }
    }

    pub fn prefix(&self) -> Ipv6Net {
        match self {
            RouteChange::Add(p, ..) | RouteChange::Replace(p, ..) | RouteChange::Delete(p, ..) => {
                *p
            }
        }
    }
}

/// A change the kernel refused, with its errno.
#[derive(Debug, Clone)]
pub struct RouteFailure {
    pub change: RouteChange,
    pub errno: i32,
}

impl fmt::Display for RouteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let err = std::io::Error::from_raw_os_error(self.errno);
        match self.change {
            RouteChange::Add(p, t) | RouteChange::Replace(p, t) => {
                write!(f, "adding route {p} {t}: {err}")
            }
            RouteChange::Delete(p, ..) => write!(f, "deleting route {p}: {err}"),
        }
    }
}

/// Requests per sendmsg: about 80 bytes each, and 36-byte acks
/// (NETLINK_CAP_ACK) that the receive buffer holds easily.
const BATCH: usize = 512;

/// A plain rtnetlink socket for batches: many RTM_NEWROUTE/RTM_DELROUTE
/// requests in one sendmsg, which the kernel applies in order, acking
/// each. One syscall pair per [`BATCH`] routes instead of per route.
struct BatchSocket {
    sock: rtnetlink::sys::Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl BatchSocket {
    fn new() -> std::io::Result<Self> {
        use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.set_cap_ack(true)?;
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(BatchSocket {
            sock,
            seq: 0,
            rx: vec![0; 1 << 16],
        })
    }

    /// Send `msgs` (one sendmsg per [`BATCH`]) with their netlink flags and
    /// collect each one's errno (0: done).
    fn run(&mut self, msgs: Vec<(RouteMessage, u16)>) -> std::io::Result<Vec<i32>> {
        use rtnetlink::{
            packet_core::{
                NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_ERROR, NLM_F_ACK,
                NLM_F_REQUEST,
            },
            packet_route::RouteNetlinkMessage,
        };
        let mut results = vec![0i32; msgs.len()];
        let mut msgs = msgs.into_iter().enumerate().peekable();
        let mut buf = Vec::with_capacity(BATCH * 96);
        while msgs.peek().is_some() {
            buf.clear();
            let first_seq = self.seq.wrapping_add(1);
            let mut idx = Vec::with_capacity(BATCH);
            for (i, (m, flags)) in msgs.by_ref().take(BATCH) {
                self.seq = self.seq.wrapping_add(1);
                let mut h = NetlinkHeader::default();
                h.sequence_number = self.seq;
                h.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
                let payload = if flags == 0 {
                    RouteNetlinkMessage::DelRoute(m)
                } else {
                    RouteNetlinkMessage::NewRoute(m)
                };
                let mut nl = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(payload));
                nl.finalize();
                let at = buf.len();
                buf.resize(at + nl.buffer_len(), 0);
                nl.serialize(&mut buf[at..]);
                idx.push(i);
            }
            self.sock.send(&buf, 0)?;
            // Every request is acked (NLMSG_ERROR, errno 0 on success).
            let mut acked = 0;
            while acked < idx.len() {
                let n = self.sock.recv(&mut &mut self.rx[..], 0)?;
                for msg in crate::netlink::messages(&self.rx[..n]) {
                    // A malformed message ends what this datagram can tell.
                    let Ok(msg) = msg else { break };
                    if msg.message_type() != NLMSG_ERROR {
                        continue;
                    }
                    let Some(code) = msg
                        .payload()
                        .get(0..4)
                        .and_then(|c| <[u8; 4]>::try_from(c).ok())
                    else {
                        continue;
                    };
                    let k = msg.sequence_number().wrapping_sub(first_seq) as usize;
                    if k < idx.len() {
                        results[idx[k]] = i32::from_ne_bytes(code).wrapping_neg();
                        acked += 1;
                    }
                }
            }
        }
        Ok(results)
    }
}

/// A route as the kernel has it (main table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub prefix: Ipv6Net,
    /// Its type: a reject route (unreachable, blackhole, prohibit) has no
    /// next hop, and the kernel shows it on `lo`.
    pub kind: RouteKind,
    pub next_hop: Option<Ipv6Addr>,
    pub ifindex: Option<u32>,
    /// Protocol of the route, or of a multipath group's first next hop.
    pub proto: u8,
    pub metric: u32,
    /// The next hops of a multipath (ECMP) group: routes of the same
    /// prefix and metric that someone appended beside each other, each
    /// with its own protocol. Empty for a plain route.
    pub multipath: Vec<(Option<Ipv6Addr>, u32)>,
}

impl KernelRoute {
    /// Where it sends its prefix, if it is a route of a kind we make: a
    /// single next hop, or unreachable.
    pub fn target(&self) -> Option<Target> {
        if !self.multipath.is_empty() {
            return None;
        }
        match (self.kind, self.next_hop, self.ifindex) {
            (RouteKind::Unreachable, None, _) => Some(Target::Unreachable),
            (RouteKind::Unicast, Some(nh), Some(i)) => Some(Target::Via(nh, i)),
            _ => None,
        }
    }

    /// Deletes that remove this route if it is ours, and never another's:
    /// a multipath group is deleted one next hop at a time, each with its
    /// gateway, so the kernel checks each one's protocol (a delete without
    /// gateway would take the whole group).
    pub fn deletes(&self) -> Vec<RouteChange> {
        if self.multipath.is_empty() {
            vec![RouteChange::Delete(
                self.prefix,
                self.next_hop,
                self.ifindex,
                self.metric,
            )]
        } else {
            self.multipath
                .iter()
                .filter(|(gw, _)| gw.is_some())
                .map(|(gw, i)| RouteChange::Delete(self.prefix, *gw, Some(*i), self.metric))
                .collect()
        }
    }
}

impl fmt::Display for KernelRoute {
    /// As `ip -6 route` prints it (interfaces by name where known).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dev = |f: &mut fmt::Formatter<'_>, i: u32| match if_name(i) {
            Some(n) => write!(f, " dev {n}"),
            None => write!(f, " dev ifindex {i}"),
        };
        match self.kind {
            RouteKind::Unicast => {}
            RouteKind::Unreachable => write!(f, "unreachable ")?,
            RouteKind::Blackhole => write!(f, "blackhole ")?,
            RouteKind::Prohibit => write!(f, "prohibit ")?,
            RouteKind::Throw => write!(f, "throw ")?,
            RouteKind::Other => write!(f, "(type other) ")?,
        }
        write!(f, "{}", self.prefix)?;
        if let Some(nh) = self.next_hop {
            write!(f, " via {nh}")?;
        }
        if let Some(i) = self.ifindex {
            dev(f, i)?;
        }
        write!(
            f,
            " proto {} metric {}",
            proto_name(self.proto),
            self.metric
        )?;
        for (gw, i) in &self.multipath {
            write!(f, " nexthop")?;
            if let Some(gw) = gw {
                write!(f, " via {gw}")?;
            }
            dev(f, *i)?;
        }
        Ok(())
    }
}

/// iproute2's names for the protocols the kernel UAPI defines.
fn proto_name(p: u8) -> String {
    match p {
        1 => "redirect".into(),
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        8 => "gated".into(),
        9 => "ra".into(),
        10 => "mrt".into(),
        11 => "zebra".into(),
        12 => "bird".into(),
        16 => "dhcp".into(),
        42 => "babel".into(),
        186 => "bgp".into(),
        187 => "isis".into(),
        188 => "ospf".into(),
        189 => "rip".into(),
        192 => "eigrp".into(),
        n => n.to_string(),
    }
}

/// The name of interface `i`, if it has one.
pub(crate) fn if_name(i: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(i, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let c = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(c.to_string_lossy().into_owned())
}

/// The main-table IPv6 route a route message describes.
pub fn kernel_route(m: &RouteMessage) -> Option<KernelRoute> {
    if m.header.address_family != AddressFamily::Inet6 {
        return None;
    }
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut next_hop = None;
    let mut ifindex = None;
    let mut metric = 0;
    let mut table = m.header.table as u32;
    let mut multipath = Vec::new();
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => next_hop = Some(*g),
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    let gw = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(*g),
                        _ => None,
                    });
                    multipath.push((gw, h.interface_index));
                }
            }
            _ => {}
        }
    }
    if table != MAIN_TABLE {
        return None;
    }
    Some(KernelRoute {
        prefix: Ipv6Net::new(dst, m.header.destination_prefix_length).ok()?,
        kind: m.header.kind.into(),
        next_hop,
        ifindex,
        proto: u8::from(m.header.protocol),
        metric,
        multipath,
    })
}

#[derive(Clone)]
pub struct Routes {
    handle: Handle,
    proto: u8,
    metric: u32,
    batch: std::sync::Arc<std::sync::Mutex<BatchSocket>>,
    /// Filtered dumps and single-route lookups (strict checking on).
    table: std::sync::Arc<std::sync::Mutex<NlSocket>>,
}

impl Routes {
    /// Open a netlink connection (its task runs on the current runtime).
    pub fn new(proto: u8, metric: u32) -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(conn);
        let batch = std::sync::Arc::new(std::sync::Mutex::new(
            BatchSocket::new().map_err(RouteError::Socket)?,
        ));
        let table = NlSocket::open(rtnetlink::sys::protocols::NETLINK_ROUTE)
            .and_then(|s| s.strict())
            .map_err(RouteError::Table)?;
        Ok(Routes {
            handle,
            proto,
            metric,
            batch,
            table: std::sync::Arc::new(std::sync::Mutex::new(table)),
        })
    }

    pub fn proto(&self) -> u8 {
        self.proto
    }

    pub fn metric(&self) -> u32 {
        self.metric
    }

    /// Whether `r` is one of ours (protocol and metric).
    pub fn is_ours(&self, r: &KernelRoute) -> bool {
        r.proto == self.proto && r.metric == self.metric
    }

    /// Carry out `changes` in order, batched (several per sendmsg, on a
    /// blocking thread). Returns the changes the kernel refused.
    pub async fn batch(&self, changes: Vec<RouteChange>) -> Vec<RouteFailure> {
        use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
        if changes.is_empty() {
            return vec![];
        }
        let msgs: Vec<(RouteMessage, u16)> = changes
            .iter()
            .map(|c| match *c {
                RouteChange::Add(p, t) => (self.target_message(p, t), NLM_F_CREATE | NLM_F_EXCL),
                RouteChange::Replace(p, t) => {
                    (self.target_message(p, t), NLM_F_CREATE | NLM_F_REPLACE)
                }
                RouteChange::Delete(p, nh, i, metric) => {
                    let mut b = self.message_at(p, metric);
                    if let Some(nh) = nh {
                        b = b.gateway(nh);
                    }
                    if let Some(i) = i {
                        b = b.output_interface(i);
                    }
                    (b.build(), 0)
                }
            })
            .collect();
        let sock = self.batch.clone();
        let res = tokio::task::spawn_blocking(move || {
            sock.lock()
                .map_err(|_| std::io::Error::other("poisoned"))
                .and_then(|mut s| s.run(msgs))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match res {
            Err(e) => changes
                .into_iter()
                .map(|change| RouteFailure {
                    change,
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                })
                .collect(),
            Ok(errnos) => changes
                .into_iter()
                .zip(errnos)
                .filter(|(c, e)| {
                    *e != 0
                        && !(matches!(c, RouteChange::Delete(..))
                            && matches!(*e, libc::ESRCH | libc::ENOENT | libc::ENODEV))
                })
                .map(|(change, errno)| RouteFailure { change, errno })
                .collect(),
        }
    }

    /// Our route for `prefix` to `t`. An unreachable route takes neither
    /// gateway nor interface (the kernel puts it on `lo`); a delete needs
    /// neither to find it ([`RouteChange::Delete`] without them).
    fn target_message(&self, prefix: Ipv6Net, t: Target) -> RouteMessage {
        match t {
            Target::Via(nh, i) => self.message(prefix).gateway(nh).output_interface(i).build(),
            Target::Unreachable => self.message(prefix).kind(RouteType::Unreachable).build(),
        }
    }

    fn message(&self, prefix: Ipv6Net) -> RouteMessageBuilder<Ipv6Addr> {
        self.message_at(prefix, self.metric)
    }

    fn message_at(&self, prefix: Ipv6Net, metric: u32) -> RouteMessageBuilder<Ipv6Addr> {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .protocol(RouteProtocol::from(self.proto))
            .table_id(MAIN_TABLE)
            .priority(metric)
    }

    /// The `ARPHRD_*` type of interface `ifindex`.
    pub async fn link_type(&self, ifindex: u32) -> Result<u16, RouteError> {
        let mut s = self.handle.link().get().match_index(ifindex).execute();
        match s.try_next().await.map_err(RouteError::Dump)? {
            Some(m) => Ok(u16::from(m.header.link_layer_type)),
            None => Err(RouteError::NoLink(ifindex)),
        }
    }

    /// Every IPv6 address on this host: (ifindex, address, prefix length).
    /// On a point-to-point link (ppp) IFA_ADDRESS is the peer's address and
    /// IFA_LOCAL ours; elsewhere IFA_ADDRESS alone is ours.
    pub async fn addresses(&self) -> Result<Vec<(u32, Ipv6Addr, u8)>, RouteError> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(RouteError::Dump)? {
            let v6 = |a: &IpAddr| match a {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            };
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(a) => v6(a),
                _ => None,
            });
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(a) => v6(a),
                _ => None,
            });
            if let Some(a) = local.or(address) {
                out.push((m.header.index, a, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Every IPv6 route in the main table, of any protocol (at start).
    pub async fn dump_all(&self) -> Result<Vec<KernelRoute>, RouteError> {
        let req = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut stream = self.handle.route().get(req).execute();
        let mut out = Vec::new();
        while let Some(m) = stream.try_next().await.map_err(RouteError::Dump)? {
            out.extend(kernel_route(&m));
        }
        Ok(out)
    }

    /// Our routes (our protocol, any metric), filtered by the kernel
    /// (strict checking): the answer holds ours only, however big the
    /// table is.
    pub async fn dump_ours(&self) -> Result<Vec<KernelRoute>, RouteError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet6;
        req.header.protocol = RouteProtocol::from(self.proto);
        req.attributes.push(RouteAttribute::Table(MAIN_TABLE));
        let replies = self.request(req, NLM_F_DUMP).await?;
        Ok(replies
            .into_iter()
            .filter(|r| r.proto == self.proto)
            .collect())
    }

    /// The route the kernel uses for `prefix`'s first address (the most
    /// specific, then the lowest metric); `None` if nothing routes it.
    pub async fn best_route(&self, prefix: Ipv6Net) -> Result<Option<KernelRoute>, RouteError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet6;
        req.header.destination_prefix_length = 128;
        req.header.flags = RouteFlags::FibMatch;
        req.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(
                prefix.network(),
            )));
        match self.request(req, 0).await {
            Ok(r) => Ok(r.into_iter().next()),
            Err(RouteError::Table(e))
                if matches!(
                    e.errno(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENOENT)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// One RTM_GETROUTE on the strict socket, on a blocking thread (the
    /// event loop keeps running meanwhile).
    async fn request(&self, req: RouteMessage, flags: u16) -> Result<Vec<KernelRoute>, RouteError> {
        let mut buf = vec![0u8; req.buffer_len()];
        req.emit(&mut buf);
        let sock = self.table.clone();
        let replies = tokio::task::spawn_blocking(move || {
            let mut sock = sock
                .lock()
                .map_err(|_| RouteError::Socket(std::io::Error::other("poisoned")))?;
            sock.call(RTM_GETROUTE, flags, &buf)
                .map_err(RouteError::Table)
        })
        .await
        .map_err(|e| RouteError::Socket(std::io::Error::other(e)))??;
        use rtnetlink::packet_core::Parseable;
        Ok(replies
            .iter()
            .filter_map(|p| RouteMessage::parse(&p[..]).ok())
            .filter_map(|m| kernel_route(&m))
            .collect())
    }
}

/// A change the route monitor saw.
#[derive(Debug, Clone)]
pub enum RouteEvent {
    /// A main-table IPv6 route appeared or changed (`deleted`: went).
    Changed { route: KernelRoute, deleted: bool },
    /// The socket overran: changes were lost, read the table again.
    Overrun,
}

/// Every IPv6 route change in this namespace (`RTNLGRP_IPV6_ROUTE`), main
/// table only; an overrun (ENOBUFS) is reported as such. Routes of
/// protocol `ours` appearing are not reported: they are our own adds (the
/// periodic scan checks any other), and a burst of installs would
/// otherwise come back as as many events.
pub fn route_events(
    ours: u8,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<RouteEvent>, RouteError> {
    use crate::netlink::Heard;
    use rtnetlink::{packet_core::Parseable, sys::protocols::NETLINK_ROUTE};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    crate::netlink::subscribe(
        NETLINK_ROUTE,
        &[RTNLGRP_IPV6_ROUTE],
        Some(4 << 20),
        move |h| {
            let ev = match h {
                Heard::Overrun => RouteEvent::Overrun,
                Heard::Message(ty, payload) if ty == RTM_NEWROUTE || ty == RTM_DELROUTE => {
                    let Some(route) = RouteMessage::parse(payload)
                        .ok()
                        .and_then(|m| kernel_route(&m))
                    else {
                        return true;
                    };
                    if ty == RTM_NEWROUTE && route.proto == ours {
                        return true;
                    }
                    RouteEvent::Changed {
                        route,
                        deleted: ty == RTM_DELROUTE,
                    }
                }
                _ => return true,
            };
            tx.send(ev).is_ok()
        },
    )
    .map_err(RouteError::Listen)?;
    Ok(rx)
}

/// Whether this namespace forwards IPv6 (`net.ipv6.conf.all.forwarding`);
/// `None` if it cannot be read.
pub fn ipv6_forwarding() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
        .ok()
        .map(|s| s.trim() != "0")
}
