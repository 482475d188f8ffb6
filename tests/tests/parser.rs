//! The reference parser on the corpus (no root needed): what it must
//! report for each case, cross-checked with dhcproto where dhcproto can
//! decode the message.

use std::net::Ipv6Addr;

use dhcproto::{v6, Decodable};
use pd_agent::{
    dhcp::{parse_frame, Outcome, Parsed},
    snoop::Assembler,
};
use pd_common::{flags, hook, msg, Counter, PdEvent, INFINITY};
use pd_tests::corpus;

fn parse(name: &str) -> Parsed {
    let c = corpus::all()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    parse_frame(&c.frame, hook::XDP_INGRESS, 1)
}

fn events(name: &str) -> Vec<PdEvent> {
    match parse(name).outcome {
        Outcome::Events(e) => e,
        o => panic!("{name}: {o:?}"),
    }
}

fn rejected(name: &str) -> Counter {
    match parse(name).outcome {
        Outcome::Rejected(c) => c,
        o => panic!("{name}: {o:?}"),
    }
}

fn prefix(e: &PdEvent) -> String {
    format!("{}/{}", Ipv6Addr::from(e.prefix), e.prefix_len)
}

#[test]
fn reply_fields() {
    let e = events("reply-1-prefix");
    assert_eq!(e.len(), 1);
    let e = e[0];
    assert_eq!(e.msg_type, msg::REPLY);
    assert_eq!(e.xid, 0x010203);
    assert_eq!(prefix(&e), "2001:db8:100::/56");
    assert_eq!(
        (e.iaid, e.t1, e.t2, e.preferred, e.valid),
        (7, 100, 160, 150, 200)
    );
    assert_eq!(
        &e.client_duid[..e.client_duid_len as usize],
        &corpus::duid(1)[..]
    );
    assert_eq!(e.server_duid_len, 14);
    assert_eq!(
        Ipv6Addr::from(e.dst),
        corpus::a("fe80::1c2d:3eff:fe4f:5a6b")
    );
    assert_eq!(e.dst_mac, [2, 0, 0, 0, 0, 2]);
    assert_eq!(e.flags & flags::HAS_PREFIX, flags::HAS_PREFIX);
    assert_eq!((e.index, e.count), (0, 1));
}

#[test]
fn many_prefixes_and_ias() {
    let e = events("reply-8-prefixes");
    assert_eq!(e.len(), 8);
    assert!(e
        .iter()
        .enumerate()
        .all(|(i, e)| e.index as usize == i && e.count == 8));
    let mut e: Vec<_> = events("reply-2-ias")
        .iter()
        .map(|e| (e.iaid, prefix(e)))
        .collect();
    e.sort();
    assert_eq!(
        e,
        [(1, "2001:db8:1::/48".into()), (2, "2001:db8:2::/64".into())]
    );
    let e = events("20-iaprefixes");
    assert_eq!(e.len(), pd_common::MAX_PREFIXES);
    assert!(e[0].flags & flags::PREFIXES_DROPPED != 0);
    assert_eq!(
        parse("20-iaprefixes").side,
        vec![Counter::TooManyPrefixes; 4]
    );
    // More IA_PDs than remembered: the extra ones' prefixes are dropped and counted.
    let e = events("6-ias");
    assert_eq!(e.len(), pd_common::MAX_IAS);
}

#[test]
fn lifetimes() {
    let e = events("reply-infinite")[0];
    assert_eq!((e.preferred, e.valid), (INFINITY, INFINITY));
    assert_eq!(events("reply-zero-valid")[0].valid, 0);
    // Discarded per RFC 8415 §21.21/§21.22, counted, message still parsed.
    for (name, c) in [
        ("t1-gt-t2", Counter::BadT1T2),
        ("plen-0", Counter::BadPrefixLength),
        ("plen-129", Counter::BadPrefixLength),
        ("preferred-gt-valid", Counter::BadLifetimes),
    ] {
        let p = parse(name);
        assert_eq!(p.side, vec![c], "{name}");
        match p.outcome {
            Outcome::Events(e) => assert!(
                e.len() == 1 && e[0].flags & flags::HAS_PREFIX == 0,
                "{name}"
            ),
            o => panic!("{name}: {o:?}"),
        }
    }
    // T1 > T2 only matters when T2 > 0.
    assert_eq!(events("t1-gt-t2-zero").len(), 1);
    assert_eq!(
        events("t1-gt-t2-zero")[0].flags & flags::HAS_PREFIX,
        flags::HAS_PREFIX
    );
}

#[test]
fn client_messages() {
    for (name, t) in [
        ("renew", msg::RENEW),
        ("rebind", msg::REBIND),
        ("release", msg::RELEASE),
        ("decline", msg::DECLINE),
        ("request", msg::REQUEST),
    ] {
        let e = events(name);
        assert_eq!(
            (e[0].msg_type, prefix(&e[0])),
            (t, "2001:db8:100::/56".into()),
            "{name}"
        );
    }
    let e = events("reply-release-status-only");
    assert_eq!(
        (e.len(), e[0].status, e[0].flags & flags::HAS_PREFIX),
        (1, 0, 0)
    );
    let e = events("reply-noprefixavail");
    assert_eq!((e[0].ia_status, e[0].iaid), (6, 3));
    assert_eq!(rejected("solicit"), Counter::IgnoredType);
    assert_eq!(
        events("solicit-rapid-commit")[0].flags & flags::RAPID_COMMIT,
        flags::RAPID_COMMIT
    );
    assert_eq!(rejected("advertise"), Counter::IgnoredType);
}

