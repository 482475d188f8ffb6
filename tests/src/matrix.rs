//! The fast path's verdict on every kind of link a router's delegated
//! prefixes lead to, under each firewall set-up, read from the counters.
//!
//! ```text
//!                        +-- lan1 --- eth0 c1        a plain veth (a container)
//!  upstream -- wan0 rt --+-- lan2 --- eth0 c2        a router below running pd-agent
//!             tun0 ------+-- br-lan [p3] --- eth0 c3 a bridged LAN
//!          (test writes) +-- lan4.10 === eth0.10 c4  a VLAN (needs 8021q)
//! ```
//!
//! One Kea on rt delegates a /56 to dhclient on each client; one pd-agent
//! at its defaults manages every LAN. Every link is at the kernel's
//! defaults; c2 runs pd-agent on its uplink, and that program is what lets
//! rt's fast path redirect into lan2. For each firewall set-up (none; a
//! stateful forward chain; the same with a flowtable offloading flows,
//! where the kernel has one), 10 echo requests go from upstream to each
//! client, and 10 are written into the uplink tun0 (a link without
//! Ethernet header) towards c1. Each cell says how many arrived (counted on
//! the client) and which counter took them.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{wire::Tun, *};

/// One row: what carries the traffic to the client.
pub struct Cell {
    pub link: &'static str,
    pub firewall: &'static str,
    pub arrived: u64,
    /// (counter, how much it grew) for the counters that moved.
    pub moved: Vec<(&'static str, u64)>,
}

impl Cell {
    /// The counter that took every packet, if exactly one did.
    pub fn verdict(&self) -> Option<&'static str> {
        match self.moved.as_slice() {
            [(c, n)] if *n == 10 => Some(c),
            _ => None,
        }
    }
}

/// The stateful forward chain: established/related accepted, invalid
/// dropped, LAN to WAN allowed, echo requests to the LANs allowed (so that
/// what arrives can be counted), everything else dropped. `flowtable` adds
/// a flowtable over every link and offloads TCP/UDP flows into it.
fn ruleset(flowtable: bool, lans: &[&str]) -> String {
    let devs = lans.join(", ");
    let (ft, offload) = if flowtable {
        (
            format!(
                "  flowtable ft {{ hook ingress priority 0; devices = {{ wan0, {devs} }}; }}\n"
            ),
            "    meta l4proto { tcp, udp } flow add @ft\n",
        )
    } else {
        (String::new(), "")
    };
    format!(
        "table inet fw {{\n{ft}  chain forward {{\n    type filter hook forward priority 0; policy drop;\n\
         {offload}    ct state established,related accept\n    ct state invalid drop\n\
             oifname \"wan0\" accept\n    icmpv6 type echo-request accept\n  }}\n}}\n"
    )
}

const COUNTERS: [&str; 5] = [
    "fwd_redirected",
    "fwd_no_xmit",
    "fwd_firewall",
    "fwd_link_type",
    "fwd_no_agent",
];

struct Client {
    ns: Netns,
    link: &'static str,
    host: String,
    _dhclient: Daemon,
    _dir: TempDir,
}

/// The link to the router below that runs pd-agent (the only kind a
/// router's fast path redirects into without anyone tuning a link).
pub const ROUTER_BELOW: &str = "veth to a router running pd-agent";

