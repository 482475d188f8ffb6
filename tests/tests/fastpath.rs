//! The XDP fast path and source-address validation.
//!
//! `fast_path_table`: Katran-style rows of {description, ingress interface,
//! input packet, expected action, expected output packet, expected counter},
//! run through the real program with BPF_PROG_TEST_RUN inside a namespace
//! that has the routes and neighbours the FIB lookup needs.
//!
//! `fast_path_in_namespaces`: real traffic. An upstream host pings into a
//! prefix Kea delegated to a client whose veth can take redirects (GRO on);
//! the binding's counters grow by exactly the packets sent; a client on
//! another downstream link spoofing a source inside that prefix is dropped
//! and counted. `tests/datapath.rs` covers the links where the fast path
//! must leave the packet to the kernel.

use std::{collections::BTreeMap, net::Ipv6Addr, time::Duration};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use pd_agent::{
    binding::{Binding, Kind},
    ebpf::{if_index, Programs},
    maps::{RouteMap, SavMaps},
};
use pd_common::{ifflags, Counter};
use pd_tests::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// An Ethernet + IPv6 packet with `nh` and a payload.
fn packet(src: &str, dst: &str, hop_limit: u8, nh: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0xfe, 0x86, 0xdd];
    f.extend([0x60, 0, 0, 0]);
    f.extend((payload.len() as u16).to_be_bytes());
    f.push(nh);
    f.push(hop_limit);
    f.extend(src.parse::<Ipv6Addr>().unwrap().octets());
    f.extend(dst.parse::<Ipv6Addr>().unwrap().octets());
    f.extend(payload);
    f
}

fn echo(src: &str, dst: &str, hop_limit: u8) -> Vec<u8> {
    packet(
        src,
        dst,
        hop_limit,
        58,
        &[128, 0, 0, 0, 0, 1, 0, 1, b'p', b'd'],
    )
}

/// UDP with a 4-byte payload (to 546/547 it is a DHCPv6 message of type 0,
/// which the snooper counts as `ignored_type` and passes).
fn udp(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    let mut u = 40000u16.to_be_bytes().to_vec();
    u.extend(dport.to_be_bytes());
    u.extend(12u16.to_be_bytes());
    u.extend([0, 0, 1, 2, 3, 4]);
    packet(src, dst, 64, 17, &u)
}

fn binding(prefix: &str, iface: &str, ifindex: u32, next_hop: &str) -> Binding {
    Binding {
        prefix: prefix.parse().unwrap(),
        kind: Kind::Delegated,
        iface: iface.into(),
        ifindex,
        next_hop: next_hop.parse().unwrap(),
        client_duid: vec![0, 1, 2],
        iaid: 1,
        t1: 0,
        t2: 0,
        preferred_lifetime: 100,
        valid_lifetime: 200,
        expires_at: None,
        updated_at: 0,
    }
}

enum Out {
    /// Output equals input.
    Same,
    /// Forwarded: MACs rewritten, hop limit decremented.
    Forwarded { dmac: [u8; 6], smac: [u8; 6] },
}

struct Row {
    what: &'static str,
    ingress: &'static str,
    input: Vec<u8>,
    action: u32,
    out: Out,
    counter: Option<Counter>,
}

