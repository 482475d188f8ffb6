//! Root tests with real DHCPv6 servers, relays and clients from Debian's
//! packages, each in fresh namespaces. Run with `cargo xtask test`.
//!
//! Every test asserts on what the kernel shows: the route and its next hop
//! (`ip -6 route show proto 57`), the pinned map (`bpftool map dump
//! pinned`), `pd-agent bindings --json`, and a ping from the upstream side
//! to an address inside the delegated prefix.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pd_tests::*;

type Lab = RouterLab;

fn lab() -> Result<Lab> {
    RouterLab::new()
}

fn lan0_subnet(pool: &str) -> KeaSubnet<'_> {
    KeaSubnet {
        iface: "lan0",
        subnet: "2001:db8:ffff::/64",
        pool,
        pool_len: 48,
        plen: 56,
        relayed: false,
    }
}

/// Kea on the router delegating /56s out of `pool` (valid lifetime
/// `valid`) to dhclient on the client, with an agent started with `opts`
/// watching. Returns once the client holds its prefix.
/// Tests move out the fields they use; the rest (Kea, dhclient) keep
/// running until the test's end.
struct Delegation {
    agent: Agent,
    _kea: Daemon,
    dhclient: Daemon,
    cdir: TempDir,
    prefix: String,
}

fn delegate(
    lab: &Lab,
    dir: &TempDir,
    pool: &str,
    valid: u32,
    opts: AgentOpts,
) -> Result<Delegation> {
    let conf = kea_config(dir, &[lan0_subnet(pool)], valid)?;
    let agent = Agent::start_opts(&lab.router, dir, opts)?;
    let kea = start_kea(&lab.router, dir, &conf)?;
    let cdir = TempDir::new("dhc")?;
    let dhclient = start_dhclient(&lab.client, &cdir, "eth0")?;
    let prefix = wait_for(Duration::from_secs(30), || dhclient_prefix(&cdir))
        .with_context(|| format!("dhclient got no prefix: {}", dhclient.log_text()))?;
    Ok(Delegation {
        agent,
        _kea: kea,
        dhclient,
        cdir,
        prefix,
    })
}

fn lan_opts() -> AgentOpts {
    AgentOpts::new(&["lan0"], &["wan0"])
}

/// Wait until the agent has a binding, then check route, map, JSON and ping.
fn assert_delegated(lab: &Lab, agent: &Agent, prefix: &str, client_if: &str) -> Result<()> {
    let client_ll = lab.client.link_local(client_if)?.to_string();
    let routes = wait_for(Duration::from_secs(30), || {
        let r = our_routes(&lab.router).ok()?;
        r.iter().any(|(p, _, _)| p == prefix).then_some(r)
    })
    .with_context(|| format!("no route for {prefix}; agent log:\n{}", agent.log()))?;
    let (_, via, dev) = routes.iter().find(|(p, _, _)| p == prefix).unwrap();
    assert_eq!(via, &client_ll, "next hop is the client's address");
    assert_eq!(dev, "lan0");

    let map = agent.map_prefixes()?;
    assert!(
        map.contains(&prefix.to_string()),
        "pinned map has {prefix}: {map:?}"
    );

    let b = agent.bindings()?;
    let e = b
        .iter()
        .find(|e| e["prefix"] == prefix)
        .with_context(|| format!("binding for {prefix}: {b:?}"))?;
    assert_eq!(e["iface"], "lan0");
    assert_eq!(e["next_hop"], client_ll.as_str());
    assert_eq!(e["kind"], "delegated");
    assert!(
        e["client_duid"].as_str().is_some_and(|d| d.len() >= 8),
        "client DUID in hex: {e}"
    );
    assert!(e["iaid"].is_u64());
    assert!(e["expires_at"]
        .as_u64()
        .is_some_and(|t| t > pd_agent::clock::unix_now()));

    // Traffic from upstream reaches an address inside the delegated prefix.
    let host = lab.client.host_in(prefix)?;
    assert!(lab.upstream.ping(&host, 5), "ping {host} from upstream");
    Ok(())
}

