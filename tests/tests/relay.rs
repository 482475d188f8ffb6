//! pd-agent as the DHCPv6 relay (`--relay-to`), with real servers, relays
//! and clients from Debian's packages, each test in fresh namespaces. Run
//! with `cargo xtask test relay`.
//!
//! What the server saw is read from a capture on its own interface
//! (tcpdump), and every relay header in it is parsed: the hop-counts,
//! link-addresses and Interface-IDs are the ones the server worked with,
//! and nothing malformed reached it.

use std::{net::Ipv6Addr, time::Duration};

use anyhow::{bail, Context, Result};
use pd_agent::relay::codec::{self, option, Relay, RELAY_FORW};
use pd_tests::{
    corpus::{duid, msg_raw, tlv},
    *,
};

/// tcpdump writing the DHCPv6 relay traffic of `dev` in `ns` to a pcap.
struct Capture {
    daemon: Daemon,
    dir: TempDir,
}

impl Capture {
    fn start(ns: &Netns, dev: &str) -> Result<Capture> {
        let dir = TempDir::new("cap")?;
        let file = dir.path("relay.pcap").display().to_string();
        let daemon = ns.spawn(
            &[
                "tcpdump",
                "-n",
                "-U",
                "-i",
                dev,
                "-w",
                &file,
                "udp port 547",
            ],
            &dir.path("tcpdump.log"),
        )?;
        wait_for(Duration::from_secs(10), || {
            daemon.log_text().contains("listening on").then_some(())
        })
        .with_context(|| format!("tcpdump did not start: {}", daemon.log_text()))?;
        Ok(Capture { daemon, dir })
    }

    /// The Relay-Forw messages captured so far (UDP payloads to port 547).
    fn relay_forws(&self) -> Vec<Vec<u8>> {
        pd_tests::corpus::pcaps(&self.dir.0)
            .into_iter()
            .filter_map(|c| {
                let f = c.frame;
                let udp = f.len() > 62 && f[12..14] == [0x86, 0xdd] && f[20] == 17;
                (udp && f[56..58] == [2, 35] && f[62] == RELAY_FORW).then(|| f[62..].to_vec())
            })
            .collect()
    }

    fn stop(&mut self) {
        self.daemon.stop();
    }
}

