//! The seed scenario as a lab: delegation four levels deep.
//!
//! ```text
//!  internet --- isp ----------- border ---------- laptop --br0--+-- vm ---- br0 --- container1
//!   eth0     eth0  down0     up0     down0     up0      vm0/cpe0 |  up0               container2
//!           Kea: /56s out of  dhclient -P      dhcpcd            |  dhclient -P
//!           2001:db8:1000::/48 acquires a /56  acquires a /60    |  acquires a /64, radvd on br0
//!                             ISC dhcpd: /60s  Kea on br0: /64s  +-- cpe (up0): dhclient -P
//!                                                                   acquires a /64, no pd-agent
//! ```
//!
//! pd-agent runs on isp, border, laptop and vm. The isp's agent routes the
//! /56 to border (an ISP's router would do this in real life). The
//! addressing plan is the seed's: each router keeps the first /64 of what
//! it acquired for its own LAN and delegates the rest. Its agent's hooks
//! put that /64 on the LAN and advertise it with radvd
//! (`hooks/lan-radvd.sh`), and point its server at the rest
//! (`hooks/dhcpd-prefix6.py` at border: 15 /60s of the /56;
//! `hooks/kea-pd-pool.py` at the laptop: 15 /64s of the /60). The laptop and
//! the vm take their upstream addresses by SLAAC from the LAN /64 above
//! them. Nothing is numbered by hand but the isp's own links; the only
//! static routes are the default routes of border and the laptop towards
//! their upstream (the vm learns its own from the laptop's advertisements).
//!
//! The laptop's VMs sit on a Linux bridge, as they do on a real laptop,
//! and next to the vm a customer router (`cpe`) runs a DHCP client and no
//! pd-agent: nothing on its plain veth lets the laptop's fast path
//! redirect into it, and the bridge takes no redirects either, so traffic
//! to both goes through the kernel. The containers' links are plain veths
//! too; the only links that take XDP redirects are the ones whose far end
//! runs pd-agent (isp -> border, border -> laptop).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::*;

/// The internet host's address, beyond the isp.
pub const INTERNET: &str = "2001:db8:ff00::2";
/// The isp's pool.
pub const ISP_POOL: &str = "2001:db8:1000::/48";

/// Namespace names: `prefix` + role.
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn unique() -> Names {
        Names { prefix: unique("") }
    }
    pub fn fixed(prefix: &str) -> Names {
        Names {
            prefix: prefix.into(),
        }
    }
    pub fn get(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }
    pub const ROLES: [&'static str; 8] = [
        "internet",
        "isp",
        "border",
        "laptop",
        "vm",
        "cpe",
        "container1",
        "container2",
    ];
}

#[derive(Clone, Copy)]
pub struct Lifetimes {
    /// Valid lifetime of the isp's /56s.
    pub isp: u32,
    /// Valid lifetime of border's /60s (ISC dhcpd default-lease-time).
    pub border: u32,
    /// Valid lifetime of laptop's /64s.
    pub laptop: u32,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            isp: 600,
            border: 600,
            laptop: 600,
        }
    }
}

/// One router level: its namespace, agent, DHCP client and work directory.
pub struct Level {
    pub ns: Netns,
    pub agent: Agent,
    pub client: Option<Daemon>,
    pub dir: TempDir,
}

pub struct SeedLab {
    pub internet: Netns,
    pub isp: Level,
    pub border: Level,
    pub laptop: Level,
    pub vm: Level,
    pub containers: [Netns; 2],
    /// The customer router on the laptop's bridge: a DHCP client, no pd-agent.
    pub cpe: Netns,
    pub cpe_client: Option<Daemon>,
    pub cpe_dir: TempDir,
    pub isp_kea: Daemon,
    pub laptop_kea: Daemon,
    /// Seconds from the first DHCP client starting until every level was routed.
    pub routed_after: f64,
}

fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    veth(a, a_if, b, b_if)
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl SeedLab {
    /// Build the whole lab and wait until every level is routed.
    pub fn build(names: &Names, lt: Lifetimes, pin_root: Option<&str>) -> Result<SeedLab> {
        let pin = |role: &str| pin_root.map(|r| PathBuf::from(format!("{r}-{role}")));
        let ns = |role: &str| -> Result<Netns> {
            if names.prefix.starts_with("pd-") {
                Netns::fixed(&names.get(role))
            } else {
                Netns::new(role)
            }
        };
        let internet = ns("internet")?;
        let isp_ns = ns("isp")?;
        let border_ns = ns("border")?;
        let laptop_ns = ns("laptop")?;
        let vm_ns = ns("vm")?;
        let cpe = ns("cpe")?;
        let c1 = ns("container1")?;
        let c2 = ns("container2")?;

        // Links.
        link(&isp_ns, "eth0", &internet, "eth0")?;
        link(&isp_ns, "down0", &border_ns, "up0")?;
        link(&border_ns, "down0", &laptop_ns, "up0")?;
        laptop_ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        laptop_ns.exec(&["ip", "link", "set", "br0", "up"])?;
        for (port, host) in [("vm0", &vm_ns), ("cpe0", &cpe)] {
            link(&laptop_ns, port, host, "up0")?;
            laptop_ns.exec(&["ip", "link", "set", port, "master", "br0"])?;
        }
        vm_ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        vm_ns.exec(&["ip", "link", "set", "br0", "up"])?;
        for (i, c) in [&c1, &c2].into_iter().enumerate() {
            // Containers are hosts: they take the RA's prefix and default route.
            c.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
            c.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_ra=1"])?;
            let port = format!("c{}", i + 1);
            link(&vm_ns, &port, c, "eth0")?;
            c.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1"])?;
            c.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.autoconf=1"])?;
            vm_ns.exec(&["ip", "link", "set", &port, "master", "br0"])?;
        }

        // Link addresses numbered by hand: the isp's own, its internet edge
        // and its customer link. Every other comes from the plan.
        isp_ns.add_addr("2001:db8:ff00::1/64", "eth0")?;
        isp_ns.add_addr("2001:db8:ff01::1/64", "down0")?;
        internet.add_addr(&format!("{INTERNET}/64"), "eth0")?;
        // The laptop and the vm are routers taking their upstream address
        // by SLAAC from the LAN above (accept_ra=2: forwarding is on).
        for r in [&laptop_ns, &vm_ns] {
            r.exec(&["sysctl", "-qw", "net.ipv6.conf.up0.accept_ra=2"])?;
            r.exec(&["sysctl", "-qw", "net.ipv6.conf.up0.autoconf=1"])?;
        }

        // The only static routes: each level's default towards its upstream.
        internet.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:ff00::1",
        ])?;
        border_ns.default_via("up0", &isp_ns, "down0")?;
        laptop_ns.default_via("up0", &border_ns, "down0")?;
        // The vm learns its default route from the laptop's advertisements,
        // as a VM on a laptop's bridge does (a static one beside it would
        // make the kernel drop the whole advertisement, prefix included).
        cpe.default_via("up0", &laptop_ns, "br0")?;

        // isp: Kea delegating /56s, an agent routing them.
        let isp_dir = TempDir::new("isp")?;
        let isp_agent = Agent::start_opts(
            &isp_ns,
            &isp_dir,
            AgentOpts {
                pin_dir: pin("isp"),
                ..AgentOpts::new(&["down0"], &["eth0"])
            },
        )?;
        let isp_conf = kea_config(
            &isp_dir,
            &[KeaSubnet {
                iface: "down0",
                subnet: "2001:db8:ff01::/64",
                pool: "2001:db8:1000::",
                pool_len: 48,
                plen: 56,
                relayed: false,
            }],
            lt.isp,
        )?;
        let isp_kea = start_kea(&isp_ns, &isp_dir, &isp_conf)?;

        // border: its LAN /64 on down0, and ISC dhcpd serving that /64's
        // link with the rest of the /56, both set up by the agent's hooks.
        let border_dir = TempDir::new("border")?;
        let dconf = border_dir.path("dhcpd.conf");
        std::fs::write(
            &dconf,
            format!(
                "default-lease-time {v};\nmax-lease-time {v};\npreferred-lifetime {p};\n\
                 # pd-agent:prefix6\n",
                v = lt.border,
                p = lt.border * 3 / 4
            ),
        )?;
        let border_agent = Agent::start_opts(
            &border_ns,
            &border_dir,
            AgentOpts {
                pin_dir: pin("border"),
                hooks: vec![hook_path("lan-radvd.sh"), hook_path("dhcpd-prefix6.py")],
                env: env(&[
                    ("PD_RESERVE_LAN", "1".into()),
                    ("PD_LAN_IFACE", "down0".into()),
                    (
                        "PD_RADVD_DIR",
                        border_dir.path("radvd").display().to_string(),
                    ),
                    ("PD_DHCPD_CONF", dconf.display().to_string()),
                    ("PD_DHCPD_DELEGATED_LEN", "60".into()),
                    (
                        "PD_DHCPD_PIDFILE",
                        border_dir.path("dhcpd.pid").display().to_string(),
                    ),
                    (
                        "PD_DHCPD_LEASES",
                        border_dir.path("dhcpd.leases").display().to_string(),
                    ),
                    ("PD_DHCPD_IFACE", "down0".into()),
                ]),
                ..AgentOpts::new(&["down0"], &["up0"])
            },
        )?;

        // laptop: Kea with no pool until the hook writes one, and its
        // subnet (a placeholder here, in the server's configuration only)
        // set to the LAN /64 by the hook.
        let laptop_dir = TempDir::new("laptop")?;
        let lconf = kea_config(
            &laptop_dir,
            &[KeaSubnet {
                iface: "br0",
                subnet: "fd00:0:0:c::/64",
                pool: "",
                pool_len: 0,
                plen: 0,
                relayed: false,
            }],
            lt.laptop,
        )?;
        let laptop_kea = start_kea(&laptop_ns, &laptop_dir, &lconf)?;
        let laptop_agent = Agent::start_opts(
            &laptop_ns,
            &laptop_dir,
            AgentOpts {
                pin_dir: pin("laptop"),
                hooks: vec![hook_path("lan-radvd.sh"), hook_path("kea-pd-pool.py")],
                env: env(&[
                    ("PD_RESERVE_LAN", "1".into()),
                    ("PD_LAN_IFACE", "br0".into()),
                    (
                        "PD_RADVD_DIR",
                        laptop_dir.path("radvd").display().to_string(),
                    ),
                    ("PD_KEA_CONF", lconf.display().to_string()),
                    ("PD_KEA_PID", laptop_kea.pid().to_string()),
                    ("PD_KEA_DELEGATED_LEN", "64".into()),
                ]),
                ..AgentOpts::new(&["br0"], &["up0"])
            },
        )?;

        // vm: acquires a /64, its LAN: the hook puts it on br0 and runs radvd.
        let vm_dir = TempDir::new("vm")?;
        let vm_agent = Agent::start_opts(
            &vm_ns,
            &vm_dir,
            AgentOpts {
                pin_dir: pin("vm"),
                hooks: vec![hook_path("lan-radvd.sh")],
                env: env(&[
                    ("PD_LAN_IFACE", "br0".into()),
                    ("PD_RADVD_DIR", vm_dir.path("radvd").display().to_string()),
                ]),
                ..AgentOpts::new(&[], &["up0"])
            },
        )?;

        let mut lab = SeedLab {
            internet,
            isp: Level {
                ns: isp_ns,
                agent: isp_agent,
                client: None,
                dir: isp_dir,
            },
            border: Level {
                ns: border_ns,
                agent: border_agent,
                client: None,
                dir: border_dir,
            },
            laptop: Level {
                ns: laptop_ns,
                agent: laptop_agent,
                client: None,
                dir: laptop_dir,
            },
            vm: Level {
                ns: vm_ns,
                agent: vm_agent,
                client: None,
                dir: vm_dir,
            },
            containers: [c1, c2],
            cpe,
            cpe_client: None,
            cpe_dir: TempDir::new("cpe")?,
            isp_kea,
            laptop_kea,
            routed_after: 0.0,
        };

        // Clients, top down: each starts once the level above can serve it.
        let t0 = Instant::now();
        lab.border.client = Some(start_dhclient(&lab.border.ns, &lab.border.dir, "up0")?);
        lab.wait_acquired("border", &lab.border, 56)?;
        wait_for(Duration::from_secs(20), || {
            lab.border.dir.path("dhcpd.pid").exists().then_some(())
        })
        .with_context(|| {
            format!(
                "the dhcpd hook did not start dhcpd; agent log:\n{}",
                lab.border.agent.log()
            )
        })?;
        lab.laptop.client = Some(start_dhcpcd(&lab.laptop.ns, &lab.laptop.dir, "up0")?);
        lab.wait_acquired("laptop", &lab.laptop, 60)?;
        lab.vm.client = Some(start_dhclient(&lab.vm.ns, &lab.vm.dir, "up0")?);
        lab.cpe_client = Some(start_dhclient(&lab.cpe, &lab.cpe_dir, "up0")?);
        lab.wait_acquired("vm", &lab.vm, 64)?;
        let cpe_prefix = wait_for(Duration::from_secs(60), || dhclient_prefix(&lab.cpe_dir))
            .with_context(|| {
                format!(
                    "the cpe acquired no prefix: {}",
                    lab.cpe_client
                        .as_ref()
                        .map(|c| c.log_text())
                        .unwrap_or_default()
                )
            })?;
        // The customer router numbers itself out of its prefix.
        lab.cpe.host_in(&cpe_prefix)?;
        lab.wait_routed(Duration::from_secs(30))?;
        lab.routed_after = t0.elapsed().as_secs_f64();
        Ok(lab)
    }

    fn wait_acquired(&self, name: &str, level: &Level, len: u8) -> Result<String> {
        wait_for(Duration::from_secs(60), || {
            level
                .agent
                .bindings()
                .ok()?
                .iter()
                .find(|b| {
                    b["kind"] == "acquired"
                        && b["prefix"]
                            .as_str()
                            .is_some_and(|p| p.ends_with(&format!("/{len}")))
                })
                .map(|b| b["prefix"].as_str().unwrap().to_string())
        })
        .with_context(|| {
            format!(
                "{name} acquired no /{len}; agent log:\n{}\nclient log:\n{}",
                level.agent.log(),
                level
                    .client
                    .as_ref()
                    .map(|c| c.log_text())
                    .unwrap_or_default()
            )
        })
    }

    /// The prefix `level` holds as acquired, if any.
    pub fn acquired(level: &Level) -> Option<String> {
        level
            .agent
            .bindings()
            .ok()?
            .iter()
            .find(|b| b["kind"] == "acquired")
            .map(|b| b["prefix"].as_str().unwrap().to_string())
    }

    /// Every level has its route, and each container an address in the vm's /64.
    pub fn wait_routed(&self, timeout: Duration) -> Result<()> {
        let ok = wait_for(timeout, || {
            let e = self.expected_routes().ok()?;
            (self.routes().ok()? == e
                && e[0].len() == 1
                && e[1].len() == 1
                && e[2].len() == 2
                && self.container_addrs().ok()?.len() == 2)
                .then_some(())
        });
        if ok.is_none() {
            bail!(
                "not every level got routed: routes {:?}, expected {:?}",
                self.routes()?,
                self.expected_routes()?
            );
        }
        Ok(())
    }

    /// Our routes at isp, border, laptop, vm: prefixes and next hops.
    pub fn routes(&self) -> Result<[Vec<(String, String)>; 4]> {
        let r = |l: &Level| -> Result<Vec<(String, String)>> {
            let mut v: Vec<_> = our_routes(&l.ns)?
                .into_iter()
                .map(|(p, via, _)| (p, via))
                .collect();
            v.sort();
            Ok(v)
        };
        Ok([
            r(&self.isp)?,
            r(&self.border)?,
            r(&self.laptop)?,
            r(&self.vm)?,
        ])
    }

    /// What each level should route: the prefix the level below acquired,
    /// via that level's upstream link-local address (at the laptop, the
    /// vm's and the cpe's).
    pub fn expected_routes(&self) -> Result<[Vec<(String, String)>; 4]> {
        let below = |l: &Level| -> Result<Vec<(String, String)>> {
            Ok(match Self::acquired(l) {
                Some(p) => vec![(p, l.ns.link_local("up0")?.to_string())],
                None => vec![],
            })
        };
        let mut laptop = below(&self.vm)?;
        laptop.extend(self.cpe_route()?);
        laptop.sort();
        Ok([below(&self.border)?, below(&self.laptop)?, laptop, vec![]])
    }

    /// The cpe's prefix (from its DHCP client's lease) and the route the
    /// laptop should hold for it.
    pub fn cpe_route(&self) -> Result<Option<(String, String)>> {
        Ok(match dhclient_prefix(&self.cpe_dir) {
            Some(p) => Some((p, self.cpe.link_local("up0")?.to_string())),
            None => None,
        })
    }

    /// The cpe's own address (the first of its prefix).
    pub fn cpe_host(&self) -> Option<String> {
        let p = dhclient_prefix(&self.cpe_dir)?;
        Some(format!("{}1", p.split('/').next()?))
    }

    /// `n` echo requests from the internet host to the cpe: how many
    /// arrived, counted on the cpe. The first call also resolves the
    /// neighbours on the way (one ping before counting).
    pub fn internet_to_cpe(&self, n: u32) -> Result<u64> {
        let host = self.cpe_host().context("the cpe has no prefix")?;
        if echo_count(&self.cpe).is_err() {
            count_echoes(&self.cpe, &host)?;
            self.internet.ping(&host, 3);
        }
        let before = echo_count(&self.cpe)?;
        ping_n(&self.internet, &host, n);
        Ok(echo_count(&self.cpe)? - before)
    }

    /// Each router's fast path, one line per managed downstream interface:
    /// whether it takes XDP redirects, and why not.
    pub fn fast_paths(&self) -> Result<String> {
        let mut s = String::new();
        for (name, l) in self.levels() {
            let st = l.agent.stats()?;
            let fp = &st["fast_path"];
            let Some(ifs) = fp["interfaces"].as_object() else {
                continue;
            };
            for (iface, v) in ifs.iter().filter(|(_, v)| v["role"] == "downstream") {
                let verdict = if v["redirect_target"] == true {
                    "XDP redirects into it (its far end runs an XDP program)".to_string()
                } else {
                    format!(
                        "the kernel forwards: {}",
                        v["why_not"].as_str().unwrap_or("?")
                    )
                };
                s += &format!(
                    "  {name:<8} {iface:<6} {verdict}; redirected {}, left to the kernel {}\n",
                    st["kernel"]["fwd_redirected"], st["kernel"]["fwd_no_xmit"]
                );
            }
        }
        Ok(s)
    }

    /// The addressing plan as it stands, level by level: border, laptop, vm.
    pub fn plan(&self) -> Result<Vec<Plan>> {
        let dconf = std::fs::read_to_string(self.border.dir.path("dhcpd.conf"))?;
        let border_pool = dhcpd_pool(&dconf);
        let kconf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.laptop.dir.path("kea.json"))?)?;
        let laptop_pool: Vec<(ipnet::Ipv6Net, u8)> = kconf["Dhcp6"]["subnet6"][0]["pd-pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let net = format!("{}/{}", p["prefix"].as_str()?, p["prefix-len"]);
                Some((net.parse().ok()?, p["delegated-len"].as_u64()? as u8))
            })
            .collect();
        let level =
            |name: &'static str, l: &Level, lan_iface: &'static str, pool| -> Result<Plan> {
                Ok(Plan {
                    level: name,
                    acquired: Self::acquired(l),
                    upstream: global_addrs(&l.ns, "up0")?,
                    lan_iface,
                    lan: global_addrs(&l.ns, lan_iface)?
                        .into_iter()
                        .map(|a| a.net.trunc())
                        .collect(),
                    pool,
                })
            };
        Ok(vec![
            level("border", &self.border, "down0", border_pool)?,
            level("laptop", &self.laptop, "br0", laptop_pool)?,
            level("vm", &self.vm, "br0", vec![])?,
        ])
    }

    /// Global addresses of the containers (from the vm's RA).
    pub fn container_addrs(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for c in &self.containers {
            if let Some(a) = global_addrs(c, "eth0")?.first() {
                out.push(a.net.addr().to_string());
            }
        }
        Ok(out)
    }

    pub fn levels(&self) -> [(&'static str, &Level); 4] {
        [
            ("isp", &self.isp),
            ("border", &self.border),
            ("laptop", &self.laptop),
            ("vm", &self.vm),
        ]
    }

    /// Bindings and routes of every level, as a table.
    pub fn table(&self) -> Result<String> {
        let mut s = String::new();
        s += &format!(
            "{:<8} {:<9} {:<24} {:<7} {:<26} {:>6}\n",
            "LEVEL", "KIND", "PREFIX", "IFACE", "NEXT HOP / FROM", "VALID"
        );
        for (name, l) in self.levels() {
            let mut b = l.agent.bindings()?;
            b.sort_by_key(|b| b["kind"].as_str().unwrap_or("").to_string());
            for b in b {
                s += &format!(
                    "{:<8} {:<9} {:<24} {:<7} {:<26} {:>5}s\n",
                    name,
                    b["kind"].as_str().unwrap_or(""),
                    b["prefix"].as_str().unwrap_or(""),
                    b["iface"].as_str().unwrap_or(""),
                    b["next_hop"].as_str().unwrap_or(""),
                    b["valid_lifetime"]
                );
            }
        }
        if let Some(p) = dhclient_prefix(&self.cpe_dir) {
            s += &format!(
                "{:<8} {:<9} {:<24} {:<7} {:<26}\n",
                "cpe", "acquired", p, "up0", "(dhclient; no pd-agent)"
            );
        }
        s += "\nroutes (ip -6 route show proto 57):\n";
        for (name, l) in self.levels() {
            let r = our_routes(&l.ns)?;
            if r.is_empty() {
                s += &format!("  {name:<8} (none)\n");
            }
            for (p, via, dev) in r {
                s += &format!("  {name:<8} {p} via {via} dev {dev}\n");
            }
        }
        Ok(s)
    }

    /// Ping from each container to the internet host, and back.
    pub fn pings(&self) -> Result<Vec<(String, bool, bool)>> {
        let addrs = self.container_addrs()?;
        let mut out = Vec::new();
        for (c, a) in self.containers.iter().zip(addrs) {
            let there = c.ping(INTERNET, 5);
            let back = self.internet.ping(&a, 5);
            out.push((a, there, back));
        }
        Ok(out)
    }

    /// The vm releases its /64 (`dhclient -r`).
    pub fn vm_release(&mut self) -> Result<()> {
        if let Some(mut c) = self.vm.client.take() {
            c.stop();
        }
        dhclient_release(&self.vm.ns, &self.vm.dir, "up0")
    }

    /// The laptop's DHCP client dies without a Release (kill -9 of every
    /// dhcpcd process there): its /60 runs out at border.
    pub fn laptop_client_dies(&mut self) -> Result<()> {
        if let Some(mut c) = self.laptop.client.take() {
            c.kill(libc::SIGKILL);
        }
        let pids = sh(&["ip", "netns", "pids", &self.laptop.ns.name])?;
        for pid in pids.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "dhcpcd" {
                let _ = sh(&["kill", "-9", pid]);
            }
        }
        Ok(())
    }
}