fn assert_no_route(lab: &Lab, agent: &Agent, prefix: &str, timeout: Duration) -> Result<()> {
    let gone = wait_for(timeout, || {
        let r = our_routes(&lab.router).ok()?;
        (!r.iter().any(|(p, _, _)| p == prefix)).then_some(())
    });
    if gone.is_none() {
        bail!(
            "route for {prefix} still present; agent log:\n{}",
            agent.log()
        );
    }
    assert!(
        !agent.map_prefixes()?.contains(&prefix.to_string()),
        "map entry removed"
    );
    assert!(
        agent.bindings()?.iter().all(|e| e["prefix"] != prefix),
        "binding removed"
    );
    Ok(())
}

/// Kea on the router delegates a /56 to dhclient on the client; the route
/// appears (TC egress sees the Reply leave lan0). Then `dhclient -r`
/// releases it and the route goes.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kea_local_to_dhclient_then_release() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("kea")?;
    let d = delegate(&lab, &dir, "2001:db8:100::", 600, lan_opts())?;
    let agent = d.agent;
    let mut dhclient = d.dhclient;
    let cdir = d.cdir;
    let prefix = d.prefix;
    assert!(prefix.ends_with("/56"), "{prefix}");
    assert_fallbacks(&agent, false)?;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;

    dhclient.stop();
    dhclient_release(&lab.client, &cdir, "eth0")?;
    assert_no_route(&lab, &agent, &prefix, Duration::from_secs(15))?;
    assert!(
        agent.log().contains("event=\"released\""),
        "{}",
        agent.log()
    );
    Ok(())
}

/// The compat programs, which kernels before 5.18 get (`PD_AGENT_COMPAT=1`
/// takes them here): the agent says so, the Reply leaving lan0 is parsed
/// by `pd_tc_egress_compat` and routed, traffic from upstream arrives, and
/// the client's Release, parsed by `pd_xdp_compat`, removes the route.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn compat_programs_route_and_release() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("kcompat")?;
    let mut opts = lan_opts();
    opts.env.push(("PD_AGENT_COMPAT".into(), "1".into()));
    let d = delegate(&lab, &dir, "2001:db8:500::", 600, opts)?;
    let agent = d.agent;
    let mut dhclient = d.dhclient;
    assert_fallbacks(&agent, true)?;
    assert_delegated(&lab, &agent, &d.prefix, "eth0")?;
    dhclient.stop();
    dhclient_release(&lab.client, &d.cdir, "eth0")?;
    assert_no_route(&lab, &agent, &d.prefix, Duration::from_secs(15))?;
    let st = agent.stats()?;
    assert_eq!(st["agent"]["releases_matched"], 1, "{st}");
    Ok(())
}

/// Kea gives an 8 s valid lifetime; the client is killed without a Release:
/// the route goes when the lifetime ends.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn unrenewed_lease_expires() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("kexp")?;
    let d = delegate(&lab, &dir, "2001:db8:300::", 8, lan_opts())?;
    let agent = d.agent;
    let mut dhclient = d.dhclient;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;
    let b = agent.bindings()?;
    assert_eq!(b[0]["valid_lifetime"], 8);
    dhclient.kill(libc::SIGKILL);
    assert_no_route(&lab, &agent, &prefix, Duration::from_secs(20))?;
    assert!(agent.log().contains("expired"), "{}", agent.log());
    Ok(())
}

