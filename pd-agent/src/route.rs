//! Kernel routes over rtnetlink: `prefix via next-hop dev iface proto N`,
//! installed with replace semantics and always tagged with our protocol
//! number, so we can find (and only ever touch) our own routes.

use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::Ipv6Net;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
    },
    Handle, RouteMessageBuilder,
};

/// Default protocol number (unassigned in /etc/iproute2/rt_protos).
pub const DEFAULT_PROTO: u8 = 99;
const MAIN_TABLE: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("adding route {prefix} via {next_hop} dev ifindex {ifindex}")]
    Add {
        prefix: Ipv6Net,
        next_hop: Ipv6Addr,
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("deleting route {prefix}")]
    Del {
        prefix: Ipv6Net,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("dumping routes")]
    Dump(#[source] rtnetlink::Error),
}

/// One route change for [`Routes::batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// `ip route replace prefix via next_hop dev ifindex proto N`.
    Replace(Ipv6Net, Ipv6Addr, u32),
    /// Delete our route for the prefix (through that next hop and
    /// interface when given); one already gone is not an error.
    Delete(Ipv6Net, Option<Ipv6Addr>, Option<u32>),
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

    /// Send `msgs` (one sendmsg per [`BATCH`]) and collect each one's
    /// errno (0: done).
    fn run(&mut self, msgs: Vec<(RouteMessage, bool)>) -> std::io::Result<Vec<i32>> {
        use rtnetlink::{
            packet_core::{
                NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
                NLM_F_REPLACE, NLM_F_REQUEST,
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
            for (i, (m, replace)) in msgs.by_ref().take(BATCH) {
                self.seq = self.seq.wrapping_add(1);
                let mut h = NetlinkHeader::default();
                h.sequence_number = self.seq;
                h.flags = NLM_F_REQUEST | NLM_F_ACK;
                let payload = if replace {
                    h.flags |= NLM_F_CREATE | NLM_F_REPLACE;
                    RouteNetlinkMessage::NewRoute(m)
                } else {
                    RouteNetlinkMessage::DelRoute(m)
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
                let mut off = 0;
                while off + 20 <= n {
                    let b = &self.rx[off..n];
                    let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                    let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
                    let seq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
                    if len < 16 || off + len > n {
                        break;
                    }
                    if ty == 2 {
                        let errno = -i32::from_ne_bytes(b[16..20].try_into().unwrap());
                        let k = seq.wrapping_sub(first_seq) as usize;
                        if k < idx.len() {
                            results[idx[k]] = errno;
                            acked += 1;
                        }
                    }
                    off += (len + 3) & !3;
                }
            }
        }
        Ok(results)
    }
}

/// A route of ours as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub prefix: Ipv6Net,
    pub next_hop: Option<Ipv6Addr>,
    pub ifindex: Option<u32>,
}

#[derive(Clone)]
pub struct Routes {
    handle: Handle,
    proto: u8,
    batch: std::sync::Arc<std::sync::Mutex<BatchSocket>>,
}

