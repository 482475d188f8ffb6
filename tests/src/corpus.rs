//! The parser corpus: frames that the kernel programs and the reference
//! parser must agree on. Well-formed messages are built with dhcproto;
//! relay layers (dhcproto mis-decodes Relay-Reply and cannot build one) and
//! malformed options are built by hand; real exchanges come from the pcap
//! fixtures under `tests/fixtures/pcap`.

use std::{fs, net::Ipv6Addr, path::Path};

use dhcproto::{
    v6::{self, DhcpOption, DhcpOptions, IAPrefix, MessageType, Status, StatusCode, IAPD},
    Encodable,
};

pub struct Case {
    pub name: String,
    pub frame: Vec<u8>,
}

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Options of a plain (non-relay) message, in wire form.
pub fn tlv(code: u16, data: &[u8]) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend((data.len() as u16).to_be_bytes());
    v.extend(data);
    v
}

pub fn iaprefix_raw(preferred: u32, valid: u32, plen: u8, prefix: Ipv6Addr, sub: &[u8]) -> Vec<u8> {
    let mut d = preferred.to_be_bytes().to_vec();
    d.extend(valid.to_be_bytes());
    d.push(plen);
    d.extend(prefix.octets());
    d.extend(sub);
    tlv(26, &d)
}

pub fn iapd_raw(iaid: u32, t1: u32, t2: u32, sub: &[u8]) -> Vec<u8> {
    let mut d = iaid.to_be_bytes().to_vec();
    d.extend(t1.to_be_bytes());
    d.extend(t2.to_be_bytes());
    d.extend(sub);
    tlv(25, &d)
}

pub fn msg_raw(t: u8, xid: u32, opts: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend(&xid.to_be_bytes()[1..]);
    v.extend(opts);
    v
}

/// Wrap `inner` in one relay layer (RFC 8415 §9), with extra options first.
pub fn relay(
    t: u8,
    hop: u8,
    link: Ipv6Addr,
    peer: Ipv6Addr,
    extra: &[u8],
    inner: &[u8],
) -> Vec<u8> {
    let mut v = vec![t, hop];
    v.extend(link.octets());
    v.extend(peer.octets());
    v.extend(extra);
    v.extend(tlv(9, inner));
    v
}

pub fn duid(n: u8) -> Vec<u8> {
    vec![0, 1, 0, 1, 0x32, 0x9e, 0x24, 0xdb, 0x02, 0, 0, 0, 0, n]
}

/// An IA_PD for [`dhcproto_msg`]: IAID, T1, T2 and its prefixes
/// (prefix, length, preferred, valid).
pub type IaSpec = (u32, u32, u32, Vec<(Ipv6Addr, u8, u32, u32)>);

/// A well-formed message built with dhcproto.
pub fn dhcproto_msg(t: MessageType, xid: [u8; 3], client: Vec<u8>, ias: Vec<IaSpec>) -> Vec<u8> {
    let mut m = v6::Message::new_with_id(t, xid);
    m.opts_mut().insert(DhcpOption::ClientId(client));
    m.opts_mut().insert(DhcpOption::ServerId(duid(0xee)));
    for (id, t1, t2, prefixes) in ias {
        let mut opts = DhcpOptions::new();
        for (p, l, pref, valid) in prefixes {
            opts.insert(DhcpOption::IAPrefix(IAPrefix {
                preferred_lifetime: pref,
                valid_lifetime: valid,
                prefix_len: l,
                prefix_ip: p,
                opts: DhcpOptions::new(),
            }));
        }
        m.opts_mut()
            .insert(DhcpOption::IAPD(IAPD { id, t1, t2, opts }));
    }
    m.to_vec().unwrap()
}

pub struct Frame {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub dport: u16,
    pub vlan: Option<u16>,
    /// Hop-by-hop / destination-options headers: (next-header code, total length).
    pub ext: Vec<(u8, usize)>,
    pub next_header: u8,
    /// Added to the UDP length field (to make it disagree).
    pub udp_len_delta: i32,
}

