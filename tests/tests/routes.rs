//! The routing table stays true: routes of ours that others remove come
//! back, routes of other protocols are never overwritten or removed, and
//! `bindings` says what the kernel really holds.
//!
//! ```text
//!  upstream eth0 --- wan0 router lan0 --- eth0 client (dhclient)
//!                    Kea: one /56 (2001:db8:a100::/56) to delegate
//! ```
//! Each test prints `ip -6 route show PREFIX` at every step (with
//! `--nocapture`).

use std::time::Duration;

use anyhow::{Context, Result};
use pd_tests::*;

const PREFIX: &str = "2001:db8:a100::/56";

/// Kea on the router delegating exactly the /56 `pool` on `iface`
/// (on-link `subnet`).
fn kea_one(
    router: &Netns,
    dir: &TempDir,
    iface: &str,
    subnet: &str,
    pool: &str,
    valid: u32,
) -> Result<Daemon> {
    let subnet = KeaSubnet {
        iface,
        subnet,
        pool,
        pool_len: 56,
        plen: 56,
        relayed: false,
    };
    start_kea_subnet(router, dir, subnet, valid)
}

/// `ip -6 route show PREFIX` in `ns`, one line per route.
fn show(ns: &Netns, prefix: &str) -> Result<String> {
    Ok(ns
        .exec(&["ip", "-6", "route", "show", prefix])?
        .trim()
        .to_string())
}

fn status_of(agent: &Agent, prefix: &str) -> Option<String> {
    agent
        .bindings()
        .ok()?
        .into_iter()
        .find(|b| b["prefix"] == prefix)?["status"]
        .as_str()
        .map(String::from)
}

fn routes_stat(agent: &Agent, key: &str) -> u64 {
    agent
        .stats()
        .ok()
        .and_then(|s| s["routes"][key].as_u64())
        .unwrap_or(0)
}

/// Waits for our route of `prefix` (proto 57, metric 1024, via `via`).
fn wait_ours(ns: &Netns, prefix: &str, via: &str, within: Duration) -> Result<()> {
    wait_for_every(within, Duration::from_millis(20), || {
        ns.exec(&[
            "ip", "-6", "-o", "route", "show", prefix, "proto", PROTO, "metric", "1024",
        ])
        .ok()?
        .lines()
        .any(|l| l.contains(&format!("via {via} ")))
        .then_some(())
    })
    .with_context(|| {
        format!(
            "no route of ours for {prefix} via {via}: {}",
            show(ns, prefix).unwrap_or_default()
        )
    })
}

/// A delegation of [`PREFIX`] from Kea on the router to dhclient on the client.
struct Setup {
    lab: RouterLab,
    agent: Agent,
    _kea: Daemon,
    dhclient: Option<Daemon>,
    cdir: TempDir,
    _dir: TempDir,
    client_ll: String,
}

fn setup(valid: u32, before: impl FnOnce(&RouterLab) -> Result<()>) -> Result<Setup> {
    setup_with(valid, &[], before)
}