#[test]
fn relays() {
    let e = events("relay-reply-1")[0];
    assert_eq!(
        (e.outer_msg_type, e.relay_depth, e.msg_type),
        (msg::RELAY_REPL, 1, msg::REPLY)
    );
    assert_eq!(
        Ipv6Addr::from(e.peer_addr),
        corpus::a("fe80::1c2d:3eff:fe4f:5a6b")
    );
    assert_eq!(Ipv6Addr::from(e.link_addr), corpus::a("2001:db8:ffff::1"));
    let e = events("relay-reply-3")[0];
    assert_eq!(e.relay_depth, 3);
    assert_eq!(
        Ipv6Addr::from(e.outer_peer_addr),
        corpus::a("fe80::12"),
        "outermost layer"
    );
    assert_eq!(
        Ipv6Addr::from(e.peer_addr),
        corpus::a("fe80::10"),
        "innermost layer"
    );
    assert_eq!(events("relay-reply-8")[0].relay_depth, 8);
    assert_eq!(rejected("relay-reply-9-too-deep"), Counter::RelayTooDeep);
    assert_eq!(rejected("relay-no-relay-msg"), Counter::RelayNoMessage);
    let e = events("relay-forward-release")[0];
    assert_eq!(
        (e.outer_msg_type, e.msg_type),
        (msg::RELAY_FORW, msg::RELEASE)
    );
}

#[test]
fn headers() {
    let e = events("vlan")[0];
    assert_eq!((e.vlan, e.flags & flags::VLAN), (42, flags::VLAN));
    assert_eq!(events("hop-by-hop").len(), 1);
    assert_eq!(events("hbh-and-dstopts").len(), 1);
    assert_eq!(rejected("five-ext-headers"), Counter::ExtHeaders);
    assert_eq!(rejected("udp-len-mismatch"), Counter::UdpLength);
    assert_eq!(rejected("udp-len-short"), Counter::UdpLength);
    assert_eq!(rejected("truncated-udp-header"), Counter::TruncatedHeader);
    assert_eq!(rejected("truncated-ipv6"), Counter::TruncatedHeader);
    assert_eq!(rejected("truncated-payload"), Counter::TruncatedHeader);
    assert_eq!(rejected("short-message"), Counter::ShortMessage);
    for n in ["other-port", "tcp", "ipv4", "runt"] {
        assert_eq!(parse(n).outcome, Outcome::NotDhcp, "{n}");
    }
}

#[test]
fn malformed_options() {
    assert_eq!(rejected("option-overflow"), Counter::OptionOverflow);
    assert_eq!(events("zero-length-options").len(), 1);
    assert_eq!(rejected("iapd-too-short"), Counter::BadOptionLength);
    assert_eq!(rejected("iaprefix-too-short"), Counter::BadOptionLength);
    assert_eq!(rejected("status-too-short"), Counter::BadOptionLength);
    assert_eq!(rejected("too-many-options"), Counter::TooManyOptions);
    assert_eq!(events("duplicate-iaprefix").len(), 2);
    assert_eq!(events("iaprefix-with-status").len(), 1);
    let e = events("long-duid")[0];
    assert_eq!((e.client_duid_len, e.client_duid), (100, [0xab; 64]));
    assert_eq!(events("long-server-duid")[0].server_duid_len, 40);
    assert_eq!(events("status-fail")[0].status, 1);
    assert_eq!(events("no-client-id")[0].client_duid_len, 0);
    assert_eq!(rejected("payload-over-2048"), Counter::TooLong);
}

/// The real captures: every Reply's prefix, and dhcproto agrees on the
/// non-relayed ones.
#[test]
fn captures() {
    let cases = corpus::pcaps(&corpus::fixtures_dir());
    assert_eq!(cases.len(), 38);
    let mut seen = Vec::new();
    for c in &cases {
        let p = parse_frame(&c.frame, hook::TC_EGRESS, 1);
        let Outcome::Events(ev) = &p.outcome else {
            // Solicit and Advertise are the only messages not reported.
            assert_eq!(
                p.outcome,
                Outcome::Rejected(Counter::IgnoredType),
                "{}",
                c.name
            );
            continue;
        };
        let payload = &c.frame[62..];
        if ev[0].relay_depth == 0 {
            let m = v6::Message::decode(&mut dhcproto::Decoder::new(payload)).unwrap();
            assert_eq!(u8::from(m.msg_type()), ev[0].msg_type, "{}", c.name);
            assert_eq!(
                u32::from_be_bytes([0, m.xid()[0], m.xid()[1], m.xid()[2]]),
                ev[0].xid
            );
        }
        if ev[0].msg_type == msg::REPLY && ev[0].flags & flags::HAS_PREFIX != 0 {
            seen.push((
                c.name.split('#').next().unwrap().to_string(),
                prefix(&ev[0]),
                ev[0].relay_depth,
                ev[0].valid,
            ));
        }
    }
    seen.dedup();
    assert!(
        seen.contains(&(
            "kea-local-dhclient.pcap".into(),
            "2001:db8:100::/56".into(),
            0,
            60
        )),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(
            "dhcpd-local-dhcpcd.pcap".into(),
            "2001:db8:2ff::/56".into(),
            0,
            7200
        )) || seen
            .iter()
            .any(|s| s.0 == "dhcpd-local-dhcpcd.pcap" && s.1 == "2001:db8:2ff::/56"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.0 == "relay2-upper-uplink.pcap" && s.1 == "2001:db8:c000::/56" && s.2 == 2),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.0 == "relay2-between-relays.pcap" && s.2 == 1),
        "{seen:?}"
    );
}

/// Events reassemble into one message per packet.
#[test]
fn events_reassemble() {
    let mut asm = Assembler::default();
    let ev = events("reply-8-prefixes");
    let mut out = Vec::new();
    for e in &ev {
        out.extend(asm.push(e));
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].prefixes.len(), 8);
}