impl Default for Frame {
    fn default() -> Self {
        Frame {
            src: a("fe80::1"),
            dst: a("fe80::1c2d:3eff:fe4f:5a6b"),
            dport: 546,
            vlan: None,
            ext: vec![],
            next_header: 17,
            udp_len_delta: 0,
        }
    }
}

impl Frame {
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(CLIENT_MAC);
        f.extend(ROUTER_MAC);
        if let Some(v) = self.vlan {
            f.extend([0x81, 0x00]);
            f.extend(v.to_be_bytes());
        }
        f.extend([0x86, 0xdd]);
        let udp_len = 8 + payload.len();
        let ext_len: usize = self.ext.iter().map(|e| e.1).sum();
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend(((ext_len + udp_len) as u16).to_be_bytes());
        let first = self.ext.first().map(|e| e.0).unwrap_or(self.next_header);
        ip.push(first);
        ip.push(255);
        ip.extend(self.src.octets());
        ip.extend(self.dst.octets());
        f.extend(ip);
        for (i, (_, len)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map(|e| e.0).unwrap_or(self.next_header);
            let mut h = vec![next, (len / 8 - 1) as u8];
            h.resize(*len, 0);
            // PadN over the rest.
            if *len > 2 {
                h[2] = 1;
                h[3] = (*len - 4) as u8;
            }
            f.extend(h);
        }
        f.extend(547u16.to_be_bytes());
        f.extend(self.dport.to_be_bytes());
        f.extend(((udp_len as i32 + self.udp_len_delta) as u16).to_be_bytes());
        f.extend([0xde, 0xad]); // checksum: never validated
        f.extend(payload);
        f
    }
}

fn case(name: &str, frame: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        frame,
    }
}

fn reply1() -> Vec<u8> {
    dhcproto_msg(
        MessageType::Reply,
        [1, 2, 3],
        duid(1),
        vec![(7, 100, 160, vec![(a("2001:db8:100::"), 56, 150, 200)])],
    )
}