/// ISC dhcpd -6 in a server namespace beyond the router, dhcrelay -6 on the
/// router, dhcpcd as the client. Then `dhcpcd -k` releases.
///
/// ```text
///  server eth0 ---- wan0 router(dhcrelay) lan0 ---- eth0 client(dhcpcd)
/// ```
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn dhcpd_remote_via_dhcrelay_to_dhcpcd_then_release() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("isc")?;
    let agent = Agent::start(&lab.router, &dir, &["lan0"], &["wan0"])?;
    let conf = "default-lease-time 600;\npreferred-lifetime 450;\n\
        subnet6 2001:db8:feed::/64 { }\n\
        subnet6 2001:db8:ffff::/64 { prefix6 2001:db8:200:: 2001:db8:2ff:: /56; }\n";
    let _dhcpd = start_dhcpd(&lab.upstream, &dir, "eth0", conf)?;
    let _relay = start_dhcrelay(&lab.router, &dir, "lan0", "2001:db8:feed::2%wan0")?;
    let cdir = TempDir::new("dcd")?;
    let dhcpcd = start_dhcpcd(&lab.client, &cdir, "eth0")?;
    let prefix = wait_for(Duration::from_secs(40), || {
        our_routes(&lab.router)
            .ok()?
            .into_iter()
            .map(|(p, _, _)| p)
            .find(|p| p.starts_with("2001:db8:2"))
    })
    .with_context(|| {
        format!(
            "no route; dhcpcd: {}\nagent: {}",
            dhcpcd.log_text(),
            agent.log()
        )
    })?;
    assert!(prefix.ends_with("/56"), "{prefix}");
    assert_delegated(&lab, &agent, &prefix, "eth0")?;
    assert!(
        dhcpcd
            .log_text()
            .contains(prefix.split('/').next().unwrap()),
        "dhcpcd holds {prefix}: {}",
        dhcpcd.log_text()
    );

    // The Relay-Reply arriving on wan0 (from the wire) was applied, not
    // only its copy leaving lan0.
    let stats = agent.stats()?;
    assert!(
        stats["agent"]["upstream_relay_replies"].as_u64() >= Some(1),
        "{stats}"
    );
    assert_eq!(stats["agent"]["relay_reply_unmapped"], 0, "{stats}");
    // Request in, Relay-Reply in on wan0, Reply out on lan0.
    assert!(stats["kernel"]["parsed"].as_u64() >= Some(3), "{stats}");

    dhcpcd_release(&lab.client, &cdir, "eth0")?;
    assert_no_route(&lab, &agent, &prefix, Duration::from_secs(15))?;
    Ok(())
}

/// The nftables example hook keeps the set of delegated prefixes: the
/// prefix is added when Kea delegates it and removed on release. The agent
/// takes its interfaces and the hook from a TOML config file.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn nft_hook_tracks_delegated_prefixes() -> Result<()> {
    let lab = lab()?;
    lab.router.exec(&["nft", "add", "table", "inet", "pd"])?;
    lab.router.exec(&[
        "nft",
        "add",
        "set",
        "inet",
        "pd",
        "delegated",
        "{ type ipv6_addr; flags interval; }",
    ])?;
    let dir = TempDir::new("nft")?;
    // Interfaces and the hook come from a config file this time.
    let conf_file = dir.path("pd-agent.toml");
    std::fs::write(
        &conf_file,
        format!(
            "hooks = [\"{}\"]\nhook_timeout = 10\n\n[[interface]]\nname = \"lan0\"\nrole = \"downstream\"\n\n\
             [[interface]]\nname = \"wan0\"\nrole = \"upstream\"\n",
            hook_path("nft-set.sh").display()
        ),
    )?;
    let opts = AgentOpts {
        args: vec!["--config".into(), conf_file.display().to_string()],
        ..AgentOpts::new(&[], &[])
    };
    let d = delegate(&lab, &dir, "2001:db8:400::", 600, opts)?;
    let agent = d.agent;
    let mut dhclient = d.dhclient;
    let cdir = d.cdir;
    let prefix = d.prefix;
    let set = || {
        lab.router
            .exec(&["nft", "list", "set", "inet", "pd", "delegated"])
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(15), || {
        set().contains(&prefix).then_some(())
    })
    .with_context(|| format!("{prefix} not in the set: {}\n{}", set(), agent.log()))?;
    dhclient.stop();
    dhclient_release(&lab.client, &cdir, "eth0")?;
    wait_for(Duration::from_secs(15), || {
        (!set().contains(&prefix)).then_some(())
    })
    .with_context(|| format!("{prefix} still in the set: {}", set()))?;
    let stats = agent.stats()?;
    assert_eq!(stats["hooks"]["failures"], 0, "{stats}");
    assert!(stats["hooks"]["runs"].as_u64() >= Some(2), "{stats}");
    Ok(())
}