/// [`setup`] with extra agent arguments.
fn setup_with(
    valid: u32,
    args: &[&str],
    before: impl FnOnce(&RouterLab) -> Result<()>,
) -> Result<Setup> {
    let lab = RouterLab::new()?;
    before(&lab)?;
    let dir = TempDir::new("rt")?;
    let opts = AgentOpts {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    let agent = Agent::start_opts(&lab.router, &dir, opts)?;
    let kea = kea_one(
        &lab.router,
        &dir,
        "lan0",
        "2001:db8:ffff::/64",
        "2001:db8:a100::",
        valid,
    )?;
    let cdir = TempDir::new("rtc")?;
    let dhclient = start_dhclient(&lab.client, &cdir, "eth0")?;
    let got = wait_for(Duration::from_secs(30), || dhclient_prefix(&cdir))
        .with_context(|| format!("dhclient got no prefix: {}", dhclient.log_text()))?;
    assert_eq!(got, PREFIX);
    wait_for(Duration::from_secs(10), || status_of(&agent, PREFIX))
        .with_context(|| format!("no binding: {}", agent.log()))?;
    let client_ll = lab.client.link_local("eth0")?.to_string();
    Ok(Setup {
        lab,
        agent,
        _kea: kea,
        dhclient: Some(dhclient),
        cdir,
        _dir: dir,
        client_ll,
    })
}

impl Setup {
    fn release(&mut self) -> Result<()> {
        if let Some(mut d) = self.dhclient.take() {
            d.stop();
        }
        dhclient_release(&self.lab.client, &self.cdir, "eth0")?;
        wait_for(Duration::from_secs(10), || {
            (!self
                .agent
                .bindings()
                .ok()?
                .iter()
                .any(|b| b["prefix"] == PREFIX))
            .then_some(())
        })
        .with_context(|| format!("the release removed no binding: {}", self.agent.log()))
    }
}

/// Our route deleted by hand (as a route manager's cleanup would) comes
/// back within a second; `stats` counts it, the log says it, and the
/// binding says `installed` again.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn deleted_route_comes_back() -> Result<()> {
    let s = setup(600, |_| Ok(()))?;
    wait_ours(&s.lab.router, PREFIX, &s.client_ll, Duration::from_secs(5))?;
    eprintln!("before: {}", show(&s.lab.router, PREFIX)?);
    s.lab.router.exec(&["ip", "-6", "route", "del", PREFIX])?;
    eprintln!("deleted: {:?}", show(&s.lab.router, PREFIX)?);
    wait_ours(&s.lab.router, PREFIX, &s.client_ll, Duration::from_secs(1))?;
    eprintln!("after: {}", show(&s.lab.router, PREFIX)?);
    assert_eq!(routes_stat(&s.agent, "restored"), 1);
    assert_eq!(status_of(&s.agent, PREFIX).as_deref(), Some("installed"));
    assert!(s.agent.log().contains("put back"), "{}", s.agent.log());
    Ok(())
}

/// ```text
///  router lan0 --- client1 (2001:db8:a100::/56)
///         lan1 --- client2 (2001:db8:a200::/56)
/// ```
/// `ip -6 route flush proto 57` removes both of our routes; both come back
/// within a second.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn flushed_routes_all_come_back() -> Result<()> {
    let lab = RouterLab::new()?;
    let c2 = host_behind(&lab.router, "lan1", "c2")?;
    lab.router.add_addr("2001:db8:fffe::1/64", "lan1")?;
    let dir = TempDir::new("fl")?;
    let agent = Agent::start(&lab.router, &dir, &["lan0", "lan1"], &["wan0"])?;
    let conf = kea_config(
        &dir,
        &[
            KeaSubnet {
                iface: "lan0",
                subnet: "2001:db8:ffff::/64",
                pool: "2001:db8:a100::",
                pool_len: 56,
                plen: 56,
                relayed: false,
            },
            KeaSubnet {
                iface: "lan1",
                subnet: "2001:db8:fffe::/64",
                pool: "2001:db8:a200::",
                pool_len: 56,
                plen: 56,
                relayed: false,
            },
        ],
        600,
    )?;
    let _kea = start_kea(&lab.router, &dir, &conf)?;
    let (d1, d2) = (TempDir::new("fl1")?, TempDir::new("fl2")?);
    let _c1 = start_dhclient(&lab.client, &d1, "eth0")?;
    let _c2 = start_dhclient(&c2, &d2, "eth0")?;
    let want = [
        (
            "2001:db8:a100::/56",
            lab.client.link_local("eth0")?.to_string(),
        ),
        ("2001:db8:a200::/56", c2.link_local("eth0")?.to_string()),
    ];
    for (p, via) in &want {
        wait_ours(&lab.router, p, via, Duration::from_secs(30))?;
    }
    eprintln!(
        "before: {}",
        lab.router
            .exec(&["ip", "-6", "route", "show", "proto", PROTO])?
            .trim()
    );
    lab.router
        .exec(&["ip", "-6", "route", "flush", "proto", PROTO])?;
    eprintln!(
        "flushed: {:?}",
        lab.router
            .exec(&["ip", "-6", "route", "show", "proto", PROTO])?
            .trim()
    );
    for (p, via) in &want {
        wait_ours(&lab.router, p, via, Duration::from_secs(1))?;
    }
    eprintln!(
        "after: {}",
        lab.router
            .exec(&["ip", "-6", "route", "show", "proto", PROTO])?
            .trim()
    );
    // `ip route flush` deletes until a dump comes back empty: on a busy
    // machine it may take a route we put back a second time.
    assert!(routes_stat(&agent, "restored") >= 2);
    Ok(())
}

