//! Finding the DHCPv6 payload in a frame with direct packet access: a
//! cursor and one bounds-checked step per header, as in xdp-tutorial's
//! `parsing_helpers.h` (Ethernet and one VLAN tag, or a bare IPv6 header;
//! IPv6; hop-by-hop and destination options; UDP). The agent's reference
//! parser (`pd-agent/src/dhcp.rs`) takes the same steps.

use pd_common::{
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_UDP, IPV6_HLEN,
        MAX_EXT_HEADERS, MAX_UDP_OFFSET, UDP_HLEN, VLAN_HLEN,
    },
    Counter, CLIENT_PORT, SERVER_PORT,
};

use crate::maps::count;

/// Where the DHCPv6 payload sits in a packet.
pub(crate) struct Located {
    /// Offset of the IPv6 header.
    pub(crate) l3: usize,
    /// Offset of the UDP payload.
    pub(crate) payload: usize,
    /// UDP payload length.
    pub(crate) len: usize,
    /// UDP destination port (546 or 547).
    pub(crate) dport: u16,
    /// The 802.1Q/802.1ad VLAN id, if `has_vlan` (a flag and a `u16`
    /// rather than an `Option`: the verifier took fewer steps so).
    pub(crate) vlan: u16,
    pub(crate) has_vlan: bool,
}

/// A frame (`data..end`) and the offset of the next header to parse.
struct Cursor {
    data: usize,
    end: usize,
    off: usize,
}

impl Cursor {
    /// Two bytes at `off`, big-endian, if the frame holds them.
    #[inline(always)]
    fn u16_at(&self, off: usize) -> Option<u16> {
        let p = self.data + off;
        if p + 2 > self.end {
            return None;
        }
        Some(u16::from_be(unsafe { *(p as *const u16) }))
    }

    /// A link without a link-layer header: is this an IPv6 packet? IPv4
    /// shares such links, and the version nibble tells them apart (read as
    /// a 2-byte window, which the verifier can bound).
    #[inline(always)]
    fn bare_ipv6(&self) -> bool {
        matches!(self.u16_at(0), Some(w) if w >> 12 == 6)
    }

    /// Ethernet, with at most one 802.1Q/802.1ad tag: the EtherType and
    /// the VLAN id. None: the frame is too short for them.
    #[inline(always)]
    fn ethernet(&mut self) -> Option<(u16, Option<u16>)> {
        let data = self.data;
        if data + ETH_HLEN > self.end {
            return None;
        }
        let proto = u16::from_be(unsafe { *((data + 12) as *const u16) });
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            self.off = ETH_HLEN;
            return Some((proto, None));
        }
        if data + ETH_HLEN + VLAN_HLEN > self.end {
            return None;
        }
        let vlan = u16::from_be(unsafe { *((data + 14) as *const u16) }) & 0x0fff;
        let proto = u16::from_be(unsafe { *((data + 16) as *const u16) });
        self.off = ETH_HLEN + VLAN_HLEN;
        Some((proto, Some(vlan)))
    }

    /// The IPv6 header: its payload length and next header.
    #[inline(always)]
    fn ipv6(&mut self) -> Result<(usize, u8), Counter> {
        if self.data + self.off + IPV6_HLEN > self.end {
            return Err(Counter::TruncatedHeader);
        }
        let ip = self.data + self.off;
        let payload_len = u16::from_be(unsafe { *((ip + 4) as *const u16) }) as usize;
        let nh = unsafe { *((ip + 6) as *const u8) };
        self.off += IPV6_HLEN;
        Ok((payload_len, nh))
    }

    /// Hop-by-hop and destination-options headers, up to
    /// [`MAX_EXT_HEADERS`]: the next header after them, and their length.
    #[inline(always)]
    fn ext_headers(&mut self, mut nh: u8) -> Result<(u8, usize), Counter> {
        let mut ext_len = 0usize;
        let mut i = 0;
        while i < MAX_EXT_HEADERS {
            if nh != IPPROTO_HOPOPTS && nh != IPPROTO_DSTOPTS {
                break;
            }
            // Next Header and Hdr Ext Len, read as one 2-byte window.
            let w = match self.u16_at(self.off) {
                Some(w) => w,
                None => return Err(Counter::TruncatedHeader),
            };
            nh = (w >> 8) as u8;
            let hl = ((w & 0xff) as usize + 1) * 8;
            self.off += hl;
            ext_len += hl;
            i += 1;
        }
        if nh == IPPROTO_HOPOPTS || nh == IPPROTO_DSTOPTS {
            return Err(Counter::ExtHeaders);
        }
        Ok((nh, ext_len))
    }

    /// The UDP header: destination port and length.
    #[inline(always)]
    fn udp(&mut self) -> Result<(u16, usize), Counter> {
        // Bounded before it is added to the packet pointer.
        if self.off > MAX_UDP_OFFSET {
            return Err(Counter::ExtHeaders);
        }
        let udp = self.data + self.off;
        if udp + UDP_HLEN > self.end {
            return Err(Counter::TruncatedHeader);
        }
        let dport = u16::from_be(unsafe { *((udp + 2) as *const u16) });
        let len = u16::from_be(unsafe { *((udp + 4) as *const u16) }) as usize;
        self.off += UDP_HLEN;
        Ok((dport, len))
    }
}

/// Find an IPv6/UDP packet to port 546 or 547. `Ok(None)`: not DHCPv6,
/// pass it on without counting anything. `bare`: the link has no
/// link-layer header, so the frame starts with the IPv6 header.
#[inline(always)]
pub(crate) fn locate(data: usize, end: usize, bare: bool) -> Result<Option<Located>, Counter> {
    let mut cur = Cursor { data, end, off: 0 };
    let mut vlan = None;
    if bare {
        if !cur.bare_ipv6() {
            return Ok(None);
        }
    } else {
        match cur.ethernet() {
            Some((ETH_P_IPV6, tag)) => vlan = tag,
            _ => return Ok(None),
        }
    }
    let l3 = cur.off;
    let (ip_payload_len, nh) = cur.ipv6()?;
    let (nh, ext_len) = cur.ext_headers(nh)?;
    if nh != IPPROTO_UDP {
        return Ok(None);
    }
    let (dport, udp_len) = cur.udp()?;
    if dport != CLIENT_PORT && dport != SERVER_PORT {
        return Ok(None);
    }
    count(Counter::Seen);
    if udp_len < UDP_HLEN || ext_len + udp_len != ip_payload_len {
        return Err(Counter::UdpLength);
    }
    // A packet shorter than its headers claim fails in load_bytes later.
    Ok(Some(Located {
        l3,
        payload: cur.off,
        len: udp_len - UDP_HLEN,
        dport,
        vlan: vlan.unwrap_or(0),
        has_vlan: vlan.is_some(),
    }))
}