/// Build the topology, run every cell; returns the cells and whether the
/// kernel reports xdp-features (without them nothing is a redirect target).
pub fn run(vlan: bool) -> Result<(Vec<Cell>, bool)> {
    let (upstream, rt) = upstream_and_router()?;
    let tun = Tun::create(&rt, "tun0")?;
    rt.exec(&["ip", "link", "set", "tun0", "up"])?;
    rt.add_addr("2001:db8:fee0::1/64", "tun0")?;

    // (link, router iface, client netns, client iface), every link at the
    // kernel's defaults.
    let mut lans: Vec<(&'static str, &'static str, Netns, &'static str)> = Vec::new();
    let c1 = Netns::new("mc1")?;
    veth(&rt, "lan1", &c1, "eth0")?;
    lans.push(("veth (a container: no XDP, GRO off)", "lan1", c1, "eth0"));
    let c2 = Netns::new("mc2")?;
    veth(&rt, "lan2", &c2, "eth0")?;
    lans.push((ROUTER_BELOW, "lan2", c2, "eth0"));
    let c3 = Netns::new("mc3")?;
    rt.exec(&["ip", "link", "add", "br-lan", "type", "bridge"])?;
    rt.exec(&["ip", "link", "set", "br-lan", "up"])?;
    veth(&rt, "p3", &c3, "eth0")?;
    rt.exec(&["ip", "link", "set", "p3", "master", "br-lan"])?;
    lans.push(("bridge", "br-lan", c3, "eth0"));
    if vlan {
        let c4 = Netns::new("mc4")?;
        veth(&rt, "lan4", &c4, "eth0")?;
        rt.add_vlan("lan4", "lan4.10", 10)?;
        c4.add_vlan("eth0", "eth0.10", 10)?;
        lans.push(("VLAN sub-interface", "lan4.10", c4, "eth0.10"));
    }
    let mut subnets = Vec::new();
    let mut pools = Vec::new();
    for (i, (_, iface, c, cif)) in lans.iter().enumerate() {
        rt.add_addr(&format!("2001:db8:ff{i}0::1/64"), iface)?;
        c.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
        c.default_via(cif, &rt, iface)?;
        subnets.push(format!("2001:db8:ff{i}0::/64"));
        pools.push(format!("2001:db8:a{i}00::"));
    }
    let dir = TempDir::new("mx")?;
    let kea_subnets: Vec<KeaSubnet> = lans
        .iter()
        .zip(subnets.iter().zip(&pools))
        .map(|((_, iface, _, _), (subnet, pool))| KeaSubnet {
            iface,
            subnet,
            pool,
            pool_len: 48,
            plen: 56,
            relayed: false,
        })
        .collect();
    let conf = kea_config(&dir, &kea_subnets, 600)?;
    let downstream: Vec<&str> = lans.iter().map(|l| l.1).collect();
    let agent = Agent::start_opts(&rt, &dir, AgentOpts::new(&downstream, &["wan0", "tun0"]))?;
    let _kea = start_kea(&rt, &dir, &conf)?;
    let mut clients = Vec::new();
    let mut below = None;
    for (link, _, ns, cif) in lans {
        let cdir = TempDir::new("mxc")?;
        let dhclient = start_dhclient(&ns, &cdir, cif)?;
        let prefix = wait_delegated(&agent, &cdir, &dhclient).with_context(|| link.to_string())?;
        let host = ns.host_in(&prefix)?;
        count_echoes(&ns, &host)?;
        if link == ROUTER_BELOW {
            let bdir = TempDir::new("mxb")?;
            below = Some((Agent::start(&ns, &bdir, &[], &[cif])?, bdir));
        }
        // Resolve the neighbours on the way before counting.
        upstream.ping(&host, 5);
        clients.push(Client {
            ns,
            link,
            host,
            _dhclient: dhclient,
            _dir: cdir,
        });
    }
    let features = agent.stats()?["fast_path"]["xdp_features_reported"] == true;
    if features {
        wait_for(Duration::from_secs(5), || {
            (agent.stats().ok()?["fast_path"]["interfaces"]["lan2"]["redirect_target"] == true)
                .then_some(())
        })
        .context("the router below's link never took redirects")?;
    }

    let kernel = |name: &str| -> Result<u64> {
        agent.stats()?["kernel"][name]
            .as_u64()
            .with_context(|| format!("counter {name}"))
    };
    let snapshot = || -> Result<Vec<u64>> { COUNTERS.iter().map(|c| kernel(c)).collect() };
    // Flowtables take plain devices (not the bridge, not the VLAN).
    let ft_devices = ["lan1", "lan2"];
    // Whether this kernel has flowtables, tried in a namespace of its own.
    let flowtable_ok = {
        let probe = Netns::new("mft")?;
        probe.exec(&[
            "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "p",
        ])?;
        let t = dir.path("probe.nft");
        std::fs::write(
            &t,
            "table inet probe {\n  flowtable ft { hook ingress priority 0; devices = { wan0 }; }\n}\n",
        )?;
        probe.exec(&["nft", "-f", &t.display().to_string()]).is_ok()
    };
    let mut setups = vec![
        ("none", None),
        ("stateful forward chain", Some(ruleset(false, &ft_devices))),
    ];
    if flowtable_ok {
        setups.push(("flowtable (flow add @ft)", Some(ruleset(true, &ft_devices))));
    } else {
        eprintln!("this kernel has no nf_flow_table: no flowtable rows");
    }
    let mut cells = Vec::new();
    for (fw, rules) in setups {
        let _ = rt.exec(&["nft", "delete", "table", "inet", "fw"]);
        if let Some(r) = &rules {
            let f = dir.path("fw.nft");
            std::fs::write(&f, r)?;
            rt.exec(&["nft", "-f", &f.display().to_string()])?;
        }
        let want = rules.is_none();
        wait_for(Duration::from_secs(5), || {
            (agent.stats().ok()?["fast_path"]["forwarding"].as_bool()? == want).then_some(())
        })
        .with_context(|| {
            format!(
                "{fw}: the agent did not follow the ruleset: {}",
                agent.log()
            )
        })?;
        let measure =
            |link: &'static str, c: &Client, send: &dyn Fn() -> Result<()>| -> Result<Cell> {
                let before = snapshot()?;
                let got_before = echo_count(&c.ns)?;
                send()?;
                wait_for(Duration::from_secs(3), || {
                    (echo_count(&c.ns).ok()? >= got_before + 10).then_some(())
                });
                std::thread::sleep(Duration::from_millis(200));
                let after = snapshot()?;
                Ok(Cell {
                    link,
                    firewall: fw,
                    arrived: echo_count(&c.ns)? - got_before,
                    moved: COUNTERS
                        .iter()
                        .zip(after.iter().zip(before))
                        .filter(|(_, (a, b))| **a > *b)
                        .map(|(n, (a, b))| (*n, a - b))
                        .collect(),
                })
            };
        for c in &clients {
            cells.push(measure(c.link, c, &|| {
                ping_n(&upstream, &c.host, 10);
                Ok(())
            })?);
        }
        let c1 = &clients[0];
        let host: std::net::Ipv6Addr = c1.host.parse()?;
        cells.push(measure(
            "tun uplink (no Ethernet header) -> veth",
            c1,
            &|| {
                for seq in 0..10 {
                    tun.write(&wire::icmp6_echo("2001:db8:fee0::2".parse()?, host, 7, seq))?;
                }
                Ok(())
            },
        )?);
    }
    let _ = rt.exec(&["nft", "delete", "table", "inet", "fw"]);
    if cells.is_empty() {
        bail!("no cells");
    }
    drop(below);
    Ok((cells, features))
}