/// An operator's static route for the prefix the server later delegates:
/// it is still there, unchanged, after the delegation (the binding shows
/// the conflict, ours is withheld), after the release, and after a second
/// delegation runs out unrenewed.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn static_route_before_delegation_is_left_alone() -> Result<()> {
    let stat = "2001:db8:a100::/56 via fe80::99 dev lan0 proto static metric 1024 pref medium";
    let mut s = setup(8, |lab| {
        lab.router.exec(&[
            "ip", "-6", "route", "add", PREFIX, "via", "fe80::99", "dev", "lan0", "proto", "static",
        ])?;
        Ok(())
    })?;
    eprintln!("before: {stat}");
    let status = wait_for(Duration::from_secs(5), || {
        status_of(&s.agent, PREFIX).filter(|st| st.starts_with("conflict"))
    })
    .with_context(|| format!("no conflict shown: {:?}", status_of(&s.agent, PREFIX)))?;
    assert_eq!(
        status,
        "conflict: 2001:db8:a100::/56 via fe80::99 dev lan0 proto static metric 1024 holds the prefix; \
         ours is withheld until it goes"
    );
    assert_eq!(show(&s.lab.router, PREFIX)?, stat, "after the delegation");
    assert_eq!(routes_stat(&s.agent, "conflicts"), 1);
    eprintln!("after the delegation: {}", show(&s.lab.router, PREFIX)?);

    s.release()?;
    assert_eq!(show(&s.lab.router, PREFIX)?, stat, "after the release");
    eprintln!("after the release: {}", show(&s.lab.router, PREFIX)?);

    // Delegated again (8 s lease), and the client dies without a word.
    s.dhclient = Some(start_dhclient(&s.lab.client, &s.cdir, "eth0")?);
    wait_for(Duration::from_secs(30), || status_of(&s.agent, PREFIX)).context("delegated again")?;
    if let Some(mut d) = s.dhclient.take() {
        d.kill(libc::SIGKILL);
    }
    wait_for(Duration::from_secs(20), || {
        (!s.agent
            .bindings()
            .ok()?
            .iter()
            .any(|b| b["prefix"] == PREFIX))
        .then_some(())
    })
    .with_context(|| {
        format!(
            "the binding did not expire: {:?}\n{:?}\n{}",
            s.agent.bindings(),
            s.agent.stats().map(|v| v["routes"].clone()),
            s.agent.log()
        )
    })?;
    assert!(
        s.agent.log().contains("event=\"expired\""),
        "{}",
        s.agent.log()
    );
    assert_eq!(show(&s.lab.router, PREFIX)?, stat, "after the expiry");
    eprintln!("after the expiry: {}", show(&s.lab.router, PREFIX)?);
    Ok(())
}

/// Another protocol's route replacing ours after the delegation is left
/// alone (the binding shows the conflict); when it goes, ours comes back.
/// A second foreign route at another metric coexists with ours. The
/// release removes ours only.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn foreign_routes_after_delegation_are_left_alone() -> Result<()> {
    let mut s = setup(600, |_| Ok(()))?;
    let r = &s.lab.router;
    wait_ours(r, PREFIX, &s.client_ll, Duration::from_secs(5))?;
    eprintln!("delegated: {}", show(r, PREFIX)?);

    r.exec(&[
        "ip", "-6", "route", "replace", PREFIX, "via", "fe80::77", "dev", "lan0", "proto", "static",
    ])?;
    let replaced = show(r, PREFIX)?;
    eprintln!("replaced by proto static: {replaced}");
    wait_for(Duration::from_secs(3), || {
        status_of(&s.agent, PREFIX)
            .filter(|st| st.contains("via fe80::77") && st.contains("withheld"))
    })
    .with_context(|| format!("no conflict shown: {:?}", status_of(&s.agent, PREFIX)))?;
    // Through a periodic check too (it asks the kernel again).
    let scans = routes_stat(&s.agent, "scans");
    wait_for(Duration::from_secs(12), || {
        (routes_stat(&s.agent, "scans") > scans).then_some(())
    })
    .context("no scan")?;
    assert_eq!(
        show(r, PREFIX)?,
        replaced,
        "the foreign route is left as it is"
    );

    r.exec(&["ip", "-6", "route", "del", PREFIX, "proto", "static"])?;
    wait_ours(r, PREFIX, &s.client_ll, Duration::from_secs(1))?;
    eprintln!("static route deleted: {}", show(r, PREFIX)?);
    assert_eq!(status_of(&s.agent, PREFIX).as_deref(), Some("installed"));

    r.exec(&[
        "ip", "-6", "route", "add", PREFIX, "via", "fe80::77", "dev", "lan0", "proto", "static",
        "metric", "100",
    ])?;
    wait_for(Duration::from_secs(3), || {
        status_of(&s.agent, PREFIX)
            .filter(|st| st.contains("is preferred; ours is installed at metric 1024"))
    })
    .with_context(|| format!("no conflict shown: {:?}", status_of(&s.agent, PREFIX)))?;
    let both = show(r, PREFIX)?;
    eprintln!("a static route at metric 100 beside ours: {both}");
    assert_eq!(both.lines().count(), 2, "{both}");

    s.release()?;
    let left = show(&s.lab.router, PREFIX)?;
    eprintln!("after the release: {left}");
    assert_eq!(
        left,
        "2001:db8:a100::/56 via fe80::77 dev lan0 proto static metric 100 pref medium"
    );
    Ok(())
}

