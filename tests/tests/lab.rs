//! The seed scenario, four levels deep, with real servers and clients at
//! every level (see `pd_tests::lab`).
//!
//! Asserts: every level's routes and bindings; the seed's addressing plan
//! (each router's LAN is the first /64 of what it acquired, its pool the
//! rest: 15 /60s at border, 15 /64s at the laptop; the laptop and the vm
//! take their upstream addresses by SLAAC from the LAN above); container
//! <-> internet connectivity both ways; traffic from the internet reaches
//! the customer router on the laptop's bridge, which runs no pd-agent
//! (counted there), through the kernel where XDP cannot redirect; after
//! the vm releases its /64 and after the laptop's /60 runs out, the routes
//! at every level are exactly what is still delegated, the LAN /64 is gone,
//! and the hosts below saw it advertised with lifetime 0.

use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::Ipv6Net;
use pd_tests::{
    lab::{global_addrs, Lifetimes, Names, SeedLab},
    wait_for, Netns,
};

/// A host that saw its router withdraw the LAN /64 (an advertisement with
/// prefix and router lifetime 0): its address in it is deprecated (RFC 4862
/// keeps it up to two hours) and the default route it learned from the
/// advertisements is gone.
fn withdrawn(host: &Netns, dev: &str, lan: &Ipv6Net) -> Option<()> {
    let addrs = global_addrs(host, dev).ok()?;
    let mine: Vec<_> = addrs
        .iter()
        .filter(|a| lan.contains(&a.net.addr()))
        .collect();
    let default = host
        .exec(&[
            "ip", "-6", "route", "show", "default", "dev", dev, "proto", "ra",
        ])
        .ok()?;
    (!mine.is_empty() && mine.iter().all(|a| a.deprecated) && default.trim().is_empty())
        .then_some(())
}