/// One global address of an interface.
#[derive(Debug, Clone)]
pub struct IfAddr {
    pub net: ipnet::Ipv6Net,
    /// Configured from a router advertisement (SLAAC): it has lifetimes.
    pub dynamic: bool,
    /// Its preferred lifetime ran out (an RA said 0).
    pub deprecated: bool,
}

/// Global addresses on `dev` in `ns`.
pub fn global_addrs(ns: &Netns, dev: &str) -> Result<Vec<IfAddr>> {
    let o = ns.exec(&[
        "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "global",
    ])?;
    Ok(o.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "inet6")?;
            Some(IfAddr {
                net: w.get(i + 1)?.parse().ok()?,
                dynamic: w.contains(&"dynamic"),
                deprecated: w.contains(&"deprecated"),
            })
        })
        .collect())
}

/// The pool of the `# pd-agent:prefix6` line in a dhcpd.conf:
/// `prefix6 FIRST LAST /N` as (block, N) per delegatable prefix.
pub fn dhcpd_pool(conf: &str) -> Vec<(ipnet::Ipv6Net, u8)> {
    let Some(line) = conf
        .lines()
        .find(|l| l.contains("# pd-agent:prefix6") && !l.trim_start().starts_with('#'))
    else {
        return vec![];
    };
    let w: Vec<&str> = line.split_whitespace().collect();
    let Some(i) = w.iter().position(|x| *x == "prefix6") else {
        return vec![];
    };
    let parse = || -> Option<(u128, u128, u8)> {
        let first: std::net::Ipv6Addr = w.get(i + 1)?.parse().ok()?;
        let last: std::net::Ipv6Addr = w.get(i + 2)?.parse().ok()?;
        let len: u8 = w
            .get(i + 3)?
            .trim_start_matches('/')
            .trim_end_matches(';')
            .parse()
            .ok()?;
        Some((first.into(), last.into(), len))
    };
    let Some((first, last, len)) = parse() else {
        return vec![];
    };
    let step = 1u128 << (128 - len);
    (0..)
        .map(|k| first + k * step)
        .take_while(|a| *a <= last)
        .filter_map(|a| {
            Some((
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(a), len).ok()?,
                len,
            ))
        })
        .collect()
}

