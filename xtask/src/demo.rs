//! `cargo xtask demo`: the seed scenario, live, in network namespaces.
//!
//! ```text
//!  internet -- isp (Kea) -- border (dhcpd) -- laptop (Kea) -- br0 -+- vm -- br0 -- container1, container2
//!                                                                  +- cpe (a customer router, no pd-agent)
//! ```
//!
//! The isp delegates a /56 to border; border's agent hook points its ISC
//! dhcpd at that /56 and it delegates a /60 to laptop; laptop's hook points
//! its Kea at the /60 and it delegates a /64 to the vm, whose hook puts it on
//! a bridge and advertises it to two containers, and another /64 to a
//! customer router next to the vm that runs no pd-agent. pd-agent routes
//! every level from what it sees on the wire. Every link is at the kernel's
//! defaults (no GRO switched on anywhere). See `tests/src/lab.rs`.

use std::{path::Path, time::Instant};

use anyhow::Result;
use pd_tests::{
    agent_bin,
    lab::{Lifetimes, Names, SeedLab, INTERNET},
    remove_netns, PROTO,
};

const PREFIX: &str = "pd-";
const PIN_ROOT: &str = "/sys/fs/bpf/pd-demo";
/// The lab's files (configs, leases, logs, state), removed with the lab.
const WORK_DIR: &str = "/tmp/pd-demo";

fn cleanup_all() {
    let names = Names::fixed(PREFIX);
    for role in Names::ROLES {
        remove_netns(&names.get(role));
    }
    for role in ["isp", "border", "laptop", "vm"] {
        let _ = std::fs::remove_dir_all(format!("{PIN_ROOT}-{role}"));
    }
    let _ = std::fs::remove_dir_all(WORK_DIR);
}

fn step(s: &str) {
    println!("\n==> {s}");
}

pub fn run(bin: &Path, keep: bool) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "the demo builds network namespaces: run it as root (sudo -E cargo xtask demo)"
        );
    }
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: tearing the lab down");
        cleanup_all();
        std::process::exit(130);
    })?;
    std::env::set_var("PD_AGENT_BIN", bin);
    step("removing leftovers of an earlier run");
    cleanup_all();
    std::fs::create_dir_all(WORK_DIR)?;
    std::env::set_var("TMPDIR", WORK_DIR);
    let started = Instant::now();
    let res = demo(keep);
    if res.is_err() || !keep {
        step("tearing the lab down");
        cleanup_all();
    }
    println!(
        "\ndemo took {:.1}s (lab build, checks and teardown; not counting the build)",
        started.elapsed().as_secs_f64()
    );
    res
}

fn demo(keep: bool) -> Result<()> {
    step("building the lab: internet -- isp -- border -- laptop -- vm -- containers, and a cpe beside the vm");
    println!("    isp:    Kea delegates /56s out of 2001:db8:1000::/48; pd-agent routes them");
    println!("    border: dhclient acquires a /56; the agent's hooks put its first /64 on the LAN (radvd)");
    println!("            and point ISC dhcpd at the rest (/60s)");
    println!(
        "    laptop: SLAAC on border's LAN; dhcpcd acquires a /60; its first /64 on br0 (radvd),"
    );
    println!("            Kea delegates the rest (/64s)");
    println!("    vm:     SLAAC on the laptop's br0; dhclient acquires a /64 and puts it on its br0 (radvd)");
    println!("    cpe:    a customer router on the laptop's bridge: dhclient acquires a /64, no pd-agent");
    let lab = SeedLab::build(&Names::fixed(PREFIX), Lifetimes::default(), Some(PIN_ROOT))?;
    println!(
        "every level routed {:.1}s after the first DHCP client started",
        lab.routed_after
    );

    step("bindings and routes at every level");
    print!("{}", lab.table()?);

    step("the addressing plan: each router keeps the first /64 of what it acquired for its LAN and delegates the rest");
    for p in lab.plan()? {
        print!("{}", p.line());
    }

    step(&format!(
        "pinging from each container to the internet host ({INTERNET}) and back"
    ));
    let mut all_ok = true;
    for (addr, there, back) in lab.pings()? {
        let r = |ok: bool| if ok { "ok" } else { "FAILED" };
        println!(
            "    container {addr} -> internet: {}   internet -> container: {}",
            r(there),
            r(back)
        );
        all_ok &= there && back;
    }
    let n = 10;
    let got = lab.internet_to_cpe(n)?;
    println!(
        "    internet -> cpe {} (no pd-agent there): {got} of {n} echo requests arrived, counted on the cpe",
        lab.cpe_host().unwrap_or_default()
    );
    all_ok &= got == n as u64;
    if !all_ok {
        anyhow::bail!("some pings failed");
    }

    step("the fast path at each level (XDP redirects only into links that can take them)");
    print!("{}", lab.fast_paths()?);

    if keep {
        step("the lab stays up (--keep); look around:");
        println!("    ip netns exec {PREFIX}border ip -6 route show proto {PROTO}");
        println!("    ip netns exec {PREFIX}container1 ping -6 -c1 {INTERNET}");
        println!("    bpftool map dump pinned {PIN_ROOT}-border/pd_routes_v1");
        for (name, l) in lab.levels() {
            println!(
                "    {} bindings --control {}    # {name}",
                agent_bin().display(),
                l.agent.control.display()
            );
        }
        println!(
            "    {} stats --control {}",
            agent_bin().display(),
            lab.border.agent.control.display()
        );
        println!("  `cargo xtask demo` again rebuilds it from scratch; to remove it:");
        println!("    for n in $(ip netns list | awk '/^{PREFIX}/{{print $1}}'); do ip netns pids $n | xargs -r kill -9; ip netns del $n; done");
        std::mem::forget(lab);
        return Ok(());
    }
    Ok(())
}