#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn seed_scenario_four_levels() -> Result<()> {
    // border's /60s live 20 s, so the expiry step is quick.
    let mut lab = SeedLab::build(
        &Names::unique(),
        Lifetimes {
            border: 20,
            ..Default::default()
        },
        None,
    )?;
    eprintln!(
        "every level routed {:.1}s after the first client started\n{}",
        lab.routed_after,
        lab.table()?
    );

    // Routes: isp -> border's /56, border -> laptop's /60, laptop -> vm's /64.
    let isp_p = SeedLab::acquired(&lab.border).unwrap();
    let border_p = SeedLab::acquired(&lab.laptop).unwrap();
    let laptop_p = SeedLab::acquired(&lab.vm).unwrap();
    assert!(
        isp_p.starts_with("2001:db8:1000:") && isp_p.ends_with("/56"),
        "{isp_p}"
    );
    let in_net = |inner: &str, outer: &str| {
        let i: ipnet::Ipv6Net = inner.parse().unwrap();
        let o: ipnet::Ipv6Net = outer.parse().unwrap();
        o.contains(&i)
    };
    assert!(
        border_p.ends_with("/60") && in_net(&border_p, &isp_p),
        "{border_p} inside {isp_p}"
    );
    assert!(
        laptop_p.ends_with("/64") && in_net(&laptop_p, &border_p),
        "{laptop_p} inside {border_p}"
    );
    assert_eq!(lab.routes()?, lab.expected_routes()?);

    // The plan: each router keeps the first /64 of what it acquired for
    // its LAN and delegates the rest; the routers below number their
    // upstream side by SLAAC out of that /64.
    let plan = lab.plan()?;
    eprintln!(
        "addressing plan:\n{}",
        plan.iter().map(|p| p.line()).collect::<String>()
    );
    let [border, laptop, vm] = &plan[..] else {
        panic!("three levels")
    };
    let mut lans = Vec::new();
    for (p, acquired, count, dlen) in [(border, &isp_p, 15, 60), (laptop, &border_p, 15, 64)] {
        let acq: Ipv6Net = acquired.parse()?;
        let lan = Ipv6Net::new(acq.network(), 64)?;
        assert_eq!(p.acquired.as_ref(), Some(acquired), "{}", p.line());
        assert_eq!(
            p.lan,
            vec![lan],
            "{}'s LAN is the first /64 of {acq}",
            p.level
        );
        assert_eq!(p.pool_count(), count, "{}", p.line());
        assert!(
            p.pool
                .iter()
                .all(|(n, d)| *d == dlen && acq.contains(n) && !n.contains(&lan)),
            "the pool is the rest of {acq}: {}",
            p.line()
        );
        lans.push(lan);
    }
    let laptop_net: Ipv6Net = laptop_p.parse()?;
    assert_eq!(vm.lan, vec![laptop_net], "the vm's /64 is its LAN");
    assert!(vm.pool.is_empty());
    for (p, above) in [(laptop, lans[0]), (vm, lans[1])] {
        assert!(
            p.upstream
                .iter()
                .any(|a| a.dynamic && above.contains(&a.net.addr())),
            "{}'s upstream address by SLAAC from {above}: {}",
            p.level,
            p.line()
        );
    }
    // Nothing delegated overlaps the LAN it was delegated from.
    let border_net: Ipv6Net = border_p.parse()?;
    assert!(!border_net.contains(&lans[0]), "{border_p} vs {}", lans[0]);
    assert_ne!(laptop_net, lans[1]);

    // Bindings: each router has its delegated bindings (the laptop's to the
    // vm and the cpe) and (but isp) an acquired one.
    let cpe_p = lab.cpe_route()?.context("the cpe's prefix")?.0;
    let mut laptop_delegated = vec![laptop_p.clone(), cpe_p];
    laptop_delegated.sort();
    for (name, level, delegated, acquired) in [
        ("isp", &lab.isp, vec![isp_p.clone()], None),
        ("border", &lab.border, vec![border_p.clone()], Some(&isp_p)),
        ("laptop", &lab.laptop, laptop_delegated, Some(&border_p)),
        ("vm", &lab.vm, vec![], Some(&laptop_p)),
    ] {
        let b = level.agent.bindings()?;
        let of = |kind: &str| {
            let mut v = b
                .iter()
                .filter(|x| x["kind"] == kind)
                .map(|x| x["prefix"].as_str().unwrap().to_string())
                .collect::<Vec<_>>();
            v.sort();
            v
        };
        assert_eq!(of("delegated"), delegated, "{name} delegated: {b:?}");
        assert_eq!(
            of("acquired"),
            acquired.into_iter().cloned().collect::<Vec<_>>(),
            "{name} acquired: {b:?}"
        );
    }
    // The vm's hook put the /64 on br0; containers took addresses in it.
    for a in lab.container_addrs()? {
        assert!(in_net(&format!("{a}/128"), &laptop_p), "{a} in {laptop_p}");
    }

    // Containers <-> internet, both ways.
    for (addr, there, back) in lab.pings()? {
        assert!(there, "container {addr} -> internet");
        assert!(back, "internet -> container {addr}");
    }

    // No level loops (RFC 7084 WPD-5): an address of an acquired prefix
    // that nothing claims (no LAN, nothing delegated) gets Destination
    // Unreachable from the router that acquired it, and no router
    // forwards more than the request and the error once each (without the
    // unreachable route the request went back upstream and crossed the
    // link 31 times each way).
    let cpe_net: Ipv6Net = lab.cpe_route()?.context("cpe route")?.0.parse()?;
    for (level, acquired, taken) in [
        ("border", &isp_p, vec![lans[0], border_net]),
        ("laptop", &border_p, vec![lans[1], laptop_net, cpe_net]),
    ] {
        let acq: Ipv6Net = acquired.parse()?;
        let free = acq
            .subnets(64)?
            .find(|n| !taken.iter().any(|t| t.contains(n) || n.contains(t)))
            .context("an unassigned /64")?;
        let target = std::net::Ipv6Addr::from(u128::from(free.network()) + 1).to_string();
        let fwd = |lab: &SeedLab| -> Result<Vec<u64>> {
            lab.levels()
                .iter()
                .map(|(_, l)| l.ns.snmp6("Ip6OutForwDatagrams"))
                .collect()
        };
        let before = fwd(&lab)?;
        let out = lab.internet.ping_once(&target)?;
        let after = fwd(&lab)?;
        let forwarded: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        eprintln!("internet -> {target} (in {level}'s {acquired}): forwarded {forwarded:?} (isp, border, laptop, vm); {out}");
        assert!(out.contains("Destination unreachable"), "{level}: {out}");
        assert!(forwarded.iter().all(|n| *n <= 2), "{level}: {forwarded:?}");
    }

    // The customer router next to the vm runs no pd-agent: its plain veth
    // and the laptop's bridge take no XDP redirects, so the laptop leaves
    // that traffic to the kernel, and every packet arrives.
    let cpe_route = lab.cpe_route()?.context("cpe route")?;
    assert!(
        cpe_route.0.ends_with("/64") && in_net(&cpe_route.0, &border_p),
        "{cpe_route:?} inside {border_p}"
    );
    lab.internet_to_cpe(1)?;
    let left_before = lab.laptop.agent.stats()?["kernel"]["fwd_no_xmit"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        lab.internet_to_cpe(10)?,
        10,
        "internet -> cpe, counted on the cpe"
    );
    let st = lab.laptop.agent.stats()?;
    assert!(
        st["kernel"]["fwd_no_xmit"].as_u64().unwrap_or(0) == left_before + 10,
        "the laptop left them to the kernel: {st}"
    );
    assert_eq!(
        st["fast_path"]["interfaces"]["br0"]["redirect_target"],
        false
    );
    // Where the next hop runs pd-agent (an XDP program), XDP forwards.
    let isp = lab.isp.agent.stats()?;
    assert_eq!(
        isp["fast_path"]["interfaces"]["down0"]["redirect_target"], true,
        "{isp}"
    );
    assert!(
        isp["kernel"]["fwd_redirected"].as_u64().unwrap_or(0) > 0,
        "{isp}"
    );
    eprintln!("fast paths:\n{}", lab.fast_paths()?);

    // The vm releases its /64: laptop's route to it goes, the rest stays
    // (the cpe keeps its /64).
    lab.vm_release()?;
    let want = [
        vec![(isp_p.clone(), lab.border.ns.link_local("up0")?.to_string())],
        vec![(
            border_p.clone(),
            lab.laptop.ns.link_local("up0")?.to_string(),
        )],
        vec![cpe_route.clone()],
        vec![],
    ];
    wait_for(Duration::from_secs(20), || {
        (lab.routes().ok()? == want).then_some(())
    })
    .with_context(|| {
        format!(
            "after the vm's release: {:?}\n{}",
            lab.routes(),
            lab.table().unwrap_or_default()
        )
    })?;
    assert_eq!(
        SeedLab::acquired(&lab.vm),
        None,
        "the vm's acquired binding was released"
    );
    // Its LAN /64 went with it, advertised with lifetime 0 first.
    wait_for(Duration::from_secs(15), || {
        lab.containers
            .iter()
            .all(|c| withdrawn(c, "eth0", &laptop_net).is_some())
            .then_some(())
    })
    .with_context(|| {
        format!(
            "the containers did not see the vm's LAN withdrawn: {:?}",
            lab.containers
                .iter()
                .map(|c| c.exec(&["ip", "-6", "addr", "show", "dev", "eth0"]))
                .collect::<Vec<_>>()
        )
    })?;
    wait_for(Duration::from_secs(10), || {
        global_addrs(&lab.vm.ns, "br0")
            .ok()?
            .is_empty()
            .then_some(())
    })
    .with_context(|| {
        format!(
            "the vm's LAN address stays: {:?}",
            global_addrs(&lab.vm.ns, "br0")
        )
    })?;

    // The laptop's client dies: its /60 expires at border (20 s lifetime).
    // The laptop's server still delegates the cpe's /64 until that lease
    // ends, so the laptop still routes it.
    lab.laptop_client_dies()?;
    let want = [
        vec![(isp_p.clone(), lab.border.ns.link_local("up0")?.to_string())],
        vec![],
        vec![cpe_route],
        vec![],
    ];
    wait_for(Duration::from_secs(45), || {
        (lab.routes().ok()? == want).then_some(())
    })
    .with_context(|| {
        format!(
            "after the laptop's lease ran out: {:?}\n{}",
            lab.routes(),
            lab.table().unwrap_or_default()
        )
    })?;
    assert!(
        lab.border.agent.log().contains("event=\"expired\""),
        "{}",
        lab.border.agent.log()
    );
    // The laptop's own /60 ran out at the laptop too: its LAN /64 and its
    // pool are gone, and the vm saw the /64 withdrawn on its upstream link.
    wait_for(Duration::from_secs(30), || {
        let plan = lab.plan().ok()?;
        (plan[1].lan.is_empty()
            && plan[1].pool.is_empty()
            && withdrawn(&lab.vm.ns, "up0", &lans[1]).is_some())
        .then_some(())
    })
    .with_context(|| {
        format!(
            "the laptop's LAN was not withdrawn: {}",
            lab.plan()
                .map(|p| p.iter().map(|p| p.line()).collect::<String>())
                .unwrap_or_default()
        )
    })?;
    eprintln!("after release and expiry:\n{}", lab.table()?);
    Ok(())
}
