use super::*;

const LAN0: u32 = 3;
const LAN1: u32 = 4;
const WAN0: u32 = 2;
const OTHER: u32 = 9;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn relay(trust: &[&str]) -> Relay {
    let mut links = Links::new();
    links.insert(
        LAN0,
        Link {
            name: "lan0".into(),
            role: Role::Downstream,
            globals: vec![a("2001:db8:1::1")],
        },
    );
    links.insert(
        LAN1,
        Link {
            name: "lan1".into(),
            role: Role::Downstream,
            globals: vec![],
        },
    );
    links.insert(
        WAN0,
        Link {
            name: "wan0".into(),
            role: Role::Upstream,
            globals: vec![a("2001:db8:feed::1")],
        },
    );
    Relay {
        cfg: RelayConfig {
            servers: vec!["2001:db8:feed::2".parse().unwrap()],
            trust: trust.iter().map(|s| s.to_string()).collect(),
            port: SERVER_PORT,
            options: BTreeMap::new(),
            iface_rate: DEFAULT_IFACE_RATE,
            client_rate: DEFAULT_CLIENT_RATE,
        },
        links,
    }
}

const SOLICIT: &[u8] = &[1, 1, 2, 3, 0, 8, 0, 2, 0, 0];
const REPLY: &[u8] = &[7, 1, 2, 3, 0, 13, 0, 1, 0];

fn from<'a>(ip: &str, port: u16, ifindex: u32, payload: &'a [u8]) -> Received<'a> {
    let ip = a(ip);
    let scope = if is_link_local(ip) { ifindex } else { 0 };
    Received {
        payload,
        src: SocketAddrV6::new(ip, port, 0, scope),
        ifindex,
        mac: None,
    }
}

fn reply_for(iface: &[u8], peer: &str, inner: &[u8]) -> Vec<u8> {
    codec::write(
        RELAY_REPL,
        0,
        Ipv6Addr::UNSPECIFIED,
        a(peer),
        &[(option::INTERFACE_ID, iface)],
        inner,
    )
}

#[test]
fn a_client_message_goes_up_wrapped_with_the_link() {
    let r = relay(&[]);
    let out = r.decide(from("fe80::c1", 546, LAN0, SOLICIT)).unwrap();
    assert_eq!(out.len(), 1);
    let o = &out[0];
    assert_eq!(o.to, SocketAddrV6::new(a("2001:db8:feed::2"), 547, 0, 0));
    assert_eq!((o.dir, o.iface.as_str(), o.msg_type), (Dir::Up, "lan0", 1));
    let f = codec::Relay::parse(&o.payload).unwrap();
    assert_eq!(f.msg_type, RELAY_FORW);
    assert_eq!(f.hop_count, 0);
    assert_eq!(f.link_address, a("2001:db8:1::1"));
    assert_eq!(f.peer_address, a("fe80::c1"));
    assert_eq!(f.option(option::INTERFACE_ID), Some(&b"lan0"[..]));
    assert_eq!(f.message, SOLICIT);
    // No Relay Source Port option on 547.
    assert_eq!(f.option(option::RELAY_SOURCE_PORT), None);
}

#[test]
fn a_link_without_a_global_address_is_named_by_interface_id_alone() {
    let r = relay(&[]);
    let out = r.decide(from("fe80::c2", 546, LAN1, SOLICIT)).unwrap();
    let f = codec::Relay::parse(&out[0].payload).unwrap();
    assert_eq!(f.link_address, Ipv6Addr::UNSPECIFIED);
    assert_eq!(f.option(option::INTERFACE_ID), Some(&b"lan1"[..]));
}

#[test]
fn unknown_message_types_are_relayed_too() {
    let r = relay(&[]);
    let out = r
        .decide(from("fe80::c1", 546, LAN0, &[42, 0, 0, 1, 9]))
        .unwrap();
    assert_eq!(out[0].msg_type, 42);
}

#[test]
fn lower_relays_are_relayed_only_on_trusted_links() {
    let lower = codec::write(
        RELAY_FORW,
        0,
        a("2001:db8:77::1"),
        a("fe80::c9"),
        &[(option::INTERFACE_ID, b"eth1")],
        SOLICIT,
    );
    assert_eq!(
        relay(&[]).decide(from("2001:db8:1::9", 547, LAN0, &lower)),
        Err(Drop::UntrustedRelayForw)
    );
    let r = relay(&["lan0"]);
    // From a global source: link-address 0 (RFC 9915 §19.1.2).
    let out = r.decide(from("2001:db8:1::9", 547, LAN0, &lower)).unwrap();
    let f = codec::Relay::parse(&out[0].payload).unwrap();
    assert_eq!(
        (f.hop_count, f.link_address, f.peer_address),
        (1, Ipv6Addr::UNSPECIFIED, a("2001:db8:1::9"))
    );
    assert_eq!(f.message, &lower[..]);
    assert_eq!(out[0].msg_type, RELAY_FORW);
    // From a link-local source: this link's global address.
    let out = r.decide(from("fe80::9", 547, LAN0, &lower)).unwrap();
    let f = codec::Relay::parse(&out[0].payload).unwrap();
    assert_eq!(f.link_address, a("2001:db8:1::1"));
    // A lower relay on another port than 547 gets its port carried up.
    let out = r.decide(from("fe80::9", 10547, LAN0, &lower)).unwrap();
    let f = codec::Relay::parse(&out[0].payload).unwrap();
    assert_eq!(
        f.option(option::RELAY_SOURCE_PORT),
        Some(&10547u16.to_be_bytes()[..])
    );
}