/// With `--fast-path off` nothing is forwarded in XDP, and traffic still
/// reaches the client: the kernel route is the source of truth.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn fast_path_off_still_routes() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("nofp")?;
    let opts = AgentOpts {
        args: vec!["--fast-path".into(), "off".into()],
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    let d = delegate(&lab, &dir, "2001:db8:500::", 600, opts)?;
    let agent = d.agent;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;
    lab.upstream.exec(&[
        "ping",
        "-6",
        "-c",
        "10",
        "-i",
        "0.01",
        "-W",
        "1",
        &format!("{}1", prefix.split('/').next().unwrap()),
    ])?;
    let stats = agent.stats()?;
    assert_eq!(stats["kernel"]["fwd_redirected"], 0, "{stats}");
    Ok(())
}

/// `kill -9` the agent; meanwhile one of its routes is lost and a stale
/// route with its protocol appears. The restarted agent re-adds the lost
/// route, removes the stale one, leaves other protocols' routes alone and
/// rebuilds the pinned map.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn restart_after_kill_reconciles() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("rst")?;
    let d = delegate(&lab, &dir, "2001:db8:600::", 600, lan_opts())?;
    let mut agent = d.agent;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;

    agent.daemon.kill(libc::SIGKILL);
    drop(agent); // also removes its pin directory: the maps must be rebuilt
    lab.router.exec(&["ip", "-6", "route", "del", &prefix])?;
    lab.router.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:dead::/48",
        "via",
        "fe80::99",
        "dev",
        "lan0",
        "proto",
        PROTO,
    ])?;
    lab.router.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:beef::/48",
        "via",
        "fe80::99",
        "dev",
        "lan0",
        "proto",
        "static",
    ])?;

    let agent = Agent::start(&lab.router, &dir, &["lan0"], &["wan0"])?;
    let routes = our_routes(&lab.router)?;
    assert_eq!(
        routes.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        [prefix.as_str()],
        "{routes:?}"
    );
    assert!(
        agent
            .log()
            .contains("routes_readded=1 stale_routes_removed=1"),
        "{}",
        agent.log()
    );
    assert!(
        lab.router
            .exec(&["ip", "-6", "route", "show", "2001:db8:beef::/48"])?
            .contains("static"),
        "other protocols untouched"
    );
    assert_eq!(agent.map_prefixes()?, std::slice::from_ref(&prefix));
    assert_eq!(agent.bindings()?.len(), 1);
    Ok(())
}

/// A delegation outside `--allow` is ignored and logged: no route, no
/// binding, counted.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn prefix_outside_allow_is_ignored() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("allow")?;
    let opts = AgentOpts {
        args: vec!["--allow".into(), "2001:db8:f000::/36".into()],
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    let d = delegate(&lab, &dir, "2001:db8:700::", 600, opts)?;
    let agent = d.agent;
    let prefix = d.prefix;
    wait_for(Duration::from_secs(10), || {
        agent.log().contains("delegation ignored").then_some(())
    })
    .with_context(|| format!("no refusal logged: {}", agent.log()))?;
    assert!(
        agent.log().contains(&prefix) && agent.log().contains("outside --allow"),
        "{}",
        agent.log()
    );
    assert!(our_routes(&lab.router)?.is_empty());
    assert!(agent.bindings()?.is_empty());
    assert!(agent.stats()?["agent"]["not_allowed"].as_u64() >= Some(1));
    Ok(())
}

