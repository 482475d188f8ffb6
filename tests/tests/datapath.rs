//! The data path on the links and firewalls routers really have, with
//! `pd-agent run` at its defaults and every environment at its own.
//!
//! Each test delegates a prefix with a real Kea to a real dhclient, puts an
//! address of that prefix on the client, and sends traffic into it from
//! upstream. What arrives is counted on the client itself (an nftables
//! counter there), and the router's kernel counters say what the fast path
//! did and why.

use std::{net::Ipv6Addr, time::Duration};

use anyhow::{bail, Context, Result};
use pd_tests::{
    wire::{icmp6_echo, udp6_packet, SimClient, Tun},
    *,
};

/// Kea on `router` delegates a /56 out of `pool` over `lan` (on-link
/// 2001:db8:ffff::/64) to dhclient on `client`'s eth0.
fn delegate_over(
    router: &Netns,
    lan: &str,
    pool: &str,
    client: &Netns,
    opts: AgentOpts,
) -> Result<Delegated> {
    delegate(
        router,
        lan,
        "2001:db8:ffff::/64",
        pool,
        client,
        "eth0",
        opts,
    )
}

/// A pd-agent on `ns` managing `uplink` as upstream, as a router below
/// this one runs it: its XDP program on the link is what lets the router
/// above redirect into it (the lab's routers are such next hops).
fn router_below(ns: &Netns, uplink: &str) -> Result<(Agent, TempDir)> {
    let dir = TempDir::new("below")?;
    Ok((Agent::start(ns, &dir, &[], &[uplink])?, dir))
}

/// Wait until `agent` says `iface` takes redirects (or not).
fn wait_target(agent: &Agent, iface: &str, yes: bool) -> Result<()> {
    wait_for(Duration::from_secs(5), || {
        (agent.stats().ok()?["fast_path"]["interfaces"][iface]["redirect_target"] == yes)
            .then_some(())
    })
    .with_context(|| format!("{iface} redirect target {yes}: {}", agent.log()))
}

/// A kernel counter of the agent's.
fn kernel(agent: &Agent, name: &str) -> Result<u64> {
    agent.stats()?["kernel"][name]
        .as_u64()
        .with_context(|| format!("kernel counter {name}"))
}

/// How kernel counters moved while `f` ran.
fn counted<T>(
    agent: &Agent,
    names: &[&str],
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<u64>)> {
    let before: Vec<u64> = names
        .iter()
        .map(|n| kernel(agent, n))
        .collect::<Result<_>>()?;
    let t = f()?;
    let after: Vec<u64> = names
        .iter()
        .map(|n| kernel(agent, n))
        .collect::<Result<_>>()?;
    Ok((t, after.iter().zip(before).map(|(a, b)| a - b).collect()))
}

/// Pings from `from` to the client's host address: how many arrived there.
fn arrived(from: &Netns, client: &Netns, host: &str, n: u32) -> Result<u64> {
    let before = echo_count(client)?;
    ping_n(from, host, n);
    Ok(echo_count(client)? - before)
}

/// ```text
///  upstream --- wan0 router lan0 --- eth0 client (a plain veth: no XDP, GRO off)
/// ```
/// Kea delegates a /56 to the client. 20 echo requests from upstream into
/// it: all 20 arrive, each left to the kernel because lan0 cannot take a
/// redirect (`fwd_no_xmit`), none redirected.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn plain_veth_client_gets_every_packet() -> Result<()> {
    let lab = RouterLab::new()?;
    let d = delegate_over(
        &lab.router,
        "lan0",
        "2001:db8:a00::",
        &lab.client,
        AgentOpts::new(&["lan0"], &["wan0"]),
    )?;
    count_echoes(&lab.client, &d.host)?;
    // The first packet resolves the neighbour in the kernel.
    arrived(&lab.upstream, &lab.client, &d.host, 1)?;
    let (got, moved) = counted(&d.agent, &["fwd_no_xmit", "fwd_redirected"], || {
        arrived(&lab.upstream, &lab.client, &d.host, 20)
    })?;
    assert_eq!(got, 20, "every echo request reached the client");
    assert_eq!(moved, [20, 0], "left to the kernel, none redirected");
    let fp = &d.agent.stats()?["fast_path"];
    assert_eq!(fp["mode"], "auto", "{fp}");
    assert_eq!(fp["forwarding"], true, "no firewall here: {fp}");
    assert_eq!(fp["interfaces"]["lan0"]["redirect_target"], false, "{fp}");
    assert!(
        fp["interfaces"]["lan0"]["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("ndo-xmit")),
        "{fp}"
    );
    let b = d.agent.bindings()?;
    assert_eq!(b[0]["prefix"], d.prefix.as_str());
    Ok(())
}