#[test]
fn the_hop_count_limit_is_enforced() {
    let r = relay(&["lan0"]);
    for (hop, ok) in [(6, true), (7, true), (8, false), (255, false)] {
        let lower = codec::write(RELAY_FORW, hop, a("::"), a("fe80::c9"), &[], SOLICIT);
        let got = r.decide(from("fe80::9", 547, LAN0, &lower));
        if ok {
            assert_eq!(
                codec::Relay::parse(&got.unwrap()[0].payload)
                    .unwrap()
                    .hop_count,
                hop + 1
            );
        } else {
            assert_eq!(got, Err(Drop::HopLimit), "hop {hop}");
        }
    }
}

#[test]
fn a_server_reply_goes_down_to_the_peer_unmodified() {
    let r = relay(&[]);
    let rr = reply_for(b"lan0", "fe80::c1", REPLY);
    let out = r.decide(from("2001:db8:feed::2", 547, WAN0, &rr)).unwrap();
    assert_eq!(
        out,
        vec![Out {
            to: SocketAddrV6::new(a("fe80::c1"), 546, 0, LAN0),
            ifindex: LAN0,
            payload: REPLY.to_vec(),
            dir: Dir::Down,
            iface: "lan0".into(),
            msg_type: 7,
        }]
    );
    // A Relay-Reply for a lower relay goes to its port 547.
    let inner = reply_for(b"eth1", "fe80::c9", REPLY);
    let rr = reply_for(b"lan1", "fe80::9", &inner);
    let out = r.decide(from("2001:db8:feed::2", 547, WAN0, &rr)).unwrap();
    assert_eq!(out[0].to, SocketAddrV6::new(a("fe80::9"), 547, 0, LAN1));
    assert_eq!(out[0].payload, inner);
    // ... or to the port its Relay Source Port option names.
    let rr = codec::write(
        RELAY_REPL,
        0,
        Ipv6Addr::UNSPECIFIED,
        a("fe80::9"),
        &[
            (option::INTERFACE_ID, b"lan1"),
            (option::RELAY_SOURCE_PORT, &10547u16.to_be_bytes()),
        ],
        &inner,
    );
    let out = r.decide(from("2001:db8:feed::2", 547, WAN0, &rr)).unwrap();
    assert_eq!(out[0].to.port(), 10547);
}

#[test]
fn without_interface_id_the_link_address_picks_the_link() {
    let r = relay(&[]);
    let rr = codec::write(RELAY_REPL, 0, a("2001:db8:1::1"), a("fe80::c1"), &[], REPLY);
    let out = r.decide(from("2001:db8:feed::2", 547, WAN0, &rr)).unwrap();
    assert_eq!(out[0].ifindex, LAN0);
    let rr = codec::write(RELAY_REPL, 0, a("2001:db8:9::1"), a("fe80::c1"), &[], REPLY);
    assert_eq!(
        r.decide(from("2001:db8:feed::2", 547, WAN0, &rr)),
        Err(Drop::UnknownInterface)
    );
}

