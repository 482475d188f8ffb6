//! xdp-features: which devices take XDP-redirected frames.
//!
//! The kernel announces, per device, what it does with XDP through the
//! `netdev` generic netlink family (Linux 6.3+; `include/uapi/linux/netdev.h`).
//! `NETDEV_XDP_ACT_NDO_XMIT` says a device takes frames redirected into it
//! (`ndo_xdp_xmit`). A veth sets it only while its peer has an XDP program
//! or GRO on, because only then is there a NAPI instance to receive them;
//! bridges, VLAN devices and tunnels never set it. The family's `mgmt`
//! group announces every change, so the agent re-reads the table on each.

use std::collections::HashMap;

use rtnetlink::{packet_core::NLM_F_DUMP, sys::protocols::NETLINK_GENERIC};

use crate::netlink::{attr_str, attrs, put_attr, NlError, NlSocket};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

/// `NETDEV_XDP_ACT_NDO_XMIT`: the device takes redirected frames.
pub const NDO_XMIT: u64 = 1 << 2;

/// The `NETDEV_XDP_ACT_*` bits, named as `ynl` names them.
const NAMES: [(u64, &str); 7] = [
    (1 << 0, "basic"),
    (1 << 1, "redirect"),
    (1 << 2, "ndo-xmit"),
    (1 << 3, "xsk-zerocopy"),
    (1 << 4, "hw-offload"),
    (1 << 5, "rx-sg"),
    (1 << 6, "ndo-xmit-sg"),
];

/// `basic,redirect,ndo-xmit`, or `none`.
pub fn describe(bits: u64) -> String {
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// A connection to the `netdev` family.
pub struct Netdev {
    sock: NlSocket,
    family: u16,
    /// The `mgmt` multicast group (device added, removed, features changed).
    mgmt: Option<u32>,
}

impl Netdev {
    /// `Ok(None)`: this kernel has no `netdev` family (before 6.3), so it
    /// says nothing about which devices take redirects.
    pub fn open() -> Result<Option<Self>, NlError> {
        let mut sock = NlSocket::open(NETLINK_GENERIC)?;
        let mut req = vec![CTRL_CMD_GETFAMILY, 1, 0, 0];
        put_attr(&mut req, CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        let replies = match sock.call(GENL_ID_CTRL, 0, &req) {
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            r => r?,
        };
        let (family, mgmt) =
            parse_family(replies.first().ok_or(NlError::Malformed)?).ok_or(NlError::Malformed)?;
        Ok(Some(Netdev { sock, family, mgmt }))
    }

    /// Every device's xdp-features: ifindex -> `NETDEV_XDP_ACT_*` bits.
    pub fn dump(&mut self) -> Result<HashMap<u32, u64>, NlError> {
        let req = [NETDEV_CMD_DEV_GET, 1, 0, 0];
        let replies = self.sock.call(self.family, NLM_F_DUMP, &req)?;
        Ok(replies.iter().filter_map(|p| parse_dev(p)).collect())
    }

    /// Ticks whenever a device appears, goes or changes its features.
    pub fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<()>>, NlError> {
        match self.mgmt {
            Some(g) => crate::netlink::listen(NETLINK_GENERIC, &[g]).map(Some),
            None => Ok(None),
        }
    }
}

/// The family id and `mgmt` group of a CTRL_CMD_GETFAMILY answer
/// (payload after the netlink header: genl header, then attributes).
fn parse_family(p: &[u8]) -> Option<(u16, Option<u32>)> {
    let mut id = None;
    let mut mgmt = None;
    for (k, v) in attrs(p.get(4..)?) {
        match k {
            CTRL_ATTR_FAMILY_ID => id = Some(u16::from_ne_bytes(v.get(0..2)?.try_into().ok()?)),
            CTRL_ATTR_MCAST_GROUPS => {
                for (_, grp) in attrs(v) {
                    let mut name = String::new();
                    let mut gid = None;
                    for (gk, gv) in attrs(grp) {
                        match gk {
                            CTRL_ATTR_MCAST_GRP_NAME => name = attr_str(gv),
                            CTRL_ATTR_MCAST_GRP_ID => {
                                gid = gv
                                    .get(0..4)
                                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
                            }
                            _ => {}
                        }
                    }
                    if name == "mgmt" {
                        mgmt = gid;
                    }
                }
            }
            _ => {}
        }
    }
    Some((id?, mgmt))
}

/// (ifindex, xdp-features) of a DEV_GET answer or notification.
fn parse_dev(p: &[u8]) -> Option<(u32, u64)> {
    let mut ifindex = None;
    let mut features = 0;
    for (k, v) in attrs(p.get(4..)?) {
        match k {
            NETDEV_A_DEV_IFINDEX => {
                ifindex = Some(u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?))
            }
            // A u64, host order, possibly unaligned (nla_put_u64_64bit).
            NETDEV_A_DEV_XDP_FEATURES => {
                features = u64::from_ne_bytes(v.get(0..8)?.try_into().ok()?)
            }
            _ => {}
        }
    }
    Some((ifindex?, features))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genl(cmd: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![cmd, 1, 0, 0];
        for (k, v) in attrs {
            put_attr(&mut p, *k, v);
        }
        p
    }

    #[test]
    fn family_answer_gives_id_and_mgmt_group() {
        let mut groups = Vec::new();
        for (i, (name, id)) in [("mgmt", 4u32), ("page-pool", 5)].iter().enumerate() {
            let mut g = Vec::new();
            put_attr(&mut g, CTRL_ATTR_MCAST_GRP_ID, &id.to_ne_bytes());
            put_attr(
                &mut g,
                CTRL_ATTR_MCAST_GRP_NAME,
                format!("{name}\0").as_bytes(),
            );
            put_attr(&mut groups, (i as u16 + 1) | 0x8000, &g);
        }
        let p = genl(
            1,
            &[
                (CTRL_ATTR_FAMILY_NAME, b"netdev\0".to_vec()),
                (CTRL_ATTR_FAMILY_ID, 27u16.to_ne_bytes().to_vec()),
                (CTRL_ATTR_MCAST_GROUPS | 0x8000, groups),
            ],
        );
        assert_eq!(parse_family(&p), Some((27, Some(4))));
        // No groups (an older kernel): no notifications, the family still works.
        let p = genl(1, &[(CTRL_ATTR_FAMILY_ID, 27u16.to_ne_bytes().to_vec())]);
        assert_eq!(parse_family(&p), Some((27, None)));
        assert_eq!(parse_family(&genl(1, &[])), None);
    }

    #[test]
    fn device_answer_gives_ifindex_and_features() {
        let p = genl(
            NETDEV_CMD_DEV_GET,
            &[
                (NETDEV_A_DEV_IFINDEX, 7u32.to_ne_bytes().to_vec()),
                (2, vec![]), // NETDEV_A_DEV_PAD
                (NETDEV_A_DEV_XDP_FEATURES, 0x47u64.to_ne_bytes().to_vec()),
                (99, vec![1, 2, 3]), // unknown attributes are skipped
            ],
        );
        assert_eq!(parse_dev(&p), Some((7, 0x47)));
        assert_eq!(describe(0x47), "basic,redirect,ndo-xmit,ndo-xmit-sg");
        assert_eq!(describe(0), "none");
        assert_eq!(parse_dev(&genl(1, &[])), None);
    }
}