/// Kea beyond the router, pd-agent the only relay on it, two client links
/// with their own subnets and pools:
///
/// ```text
///  server(Kea) eth0 ---- wan0 router(pd-agent --relay-to) lan0 ---- eth0 client0 (dhclient)
///                                                         lan1 ---- eth0 client1 (dhclient)
/// ```
///
/// Each client gets its prefix out of its own link's pool (Kea chose the
/// subnet by the link-address), each prefix is routed via its client, the
/// server side reaches both, and a release removes the route.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kea_remote_two_links_relayed_by_pd_agent() -> Result<()> {
    let (up, router) = upstream_and_router()?;
    let c0 = host_behind(&router, "lan0", "c0")?;
    let c1 = host_behind(&router, "lan1", "c1")?;
    router.add_addr("2001:db8:1::1/64", "lan0")?;
    router.add_addr("2001:db8:2::1/64", "lan1")?;
    let dir = TempDir::new("rly")?;
    let _kea = kea_per_link(&up, &dir, &[1, 2])?;
    let mut cap = Capture::start(&up, "eth0")?;
    let agent = Agent::start_opts(
        &router,
        &dir,
        AgentOpts {
            args: vec![
                "--relay-to".into(),
                SERVER.into(),
                "--metrics".into(),
                "[::1]:9431".into(),
            ],
            ..AgentOpts::new(&["lan0", "lan1"], &["wan0"])
        },
    )?;
    assert!(agent.log().contains("relaying DHCPv6"), "{}", agent.log());
    let (cd0, cd1) = (TempDir::new("c0")?, TempDir::new("c1")?);
    let mut dh0 = start_dhclient(&c0, &cd0, "eth0")?;
    let _dh1 = start_dhclient(&c1, &cd1, "eth0")?;
    let p0 = wait_delegated(&agent, &cd0, &dh0)?;
    let p1 = wait_delegated(&agent, &cd1, &_dh1)?;
    assert!(
        p0.starts_with("2001:db8:1") && p0.ends_with("/56"),
        "client0 got {p0}"
    );
    assert!(
        p1.starts_with("2001:db8:2") && p1.ends_with("/56"),
        "client1 got {p1}"
    );
    wait_route(&router, &p0, &ll(&c0)?, "lan0", || agent.log())?;
    wait_route(&router, &p1, &ll(&c1)?, "lan1", || agent.log())?;

    // Traffic from the server's side reaches both clients' prefixes.
    for (c, p) in [(&c0, &p0), (&c1, &p1)] {
        let host = c.host_in(p)?;
        count_echoes(c, &host)?;
        ping_n(&up, &host, 3);
        assert_eq!(echo_count(c)?, 3, "echo requests reaching {host} in {p}");
    }

    // What the server saw: hop-count 0, the client link's address and name.
    let forws = cap.relay_forws();
    for (iface, link, client) in [
        ("lan0", "2001:db8:1::1", &c0),
        ("lan1", "2001:db8:2::1", &c1),
    ] {
        let peer: Ipv6Addr = ll(client)?.parse()?;
        let seen: Vec<Relay> = forws
            .iter()
            .filter_map(|f| Relay::parse(f).ok())
            .filter(|r| r.peer_address == peer)
            .collect();
        assert!(
            !seen.is_empty(),
            "no Relay-Forw for {iface}'s client at the server"
        );
        let lladdr = [&[0u8, 1][..], &client.mac("eth0")?].concat();
        for r in seen {
            assert_eq!(r.hop_count, 0);
            assert_eq!(r.link_address, link.parse::<Ipv6Addr>()?);
            assert_eq!(r.option(option::INTERFACE_ID), Some(iface.as_bytes()));
            // The client's MAC, as the XDP program saw it (RFC 6939).
            assert_eq!(r.option(option::CLIENT_LINKLAYER_ADDR), Some(&lladdr[..]));
        }
    }

    let st = agent.stats()?;
    let relay = &st["relay"];
    for iface in ["lan0", "lan1"] {
        assert!(count(&relay["up"][iface]["solicit"]) >= 1, "{relay}");
        assert!(count(&relay["down"][iface]["reply"]) >= 1, "{relay}");
    }
    assert!(
        relay["drops"].as_object().is_none_or(|d| d.is_empty()),
        "{relay}"
    );
    let metrics = scrape(&router, "[::1]:9431")?;
    assert!(
        metrics.contains(
            "pd_relayed_messages_total{direction=\"down\",iface=\"lan0\",type=\"reply\"}"
        ),
        "{metrics}"
    );

    // Release: the relay carries it up, the server's Reply down, the route goes.
    dh0.stop();
    dhclient_release(&c0, &cd0, "eth0")?;
    wait_no_route(&router, &p0, || agent.log())?;
    assert!(count(&agent.stats()?["relay"]["up"]["lan0"]["release"]) >= 1);
    // The other client's route stays.
    assert!(our_routes(&router)?.iter().any(|(p, _, _)| p == &p1));
    cap.stop();
    Ok(())
}

/// A lower router running pd-agent as the relay and the agent, under an
/// upper one doing the same, under Kea:
///
/// ```text
///  server(Kea) eth0 -- wan0 upper(pd-agent relay, trusts lan0) lan0 -- up0 lower(pd-agent relay) cl0 -- eth0 client
/// ```
///
/// The server sees two relay layers: the outer with hop-count 1 and
/// link-address 0 (the lower relay has a global source), the inner with
/// hop-count 0 and the client link's address, which picks the pool. Each
/// router routes the prefix one level down; the server reaches the client
/// through both; the release removes both routes.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn chain_pd_agent_under_pd_agent_to_kea() -> Result<()> {
    chain_pd_agent(None)
}