/// Topology (all in one namespace `rt`, peers elsewhere):
/// wan0 (2001:db8:feed::1/64); lan0 with 2001:db8:100::/56 via fe80::c
/// (static neighbour) and 2001:db8:200::/56 via fe80::d (no neighbour);
/// lan1 in strict mode with on-link 2001:db8:1::/64 and 2001:db8:300::/56
/// via fe80::e (static neighbour), and 2001:db8:400::/56 bound to lan0 but
/// routed by the kernel out of lan1. The flags are the agent's: wan0 may
/// forward (no firewall), lan0 takes redirects, lan1 does not (a plain
/// veth); fw0 is an ingress while a firewall is loaded (no FWD_IN); l3 a
/// link without Ethernet header (tun, ppp) with source validation.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn fast_path_table() -> Result<()> {
    let rt = Netns::new("fp")?;
    let peer = Netns::new("fpp")?;
    veth(&rt, "wan0", &peer, "w")?;
    veth(&rt, "lan0", &peer, "l0")?;
    veth(&rt, "lan1", &peer, "l1")?;
    veth(&rt, "fw0", &peer, "fwp")?;
    veth(&rt, "l3", &peer, "l3p")?;
    rt.add_addr("2001:db8:feed::1/64", "wan0")?;
    rt.add_addr("2001:db8:1::1/64", "lan1")?;
    rt.exec(&[
        "ip",
        "-6",
        "neigh",
        "replace",
        "fe80::c",
        "dev",
        "lan0",
        "lladdr",
        "02:00:00:00:00:0c",
        "nud",
        "permanent",
    ])?;
    rt.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:100::/56",
        "via",
        "fe80::c",
        "dev",
        "lan0",
    ])?;
    rt.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:200::/56",
        "via",
        "fe80::d",
        "dev",
        "lan0",
    ])?;
    rt.exec(&[
        "ip",
        "-6",
        "neigh",
        "replace",
        "fe80::e",
        "dev",
        "lan1",
        "lladdr",
        "02:00:00:00:00:0e",
        "nud",
        "permanent",
    ])?;
    rt.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:300::/56",
        "via",
        "fe80::e",
        "dev",
        "lan1",
    ])?;
    // A prefix bound to lan0 that the kernel routes out of lan1 (someone
    // else's route won): the FIB's egress is what counts.
    rt.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:400::/56",
        "via",
        "fe80::e",
        "dev",
        "lan1",
    ])?;
    let lan0_mac = rt.mac("lan0")?;

    let _in = InNetns::enter(&rt)?;
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("fp"));
    let _pin_guard = PinGuard(pin.clone());
    let mut progs = Programs::load(&pin)?;
    for i in ["wan0", "lan0", "lan1", "fw0", "l3"] {
        progs.attach_xdp(i)?;
    }
    let (lan0, lan1, wan0) = (if_index("lan0")?, if_index("lan1")?, if_index("wan0")?);
    let (fw0, l3) = (if_index("fw0")?, if_index("l3")?);
    let mut routes = RouteMap::new(progs.take_routes()?, progs.take_fwd_stats()?);
    routes.insert(&binding("2001:db8:100::/56", "lan0", lan0, "fe80::c"))?;
    routes.insert(&binding("2001:db8:200::/56", "lan0", lan0, "fe80::d"))?;
    routes.insert(&binding("2001:db8:300::/56", "lan1", lan1, "fe80::e"))?;
    routes.insert(&binding("2001:db8:400::/56", "lan0", lan0, "fe80::c"))?;
    let mut sav = SavMaps {
        ifaces: progs.take_ifaces()?,
        onlink: progs.take_onlink()?,
    };
    sav.set_iface(wan0, ifflags::FWD_IN)?;
    sav.set_iface(lan0, ifflags::SAV | ifflags::FWD_IN | ifflags::FWD_OUT)?;
    sav.set_iface(lan1, ifflags::SAV | ifflags::SAV_STRICT | ifflags::FWD_IN)?;
    sav.set_iface(fw0, ifflags::FWD_OUT)?;
    sav.set_iface(l3, ifflags::L3 | ifflags::SAV)?;
    sav.set_onlink(&[(lan1, "2001:db8:1::/64".parse()?)])?;
    let counters = progs.take_counters()?;
    // The agent's lease on the flags, as a running agent keeps it.
    let mut lease = progs.take_lease()?;
    lease.set(0, u64::MAX, 0)?;

    let fwd = Out::Forwarded {
        dmac: [2, 0, 0, 0, 0, 0x0c],
        smac: lan0_mac,
    };
    let mut vlan = echo("2001:db8:feed::2", "2001:db8:100::1", 64);
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    let mut ipv4 = echo("2001:db8:feed::2", "2001:db8:100::1", 64);
    ipv4[12] = 0x08;
    ipv4[13] = 0x00;
    // Links without a link-layer header carry the IPv6 header first.
    let bare = |f: Vec<u8>| f[14..].to_vec();
    let mut bare_v4 = bare(echo("2001:db8:feed::2", "2001:db8:100::1", 64));
    bare_v4[0] = 0x45;
    let rows = vec![
        Row {
            what: "delegated destination is forwarded",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:100::1", 64),
            action: XDP_REDIRECT,
            out: fwd,
            counter: Some(Counter::FwdRedirected),
        },
        Row {
            what: "UDP to a delegated destination is forwarded",
            ingress: "wan0",
            input: udp("2001:db8:feed::2", "2001:db8:100::77", 9),
            action: XDP_REDIRECT,
            out: Out::Forwarded {
                dmac: [2, 0, 0, 0, 0, 0x0c],
                smac: lan0_mac,
            },
            counter: Some(Counter::FwdRedirected),
        },
        Row {
            what: "hop limit 1 goes to the kernel",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:100::1", 1),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::FwdHopLimit),
        },
        Row {
            what: "no neighbour entry yet goes to the kernel",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:200::1", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::FwdNoNeigh),
        },
        Row {
            what: "non-delegated destination passes",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:999::1", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "fragment to a delegated destination passes",
            ingress: "wan0",
            input: packet(
                "2001:db8:feed::2",
                "2001:db8:100::1",
                64,
                44,
                &[58, 0, 0, 1, 0, 0, 0, 9],
            ),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::FwdNotHandled),
        },
        Row {
            what: "DHCPv6 to a delegated destination is snooped, not forwarded",
            ingress: "wan0",
            input: udp("2001:db8:feed::2", "2001:db8:100::1", 547),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::IgnoredType),
        },
        Row {
            what: "spoofed source from the wrong interface drops",
            ingress: "lan1",
            input: echo("2001:db8:100::5", "2001:db8:feed::2", 64),
            action: XDP_DROP,
            out: Out::Same,
            counter: Some(Counter::SavDropped),
        },
        Row {
            what: "delegated source on its own interface passes",
            ingress: "lan0",
            input: echo("2001:db8:100::5", "2001:db8:feed::2", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "strict: unknown source drops",
            ingress: "lan1",
            input: udp("2001:db8:77::1", "2001:db8:feed::2", 9),
            action: XDP_DROP,
            out: Out::Same,
            counter: Some(Counter::SavStrictDropped),
        },
        Row {
            what: "strict: on-link source passes",
            ingress: "lan1",
            input: udp("2001:db8:1::9", "2001:db8:feed::2", 9),
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "strict: link-local source passes",
            ingress: "lan1",
            input: udp("fe80::9", "ff02::1", 9),
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "strict: neighbour solicitation passes",
            ingress: "lan1",
            input: packet(
                "2001:db8:77::1",
                "ff02::1:ff00:1",
                255,
                58,
                &[135, 0, 0, 0, 0, 0, 0, 0],
            ),
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "strict: DHCPv6 from an unknown source passes",
            ingress: "lan1",
            input: udp("2001:db8:77::1", "ff02::1:2", 547),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::IgnoredType),
        },
        Row {
            what: "unvalidated upstream: delegated source passes",
            ingress: "wan0",
            input: echo("2001:db8:100::5", "2001:db8:feed::1", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "802.1Q-tagged frame passes",
            ingress: "wan0",
            input: vlan,
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "IPv4 passes",
            ingress: "wan0",
            input: ipv4,
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "egress that cannot take redirects: the kernel forwards",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:300::1", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::FwdNoXmit),
        },
        Row {
            what: "the FIB's egress cannot take redirects: the kernel forwards",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:400::1", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::FwdNoXmit),
        },
        Row {
            what: "firewall on the forwarding path: the kernel forwards",
            ingress: "fw0",
            input: echo("2001:db8:feed::2", "2001:db8:100::1", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::FwdFirewall),
        },
        Row {
            what: "firewall: a non-delegated destination passes uncounted",
            ingress: "fw0",
            input: echo("2001:db8:feed::2", "2001:db8:999::1", 64),
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "bare IPv6 link: a delegated destination goes to the kernel",
            ingress: "l3",
            input: bare(echo("2001:db8:feed::2", "2001:db8:100::1", 64)),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::FwdLinkType),
        },
        Row {
            what: "bare IPv6 link: a spoofed source drops",
            ingress: "l3",
            input: bare(echo("2001:db8:100::5", "2001:db8:feed::2", 64)),
            action: XDP_DROP,
            out: Out::Same,
            counter: Some(Counter::SavDropped),
        },
        Row {
            what: "bare IPv6 link: DHCPv6 is snooped",
            ingress: "l3",
            input: bare(udp("fe80::9", "ff02::1:2", 547)),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::IgnoredType),
        },
        Row {
            what: "bare link: IPv4 passes",
            ingress: "l3",
            input: bare_v4,
            action: XDP_PASS,
            out: Out::Same,
            counter: None,
        },
        Row {
            what: "truncated IPv6 header passes",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:100::1", 64)[..40].to_vec(),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::TruncatedHeader),
        },
        Row {
            what: "bare Ethernet header passes",
            ingress: "wan0",
            input: echo("2001:db8:feed::2", "2001:db8:100::1", 64)[..14].to_vec(),
            action: XDP_PASS,
            out: Out::Same,
            counter: Some(Counter::TruncatedHeader),
        },
    ];

    let ifindex = |n: &str| match n {
        "lan0" => lan0,
        "lan1" => lan1,
        "fw0" => fw0,
        "l3" => l3,
        _ => wan0,
    };
    let mut failures = Vec::new();
    for r in &rows {
        let before: BTreeMap<_, _> = counters.read().into_iter().collect();
        let mut ctx = [0u32; 6];
        ctx[1] = r.input.len() as u32; // data_end
        ctx[3] = ifindex(r.ingress); // ingress_ifindex
        let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|x| x.to_ne_bytes()).collect();
        let mut out = vec![0u8; r.input.len() + 64];
        let res = progs.xdp()?.test_run(TestRunOptions {
            data_in: Some(&r.input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_bytes),
            ..Default::default()
        })?;
        let got = &out[..res.data_size_out as usize];
        let want = match &r.out {
            Out::Same => r.input.clone(),
            Out::Forwarded { dmac, smac } => {
                let mut w = r.input.clone();
                w[0..6].copy_from_slice(dmac);
                w[6..12].copy_from_slice(smac);
                w[21] -= 1;
                w
            }
        };
        let after: BTreeMap<_, _> = counters.read().into_iter().collect();
        let bumped: Vec<&str> = after
            .iter()
            .filter(|(k, v)| before[*k] != **v && **k != "seen")
            .map(|(k, _)| *k)
            .collect();
        let want_counters: Vec<&str> = r.counter.iter().map(|c| c.name()).collect();
        if res.return_value != r.action || got != want.as_slice() || bumped != want_counters {
            failures.push(format!(
                "{}: action {} (want {}), output {}, counters {:?} (want {:?})",
                r.what,
                res.return_value,
                r.action,
                if got == want.as_slice() {
                    "as expected"
                } else {
                    "WRONG"
                },
                bumped,
                want_counters
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // The forwarded rows were counted against the binding.
    let (pkts, bytes) = routes.counters("2001:db8:100::/56".parse()?).unwrap();
    assert_eq!(pkts, 2);
    assert_eq!(bytes, (rows[0].input.len() + rows[1].input.len()) as u64);

    // Without an agent's lease (stopped, crashed) nothing is forwarded.
    lease.set(0, 0, 0)?;
    let before = counters.get(Counter::FwdNoAgent);
    let mut ctx = [0u32; 6];
    ctx[1] = rows[0].input.len() as u32;
    ctx[3] = wan0;
    let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|x| x.to_ne_bytes()).collect();
    let mut out = vec![0u8; rows[0].input.len() + 64];
    let res = progs.xdp()?.test_run(TestRunOptions {
        data_in: Some(&rows[0].input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx_bytes),
        ..Default::default()
    })?;
    assert_eq!(res.return_value, XDP_PASS, "no lease: the kernel forwards");
    assert_eq!(&out[..res.data_size_out as usize], rows[0].input.as_slice());
    assert_eq!(counters.get(Counter::FwdNoAgent), before + 1);
    Ok(())
}

struct PinGuard(std::path::PathBuf);
impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ```text
///  upstream eth0 --- wan0 router lan0 --- eth0 client1 (dhclient, Kea delegates a /56)
///                              lan1 --- eth0 client2 (spoofs a source in client1's /56)
/// ```
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn fast_path_in_namespaces() -> Result<()> {
    let RouterLab {
        upstream,
        router,
        client: c1,
    } = RouterLab::new()?;
    let c2 = host_behind(&router, "lan1", "c2")?;
    // client1's veth can take XDP redirects (GRO gives it a NAPI instance,
    // as a NIC's driver has one); datapath.rs tests the plain veth.
    c1.exec(&["ethtool", "-K", "eth0", "gro", "on"])?;
    let dir = TempDir::new("fpns")?;
    let agent = Agent::start(&router, &dir, &["lan0", "lan1"], &["wan0"])?;
    let conf = kea_config(
        &dir,
        &[KeaSubnet {
            iface: "lan0",
            subnet: "2001:db8:ffff::/64",
            pool: "2001:db8:100::",
            pool_len: 48,
            plen: 56,
            relayed: false,
        }],
        600,
    )?;
    let _kea = start_kea(&router, &dir, &conf)?;
    let cdir = TempDir::new("fpc")?;
    let _dhclient = start_dhclient(&c1, &cdir, "eth0")?;
    let prefix =
        wait_for(Duration::from_secs(30), || dhclient_prefix(&cdir)).context("no prefix")?;
    wait_for(Duration::from_secs(10), || {
        agent.map_prefixes().ok()?.contains(&prefix).then_some(())
    })
    .with_context(|| format!("{prefix} not in the map: {}", agent.log()))?;
    let host = c1.host_in(&prefix)?;

    // Warm up: the first packet resolves the neighbour through the kernel.
    assert!(upstream.ping(&host, 5), "ping {host}");
    let rx = |agent: &Agent| -> Result<u64> {
        let b = agent.bindings()?;
        let e = b
            .iter()
            .find(|e| e["prefix"] == prefix.as_str())
            .context("binding")?;
        e["rx_packets"]
            .as_u64()
            .context("rx_packets in bindings --json")
    };
    count_echoes(&c1, &host)?;
    let before = rx(&agent)?;
    const N: u64 = 20;
    upstream.exec(&[
        "ping",
        "-6",
        "-c",
        &N.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
        &host,
    ])?;
    let after = rx(&agent)?;
    assert_eq!(
        after - before,
        N,
        "binding counters grew by exactly the {N} echo requests"
    );
    assert_eq!(echo_count(&c1)?, N, "every echo request reached client1");
    let stats = agent.stats()?;
    assert!(
        stats["kernel"]["fwd_redirected"].as_u64() >= Some(N),
        "{stats}"
    );

    // client2 on lan1 claims an address inside client1's prefix.
    let spoofed = format!("{}5", prefix.split('/').next().unwrap());
    c2.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{spoofed}/128"),
        "dev",
        "lo",
    ])?;
    let dropped_before = agent.stats()?["kernel"]["sav_dropped"]
        .as_u64()
        .unwrap_or(0);
    let out = c2
        .cmd(&[
            "ping",
            "-6",
            "-c",
            "5",
            "-i",
            "0.05",
            "-W",
            "1",
            "-I",
            &spoofed,
            "2001:db8:feed::2",
        ])
        .output()?;
    assert!(!out.status.success(), "spoofed pings must not be answered");
    let dropped = agent.stats()?["kernel"]["sav_dropped"]
        .as_u64()
        .unwrap_or(0)
        - dropped_before;
    assert_eq!(dropped, 5, "every spoofed packet dropped and counted");
    Ok(())
}