/// `pd-agent show` and `delete` over the control socket; SIGTERM keeps
/// routes and state by default; `--flush-on-exit` removes them.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn control_socket_and_stop_behaviour() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("ctl")?;
    // Valid 12 s: the client renews every 3 s.
    let d = delegate(&lab, &dir, "2001:db8:800::", 12, lan_opts())?;
    let mut agent = d.agent;
    let mut dhclient = d.dhclient;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;
    let ctl = agent.control.display().to_string();
    let bin = agent_bin().display().to_string();

    let shown: serde_json::Value =
        serde_json::from_str(&sh(&[&bin, "show", &prefix, "--control", &ctl])?)?;
    assert_eq!(shown[0]["prefix"], prefix.as_str());
    assert!(shown[0]["rx_packets"].is_u64(), "{shown}");
    let err = std::process::Command::new(&bin)
        .args(["show", "2001:db8:eeee::/56", "--control", &ctl])
        .output()?;
    assert!(
        !err.status.success()
            && String::from_utf8_lossy(&err.stderr).contains("no binding for 2001:db8:eeee::/56")
    );

    // delete: the binding, route and map entry go at once...
    let out: serde_json::Value =
        serde_json::from_str(&sh(&[&bin, "delete", &prefix, "--control", &ctl])?)?;
    assert_eq!(out["deleted"][0], prefix.as_str());
    assert!(agent.log().contains("event=\"deleted\""), "{}", agent.log());
    // ...and the server's next Reply to the client's Renew brings them back.
    wait_for(Duration::from_secs(10), || {
        agent.map_prefixes().ok()?.contains(&prefix).then_some(())
    })
    .context("re-created on renewal")?;

    // SIGTERM keeps routes and state.
    dhclient.kill(libc::SIGKILL);
    agent.daemon.stop();
    assert!(
        our_routes(&lab.router)?.iter().any(|r| r.0 == prefix),
        "route kept on SIGTERM"
    );
    drop(agent);

    // --flush-on-exit: the restarted agent restores the binding, and on
    // SIGTERM removes it with its route.
    let opts = AgentOpts {
        args: vec!["--flush-on-exit".into()],
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    let mut agent = Agent::start_opts(&lab.router, &dir, opts)?;
    assert_eq!(agent.bindings()?.len(), 1);
    agent.daemon.stop();
    assert!(
        our_routes(&lab.router)?.is_empty(),
        "route removed by --flush-on-exit: {}",
        agent.log()
    );
    assert!(
        agent.log().contains("--flush-on-exit removed"),
        "{}",
        agent.log()
    );
    Ok(())
}