/// [`chain_pd_agent_under_pd_agent_to_kea`] with the lower relay sending
/// from port 10547 (`--relay-port`, RFC 8357): its layer carries the Relay
/// Source Port option with 0, the upper relay's layer the lower one's port;
/// Kea echoes the options, and the upper relay sends the lower one's
/// Relay-Reply to 10547, where it is heard. Clients still find the relay on 547.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn chain_with_relay_source_port_rfc8357() -> Result<()> {
    chain_pd_agent(Some(10547))
}

/// The chains' topology: the server's namespace, the upper router (lan0
/// 2001:db8:e::1), the lower one (up0 2001:db8:e::2, cl0 2001:db8:1::1)
/// and a client behind it.
fn chain_lab() -> Result<(Netns, Netns, Netns, Netns)> {
    let (up, upper) = upstream_and_router()?;
    let lower = Netns::new("lo")?;
    veth(&upper, "lan0", &lower, "up0")?;
    upper.add_addr("2001:db8:e::1/64", "lan0")?;
    lower.add_addr("2001:db8:e::2/64", "up0")?;
    lower.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:e::1",
    ])?;
    let client = host_behind(&lower, "cl0", "cl")?;
    lower.add_addr("2001:db8:1::1/64", "cl0")?;
    Ok((up, upper, lower, client))
}