/// ```text
///  upstream --- wan0 router br-lan [port0] --- eth0 client
/// ```
/// The LAN is a Linux bridge; the agent manages br-lan, which takes no
/// redirects: every packet arrives, each one left to the kernel.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn bridged_lan_gets_every_packet() -> Result<()> {
    let (upstream, router) = upstream_and_router()?;
    let client = Netns::new("bcl")?;
    router.exec(&["ip", "link", "add", "br-lan", "type", "bridge"])?;
    router.exec(&["ip", "link", "set", "br-lan", "up"])?;
    veth(&router, "port0", &client, "eth0")?;
    router.exec(&["ip", "link", "set", "port0", "master", "br-lan"])?;
    router.add_addr("2001:db8:ffff::1/64", "br-lan")?;
    client.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
    client.default_via("eth0", &router, "br-lan")?;

    let d = delegate_over(
        &router,
        "br-lan",
        "2001:db8:b00::",
        &client,
        AgentOpts::new(&["br-lan"], &["wan0"]),
    )?;
    count_echoes(&client, &d.host)?;
    arrived(&upstream, &client, &d.host, 1)?;
    let (got, moved) = counted(&d.agent, &["fwd_no_xmit", "fwd_redirected"], || {
        arrived(&upstream, &client, &d.host, 20)
    })?;
    assert_eq!(
        got, 20,
        "every echo request reached the client behind the bridge"
    );
    assert_eq!(
        moved,
        [20, 0],
        "left to the kernel: a bridge takes no redirects"
    );
    let fp = &d.agent.stats()?["fast_path"];
    assert_eq!(fp["interfaces"]["br-lan"]["redirect_target"], false, "{fp}");
    Ok(())
}

/// The router's stateful firewall, as a home router has it: forward policy
/// drop, established/related accepted, invalid dropped, LAN to WAN allowed.
const FIREWALL: &str = "table inet fw {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct state invalid drop
    iifname \"lan0\" oifname \"wan0\" accept
  }
}
";

fn fast_path_forwarding(agent: &Agent) -> Option<bool> {
    agent.stats().ok()?["fast_path"]["forwarding"].as_bool()
}

/// One TCP exchange the client starts from its delegated address to
/// upstream: a server there echoes one line back.
fn tcp_exchange(upstream: &Netns, client: &Netns, from: &str, dir: &TempDir) -> Result<String> {
    let server = "import socket\n\
        s = socket.socket(socket.AF_INET6)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('2001:db8:feed::2', 8080)); s.listen(1)\n\
        print('listening', flush=True)\n\
        c, _ = s.accept(); c.sendall(c.recv(100)); c.close()\n";
    let mut srv = upstream.spawn(&["python3", "-c", server], &dir.path("tcp-server.log"))?;
    wait_for(Duration::from_secs(5), || {
        srv.log_text().contains("listening").then_some(())
    })
    .context("TCP server did not start")?;
    let client_py = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET6); s.settimeout(5)\n\
         s.bind(('{from}', 0)); s.connect(('2001:db8:feed::2', 8080))\n\
         s.sendall(b'through the firewall'); print(s.recv(100).decode())\n"
    );
    let out = client.exec(&["python3", "-c", &client_py]);
    srv.stop();
    Ok(out?.trim().to_string())
}

