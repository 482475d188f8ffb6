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
}

impl Routes {
    /// Open a netlink connection (its task runs on the current runtime).
    pub fn new(proto: u8) -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(conn);
        Ok(Routes { handle, proto })
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

    /// Every IPv6 address on this host: (ifindex, address, prefix length).
    pub async fn addresses(&self) -> Result<Vec<(u32, Ipv6Addr, u8)>, RouteError> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(RouteError::Dump)? {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V6(v6)) = a {
                    out.push((m.header.index, *v6, m.header.prefix_len));
                }
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
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(RouteError::Socket)?;
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
                    })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => Some(LinkEvent {
                    index: l.header.index,
                    name: name(&l),
                    up: false,
                    deleted: true,
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