/// With IPv6 forwarding off the agent says so at start and in `stats`, and
/// does not change it.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn forwarding_off_is_reported() -> Result<()> {
    let lab = RouterLab::new()?;
    lab.router
        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
    let dir = TempDir::new("fwd")?;
    let agent = Agent::start(&lab.router, &dir, &["lan0"], &["wan0"])?;
    assert!(
        agent.log().contains("IPv6 forwarding is off"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.stats()?["ipv6_forwarding"], false);
    assert_eq!(
        lab.router
            .exec(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"])?
            .trim(),
        "0"
    );
    Ok(())
}

/// Someone appends another protocol's next hop to our route (`ip route
/// append`: the kernel groups routes of one prefix and metric as equal-cost
/// next hops). The agent shows the conflict and leaves the group alone;
/// a restarted agent does too; the release removes our next hop only.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn appended_next_hop_is_left_alone() -> Result<()> {
    let mut s = setup(600, |_| Ok(()))?;
    wait_ours(&s.lab.router, PREFIX, &s.client_ll, Duration::from_secs(5))?;
    s.lab.router.exec(&[
        "ip", "-6", "route", "append", PREFIX, "via", "fe80::77", "dev", "lan0", "proto", "static",
    ])?;
    let group = show(&s.lab.router, PREFIX)?;
    eprintln!("appended: {group}");
    assert!(group.contains("nexthop via fe80::77"), "{group}");
    wait_for(Duration::from_secs(3), || {
        status_of(&s.agent, PREFIX).filter(|st| st.starts_with("conflict"))
    })
    .with_context(|| format!("no conflict shown: {:?}", status_of(&s.agent, PREFIX)))?;

    // A new agent reconciles: it deletes nothing of the group. (It takes
    // over the pinned links and the store.)
    s.agent.daemon.stop();
    let pin = std::mem::take(&mut s.agent.pin_dir);
    s.agent = Agent::start_opts(
        &s.lab.router,
        &s._dir,
        AgentOpts {
            pin_dir: Some(pin),
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(show(&s.lab.router, PREFIX)?, group, "after a restart");

    s.release()?;
    let left = show(&s.lab.router, PREFIX)?;
    eprintln!("after the release: {left}");
    assert_eq!(
        left,
        "2001:db8:a100::/56 via fe80::77 dev lan0 proto static metric 1024 pref medium"
    );
    Ok(())
}

/// Routes an older pd-agent installed under protocol 99 (Open/R's number to
/// the kernel and iproute2) are taken over at start: an agent on
/// `--route-proto 99` routes Kea's /56 to dhclient and is killed; beside
/// its route an operator has an Open/R route of proto 99 for another
/// prefix. The next agent, on the default protocol, replaces the /56's
/// route in place (one route, our protocol, same next hop, `installed`,
/// not withheld as a conflict), counts it in its log, and leaves the
/// Open/R route alone.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn former_protocol_routes_are_taken_over() -> Result<()> {
    let s = setup_with(600, &["--route-proto", "99"], |_| Ok(()))?;
    let ll = s.client_ll.clone();
    wait_for(Duration::from_secs(10), || {
        show(&s.lab.router, PREFIX)
            .ok()?
            .contains("proto openr")
            .then_some(())
    })
    .with_context(|| {
        format!(
            "no proto-99 route: {}",
            show(&s.lab.router, PREFIX).unwrap_or_default()
        )
    })?;
    let openr = "2001:db8:7700::/48";
    s.lab.router.exec(&[
        "ip", "-6", "route", "add", openr, "via", "fe80::77", "dev", "lan0", "proto", "99",
    ])?;
    let Setup {
        lab,
        agent,
        _kea,
        dhclient: _dhclient,
        cdir: _cdir,
        _dir: dir,
        client_ll: _,
    } = s;
    let pin = agent.kill9_keeping_pins();
    let agent = Agent::start_opts(
        &lab.router,
        &dir,
        AgentOpts {
            pin_dir: Some(pin),
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    )?;
    wait_ours(&lab.router, PREFIX, &ll, Duration::from_secs(10))?;
    let routes = show(&lab.router, PREFIX)?;
    eprintln!("{PREFIX} after the restart: {routes}");
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(routes.contains(&format!("proto {PROTO} ")), "{routes}");
    assert_eq!(status_of(&agent, PREFIX).as_deref(), Some("installed"));
    assert!(
        agent.log().contains("routes_taken_over=1"),
        "{}",
        agent.log()
    );
    let other = show(&lab.router, openr)?;
    assert!(
        other.contains("via fe80::77") && other.contains("proto openr"),
        "{other}"
    );
    Ok(())
}

/// Whether `ns` holds our unreachable route for `prefix`.
fn unreachable_route(ns: &Netns, prefix: &str) -> bool {
    ns.exec(&["ip", "-6", "route", "show", prefix, "proto", PROTO])
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("unreachable {prefix}")))
}