/// Every synthetic case (well-formed and malformed).
pub fn synthetic() -> Vec<Case> {
    let f = Frame::default();
    let mut v = Vec::new();
    v.push(case("reply-1-prefix", f.build(&reply1())));
    let eight: Vec<_> = (0..8u16)
        .map(|i| {
            (
                Ipv6Addr::new(0x2001, 0xdb8, 0x100 + i, 0, 0, 0, 0, 0),
                56,
                300,
                600,
            )
        })
        .collect();
    v.push(case(
        "reply-8-prefixes",
        f.build(&dhcproto_msg(
            MessageType::Reply,
            [0, 0, 9],
            duid(2),
            vec![(1, 0, 0, eight)],
        )),
    ));
    v.push(case(
        "reply-2-ias",
        f.build(&dhcproto_msg(
            MessageType::Reply,
            [0, 1, 9],
            duid(3),
            vec![
                (1, 10, 20, vec![(a("2001:db8:1::"), 48, 30, 60)]),
                (2, 10, 20, vec![(a("2001:db8:2::"), 64, 30, 60)]),
            ],
        )),
    ));
    v.push(case(
        "reply-infinite",
        f.build(&dhcproto_msg(
            MessageType::Reply,
            [0, 2, 9],
            duid(4),
            vec![(1, 0, 0, vec![(a("2001:db8:4::"), 56, u32::MAX, u32::MAX)])],
        )),
    ));
    v.push(case(
        "reply-zero-valid",
        f.build(&dhcproto_msg(
            MessageType::Reply,
            [0, 3, 9],
            duid(5),
            vec![(1, 0, 0, vec![(a("2001:db8:5::"), 56, 0, 0)])],
        )),
    ));
    for (name, t) in [
        ("renew", MessageType::Renew),
        ("rebind", MessageType::Rebind),
        ("release", MessageType::Release),
        ("decline", MessageType::Decline),
        ("request", MessageType::Request),
    ] {
        let g = Frame {
            src: a("fe80::1c2d:3eff:fe4f:5a6b"),
            dst: a("ff02::1:2"),
            dport: 547,
            ..Frame::default()
        };
        v.push(case(
            name,
            g.build(&dhcproto_msg(
                t,
                [0, 4, 9],
                duid(6),
                vec![(7, 0, 0, vec![(a("2001:db8:100::"), 56, 7200, 7500)])],
            )),
        ));
    }
    // Reply to a Release: status only.
    let mut m = v6::Message::new_with_id(MessageType::Reply, [9, 9, 9]);
    m.opts_mut().insert(DhcpOption::ClientId(duid(1)));
    m.opts_mut().insert(DhcpOption::StatusCode(StatusCode {
        status: Status::Success,
        msg: "released".into(),
    }));
    v.push(case(
        "reply-release-status-only",
        f.build(&m.to_vec().unwrap()),
    ));
    // IA_PD holding only NoPrefixAvail.
    let st = tlv(13, &[0, 6, b'n', b'o']);
    let p = msg_raw(
        7,
        0x0a0b0c,
        &[tlv(1, &duid(1)), iapd_raw(3, 0, 0, &st)].concat(),
    );
    v.push(case("reply-noprefixavail", f.build(&p)));
    // Solicit without and with Rapid Commit; Advertise.
    let sol = msg_raw(1, 5, &[tlv(1, &duid(1)), iapd_raw(1, 0, 0, &[])].concat());
    v.push(case(
        "solicit",
        Frame {
            dport: 547,
            ..Frame::default()
        }
        .build(&sol),
    ));
    let solrc = msg_raw(
        1,
        5,
        &[tlv(1, &duid(1)), tlv(14, &[]), iapd_raw(1, 0, 0, &[])].concat(),
    );
    v.push(case(
        "solicit-rapid-commit",
        Frame {
            dport: 547,
            ..Frame::default()
        }
        .build(&solrc),
    ));
    v.push(case(
        "advertise",
        f.build(&msg_raw(2, 5, &tlv(1, &duid(1)))),
    ));

    // Relay-Reply 1 and 3 deep, and 8 and 9 deep.
    let inner = reply1();
    let r1 = relay(
        13,
        0,
        a("2001:db8:ffff::1"),
        a("fe80::1c2d:3eff:fe4f:5a6b"),
        &tlv(18, b"lan0"),
        &inner,
    );
    let up = Frame {
        src: a("2001:db8:5::2"),
        dst: a("2001:db8:5::1"),
        dport: 547,
        ..Frame::default()
    };
    v.push(case("relay-reply-1", up.build(&r1)));
    let mut r = inner.clone();
    for d in 0..3u16 {
        r = relay(
            13,
            d as u8,
            Ipv6Addr::new(0x2001, 0xdb8, 0xff00 + d, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10 + d),
            &[],
            &r,
        );
    }
    v.push(case("relay-reply-3", up.build(&r)));
    let mut r = inner.clone();
    for d in 0..8u16 {
        r = relay(
            13,
            d as u8,
            a("2001:db8:ffff::1"),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10 + d),
            &[],
            &r,
        );
    }
    v.push(case("relay-reply-8", up.build(&r)));
    let r9 = relay(13, 8, a("2001:db8:ffff::1"), a("fe80::99"), &[], &r);
    v.push(case("relay-reply-9-too-deep", up.build(&r9)));
    let rf = relay(
        12,
        0,
        a("2001:db8:ffff::1"),
        a("fe80::1c2d:3eff:fe4f:5a6b"),
        &[],
        &msg_raw(
            8,
            77,
            &[
                tlv(1, &duid(1)),
                iapd_raw(7, 0, 0, &iaprefix_raw(0, 0, 56, a("2001:db8:100::"), &[])),
            ]
            .concat(),
        ),
    );
    v.push(case("relay-forward-release", up.build(&rf)));
    v.push(case(
        "relay-no-relay-msg",
        up.build(&{
            let mut x = vec![13, 0];
            x.extend(a("2001:db8:ffff::1").octets());
            x.extend(a("fe80::1").octets());
            x.extend(tlv(18, b"lan0"));
            x
        }),
    ));

    // Header variants.
    v.push(case(
        "vlan",
        Frame {
            vlan: Some(42),
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    v.push(case(
        "hop-by-hop",
        Frame {
            ext: vec![(0, 8)],
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    v.push(case(
        "hbh-and-dstopts",
        Frame {
            ext: vec![(0, 8), (60, 16)],
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    v.push(case(
        "five-ext-headers",
        Frame {
            ext: vec![(0, 8), (60, 8), (60, 8), (60, 8), (60, 8)],
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    v.push(case(
        "udp-len-mismatch",
        Frame {
            udp_len_delta: 4,
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    v.push(case(
        "udp-len-short",
        Frame {
            udp_len_delta: -4,
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    v.push(case(
        "other-port",
        Frame {
            dport: 53,
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    v.push(case(
        "tcp",
        Frame {
            next_header: 6,
            ..Frame::default()
        }
        .build(&reply1()),
    ));
    let full = f.build(&reply1());
    v.push(case("truncated-udp-header", full[..14 + 40 + 4].to_vec()));
    v.push(case("truncated-ipv6", full[..14 + 20].to_vec()));
    v.push(case("truncated-payload", full[..full.len() - 10].to_vec()));
    v.push(case("runt", full[..10].to_vec()));
    let mut ipv4 = full.clone();
    ipv4[12] = 0x08;
    ipv4[13] = 0x00;
    v.push(case("ipv4", ipv4));
    v.push(case("short-message", f.build(&[7, 0])));

    // Option-level malformations.
    let c = tlv(1, &duid(1));
    let good_pfx = iaprefix_raw(100, 200, 56, a("2001:db8:100::"), &[]);
    let mk = |opts: Vec<u8>| f.build(&msg_raw(7, 0x123456, &opts));
    v.push(case(
        "option-overflow",
        mk([c.clone(), vec![0, 25, 0, 200, 0, 0]].concat()),
    ));
    v.push(case(
        "zero-length-options",
        mk([
            tlv(99, &[]),
            c.clone(),
            tlv(98, &[]),
            iapd_raw(1, 0, 0, &good_pfx),
        ]
        .concat()),
    ));
    v.push(case(
        "iapd-too-short",
        mk([c.clone(), tlv(25, &[0; 8])].concat()),
    ));
    v.push(case(
        "iaprefix-too-short",
        mk([c.clone(), iapd_raw(1, 0, 0, &tlv(26, &[0; 20]))].concat()),
    ));
    v.push(case(
        "t1-gt-t2",
        mk([c.clone(), iapd_raw(1, 200, 100, &good_pfx)].concat()),
    ));
    v.push(case(
        "t1-gt-t2-zero",
        mk([c.clone(), iapd_raw(1, 200, 0, &good_pfx)].concat()),
    ));
    v.push(case(
        "plen-0",
        mk([
            c.clone(),
            iapd_raw(1, 0, 0, &iaprefix_raw(1, 2, 0, a("::"), &[])),
        ]
        .concat()),
    ));
    v.push(case(
        "plen-129",
        mk([
            c.clone(),
            iapd_raw(1, 0, 0, &iaprefix_raw(1, 2, 129, a("2001:db8::"), &[])),
        ]
        .concat()),
    ));
    v.push(case(
        "preferred-gt-valid",
        mk([
            c.clone(),
            iapd_raw(
                1,
                0,
                0,
                &iaprefix_raw(300, 200, 56, a("2001:db8:100::"), &[]),
            ),
        ]
        .concat()),
    ));
    v.push(case(
        "iaprefix-with-status",
        mk([
            c.clone(),
            iapd_raw(
                1,
                0,
                0,
                &iaprefix_raw(1, 2, 56, a("2001:db8:100::"), &tlv(13, &[0, 0])),
            ),
        ]
        .concat()),
    ));
    v.push(case(
        "duplicate-iaprefix",
        mk([
            c.clone(),
            iapd_raw(1, 0, 0, &[good_pfx.clone(), good_pfx.clone()].concat()),
        ]
        .concat()),
    ));
    // n IAPREFIX options of 2001:db8:0:i::/64.
    let iaprefixes = |n: u16| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                iaprefix_raw(
                    10,
                    20,
                    64,
                    Ipv6Addr::new(0x2001, 0xdb8, 0, i, 0, 0, 0, 0),
                    &[],
                )
            })
            .collect()
    };
    v.push(case(
        "300-iaprefixes",
        mk([c.clone(), iapd_raw(1, 0, 0, &iaprefixes(300))].concat()),
    ));
    v.push(case(
        "20-iaprefixes",
        mk([c.clone(), iapd_raw(1, 0, 0, &iaprefixes(20))].concat()),
    ));
    let ias: Vec<u8> = (0..6u32)
        .flat_map(|i| {
            iapd_raw(
                i,
                0,
                0,
                &iaprefix_raw(
                    10,
                    20,
                    64,
                    Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 0),
                    &[],
                ),
            )
        })
        .collect();
    v.push(case("6-ias", mk([c.clone(), ias].concat())));
    v.push(case(
        "long-duid",
        mk([tlv(1, &[0xab; 100]), iapd_raw(1, 0, 0, &good_pfx)].concat()),
    ));
    v.push(case(
        "long-server-duid",
        mk([c.clone(), tlv(2, &[0xcd; 40]), iapd_raw(1, 0, 0, &good_pfx)].concat()),
    ));
    v.push(case(
        "status-too-short",
        mk([c.clone(), tlv(13, &[0])].concat()),
    ));
    v.push(case(
        "status-fail",
        mk([c.clone(), tlv(13, &[0, 1]), iapd_raw(1, 0, 0, &good_pfx)].concat()),
    ));
    v.push(case("no-client-id", mk(iapd_raw(1, 0, 0, &good_pfx))));
    let filler: Vec<u8> = (0..450).flat_map(|_| tlv(99, &[])).collect();
    v.push(case("too-many-options", mk([c.clone(), filler].concat())));
    // Longer than the kernel parses (2048 bytes).
    let big: Vec<u8> = (0..250).flat_map(|_| tlv(99, &[0; 8])).collect();
    v.push(case(
        "payload-over-2048",
        mk([c.clone(), iapd_raw(1, 0, 0, &good_pfx), big].concat()),
    ));
    v
}

/// Frames from the real captures in `dir` (pcap, Ethernet link type).
pub fn pcaps(dir: &Path) -> Vec<Case> {
    let mut out = Vec::new();
    let mut files: Vec<_> = fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for p in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
    {
        let d = fs::read(&p).unwrap();
        assert_eq!(
            &d[..4],
            &[0xd4, 0xc3, 0xb2, 0xa1],
            "{}: little-endian pcap",
            p.display()
        );
        assert_eq!(
            u32::from_le_bytes(d[20..24].try_into().unwrap()),
            1,
            "Ethernet link type"
        );
        let mut off = 24;
        let mut n = 0;
        while off + 16 <= d.len() {
            let incl = u32::from_le_bytes(d[off + 8..off + 12].try_into().unwrap()) as usize;
            off += 16;
            n += 1;
            out.push(Case {
                name: format!("{}#{n}", p.file_name().unwrap().to_string_lossy()),
                frame: d[off..off + incl].to_vec(),
            });
            off += incl;
        }
    }
    out
}

pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pcap")
}

/// Synthetic cases plus the captures.
pub fn all() -> Vec<Case> {
    let mut v = synthetic();
    v.extend(pcaps(&fixtures_dir()));
    v
}