/// One router's share of the addressing plan.
pub struct Plan {
    pub level: &'static str,
    /// What it acquired from the level above.
    pub acquired: Option<String>,
    /// Its upstream addresses (SLAAC from the LAN above).
    pub upstream: Vec<IfAddr>,
    pub lan_iface: &'static str,
    /// The /64s on its LAN interface.
    pub lan: Vec<ipnet::Ipv6Net>,
    /// What its server delegates: pool blocks and the delegated length.
    pub pool: Vec<(ipnet::Ipv6Net, u8)>,
}

impl Plan {
    /// How many prefixes the pool delegates.
    pub fn pool_count(&self) -> u64 {
        self.pool
            .iter()
            .map(|(n, d)| 1u64 << (d - n.prefix_len()))
            .sum()
    }

    /// One line for the demo and test logs.
    pub fn line(&self) -> String {
        let up = self
            .upstream
            .iter()
            .map(|a| {
                format!(
                    "{}{}",
                    a.net.addr(),
                    if a.dynamic { " (SLAAC)" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let lan = self
            .lan
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let pool = match self.pool.first() {
            None => "none (the whole prefix is the LAN)".to_string(),
            // A dhcpd range (one block per prefix) as its ends.
            Some((first, d)) if self.pool.len() > 4 => format!(
                "{} x /{d}: {first} .. {}",
                self.pool_count(),
                self.pool[self.pool.len() - 1].0
            ),
            Some((_, d)) => format!(
                "{} x /{d}: {}",
                self.pool_count(),
                self.pool
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        };
        format!(
            "  {:<7} acquired {}\n          upstream address {}\n          LAN {} {}\n          pool {}\n",
            self.level,
            self.acquired.as_deref().unwrap_or("-"),
            if up.is_empty() { "-".to_string() } else { up },
            self.lan_iface,
            if lan.is_empty() { "-".to_string() } else { lan },
            pool
        )
    }
}