impl Routes {
    /// Open a netlink connection (its task runs on the current runtime).
    pub fn new(proto: u8) -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(conn);
        let batch = std::sync::Arc::new(std::sync::Mutex::new(
            BatchSocket::new().map_err(RouteError::Socket)?,
        ));
        Ok(Routes {
            handle,
            proto,
            batch,
        })
    }

    /// Carry out `changes` in order, batched (several per sendmsg, on a
    /// blocking thread). Returns each failure with its errno's text.
    pub async fn batch(&self, changes: Vec<RouteChange>) -> Vec<(RouteChange, String)> {
        if changes.is_empty() {
            return vec![];
        }
        let msgs: Vec<(RouteMessage, bool)> = changes
            .iter()
            .map(|c| match *c {
                RouteChange::Replace(p, nh, i) => (
                    self.message(p).gateway(nh).output_interface(i).build(),
                    true,
                ),
                RouteChange::Delete(p, nh, i) => {
                    let mut b = self.message(p);
                    if let Some(nh) = nh {
                        b = b.gateway(nh);
                    }
                    if let Some(i) = i {
                        b = b.output_interface(i);
                    }
                    (b.build(), false)
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
                .map(|c| (c, format!("netlink: {e}")))
                .collect(),
            Ok(errnos) => changes
                .into_iter()
                .zip(errnos)
                .filter(|(c, e)| {
                    *e != 0
                        && !(matches!(c, RouteChange::Delete(..))
                            && matches!(*e, libc::ESRCH | libc::ENOENT | libc::ENODEV))
                })
                .map(|(c, e)| {
                    let what = match c {
                        RouteChange::Replace(p, nh, i) => {
                            format!("adding route {p} via {nh} dev ifindex {i}")
                        }
                        RouteChange::Delete(p, ..) => format!("deleting route {p}"),
                    };
                    (
                        c,
                        format!("{what}: {}", std::io::Error::from_raw_os_error(e)),
                    )
                })
                .collect(),
        }
    }

    pub fn proto(&self) -> u8 {
        self.proto
    }

    fn message(&self, prefix: Ipv6Net) -> RouteMessageBuilder<Ipv6Addr> {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .protocol(RouteProtocol::from(self.proto))
            .table_id(MAIN_TABLE)
    }

    pub async fn replace(
        &self,
        prefix: Ipv6Net,
        next_hop: Ipv6Addr,
        ifindex: u32,
    ) -> Result<(), RouteError> {
        let msg = self
            .message(prefix)
            .gateway(next_hop)
            .output_interface(ifindex)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Add {
                prefix,
                next_hop,
                ifindex,
                source,
            })
    }

    /// Delete our route for `prefix` through `next_hop`/`ifindex`. A route
    /// that is already gone is not an error.
    pub async fn delete(
        &self,
        prefix: Ipv6Net,
        next_hop: Option<Ipv6Addr>,
        ifindex: Option<u32>,
    ) -> Result<(), RouteError> {
        let mut b = self.message(prefix);
        if let Some(nh) = next_hop {
            b = b.gateway(nh);
        }
        if let Some(i) = ifindex {
            b = b.output_interface(i);
        }
        match self.handle.route().del(b.build()).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(-e.raw_code(), libc::ESRCH | libc::ENOENT | libc::ENODEV) =>
            {
                Ok(())
            }
            Err(source) => Err(RouteError::Del { prefix, source }),
        }
    }

    /// The `ARPHRD_*` type of interface `ifindex`.
    pub async fn link_type(&self, ifindex: u32) -> Result<u16, RouteError> {
        let mut s = self.handle.link().get().match_index(ifindex).execute();
        match s.try_next().await.map_err(RouteError::Dump)? {
            Some(m) => Ok(u16::from(m.header.link_layer_type)),
            None => Err(RouteError::Dump(rtnetlink::Error::RequestFailed)),
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

    /// Every IPv6 route in the main table carrying our protocol number.
    pub async fn dump_ours(&self) -> Result<Vec<KernelRoute>, RouteError> {
        let req = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut stream = self.handle.route().get(req).execute();
        let mut out = Vec::new();
        while let Some(m) = stream.try_next().await.map_err(RouteError::Dump)? {
            if let Some(r) = self.ours(&m) {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn ours(&self, m: &RouteMessage) -> Option<KernelRoute> {
        if u8::from(m.header.protocol) != self.proto {
            return None;
        }
        let mut dst = Ipv6Addr::UNSPECIFIED;
        let mut next_hop = None;
        let mut ifindex = None;
        let mut table = m.header.table as u32;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => next_hop = Some(*g),
                RouteAttribute::Oif(i) => ifindex = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if table != MAIN_TABLE {
            return None;
        }
        let prefix = Ipv6Net::new(dst, m.header.destination_prefix_length).ok()?;
        Some(KernelRoute {
            prefix,
            next_hop,
            ifindex,
        })
    }
}

/// Up/down changes of interfaces: (ifindex, up). A link counts as up when
/// it is administratively up and running.
/// A link appearing, changing or going away.
#[derive(Debug, Clone)]
pub struct LinkEvent {
    pub index: u32,
    /// IFLA_IFNAME, when the message carries it.
    pub name: Option<String>,
    /// Up and running.
    pub up: bool,
    pub deleted: bool,
    /// Not a link change: an IPv6 address was added or removed on `index`.
    pub address: bool,
    /// The link's `ARPHRD_*` type (link messages only).
    pub link_type: u16,
}

pub fn link_events() -> Result<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>, RouteError> {
    use futures::StreamExt;
    use rtnetlink::{
        packet_core::NetlinkPayload,
        packet_route::{
            link::{LinkAttribute, LinkFlags, LinkMessage},
            RouteNetlinkMessage,
        },
        MulticastGroup,
    };
    fn name(l: &LinkMessage) -> Option<String> {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
    }
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Ipv6Ifaddr])
            .map_err(RouteError::Socket)?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((m, _)) = messages.next().await {
            let ev = match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    let f = l.header.flags;
                    Some(LinkEvent {
                        index: l.header.index,
                        name: name(&l),
                        up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::Running),
                        deleted: false,
                        address: false,
                        link_type: u16::from(l.header.link_layer_type),
                    })
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a),
                ) => Some(LinkEvent {
                    index: a.header.index,
                    name: None,
                    up: false,
                    deleted: false,
                    address: true,
                    link_type: 0,
                }),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => Some(LinkEvent {
                    index: l.header.index,
                    name: name(&l),
                    up: false,
                    deleted: true,
                    address: false,
                    link_type: u16::from(l.header.link_layer_type),
                }),
                _ => None,
            };
            if let Some(ev) = ev {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}