/// Prometheus metrics: scraped over HTTP inside the router's namespace
/// after a delegation and some forwarded traffic.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn metrics_scrape() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("met")?;
    let opts = AgentOpts {
        args: vec!["--metrics".into(), "[::1]:9431".into(), "--log-json".into()],
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    let d = delegate(&lab, &dir, "2001:db8:900::", 600, opts)?;
    let agent = d.agent;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?; // also pings into the prefix
    let body = scrape(&lab.router, "[::1]:9431")?;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let value = |series: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value("pd_bindings{iface=\"lan0\",kind=\"delegated\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(
        value("pd_binding_events_total{event=\"delegated\"}") >= Some(1.0),
        "{body}"
    );
    assert!(
        value("pd_kernel_packets_total{outcome=\"parsed\"}") >= Some(2.0),
        "{body}"
    );
    assert_eq!(value("pd_ringbuf_drops_total"), Some(0.0), "{body}");
    assert!(value("pd_route_op_seconds_count") >= Some(1.0), "{body}");
    assert!(
        value("pd_forwarded_packets_total{iface=\"lan0\"}").is_some(),
        "{body}"
    );
    assert_eq!(value("pd_hook_failures_total"), Some(0.0), "{body}");
    // The fast path's state: no firewall here, lan0 a plain veth.
    assert_eq!(
        value("pd_fast_path_forwarding{mode=\"auto\",reason=\"forwarding\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value("pd_fast_path_redirect_target{iface=\"lan0\"}"),
        Some(0.0),
        "{body}"
    );
    assert!(
        value("pd_kernel_packets_total{outcome=\"fwd_no_xmit\"}").is_some(),
        "{body}"
    );
    assert!(body.contains("# EOF"), "OpenMetrics text ends with # EOF");
    // --log-json: one JSON object per line; the binding change carries its fields.
    let lines: Vec<serde_json::Value> = agent
        .log()
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let change = lines
        .iter()
        .find(|l| l["fields"]["event"] == "delegated")
        .context("a delegated line")?;
    assert_eq!(change["fields"]["prefix"], prefix.as_str());
    assert_eq!(change["fields"]["iface"], "lan0");
    assert!(
        change["fields"]["next_hop"].is_string() && change["fields"]["valid"].is_u64(),
        "{change}"
    );
    assert!(agent.stats()?["route_ops"].as_u64() >= Some(1));
    Ok(())
}

/// Redistribution: BIRD on the router learns pd-agent's routes from the
/// kernel by protocol number (packaging/bird/pd-agent-bgp.conf) and
/// announces them over BGP to BIRD on the upstream router, which installs
/// them. When the client releases, the upstream router withdraws the route.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn bird_redistributes_delegated_prefixes() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("bird")?;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/bird/pd-agent-bgp.conf"
    ))?;
    let router_conf = example
        .replace("@ROUTER_ID@", "10.0.0.1")
        .replace("@PROTO@", PROTO)
        .replace("@LOCAL@", "2001:db8:feed::1")
        .replace("@LOCAL_AS@", "65001")
        .replace("@NEIGHBOR@", "2001:db8:feed::2")
        .replace("@NEIGHBOR_AS@", "65000");
    assert!(
        !router_conf
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains('@')),
        "every placeholder replaced"
    );
    let upstream_conf = "router id 10.0.0.2;\nprotocol device { }\n\
        protocol bgp downstream {\n  local 2001:db8:feed::2 as 65000;\n  neighbor 2001:db8:feed::1 as 65001;\n\
          connect delay time 1;\n  connect retry time 2;\n  ipv6 { import all; export none; };\n}\n\
        protocol kernel {\n  ipv6 { import none; export all; };\n}\n";
    std::fs::write(dir.path("router-bird.conf"), router_conf)?;
    std::fs::write(dir.path("upstream-bird.conf"), upstream_conf)?;
    let bird = |ns: &Netns, name: &str| {
        ns.spawn(
            &[
                "bird",
                "-f",
                "-c",
                &dir.path(&format!("{name}-bird.conf")).display().to_string(),
                "-s",
                &dir.path(&format!("{name}-bird.ctl")).display().to_string(),
                "-P",
                &dir.path(&format!("{name}-bird.pid")).display().to_string(),
            ],
            &dir.path(&format!("{name}-bird.log")),
        )
    };
    let _bird_up = bird(&lab.upstream, "upstream")?;
    let _bird_rt = bird(&lab.router, "router")?;
    let d = delegate(&lab, &dir, "2001:db8:a00::", 600, lan_opts())?;
    let agent = d.agent;
    let mut dhclient = d.dhclient;
    let cdir = d.cdir;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;

    let learned = || {
        lab.upstream
            .exec(&["ip", "-6", "route", "show", &prefix])
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(30), || {
        learned().contains("proto bird").then_some(())
    })
    .with_context(|| {
        format!(
            "upstream did not learn {prefix}: {}\nbirdc: {}",
            learned(),
            lab.router
                .exec(&[
                    "birdc",
                    "-s",
                    &dir.path("router-bird.ctl").display().to_string(),
                    "show",
                    "route",
                    "all"
                ])
                .unwrap_or_default()
        )
    })?;
    assert!(
        learned().contains("via 2001:db8:feed::1"),
        "next hop is the router: {}",
        learned()
    );

    dhclient.stop();
    dhclient_release(&lab.client, &cdir, "eth0")?;
    wait_for(Duration::from_secs(30), || {
        (!learned().contains("proto bird")).then_some(())
    })
    .with_context(|| format!("upstream still routes {prefix}: {}", learned()))?;
    Ok(())
}