/// One echo request from `from` to `to`: what ping printed, and how many
/// times `router` forwarded meanwhile.
fn ping_through(from: &Netns, router: &Netns, to: &str) -> Result<(String, u64)> {
    let before = router.snmp6("Ip6OutForwDatagrams")?;
    let out = from.ping_once(to)?;
    Ok((out, router.snmp6("Ip6OutForwDatagrams")? - before))
}

/// RFC 7084 WPD-5: the router acquires a /56 upstream (Kea upstream,
/// dhclient on the router's wan0, pd-agent with `--upstream wan0`) and
/// has its default route upstream, whose default route points back at it,
/// as a customer router and its ISP do. An echo request from upstream to
/// an address of the /56 that nothing on the router claims then gets
/// ICMPv6 Destination Unreachable and is forwarded at most once, instead
/// of crossing the link until its hop limit runs out. The unreachable
/// route is kept through renewals, put back when deleted, kept over a
/// restart, put back by the restart's reconcile when deleted meanwhile,
/// and removed on release, after which the loop is back (the test can
/// fail); with `--unreachable-route off` there is none.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn acquired_prefix_is_routed_unreachable() -> Result<()> {
    let lab = RouterLab::new()?;
    // Upstream routes as an ISP does: the customer's /56 (here its
    // default route) points at the router, whose default points back.
    lab.upstream
        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    lab.router.default_via("wan0", &lab.upstream, "eth0")?;
    let (kdir, dir, cdir) = (
        TempDir::new("isp")?,
        TempDir::new("wpd5")?,
        TempDir::new("dh")?,
    );
    // Valid 12 s: dhclient renews every few seconds.
    let _kea = start_kea_subnet(
        &lab.upstream,
        &kdir,
        KeaSubnet {
            iface: "eth0",
            subnet: "2001:db8:feed::/64",
            pool: "2001:db8:a700::",
            pool_len: 56,
            plen: 56,
            relayed: false,
        },
        12,
    )?;
    let opts = || AgentOpts::new(&["lan0"], &["wan0"]);
    let mut agent = Agent::start_opts(&lab.router, &dir, opts())?;
    let mut dh = start_dhclient(&lab.router, &cdir, "wan0")?;
    let p = "2001:db8:a700::/56";
    wait_for(Duration::from_secs(60), || {
        agent
            .bindings()
            .ok()?
            .iter()
            .any(|b| b["kind"] == "acquired" && b["prefix"] == p)
            .then_some(())
    })
    .with_context(|| format!("no acquired binding: {}", agent.log()))?;
    wait_for(Duration::from_secs(5), || {
        unreachable_route(&lab.router, p).then_some(())
    })
    .with_context(|| {
        format!(
            "no unreachable route: {}",
            show(&lab.router, p).unwrap_or_default()
        )
    })?;
    let b = agent.bindings()?;
    let b = b.iter().find(|b| b["prefix"] == p).unwrap();
    assert_eq!(
        (b["route"].as_str(), b["status"].as_str()),
        (Some("unreachable"), Some("installed")),
        "{b}"
    );
    // Unassigned: not the LAN (2001:db8:ffff::/64), not delegated.
    let target = "2001:db8:a700:42::1";
    let (out, fwd) = ping_through(&lab.upstream, &lab.router, target)?;
    eprintln!("with the unreachable route: forwarded {fwd}; ping: {out}");
    assert!(out.contains("Destination unreachable"), "{out}");
    assert!(fwd <= 1, "forwarded {fwd} times");

    // Kept through renewals (dhclient renews at T1, a few seconds).
    let renewals = |a: &Agent| {
        a.log()
            .lines()
            .filter(|l| l.contains("renewed") && l.contains("acquired"))
            .count()
    };
    wait_for(Duration::from_secs(20), || {
        (renewals(&agent) >= 2).then_some(())
    })
    .with_context(|| agent.log())?;
    assert!(
        unreachable_route(&lab.router, p),
        "{}",
        show(&lab.router, p)?
    );

    // Deleted by hand: put back, as a delegated prefix's route is.
    lab.router
        .exec(&["ip", "-6", "route", "del", "unreachable", p, "proto", PROTO])?;
    wait_for(Duration::from_secs(5), || {
        unreachable_route(&lab.router, p).then_some(())
    })
    .with_context(|| format!("not put back: {}", agent.log()))?;

    // A restart keeps it (not stale); one that finds it gone puts it back.
    for gone in [false, true] {
        let pin_dir = agent.kill9_keeping_pins();
        assert!(unreachable_route(&lab.router, p));
        if gone {
            lab.router
                .exec(&["ip", "-6", "route", "del", "unreachable", p, "proto", PROTO])?;
        }
        agent = Agent::start_opts(
            &lab.router,
            &dir,
            AgentOpts {
                pin_dir: Some(pin_dir),
                ..opts()
            },
        )?;
        let log = agent.log();
        assert!(log.contains("stale_routes_removed=0"), "{log}");
        wait_for(Duration::from_secs(5), || {
            unreachable_route(&lab.router, p).then_some(())
        })
        .with_context(|| format!("gone after a restart: {log}"))?;
        let (out, fwd) = ping_through(&lab.upstream, &lab.router, target)?;
        assert!(
            out.contains("Destination unreachable") && fwd <= 1,
            "{fwd}: {out}"
        );
    }

    // Released: the route goes with the binding, and the loop is back.
    dh.stop();
    dhclient_release(&lab.router, &cdir, "wan0")?;
    wait_for(Duration::from_secs(10), || {
        (!unreachable_route(&lab.router, p)
            && !agent.bindings().ok()?.iter().any(|b| b["prefix"] == p))
        .then_some(())
    })
    .with_context(|| format!("still there after release: {}", agent.log()))?;
    assert_eq!(show(&lab.router, p)?, "");
    let (out, fwd) = ping_through(&lab.upstream, &lab.router, target)?;
    eprintln!("without it: forwarded {fwd}; ping: {out}");
    assert!(fwd > 10, "the loop this prevents: forwarded {fwd} times");
    drop(agent);

    // Turned off: acquired, but no route of ours, nor a "route" to show.
    let dir2 = TempDir::new("wpd5off")?;
    let agent = Agent::start_opts(
        &lab.router,
        &dir2,
        AgentOpts {
            args: vec!["--unreachable-route".into(), "off".into()],
            ..opts()
        },
    )?;
    let cdir2 = TempDir::new("dh2")?;
    let _dh = start_dhclient(&lab.router, &cdir2, "wan0")?;
    let b = wait_for(Duration::from_secs(60), || {
        agent
            .bindings()
            .ok()?
            .into_iter()
            .find(|b| b["kind"] == "acquired")
    })
    .with_context(|| agent.log())?;
    std::thread::sleep(Duration::from_secs(1));
    let prefix = b["prefix"].as_str().unwrap_or_default();
    assert!(!unreachable_route(&lab.router, prefix));
    assert!(b.get("route").is_none() && b.get("status").is_none(), "{b}");
    Ok(())
}