/// ```text
///  upstream --- wan0 router lan0 --- eth0 client (a router below, running
///               pd-agent: lan0 takes redirects)
///               nftables: forward policy drop, established/related accept
/// ```
/// Without a firewall the fast path forwards in XDP. Once the ruleset is
/// loaded the agent sees the forward hook and leaves everything to the
/// kernel: 9 unsolicited echo requests from upstream reach the client 0
/// times (counted on the client), each counted `fwd_firewall`; a TCP
/// exchange the client starts works, and conntrack holds it ASSURED
/// (it saw both directions). When the ruleset goes, XDP forwards again.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn stateful_firewall_keeps_deciding() -> Result<()> {
    let lab = RouterLab::new()?;
    let d = delegate_over(
        &lab.router,
        "lan0",
        "2001:db8:c00::",
        &lab.client,
        AgentOpts::new(&["lan0"], &["wan0"]),
    )?;
    let _below = router_below(&lab.client, "eth0")?;
    wait_target(&d.agent, "lan0", true)?;
    count_echoes(&lab.client, &d.host)?;
    arrived(&lab.upstream, &lab.client, &d.host, 1)?;
    let (got, moved) = counted(&d.agent, &["fwd_redirected"], || {
        arrived(&lab.upstream, &lab.client, &d.host, 5)
    })?;
    assert_eq!((got, moved[0]), (5, 5), "no firewall: forwarded in XDP");

    let dir = TempDir::new("fw")?;
    let rules = dir.path("fw.nft");
    std::fs::write(&rules, FIREWALL)?;
    lab.router
        .exec(&["nft", "-f", &rules.display().to_string()])?;
    wait_for(Duration::from_secs(5), || {
        (!fast_path_forwarding(&d.agent)?).then_some(())
    })
    .with_context(|| format!("the agent did not see the firewall: {}", d.agent.log()))?;
    let fp = &d.agent.stats()?["fast_path"];
    assert!(
        fp["reason"]
            .as_str()
            .is_some_and(|r| r.contains("inet fw forward")),
        "the reason names the chain: {fp}"
    );

    let (got, moved) = counted(&d.agent, &["fwd_firewall", "fwd_redirected"], || {
        arrived(&lab.upstream, &lab.client, &d.host, 9)
    })?;
    assert_eq!(got, 0, "unsolicited echo requests never reach the client");
    assert_eq!(moved, [9, 0], "each one left to the kernel's firewall");

    let echoed = tcp_exchange(&lab.upstream, &lab.client, &d.host, &dir)?;
    assert_eq!(echoed, "through the firewall");
    let ct = lab.router.exec(&[
        "conntrack",
        "-L",
        "-f",
        "ipv6",
        "-p",
        "tcp",
        "--dport",
        "8080",
    ])?;
    assert!(
        ct.contains("ASSURED"),
        "conntrack saw both directions: {ct}"
    );

    lab.router.exec(&["nft", "delete", "table", "inet", "fw"])?;
    wait_for(Duration::from_secs(5), || {
        fast_path_forwarding(&d.agent)?.then_some(())
    })
    .context("the agent did not see the firewall go")?;
    let (got, moved) = counted(&d.agent, &["fwd_redirected"], || {
        arrived(&lab.upstream, &lab.client, &d.host, 5)
    })?;
    assert_eq!(
        (got, moved[0]),
        (5, 5),
        "firewall gone: forwarded in XDP again"
    );
    Ok(())
}

