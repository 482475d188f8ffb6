//! The link monitor: managed interfaces appearing, changing (up, down,
//! recreated under the same name) or going away, and their IPv6 addresses
//! changing, from rtnetlink's link and address groups.

use futures::StreamExt;
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{
        link::{LinkAttribute, LinkFlags, LinkMessage},
        RouteNetlinkMessage,
    },
    MulticastGroup,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::route::RouteError;

/// A link appearing, changing or going away, or its addresses changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (RTM_NEWLINK).
    Changed {
        index: u32,
        /// IFLA_IFNAME, when the message carries it.
        name: Option<String>,
        /// Administratively up and running.
        up: bool,
        /// The link's `ARPHRD_*` type.
        link_type: u16,
    },
    /// A link went away (RTM_DELLINK).
    Deleted { index: u32 },
    /// An IPv6 address was added to or removed from the link.
    Address { index: u32 },
}

impl LinkEvent {
    /// The event a link or address message stands for, if any.
    fn of(m: RouteNetlinkMessage) -> Option<Self> {
        Some(match m {
            RouteNetlinkMessage::NewLink(l) => {
                let f = l.header.flags;
                LinkEvent::Changed {
                    index: l.header.index,
                    name: name(&l),
                    up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::Running),
                    link_type: u16::from(l.header.link_layer_type),
                }
            }
            RouteNetlinkMessage::DelLink(l) => LinkEvent::Deleted {
                index: l.header.index,
            },
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                LinkEvent::Address {
                    index: a.header.index,
                }
            }
            _ => return None,
        })
    }
}

fn name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Every link change and IPv6 address change in this namespace.
pub fn link_events() -> Result<UnboundedReceiver<LinkEvent>, RouteError> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Ipv6Ifaddr])
            .map_err(RouteError::Socket)?;
    tokio::spawn(conn);
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        while let Some((m, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(m) = m.payload else {
                continue;
            };
            if let Some(ev) = LinkEvent::of(m) {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}