/// A rogue host on the client's link sends a Release with the client's
/// DUID, IAID and prefix (and Kea, believing it, answers Success): the
/// route stays, because the Release did not come from the client's address.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn forged_release_from_another_host_removes_nothing() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("forge")?;
    let d = delegate(&lab, &dir, "2001:db8:b00::", 600, lan_opts())?;
    let agent = d.agent;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;
    let b = agent.bindings()?;
    let duid = b[0]["client_duid"].as_str().unwrap().to_string();
    let iaid = b[0]["iaid"].as_u64().unwrap();
    let server_duid: String = std::fs::read_to_string("/var/lib/kea/kea-dhcp6-serverid")?
        .trim()
        .replace(':', "");

    // The rogue: another address on the same link, crafting the Release by hand.
    lab.client.add_addr("fe80::bad/64", "eth0")?;
    let (net, len) = prefix.split_once('/').unwrap();
    let script = format!(
        r#"
import ipaddress, socket, struct
def opt(code, data): return struct.pack("!HH", code, len(data)) + data
iaprefix = opt(26, struct.pack("!IIB", 0, 0, {len}) + ipaddress.IPv6Address("{net}").packed)
msg = bytes([8, 0x42, 0x42, 0x42]) + opt(1, bytes.fromhex("{duid}")) + opt(2, bytes.fromhex("{server_duid}")) \
    + opt(25, struct.pack("!III", {iaid}, 0, 0) + iaprefix)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
idx = socket.if_nametoindex("eth0")
s.bind(("fe80::bad", 546, 0, idx))
s.sendto(msg, ("ff02::1:2", 547, 0, idx))
"#
    );
    lab.client.exec(&["/usr/bin/python3", "-c", &script])?;
    wait_for(Duration::from_secs(10), || {
        (agent.stats().ok()?["agent"]["foreign_releases"].as_u64()? >= 1).then_some(())
    })
    .with_context(|| format!("the forged Release was not seen answered: {}", agent.log()))?;
    assert!(
        agent
            .log()
            .contains("Release from an address other than the client's"),
        "{}",
        agent.log()
    );
    assert!(
        our_routes(&lab.router)?.iter().any(|r| r.0 == prefix),
        "the route stays"
    );
    assert_eq!(agent.bindings()?.len(), 1);
    Ok(())
}

/// The kernel drops IPv6 routes through a link that goes down. The agent
/// puts its route back when lan0 returns; and an agent started while lan0
/// is down shows the failed install in `bindings` and retries until the
/// link is back.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn routes_come_back_with_the_link() -> Result<()> {
    let lab = lab()?;
    let dir = TempDir::new("link")?;
    let d = delegate(&lab, &dir, "2001:db8:c00::", 600, lan_opts())?;
    let mut agent = d.agent;
    let mut dhclient = d.dhclient;
    let prefix = d.prefix;
    assert_delegated(&lab, &agent, &prefix, "eth0")?;
    assert_eq!(agent.bindings()?[0]["status"], "installed");
    dhclient.kill(libc::SIGKILL);
    let has_route = || {
        our_routes(&lab.router)
            .map(|r| r.iter().any(|r| r.0 == prefix))
            .unwrap_or(false)
    };

    lab.router.exec(&["ip", "link", "set", "lan0", "down"])?;
    wait_for(Duration::from_secs(5), || (!has_route()).then_some(()))
        .context("the kernel keeps routes over a down link?")?;
    lab.router.exec(&["ip", "link", "set", "lan0", "up"])?;
    wait_for(Duration::from_secs(10), || has_route().then_some(())).with_context(|| {
        format!(
            "route not re-installed when lan0 came back: {}",
            agent.log()
        )
    })?;

    // Restart while lan0 is down: the install fails, is shown, and retried.
    agent.daemon.stop();
    lab.router.exec(&["ip", "link", "set", "lan0", "down"])?;
    drop(agent);
    let agent = Agent::start(&lab.router, &dir, &["lan0"], &["wan0"])?;
    let status = agent.bindings()?[0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(status.starts_with("failed: "), "{status}");
    assert!(!has_route());
    lab.router.exec(&["ip", "link", "set", "lan0", "up"])?;
    wait_for(Duration::from_secs(10), || has_route().then_some(())).with_context(|| {
        format!(
            "route not installed after the link came back: {}",
            agent.log()
        )
    })?;
    assert_eq!(agent.bindings()?[0]["status"], "installed");
    Ok(())
}