/// ```text
///  (tun fd) --- tun0 router lan0 --- eth0 client
///  the test writes packets into tun0 and reads what it sends
/// ```
/// An uplink without a link-layer header (as ppp0, WireGuard or a GRE
/// tunnel): this host's own Request leaves through tun0 (TC egress), the
/// server's Reply arrives on it (XDP): both are parsed from the IPv6
/// header and the prefix becomes an acquired binding. Traffic arriving on
/// tun0 for a prefix delegated on lan0 reaches the client, left to the
/// kernel (`fwd_link_type`). An IPv4 packet on tun0 is not DHCPv6.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn l3_uplink_is_snooped_and_forwarded() -> Result<()> {
    let router = Netns::new("tr")?;
    let client = host_behind(&router, "lan0", "tc")?;
    router.add_addr("2001:db8:ffff::1/64", "lan0")?;
    let tun = Tun::create(&router, "tun0")?;
    router.exec(&["ip", "link", "set", "tun0", "up"])?;
    router.add_addr("fe80::1/64", "tun0")?;
    router.add_addr("2001:db8:feed::1/64", "tun0")?;
    let d = delegate_over(
        &router,
        "lan0",
        "2001:db8:e00::",
        &client,
        AgentOpts::new(&["lan0"], &["tun0"]),
    )?;
    assert!(
        d.agent.log().contains("iface=tun0 link=Bare"),
        "{}",
        d.agent.log()
    );
    let fp = &d.agent.stats()?["fast_path"];
    assert_eq!(fp["interfaces"]["tun0"]["link"], "bare", "{fp}");
    tun.read_until_quiet(Duration::from_millis(300));

    // This host's client asks for a prefix through tun0...
    let me = SimClient::new(77);
    let server_duid = vec![0, 3, 0, 1, 2, 0, 0, 0, 0x5e, 1];
    let acquired: Ipv6Addr = "2001:db8:7700::".parse()?;
    let request = me.about(3, 0x4242, &server_duid, (acquired, 56));
    let (seen_before, parsed_before) = (kernel(&d.agent, "seen")?, kernel(&d.agent, "parsed")?);
    {
        let _in = InNetns::enter(&router)?;
        let tun0 = pd_agent::ebpf::if_index("tun0")?;
        let sock = std::net::UdpSocket::bind(std::net::SocketAddrV6::new(
            "fe80::1".parse()?,
            546,
            0,
            tun0,
        ))?;
        sock.send_to(
            &request,
            std::net::SocketAddrV6::new("fe80::2".parse()?, 547, 0, tun0),
        )?;
    }
    let sent = tun.read_until_quiet(Duration::from_millis(300));
    assert!(
        sent.iter().any(|p| p.len() > 48
            && p[0] >> 4 == 6
            && p[6] == 17
            && p[42..44] == 547u16.to_be_bytes()),
        "the Request left through tun0 as a bare IPv6 packet: {sent:?}"
    );
    // ...and the server answers on tun0.
    let reply = me.reply(0x4242, &server_duid, &[(acquired, 56, 1800, 3600)]);
    tun.write(&udp6_packet(
        "fe80::2".parse()?,
        "fe80::1".parse()?,
        547,
        546,
        &reply,
    ))?;
    let b = wait_for(Duration::from_secs(5), || {
        d.agent
            .bindings()
            .ok()?
            .into_iter()
            .find(|b| b["kind"] == "acquired")
    })
    .with_context(|| format!("no acquired binding: {}", d.agent.log()))?;
    assert_eq!(b["prefix"], "2001:db8:7700::/56");
    assert_eq!(b["iface"], "tun0");
    assert_eq!(b["next_hop"], "fe80::2");
    assert!(kernel(&d.agent, "seen")? >= seen_before + 2);
    assert!(kernel(&d.agent, "parsed")? >= parsed_before + 2);

    // Traffic from the uplink into the prefix delegated on lan0.
    count_echoes(&client, &d.host)?;
    let host: Ipv6Addr = d.host.parse()?;
    let from: Ipv6Addr = "2001:db8:feed::2".parse()?;
    // The first one resolves the client's neighbour entry.
    tun.write(&icmp6_echo(from, host, 1, 0))?;
    wait_for(Duration::from_secs(5), || {
        (echo_count(&client).ok()? == 1).then_some(())
    })
    .context("the first packet from tun0 never reached the client")?;
    let (arrived, moved) = counted(&d.agent, &["fwd_link_type", "fwd_redirected"], || {
        for seq in 1..=10 {
            tun.write(&icmp6_echo(from, host, 1, seq))?;
        }
        Ok(wait_for(Duration::from_secs(5), || {
            (echo_count(&client).ok()? == 11).then_some(())
        })
        .is_some())
    })?;
    assert!(
        arrived,
        "every packet from tun0 reached the client: {}",
        echo_count(&client)?
    );
    assert_eq!(
        moved,
        [10, 0],
        "left to the kernel: tun0 has no Ethernet header"
    );

    // IPv4 on the same link is nobody's DHCPv6: of an IPv4 packet and
    // then the same bytes as IPv6, only the second is seen.
    let dhcp = udp6_packet(from, "fe80::1".parse()?, 547, 546, &reply);
    let mut v4 = dhcp.clone();
    v4[0] = 0x45;
    let seen = kernel(&d.agent, "seen")?;
    tun.write(&v4)?;
    tun.write(&dhcp)?;
    wait_for(Duration::from_secs(5), || {
        (kernel(&d.agent, "seen").ok()? > seen).then_some(())
    })
    .context("the IPv6 packet was not seen")?;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        kernel(&d.agent, "seen")?,
        seen + 1,
        "the IPv4 packet was not taken for DHCPv6"
    );
    Ok(())
}

