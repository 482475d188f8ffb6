//! `cargo xtask demo`: a live lab in network namespaces.
//!
//! ```text
//!                    2001:db8:feed::/64              lan0 2001:db8:ffff::/64
//!  pdd-internet eth0 ------------------ wan0 pdd-router ------------------ eth0 pdd-client1 (dhclient)
//!                                       (Kea + pd-agent) lan1 2001:db8:fffe::/64
//!                                                        ----------------- eth0 pdd-client2 (dhcpcd)
//! ```
//!
//! Kea on the router delegates /56s to both clients; pd-agent, watching the
//! wire, installs a route for each; the internet host pings an address in
//! each delegated prefix; client1 releases and its route goes away.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use pd_tests::*;

const NAMES: [&str; 4] = ["pdd-internet", "pdd-router", "pdd-client1", "pdd-client2"];
const PIN_DIR: &str = "/sys/fs/bpf/pd-demo-router";

static KEEP: AtomicBool = AtomicBool::new(false);

fn cleanup_all() {
    for n in NAMES {
        remove_netns(n);
    }
    let _ = std::fs::remove_dir_all(PIN_DIR);
}

fn step(s: &str) {
    println!("\n\x1b[1m==> {s}\x1b[0m");
}

pub fn run(bin: &Path, keep: bool) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the demo builds network namespaces: run it as root (sudo -E cargo xtask demo)");
    }
    KEEP.store(keep, Ordering::SeqCst);
    // Ctrl-C: tear everything down (unless --keep), then leave.
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: tearing the lab down");
        cleanup_all();
        std::process::exit(130);
    })?;
    std::env::set_var("PD_AGENT_BIN", bin);
    step("cleaning up leftovers of an earlier run");
    cleanup_all();
    let started = Instant::now();
    let res = lab(keep);
    if res.is_err() || !keep {
        step("tearing the lab down");
        cleanup_all();
    }
    println!("\ndemo took {:.1}s", started.elapsed().as_secs_f64());
    res
}

