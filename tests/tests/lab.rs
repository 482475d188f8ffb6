//! The seed scenario, four levels deep, with real servers and clients at
//! every level (see `pd_tests::lab`).
//!
//! Asserts: every level's routes and bindings; container <-> internet
//! connectivity both ways; traffic from the internet reaches the customer
//! router on the laptop's bridge, which runs no pd-agent (counted there),
//! through the kernel where XDP cannot redirect; after the vm releases its
//! /64 and after the laptop's /60 runs out, the routes at every level are
//! exactly what is still delegated.

use std::time::Duration;

use anyhow::{Context, Result};
use pd_tests::{
    lab::{Lifetimes, Names, SeedLab},
    wait_for,
};

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
    eprintln!("after release and expiry:\n{}", lab.table()?);
    Ok(())
}
