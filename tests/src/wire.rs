//! Hand-made DHCPv6 on the wire: frames with correct UDP checksums sent
//! through an AF_PACKET socket in one of the test's namespaces. Used for
//! crowds of simulated clients (talking to a real Kea), forged messages
//! from a rogue host, and the malformed corpus.

use std::{net::Ipv6Addr, os::fd::AsRawFd};

use anyhow::{bail, Result};

use crate::{
    corpus::{iapd_raw, iaprefix_raw, msg_raw, tlv},
    InNetns, Netns,
};

/// All-DHCP-relay-agents-and-servers (RFC 8415 §7.1).
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// An AF_PACKET socket bound to one interface of one namespace.
pub struct RawSock {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
    pub mac: [u8; 6],
}

impl RawSock {
    pub fn open(ns: &Netns, iface: &str) -> Result<Self> {
        use std::os::fd::FromRawFd;
        let _in = InNetns::enter(ns)?;
        let c = std::ffi::CString::new(iface)?;
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {iface} in {}", ns.name);
        }
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!(
                "AF_PACKET socket in {}: {}",
                ns.name,
                std::io::Error::last_os_error()
            );
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // Not from this thread's /sys: that is the host's, whatever the
        // thread's network namespace.
        let mac = ns.mac(iface)?;
        Ok(RawSock { fd, ifindex, mac })
    }

    /// Send one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        if frame.len() >= 6 {
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        }
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            bail!(
                "sending a {}-byte frame: {}",
                frame.len(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Send a UDP datagram from `src` to `dst` (to a multicast group's MAC,
    /// or to `dst_mac`).
    pub fn send_udp(
        &self,
        dst_mac: Option<[u8; 6]>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Result<()> {
        let dmac = dst_mac.unwrap_or_else(|| multicast_mac(dst));
        self.send(&udp6_frame(self.mac, dmac, src, dst, sport, dport, payload))
    }
}

/// 33:33 + the group's low 32 bits (RFC 2464 §7).
pub fn multicast_mac(dst: Ipv6Addr) -> [u8; 6] {
    let o = dst.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Ethernet + IPv6 + UDP with a correct checksum.
pub fn udp6_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend(sport.to_be_bytes());
    udp.extend(dport.to_be_bytes());
    udp.extend((udp_len as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    let ck = checksum6(src, dst, 17, &udp);
    udp[6..8].copy_from_slice(&ck.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + udp_len);
    f.extend(dmac);
    f.extend(smac);
    f.extend([0x86, 0xdd]);
    f.extend(ip6_packet(
        src,
        dst,
        17,
        if dst.is_multicast() { 1 } else { 64 },
        &udp,
    ));
    f
}

/// The upper-layer checksum over the IPv6 pseudo-header (RFC 8200 §8.1).
fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(data.len() as u32).to_be_bytes());
    add(&[0, 0, 0, nh]);
    add(data);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    if ck == 0 {
        0xffff
    } else {
        ck
    }
}

/// An IPv6 header and `payload` (no link-layer header: what a tun or ppp
/// device carries).
pub fn ip6_packet(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(40 + payload.len());
    f.extend([0x60, 0, 0, 0]);
    f.extend((payload.len() as u16).to_be_bytes());
    f.push(nh);
    f.push(hop_limit);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend(payload);
    f
}

/// An ICMPv6 echo request with a correct checksum, as a bare IPv6 packet.
pub fn icmp6_echo(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![128, 0, 0, 0];
    m.extend(id.to_be_bytes());
    m.extend(seq.to_be_bytes());
    m.extend(b"pd-agent");
    let ck = checksum6(src, dst, 58, &m);
    m[2..4].copy_from_slice(&ck.to_be_bytes());
    ip6_packet(src, dst, 58, 64, &m)
}

/// A bare IPv6/UDP packet with a correct checksum.
pub fn udp6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    udp6_frame([0; 6], [0; 6], src, dst, sport, dport, payload)[14..].to_vec()
}

/// A tun device (TUN mode, no packet information header) created in a
/// namespace, held open by this process: what is written to it arrives
/// on the interface as if from the wire, and what the interface sends can
/// be read. The device goes when this is dropped.
pub struct Tun {
    file: std::fs::File,
}

impl Tun {
    pub fn create(ns: &Netns, name: &str) -> Result<Self> {
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        const IFF_TUN: i16 = 0x0001;
        const IFF_NO_PI: i16 = 0x1000;
        if !std::path::Path::new("/dev/net/tun").exists() {
            // Loading the module makes the device node (a VM's devtmpfs).
            let _ = std::process::Command::new("modprobe").arg("tun").status();
        }
        let _in = InNetns::enter(ns)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // struct ifreq: the name, then the flags.
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        ifr[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
            bail!(
                "TUNSETIFF {name} in {}: {}",
                ns.name,
                std::io::Error::last_os_error()
            );
        }
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            bail!("O_NONBLOCK: {}", std::io::Error::last_os_error());
        }
        Ok(Tun { file })
    }

    /// Deliver one IPv6 packet to the interface.
    pub fn write(&self, packet: &[u8]) -> Result<()> {
        use std::io::Write;
        (&self.file).write_all(packet)?;
        Ok(())
    }

    /// The packets the interface sent, until none comes for `quiet`.
    pub fn read_until_quiet(&self, quiet: std::time::Duration) -> Vec<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::new();
        let mut last = std::time::Instant::now();
        let mut buf = vec![0u8; 65536];
        while last.elapsed() < quiet {
            match (&self.file).read(&mut buf) {
                Ok(n) => {
                    out.push(buf[..n].to_vec());
                    last = std::time::Instant::now();
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        out
    }
}

/// A simulated requesting router: its DUID (DUID-LL), IAID and link-local address.
#[derive(Debug, Clone)]
pub struct SimClient {
    pub duid: Vec<u8>,
    pub iaid: u32,
    pub addr: Ipv6Addr,
}

impl SimClient {
    /// Client `n`: fe80::1:n, DUID-LL 02:00:00:cc:hi:lo.
    pub fn new(n: u16) -> Self {
        let [hi, lo] = n.to_be_bytes();
        SimClient {
            duid: vec![0, 3, 0, 1, 0x02, 0, 0, 0xcc, hi, lo],
            iaid: 1,
            addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 1, n),
        }
    }

    fn ia(&self, prefixes: &[(Ipv6Addr, u8, u32, u32)]) -> Vec<u8> {
        let sub: Vec<u8> = prefixes
            .iter()
            .flat_map(|(p, l, pref, valid)| iaprefix_raw(*pref, *valid, *l, *p, &[]))
            .collect();
        iapd_raw(self.iaid, 0, 0, &sub)
    }

    /// Solicit with Rapid Commit for one IA_PD.
    pub fn solicit_rapid(&self, xid: u32) -> Vec<u8> {
        let mut o = tlv(1, &self.duid);
        o.extend(tlv(14, &[]));
        o.extend(tlv(8, &[0, 0]));
        o.extend(self.ia(&[]));
        msg_raw(1, xid, &o)
    }

    /// Renew (5), Release (8) or Decline (9) of `prefix`, to `server`.
    pub fn about(
        &self,
        msg_type: u8,
        xid: u32,
        server_duid: &[u8],
        prefix: (Ipv6Addr, u8),
    ) -> Vec<u8> {
        let mut o = tlv(1, &self.duid);
        o.extend(tlv(2, server_duid));
        o.extend(tlv(8, &[0, 0]));
        o.extend(self.ia(&[(prefix.0, prefix.1, 0, 0)]));
        msg_raw(msg_type, xid, &o)
    }

    /// A server's Reply to this client delegating `prefixes`
    /// (prefix, length, preferred, valid); none: a bare Success.
    pub fn reply(
        &self,
        xid: u32,
        server_duid: &[u8],
        prefixes: &[(Ipv6Addr, u8, u32, u32)],
    ) -> Vec<u8> {
        let mut o = tlv(1, &self.duid);
        o.extend(tlv(2, server_duid));
        if prefixes.is_empty() {
            o.extend(tlv(13, &[0, 0]));
        } else {
            o.extend(self.ia(prefixes));
        }
        msg_raw(7, xid, &o)
    }
}

/// Kea's server DUID (written on its first start).
pub fn kea_server_duid() -> Result<Vec<u8>> {
    let text = std::fs::read_to_string("/var/lib/kea/kea-dhcp6-serverid")?;
    Ok(hex_bytes(&text.trim().replace(':', "")))
}

pub fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}