fn chain_pd_agent(lower_port: Option<u16>) -> Result<()> {
    let (up, upper, lower, client) = chain_lab()?;
    let dir = TempDir::new("chn")?;
    let ldir = TempDir::new("chl")?;
    let _kea = kea_per_link(&up, &dir, &[1])?;
    let mut cap = Capture::start(&up, "eth0")?;
    let top = Agent::start_opts(
        &upper,
        &dir,
        AgentOpts {
            args: vec![
                "--relay-to".into(),
                SERVER.into(),
                "--relay-trust".into(),
                "lan0".into(),
            ],
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    )?;
    let mut args = vec!["--relay-to".to_string(), "2001:db8:e::1%up0".into()];
    if let Some(p) = lower_port {
        args.extend(["--relay-port".into(), p.to_string()]);
    }
    let low = Agent::start_opts(
        &lower,
        &ldir,
        AgentOpts {
            args,
            ..AgentOpts::new(&["cl0"], &["up0"])
        },
    )?;
    let logs = || format!("upper:\n{}\nlower:\n{}", top.log(), low.log());
    let cdir = TempDir::new("chc")?;
    let mut dh = start_dhclient(&client, &cdir, "eth0")?;
    let prefix = wait_delegated(&low, &cdir, &dh)?;
    assert!(prefix.starts_with("2001:db8:1"), "{prefix}");
    wait_route(&lower, &prefix, &ll(&client)?, "cl0", logs)?;
    wait_route(&upper, &prefix, "2001:db8:e::2", "lan0", logs)?;

    let host = client.host_in(&prefix)?;
    count_echoes(&client, &host)?;
    ping_n(&up, &host, 3);
    assert_eq!(echo_count(&client)?, 3, "echo requests reaching {host}");

    let client_ll: Ipv6Addr = ll(&client)?.parse()?;
    let forws = cap.relay_forws();
    assert!(!forws.is_empty());
    for f in &forws {
        let outer = Relay::parse(f)?;
        assert_eq!(
            (outer.hop_count, outer.link_address, outer.peer_address),
            (1, Ipv6Addr::UNSPECIFIED, "2001:db8:e::2".parse()?),
            "outer layer"
        );
        assert_eq!(outer.option(option::INTERFACE_ID), Some(&b"lan0"[..]));
        // Only the relay next to the client names its MAC.
        assert_eq!(outer.option(option::CLIENT_LINKLAYER_ADDR), None);
        let inner = Relay::parse(outer.message)?;
        let lladdr = [&[0u8, 1][..], &client.mac("eth0")?].concat();
        assert_eq!(
            inner.option(option::CLIENT_LINKLAYER_ADDR),
            Some(&lladdr[..])
        );
        assert_eq!(
            (inner.hop_count, inner.link_address, inner.peer_address),
            (0, "2001:db8:1::1".parse()?, client_ll),
            "inner layer"
        );
        assert_eq!(inner.option(option::INTERFACE_ID), Some(&b"cl0"[..]));
        codec::check_client_message(inner.message)?;
        let port = |r: &Relay| r.option(option::RELAY_SOURCE_PORT).map(<[u8]>::to_vec);
        match lower_port {
            Some(p) => {
                assert_eq!(port(&outer), Some(p.to_be_bytes().to_vec()), "outer layer");
                assert_eq!(port(&inner), Some(vec![0, 0]), "inner layer");
            }
            None => assert_eq!((port(&outer), port(&inner)), (None, None)),
        }
    }
    let st = top.stats()?;
    assert!(count(&st["relay"]["up"]["lan0"]["relay_forw"]) >= 1, "{st}");
    assert!(
        count(&st["relay"]["down"]["lan0"]["relay_repl"]) >= 1,
        "{st}"
    );

    dh.stop();
    dhclient_release(&client, &cdir, "eth0")?;
    wait_no_route(&lower, &prefix, logs)?;
    wait_no_route(&upper, &prefix, logs)?;
    cap.stop();
    Ok(())
}

/// ISC dhcrelay (with its own agent watching) under pd-agent as the
/// upper relay, under Kea: the chain dhcrelay builds is relayed on, and the
/// server picks the pool by dhcrelay's link-address.
///
/// ```text
///  server(Kea) eth0 -- wan0 upper(pd-agent relay, trusts lan0) lan0 -- up0 lower(dhcrelay) cl0 -- eth0 client
/// ```
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn chain_dhcrelay_under_pd_agent_to_kea() -> Result<()> {
    let (up, upper, lower, client) = chain_lab()?;
    let dir = TempDir::new("chd")?;
    let _kea = kea_per_link(&up, &dir, &[1])?;
    let mut cap = Capture::start(&up, "eth0")?;
    let top = Agent::start_opts(
        &upper,
        &dir,
        AgentOpts {
            args: vec![
                "--relay-to".into(),
                SERVER.into(),
                "--relay-trust".into(),
                "lan0".into(),
            ],
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    )?;
    let _dhcrelay = start_dhcrelay(&lower, &dir, "cl0", "2001:db8:e::1%up0")?;
    let cdir = TempDir::new("chc")?;
    let mut dh = start_dhclient(&client, &cdir, "eth0")?;
    let prefix = wait_for(Duration::from_secs(60), || dhclient_prefix(&cdir))
        .with_context(|| format!("no prefix: {}\n{}", dh.log_text(), top.log()))?;
    assert!(prefix.starts_with("2001:db8:1"), "{prefix}");
    // The upper router routes the prefix via the lower one.
    wait_route(&upper, &prefix, "2001:db8:e::2", "lan0", || top.log())?;

    let client_ll: Ipv6Addr = ll(&client)?.parse()?;
    let forws = cap.relay_forws();
    assert!(!forws.is_empty());
    for f in &forws {
        let outer = Relay::parse(f)?;
        assert_eq!(
            (outer.hop_count, outer.link_address),
            (1, Ipv6Addr::UNSPECIFIED)
        );
        let inner = Relay::parse(outer.message)?;
        assert_eq!(
            (inner.hop_count, inner.link_address, inner.peer_address),
            (0, "2001:db8:1::1".parse()?, client_ll),
            "dhcrelay's layer"
        );
    }
    dh.stop();
    dhclient_release(&client, &cdir, "eth0")?;
    wait_no_route(&upper, &prefix, || top.log())?;
    cap.stop();
    Ok(())
}

/// Port 547 already taken on the router (dhcrelay runs there): the agent
/// refuses to start, naming the port and the process holding it.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn relay_port_taken_names_the_holder() -> Result<()> {
    let lab = RouterLab::new()?;
    let dir = TempDir::new("p547")?;
    let _dhcrelay = start_dhcrelay(&lab.router, &dir, "lan0", "2001:db8:feed::2%wan0")?;
    let r = Agent::start_opts(
        &lab.router,
        &dir,
        AgentOpts {
            args: vec!["--relay-to".into(), SERVER.into()],
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    );
    let Err(e) = r else {
        bail!("the agent started although dhcrelay holds port 547");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("UDP port 547 is already taken by dhcrelay (pid"),
        "{e}"
    );
    Ok(())
}

/// A switched LAN behind `router`'s `iface`: a bridge in a namespace of
/// its own, with one port to the router and one to each of `n` hosts (as
/// containers on a Linux bridge: plain veths, forwarding off, a default
/// route via the router's link-local address).
fn switched_lan(router: &Netns, iface: &str, n: usize) -> Result<(Netns, Vec<Netns>)> {
    let sw = Netns::new("sw")?;
    sw.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
    sw.exec(&["ip", "link", "set", "br0", "up"])?;
    veth(router, iface, &sw, "p0")?;
    sw.exec(&["ip", "link", "set", "p0", "master", "br0"])?;
    let mut hosts = Vec::new();
    for i in 1..=n {
        let h = Netns::new(&format!("h{i}"))?;
        let port = format!("p{i}");
        veth(&sw, &port, &h, "eth0")?;
        sw.exec(&["ip", "link", "set", &port, "master", "br0"])?;
        h.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
        h.default_via("eth0", router, iface)?;
        hosts.push(h);
    }
    Ok((sw, hosts))
}

/// Send each of `payloads` as one UDP datagram from port 547 of `ns`'s
/// eth0 to `to` (a link-local address on that link), port 547.
fn send_from(ns: &Netns, to: Ipv6Addr, payloads: &[Vec<u8>]) -> Result<()> {
    let ifindex: u32 = ns
        .exec(&["cat", "/sys/class/net/eth0/ifindex"])?
        .trim()
        .parse()?;
    let _in = InNetns::enter(ns)?;
    let s = std::net::UdpSocket::bind("[::]:547")?;
    let dst = std::net::SocketAddrV6::new(to, 547, 0, ifindex);
    for p in payloads {
        s.send_to(p, dst)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Bad input on the wire from client links: a forged Relay-Reply, a
/// Relay-Forw on a link not trusted for relays, a hop-count at the limit,
/// truncated and inconsistent messages, a server's Reply, and the whole
/// parser corpus. Each is dropped and counted by reason; nothing
/// malformed reaches the server (every relay header captured there
/// parses, down to a well-formed client message); and afterwards a new
/// client is served.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn relay_drops_bad_input_and_keeps_serving() -> Result<()> {
    let (up, router) = upstream_and_router()?;
    let c0 = host_behind(&router, "lan0", "c0")?;
    let c1 = host_behind(&router, "lan1", "c1")?;
    router.add_addr("2001:db8:1::1/64", "lan0")?;
    router.add_addr("2001:db8:2::1/64", "lan1")?;
    let dir = TempDir::new("bad")?;
    let _kea = kea_per_link(&up, &dir, &[1, 2])?;
    let mut cap = Capture::start(&up, "eth0")?;
    // The corpus comes faster than a client's rate limit allows: the limit
    // is off here, so that every message meets the relay's checks (the
    // flood test covers the limits).
    let agent = Agent::start_opts(
        &router,
        &dir,
        AgentOpts {
            args: vec![
                "--relay-to".into(),
                SERVER.into(),
                "--relay-trust".into(),
                "lan1".into(),
                "--relay-client-rate".into(),
                "0".into(),
            ],
            ..AgentOpts::new(&["lan0", "lan1"], &["wan0"])
        },
    )?;
    let (r0, r1) = (router.link_local("lan0")?, router.link_local("lan1")?);
    let solicit = msg_raw(1, 0x010203, &tlv(1, &duid(7)));
    let a = corpus::a;
    let forw = |hop: u8, inner: &[u8]| corpus::relay(12, hop, a("::"), a("fe80::77"), &[], inner);
    let forged_reply = corpus::relay(
        13,
        0,
        a("::"),
        a("fe80::c1"),
        &tlv(18, b"lan0"),
        &msg_raw(7, 1, &[]),
    );
    let mut overrun = forw(0, &solicit);
    overrun[35] = 0xff; // the Relay Message's length, past the end
    let drops = |name: &str| -> u64 {
        agent
            .stats()
            .map(|s| count(&s["relay"]["drops"][name]))
            .unwrap_or(0)
    };
    // On the untrusted client link.
    send_from(
        &c0,
        r0,
        &[
            forged_reply.clone(),
            forw(0, &solicit),
            solicit[..3].to_vec(),
            [&solicit[..], &[0, 1, 0, 9, 1]].concat(),
            msg_raw(7, 9, &[]),
        ],
    )?;
    // On the trusted one: the hop limit and broken relay headers.
    send_from(
        &c1,
        r1,
        &[
            forw(8, &solicit),
            forw(0, &solicit)[..20].to_vec(),
            overrun,
            forged_reply,
        ],
    )?;
    let want = [
        ("relay_reply_from_downstream", 2),
        ("untrusted_relay_forw", 1),
        ("hop_limit", 1),
        ("malformed", 4),
        ("server_message_from_downstream", 1),
    ];
    wait_for(Duration::from_secs(10), || {
        want.iter().all(|(n, v)| drops(n) == *v).then_some(())
    })
    .with_context(|| format!("drops: {}", agent.stats().unwrap_or_default()["relay"]))?;
    // The whole corpus, from the untrusted link: its UDP payloads to 547.
    let payloads: Vec<Vec<u8>> = corpus::all()
        .into_iter()
        .filter_map(|c| {
            let f = c.frame;
            let plain = f.len() > 62 && f[12..14] == [0x86, 0xdd] && f[20] == 17;
            plain.then(|| f[62..].to_vec())
        })
        .collect();
    assert!(payloads.len() > 50, "{} corpus payloads", payloads.len());
    send_from(&c0, r0, &payloads)?;
    std::thread::sleep(Duration::from_secs(1));

    // Everything that reached the server is well-formed.
    let forws = cap.relay_forws();
    for f in &forws {
        let mut r = Relay::parse(f).with_context(|| format!("{f:02x?}"))?;
        while r.inner_type() == RELAY_FORW {
            r = Relay::parse(r.message)?;
        }
        codec::check_client_message(r.message).with_context(|| format!("{f:02x?}"))?;
        assert!(
            ![2, 7, 10, 12, 13].contains(&r.inner_type()),
            "a {} went up",
            r.inner_type()
        );
    }
    // A new client is served.
    let cdir = TempDir::new("badc")?;
    let dh = start_dhclient(&c0, &cdir, "eth0")?;
    let prefix = wait_delegated(&agent, &cdir, &dh)?;
    wait_route(&router, &prefix, &ll(&c0)?, "lan0", || agent.log())?;
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    cap.stop();
    Ok(())
}

/// A Solicit flood from one client, perfdhcp at ten times the client rate
/// limit (200 Solicits/s against 20/s), on a switched LAN: the kernel
/// drops it in XDP and counts it (`relay_client_rate`), the relay passes
/// on only the client's share, and another client on the same LAN is
/// served meanwhile.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn solicit_flood_from_one_client_is_dropped_in_xdp() -> Result<()> {
    let (up, router) = upstream_and_router()?;
    let (_sw, hosts) = switched_lan(&router, "lan0", 2)?;
    router.add_addr("2001:db8:1::1/64", "lan0")?;
    let dir = TempDir::new("fld")?;
    let _kea = kea_per_link(&up, &dir, &[1])?;
    let agent = Agent::start_opts(
        &router,
        &dir,
        AgentOpts {
            args: vec!["--relay-to".into(), SERVER.into()],
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    )?;
    let flood = hosts[0].spawn(
        &[
            "perfdhcp",
            "-6",
            "-l",
            "eth0",
            "-e",
            "prefix-only",
            "-r",
            "200",
            "-R",
            "100000",
            "-p",
            "8",
            "all",
        ],
        &dir.path("perfdhcp.log"),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let cdir = TempDir::new("fldc")?;
    let dh = start_dhclient(&hosts[1], &cdir, "eth0")?;
    let prefix = wait_delegated(&agent, &cdir, &dh)?;
    wait_route(&router, &prefix, &ll(&hosts[1])?, "lan0", || agent.log())?;
    let mid = agent.stats()?;
    // The other client was served while the flood went on.
    wait_for(Duration::from_secs(15), || {
        (!std::path::Path::new(&format!("/proc/{}", flood.pid())).exists()
            || flood.log_text().contains("Rate:"))
        .then_some(())
    })
    .with_context(|| format!("perfdhcp did not finish: {}", flood.log_text()))?;
    std::thread::sleep(Duration::from_millis(500));
    let st = agent.stats()?;
    let dropped = count(&st["kernel"]["relay_client_rate"]);
    let relayed = count(&st["relay"]["up"]["lan0"]["solicit"]);
    eprintln!(
        "perfdhcp: {}\nflood: {dropped} dropped in XDP, {relayed} Solicits relayed; mid-flood: {}",
        flood.log_text(),
        mid["kernel"]["relay_client_rate"]
    );
    // 8 s at 200/s is 1600 Solicits; the client's share is its burst (40)
    // and 20/s, about 200, plus the other client's few.
    assert!(count(&mid["kernel"]["relay_client_rate"]) > 0, "{mid}");
    assert!(dropped >= 1000, "{dropped} dropped: {st}");
    assert!(relayed <= 250, "{relayed} relayed: {st}");
    assert_eq!(count(&st["kernel"]["relay_iface_rate"]), 0, "{st}");
    Ok(())
}

/// The client link is deleted and created again (a new ifindex) while
/// pd-agent relays: the relay joins ff02::1:2 on the new interface by
/// itself, and a client there is served and routed.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn relay_follows_a_recreated_client_link() -> Result<()> {
    let (up, router) = upstream_and_router()?;
    let c0 = host_behind(&router, "lan0", "c0")?;
    router.add_addr("2001:db8:1::1/64", "lan0")?;
    let dir = TempDir::new("rcr")?;
    let _kea = kea_per_link(&up, &dir, &[1])?;
    let agent = Agent::start_opts(
        &router,
        &dir,
        AgentOpts {
            args: vec!["--relay-to".into(), SERVER.into()],
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    )?;
    router.exec(&["ip", "link", "del", "lan0"])?;
    std::thread::sleep(Duration::from_millis(300));
    veth(&router, "lan0", &c0, "eth0")?;
    router.add_addr("2001:db8:1::1/64", "lan0")?;
    c0.default_via("eth0", &router, "lan0")?;
    let cdir = TempDir::new("rcrc")?;
    let dh = start_dhclient(&c0, &cdir, "eth0")?;
    let prefix = wait_delegated(&agent, &cdir, &dh)?;
    wait_route(&router, &prefix, &ll(&c0)?, "lan0", || agent.log())?;
    let st = agent.stats()?;
    assert!(count(&st["relay"]["down"]["lan0"]["reply"]) >= 1, "{st}");
    Ok(())
}