fn lab(keep: bool) -> Result<()> {
    step("building the lab: internet -- router -- client1 (dhclient), client2 (dhcpcd)");
    let internet = Netns::fixed(NAMES[0])?;
    let router = Netns::fixed(NAMES[1])?;
    let c1 = Netns::fixed(NAMES[2])?;
    let c2 = Netns::fixed(NAMES[3])?;
    veth(&router, "wan0", &internet, "eth0")?;
    veth(&router, "lan0", &c1, "eth0")?;
    veth(&router, "lan1", &c2, "eth0")?;
    router.exec(&["ip", "-6", "addr", "add", "2001:db8:feed::1/64", "dev", "wan0", "nodad"])?;
    router.exec(&["ip", "-6", "addr", "add", "2001:db8:ffff::1/64", "dev", "lan0", "nodad"])?;
    router.exec(&["ip", "-6", "addr", "add", "2001:db8:fffe::1/64", "dev", "lan1", "nodad"])?;
    internet.exec(&["ip", "-6", "addr", "add", "2001:db8:feed::2/64", "dev", "eth0", "nodad"])?;
    internet.exec(&["ip", "-6", "route", "add", "default", "via", "2001:db8:feed::1"])?;
    for (c, lan) in [(&c1, "lan0"), (&c2, "lan1")] {
        c.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
        let ll = router.link_local(lan)?.to_string();
        c.exec(&["ip", "-6", "route", "add", "default", "via", &ll, "dev", "eth0"])?;
    }

    let dir = TempDir::new("demo")?;
    step("starting pd-agent on the router (downstream lan0, lan1; upstream wan0)");
    let t0 = Instant::now();
    let agent = Agent::start_with(&router, &dir, &["lan0", "lan1"], &["wan0"], PIN_DIR.into())?;
    step("starting Kea on the router: /56s from 2001:db8:100::/48 (lan0) and 2001:db8:200::/48 (lan1)");
    let conf = kea_config(
        &dir,
        &[
            KeaSubnet { iface: "lan0", subnet: "2001:db8:ffff::/64", pool: "2001:db8:100::", pool_len: 48, plen: 56, relayed: false },
            KeaSubnet { iface: "lan1", subnet: "2001:db8:fffe::/64", pool: "2001:db8:200::", pool_len: 48, plen: 56, relayed: false },
        ],
        600,
    )?;
    let kea = start_kea(&router, &dir, &conf)?;
    step("clients ask for prefixes: dhclient -6 -P on client1, dhcpcd on client2");
    let d1 = TempDir::new("demo-c1")?;
    let d2 = TempDir::new("demo-c2")?;
    let dhclient = start_dhclient(&c1, &d1, "eth0")?;
    let dhcpcd = start_dhcpcd(&c2, &d2, "eth0")?;
    let routes = wait_for(Duration::from_secs(40), || {
        let r = our_routes(&router).ok()?;
        (r.len() >= 2).then_some(r)
    })
    .with_context(|| format!("routes did not appear; agent log:\n{}", agent.log()))?;
    println!("both clients routed {:.1}s after the agent started", t0.elapsed().as_secs_f64());

    step("pd-agent bindings (on the router)");
    print_bindings(&agent)?;
    step("ip -6 route show proto 99 (on the router)");
    print!("{}", router.exec(&["ip", "-6", "route", "show", "proto", PROTO])?);
    step(&format!("bpftool map dump pinned {PIN_DIR}/pd_routes_v1"));
    for p in agent.map_prefixes()? {
        println!("  {p}");
    }

    step("ping from the internet host to an address inside each delegated prefix");
    for (c, dev) in [(&c1, "eth0"), (&c2, "eth0")] {
        let ll = c.link_local(dev)?.to_string();
        let (prefix, _, _) = routes.iter().find(|(_, via, _)| *via == ll).context("route for client")?;
        let host = format!("{}1", prefix.split('/').next().unwrap());
        c.exec(&["ip", "-6", "addr", "add", &format!("{host}/128"), "dev", "lo"])?;
        let ok = internet.ping(&host, 5);
        println!("  internet -> {host} ({}): {}", c.name, if ok { "reply received" } else { "NO REPLY" });
        if !ok {
            anyhow::bail!("ping to {host} failed");
        }
    }

    if keep {
        step("the lab stays up (--keep). Look around:");
        println!("  ip netns exec pdd-router ip -6 route show proto {PROTO}");
        println!("  bpftool map dump pinned {PIN_DIR}/pd_routes_v1");
        println!("  {} bindings --control {}", agent_bin().display(), agent.control.display());
        println!("  {} stats --control {}", agent_bin().display(), agent.control.display());
        println!("  ip netns exec pdd-internet ping -6 -c1 2001:db8:100::1");
        println!("Run `cargo xtask demo` again to rebuild it, or remove it with:");
        println!("  for n in {}; do ip netns pids $n | xargs -r kill; ip netns del $n; done", NAMES.join(" "));
        // Leave processes, namespaces and files in place.
        std::mem::forget((agent, kea, dhclient, dhcpcd, dir, d1, d2));
        std::mem::forget((internet, router, c1, c2));
        return Ok(());
    }

    step("client1 releases its prefix (dhclient -r): the route goes");
    let mut dhclient = dhclient;
    dhclient.stop();
    dhclient_release(&c1, &d1, "eth0")?;
    let gone = wait_for(Duration::from_secs(15), || {
        let r = our_routes(&router).ok()?;
        (r.len() == 1).then_some(r)
    })
    .context("route of client1 was not removed")?;
    print!("{}", router.exec(&["ip", "-6", "route", "show", "proto", PROTO])?);
    println!("({} route left)", gone.len());
    print_bindings(&agent)?;
    drop((dhcpcd, kea, agent));
    Ok(())
}

fn print_bindings(agent: &Agent) -> Result<()> {
    println!("  {:<22} {:<6} {:<26} {:>10} {:>8}", "PREFIX", "IFACE", "NEXT HOP", "IAID", "VALID");
    for b in agent.bindings()? {
        println!(
            "  {:<22} {:<6} {:<26} {:>10} {:>7}s",
            b["prefix"].as_str().unwrap_or(""),
            b["iface"].as_str().unwrap_or(""),
            b["next_hop"].as_str().unwrap_or(""),
            b["iaid"].to_string(),
            b["valid_lifetime"].to_string()
        );
    }
    Ok(())
}
