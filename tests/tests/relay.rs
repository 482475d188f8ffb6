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
use pd_tests::*;

/// Where Kea listens for relays: the unicast address on its eth0.
const KEA_LISTEN: &str = "eth0/2001:db8:feed::2";
const SERVER: &str = "2001:db8:feed::2";

/// Kea beyond the router with one subnet per client link (2001:db8:N::/64
/// delegating /56s out of 2001:db8:N00::/48), chosen by the link-address
/// the relay puts in.
fn kea_per_link(up: &Netns, dir: &TempDir, links: &[u8]) -> Result<Daemon> {
    let names: Vec<(String, String)> = links
        .iter()
        .map(|n| (format!("2001:db8:{n}::/64"), format!("2001:db8:{n}00::")))
        .collect();
    let subnets: Vec<KeaSubnet> = names
        .iter()
        .map(|(subnet, pool)| KeaSubnet {
            iface: KEA_LISTEN,
            subnet,
            pool,
            pool_len: 48,
            plen: 56,
            relayed: true,
        })
        .collect();
    let conf = kea_config(dir, &subnets, 600)?;
    start_kea(up, dir, &conf)
}

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

/// The client's link-local address on its eth0.
fn ll(ns: &Netns) -> Result<String> {
    Ok(ns.link_local("eth0")?.to_string())
}

/// Wait for `prefix` routed via `via` on `dev` in `ns`.
fn wait_route(
    ns: &Netns,
    prefix: &str,
    via: &str,
    dev: &str,
    log: impl Fn() -> String,
) -> Result<()> {
    wait_for(Duration::from_secs(20), || {
        our_routes(ns)
            .ok()?
            .iter()
            .any(|(p, v, d)| p == prefix && v == via && d == dev)
            .then_some(())
    })
    .with_context(|| {
        format!(
            "no route {prefix} via {via} dev {dev} in {}: {:?}\n{}",
            ns.name,
            our_routes(ns),
            log()
        )
    })
}

fn wait_no_route(ns: &Netns, prefix: &str, log: impl Fn() -> String) -> Result<()> {
    wait_for(Duration::from_secs(20), || {
        (!our_routes(ns).ok()?.iter().any(|(p, _, _)| p == prefix)).then_some(())
    })
    .with_context(|| format!("{prefix} still routed in {}\n{}", ns.name, log()))
}

fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
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
        for r in seen {
            assert_eq!(r.hop_count, 0);
            assert_eq!(r.link_address, link.parse::<Ipv6Addr>()?);
            assert_eq!(r.option(option::INTERFACE_ID), Some(iface.as_bytes()));
        }
    }

    let st = agent.stats()?;
    let relay = &st["relay"];
    for iface in ["lan0", "lan1"] {
        assert!(count(&relay["up"][iface]["solicit"]) >= 1, "{relay}");
        assert!(
            count(&relay["up"][iface]["request"]) + count(&relay["up"][iface]["solicit"]) >= 2
                || count(&relay["down"][iface]["reply"]) >= 1,
            "{relay}"
        );
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
    let low = Agent::start_opts(
        &lower,
        &ldir,
        AgentOpts {
            args: vec!["--relay-to".into(), "2001:db8:e::1%up0".into()],
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
        let inner = Relay::parse(outer.message)?;
        assert_eq!(
            (inner.hop_count, inner.link_address, inner.peer_address),
            (0, "2001:db8:1::1".parse()?, client_ll),
            "inner layer"
        );
        assert_eq!(inner.option(option::INTERFACE_ID), Some(&b"cl0"[..]));
        codec::check_client_message(inner.message)?;
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
    let _dhcrelay = lower.spawn(
        &[
            "dhcrelay",
            "-6",
            "-d",
            "-pf",
            &dir.path("dhcrelay.pid").display().to_string(),
            "-l",
            "cl0",
            "-u",
            "2001:db8:e::1%up0",
        ],
        &dir.path("dhcrelay.log"),
    )?;
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
    let _dhcrelay = lab.router.spawn(
        &[
            "dhcrelay",
            "-6",
            "-d",
            "-pf",
            &dir.path("dhcrelay.pid").display().to_string(),
            "-l",
            "lan0",
            "-u",
            "2001:db8:feed::2%wan0",
        ],
        &dir.path("dhcrelay.log"),
    )?;
    wait_for(Duration::from_secs(10), || {
        lab.router
            .exec(&["ss", "-lunH", "sport = :547"])
            .ok()
            .filter(|o| !o.trim().is_empty())
    })
    .context("dhcrelay did not bind 547")?;
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