/// ```text
///  upstream --- wan0 router lan.5 --- eth0 client
/// ```
/// A downstream interface named as VLAN sub-interfaces are (a dot in the
/// name, which bpffs refuses in pin names): the agent starts, pins its
/// links under an escaped name, routes the delegation, and traffic
/// arrives. A second agent takes the pinned links over.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn dotted_interface_name_works() -> Result<()> {
    let (upstream, router) = upstream_and_router()?;
    let client = host_behind(&router, "lan.5", "dcl")?;
    router.add_addr("2001:db8:ffff::1/64", "lan.5")?;
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("dot"));
    let opts = AgentOpts {
        pin_dir: Some(pin.clone()),
        ..AgentOpts::new(&["lan.5"], &["wan0"])
    };
    let d = delegate_over(&router, "lan.5", "2001:db8:d00::", &client, opts.clone())?;
    let routes = our_routes(&router)?;
    assert!(
        routes
            .iter()
            .any(|(p, _, dev)| *p == d.prefix && dev == "lan.5"),
        "{routes:?}"
    );
    let idx = router
        .exec(&["cat", "/sys/class/net/lan.5/ifindex"])?
        .trim()
        .to_string();
    for prog in ["xdp", "tc"] {
        let p = pin.join("links").join(format!("{prog}_lan%2e5_{idx}"));
        assert!(p.exists(), "{} pinned", p.display());
    }
    count_echoes(&client, &d.host)?;
    arrived(&upstream, &client, &d.host, 1)?;
    assert_eq!(arrived(&upstream, &client, &d.host, 10)?, 10);

    // The next agent finds and reuses the links (no second attach).
    let Delegated { mut agent, .. } = d;
    agent.daemon.stop();
    std::mem::take(&mut agent.pin_dir);
    let dir = TempDir::new("dot2")?;
    let again = Agent::start_opts(&router, &dir, opts)?;
    if !again.log().contains("pinned link reused") {
        bail!("links not reused: {}", again.log());
    }
    Ok(())
}

/// ```text
///  upstream --- wan0 router lan0 --- eth0 client
/// ```
/// The kernel trusts the fast path's flags only while an agent renews its
/// lease. While one runs, the client's packets are judged by the flags (a
/// plain veth: `fwd_no_xmit`). Stopped cleanly, the agent revokes the lease
/// at once; killed, it runs out within 6 s. Either way the kernel forwards
/// meanwhile, nothing is lost, and each packet is counted `fwd_no_agent`
/// (read from the pinned counters); the next agent judges by the flags
/// again.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn fast_path_stops_with_the_agent() -> Result<()> {
    let lab = RouterLab::new()?;
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("lease"));
    let opts = AgentOpts {
        pin_dir: Some(pin.clone()),
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    let d = delegate_over(
        &lab.router,
        "lan0",
        "2001:db8:f00::",
        &lab.client,
        opts.clone(),
    )?;
    count_echoes(&lab.client, &d.host)?;
    arrived(&lab.upstream, &lab.client, &d.host, 1)?;
    use pd_common::Counter::{FwdNoAgent, FwdNoXmit};
    // (arrived, fwd_no_xmit, fwd_no_agent) over 5 echo requests.
    let five = || -> Result<(u64, u64, u64)> {
        let read = |c| pinned_counter(&pin, c);
        let (x0, a0) = (read(FwdNoXmit)?, read(FwdNoAgent)?);
        let got = arrived(&lab.upstream, &lab.client, &d.host, 5)?;
        Ok((got, read(FwdNoXmit)? - x0, read(FwdNoAgent)? - a0))
    };
    assert_eq!(five()?, (5, 5, 0), "while the agent runs, the flags decide");

    // A clean stop revokes the lease at once.
    let Delegated { mut agent, .. } = d;
    agent.daemon.stop();
    std::mem::take(&mut agent.pin_dir);
    assert_eq!(five()?, (5, 0, 5), "no agent: the kernel forwards");

    // The next agent takes over; killed, its lease runs out.
    let dir2 = TempDir::new("lease2")?;
    let again = Agent::start_opts(&lab.router, &dir2, opts)?;
    assert_eq!(five()?, (5, 5, 0), "a new agent: the flags decide again");
    let pins = again.kill9_keeping_pins();
    std::thread::sleep(pd_agent::datapath::LEASE + Duration::from_secs(1));
    assert_eq!(five()?, (5, 0, 5), "the lease ran out: the kernel forwards");
    let _ = std::fs::remove_dir_all(pins);
    Ok(())
}

/// The fast path's verdict for every kind of link under each firewall
/// set-up (see `pd_tests::matrix`): all 10 packets arrive in every cell,
/// each counted where the rules say. The table goes to stderr.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn fast_path_matrix() -> Result<()> {
    let (cells, features) = matrix::run(false)?;
    eprintln!("{}", matrix::table(&cells));
    matrix::check(&cells, features)
}