#[test]
fn bad_input_is_dropped_by_reason() {
    let r = relay(&[]);
    let good = reply_for(b"lan0", "fe80::c1", REPLY);
    let to_wan = reply_for(b"wan0", "fe80::c1", REPLY);
    let to_nothing = reply_for(b"eth9", "fe80::c1", REPLY);
    let to_multicast = reply_for(b"lan0", "ff02::1", REPLY);
    let broken_inner = reply_for(b"lan0", "fe80::9", &[13, 0, 0, 0]);
    let cases: Vec<(Received, Drop)> = vec![
        // A Relay-Reply forged on a client link.
        (
            from("fe80::c1", 547, LAN0, &good),
            Drop::RelayReplyFromDownstream,
        ),
        // From a source that is no server.
        (
            from("2001:db8:feed::66", 547, WAN0, &good),
            Drop::UnknownServer,
        ),
        // An Interface-ID naming the upstream link, or nothing.
        (
            from("2001:db8:feed::2", 547, WAN0, &to_wan),
            Drop::UnknownInterface,
        ),
        (
            from("2001:db8:feed::2", 547, WAN0, &to_nothing),
            Drop::UnknownInterface,
        ),
        (
            from("2001:db8:feed::2", 547, WAN0, &to_multicast),
            Drop::BadPeer,
        ),
        // A client's message arriving upstream.
        (
            from("2001:db8:feed::2", 546, WAN0, SOLICIT),
            Drop::NotRelayReplyUpstream,
        ),
        (from("fe80::1", 546, OTHER, SOLICIT), Drop::ForeignInterface),
        (from("fe80::c1", 546, LAN0, &SOLICIT[..7]), Drop::Malformed),
        (from("fe80::c1", 546, LAN0, &[]), Drop::Malformed),
        (
            from("fe80::c1", 547, LAN0, REPLY),
            Drop::ServerMessageFromDownstream,
        ),
        // A Relay-Reply holding a broken Relay-Reply.
        (
            from("2001:db8:feed::2", 547, WAN0, &broken_inner),
            Drop::Malformed,
        ),
    ];
    for (rx, want) in cases {
        assert_eq!(r.decide(rx), Err(want), "{rx:?}");
    }
    // Every truncation of a good Relay-Reply is dropped as malformed.
    for n in 1..good.len() {
        assert_eq!(
            r.decide(from("2001:db8:feed::2", 547, WAN0, &good[..n])),
            Err(Drop::Malformed),
            "{n} bytes"
        );
    }
}

#[test]
fn multicast_and_scoped_servers() {
    let mut r = relay(&[]);
    r.cfg.servers = vec![
        "ff05::1:3".parse().unwrap(),
        "fe80::5%wan0".parse().unwrap(),
    ];
    let out = r.decide(from("fe80::c1", 546, LAN0, SOLICIT)).unwrap();
    let to: Vec<_> = out.iter().map(|o| (o.to, o.ifindex)).collect();
    assert_eq!(
        to,
        vec![
            (SocketAddrV6::new(a("ff05::1:3"), 547, 0, WAN0), WAN0),
            (SocketAddrV6::new(a("fe80::5"), 547, 0, WAN0), WAN0),
        ]
    );
    // Any server may answer a multicast.
    let rr = reply_for(b"lan0", "fe80::c1", REPLY);
    assert!(r.decide(from("2001:db8:feed::77", 547, WAN0, &rr)).is_ok());
    assert!("fe80::5".parse::<Server>().is_err());
    assert!("::".parse::<Server>().is_err());
    assert!("2001:db8::1%".parse::<Server>().is_err());
}

#[test]
fn configured_options_and_a_source_port_are_added() {
    let mut r = relay(&[]);
    r.cfg.port = 10547;
    r.cfg.options.insert(
        "lan0".into(),
        IfaceOptions {
            remote_id: Some(vec![0, 0, 0x7e, 0xd9, b'p', b'1']),
            subscriber_id: Some(b"cust-17".to_vec()),
        },
    );
    let out = r.decide(from("fe80::c1", 546, LAN0, SOLICIT)).unwrap();
    let f = codec::Relay::parse(&out[0].payload).unwrap();
    assert_eq!(
        f.option(option::REMOTE_ID),
        Some(&[0, 0, 0x7e, 0xd9, b'p', b'1'][..])
    );
    assert_eq!(f.option(option::SUBSCRIBER_ID), Some(&b"cust-17"[..]));
    assert_eq!(f.option(option::RELAY_SOURCE_PORT), Some(&[0u8, 0][..]));
}

#[test]
fn the_client_mac_the_kernel_saw_goes_up_as_option_79() {
    let r = relay(&["lan0"]);
    let mut rx = from("fe80::c1", 546, LAN0, SOLICIT);
    rx.mac = Some([2, 0, 0, 0, 0, 0xc1]);
    let out = r.decide(rx).unwrap();
    let f = codec::Relay::parse(&out[0].payload).unwrap();
    assert_eq!(
        f.option(option::CLIENT_LINKLAYER_ADDR),
        Some(&[0, 1, 2, 0, 0, 0, 0, 0xc1][..])
    );
    // Not for a lower relay's message: only the relay next to the client adds it.
    let lower = codec::write(RELAY_FORW, 0, a("::"), a("fe80::c9"), &[], SOLICIT);
    let mut rx = from("fe80::9", 547, LAN0, &lower);
    rx.mac = Some([2, 0, 0, 0, 0, 9]);
    let out = r.decide(rx).unwrap();
    let f = codec::Relay::parse(&out[0].payload).unwrap();
    assert_eq!(f.option(option::CLIENT_LINKLAYER_ADDR), None);
}

#[test]
fn limits_are_written_with_bursts_twice_the_rates() {
    let mut r = relay(&[]);
    r.cfg.iface_rate = 700_000;
    r.cfg.client_rate = 0;
    assert_eq!(
        r.cfg.limits(),
        pd_common::RelayLimits {
            iface_rate: 700_000,
            iface_burst: pd_common::RELAY_RATE_MAX,
            client_rate: 0,
            client_burst: 0,
        }
    );
}