/// What each cell must show: every packet arrives, and exactly one
/// counter took all ten, the one the rules say.
pub fn check(cells: &[Cell], xdp_features: bool) -> Result<()> {
    let mut wrong = Vec::new();
    for c in cells {
        let want = if c.link.starts_with("tun") {
            "fwd_link_type"
        } else if c.firewall != "none" {
            "fwd_firewall"
        } else if c.link == ROUTER_BELOW && xdp_features {
            "fwd_redirected"
        } else {
            "fwd_no_xmit"
        };
        if c.arrived != 10 || c.verdict() != Some(want) {
            wrong.push(format!(
                "{} / {}: arrived {}, counters {:?}, want 10 and {want}",
                c.link, c.firewall, c.arrived, c.moved
            ));
        }
    }
    if !wrong.is_empty() {
        bail!("{}\n{}", wrong.join("\n"), table(cells));
    }
    Ok(())
}

/// The cells as a markdown table.
pub fn table(cells: &[Cell]) -> String {
    let mut s = String::from(
        "| link to the client | firewall | arrived (of 10) | fast path |\n|---|---|---|---|\n",
    );
    for c in cells {
        let what = match c.verdict() {
            Some("fwd_redirected") => "redirected in XDP (fwd_redirected)".to_string(),
            Some(v) => format!("passed to the kernel ({v})"),
            None => format!("{:?}", c.moved),
        };
        s += &format!("| {} | {} | {} | {what} |\n", c.link, c.firewall, c.arrived);
    }
    s
}
