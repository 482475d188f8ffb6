//! The seed scenario, four levels deep, with real servers and clients at
//! every level (see `pd_tests::lab`).
//!
//! Asserts: every level's routes and bindings; container <-> internet
//! connectivity both ways; after the vm releases its /64 and after the
//! laptop's /60 runs out, the routes at every level are exactly what is
//! still delegated.

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

    // Bindings: each router has its delegated binding and (but isp) an acquired one.
    for (name, level, delegated, acquired) in [
        ("isp", &lab.isp, Some(&isp_p), None),
        ("border", &lab.border, Some(&border_p), Some(&isp_p)),
        ("laptop", &lab.laptop, Some(&laptop_p), Some(&border_p)),
        ("vm", &lab.vm, None, Some(&laptop_p)),
    ] {
        let b = level.agent.bindings()?;
        let of = |kind: &str| {
            b.iter()
                .filter(|x| x["kind"] == kind)
                .map(|x| x["prefix"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of("delegated"),
            delegated.into_iter().cloned().collect::<Vec<_>>(),
            "{name} delegated: {b:?}"
        );
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

    // The vm releases its /64: laptop's route goes, the rest stays.
    lab.vm_release()?;
    let want = [
        vec![(isp_p.clone(), lab.border.ns.link_local("up0")?.to_string())],
        vec![(
            border_p.clone(),
            lab.laptop.ns.link_local("up0")?.to_string(),
        )],
        vec![],
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
    lab.laptop_client_dies()?;
    let want = [
        vec![(isp_p.clone(), lab.border.ns.link_local("up0")?.to_string())],
        vec![],
        vec![],
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
