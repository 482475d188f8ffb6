//! Links the development kernel cannot build (it has no 8021q and no ppp):
//! these run inside a VM booted on Debian 12's own kernel, started by
//! `cargo xtask test vm` (and by `cargo xtask test`, after the host tests).
//! Their names start with `vm_`; the host run skips them.
//!
//! Each test delegates a prefix with a real Kea to a real dhclient across
//! the link under test, checks the route pd-agent installed, and counts on
//! the client what arrives from upstream.

use std::time::Duration;

use anyhow::{Context, Result};
use pd_tests::*;

/// The route `ns` holds for `prefix` (via, dev), waiting for it.
fn route_for(ns: &Netns, agent: &Agent, prefix: &str) -> Result<(String, String)> {
    wait_for(Duration::from_secs(30), || {
        our_routes(ns)
            .ok()?
            .into_iter()
            .find(|(p, _, _)| p == prefix)
            .map(|(_, via, dev)| (via, dev))
    })
    .with_context(|| format!("no route for {prefix}: {}", agent.log()))
}

/// ```text
///  upstream --- wan0 router lan0 ==trunk== eth0 client
///                       lan0.10 (VLAN 10)   eth0.10
/// ```
/// The LAN is VLAN 10 on a trunk; the agent manages the VLAN
/// sub-interface `lan0.10` under its usual name. Kea on lan0.10 delegates
/// a /56 to dhclient on the client's eth0.10: the route goes via the
/// client's link-local address on lan0.10, the links are pinned under the
/// escaped name, and 10 echo requests from upstream all arrive.
#[test]
#[ignore = "needs 8021q: run with cargo xtask test vm"]
fn vm_vlan_sub_interface() -> Result<()> {
    let _ = sh(&["modprobe", "8021q"]);
    let (upstream, router) = upstream_and_router()?;
    let client = Netns::new("vcl")?;
    veth(&router, "lan0", &client, "eth0")?;
    router.add_vlan("lan0", "lan0.10", 10)?;
    router.add_addr("2001:db8:ffff::1/64", "lan0.10")?;
    client.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
    client.add_vlan("eth0", "eth0.10", 10)?;
    client.default_via("eth0.10", &router, "lan0.10")?;

    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("vlan"));
    let opts = AgentOpts {
        pin_dir: Some(pin.clone()),
        ..AgentOpts::new(&["lan0.10"], &["wan0"])
    };
    let d = delegate(
        &router,
        "lan0.10",
        "2001:db8:ffff::/64",
        "2001:db8:1100::",
        &client,
        "eth0.10",
        opts,
    )?;
    let (agent, host) = (&d.agent, &d.host);
    // The programs and fallbacks this kernel calls for (the compat
    // programs before 5.18, a clsact filter before 6.6).
    assert_fallbacks(agent, false)?;
    let (via, dev) = route_for(&router, agent, &d.prefix)?;
    assert_eq!(via, client.link_local("eth0.10")?.to_string());
    assert_eq!(dev, "lan0.10");
    let idx = router
        .exec(&["cat", "/sys/class/net/lan0.10/ifindex"])?
        .trim()
        .to_string();
    assert!(pin
        .join("links")
        .join(format!("xdp_lan0%2e10_{idx}"))
        .exists());

    count_echoes(&client, host)?;
    upstream.ping(host, 5);
    let before = echo_count(&client)?;
    ping_n(&upstream, host, 10);
    assert_eq!(
        echo_count(&client)? - before,
        10,
        "every echo request reached the client over VLAN 10"
    );
    let fp = &agent.stats()?["fast_path"];
    assert_eq!(
        fp["interfaces"]["lan0.10"]["redirect_target"], false,
        "{fp}"
    );
    Ok(())
}

/// pppd options for both ends: no authentication, IPv6, and IPv4 scripts
/// that touch nothing (pppd 2.4.9 has no option for the IPv6 ones; the VM's
/// /etc is an overlay).
const PPP_OPTS: &[&str] = &[
    "noauth",
    "+ipv6",
    "nodefaultroute",
    "lcp-echo-interval",
    "0",
    "ip-up-script",
    "/bin/true",
    "ip-down-script",
    "/bin/true",
];

/// ```text
///  internet --- wan0 bng srv0 ==PPPoE== eth0 cpe
///                    ppp0 <--session--> ppp0
///                    Kea, pd-agent      dhcpcd, pd-agent
/// ```
/// DHCPv6-PD over a PPPoE session, as a DSL line carries it. The bng
/// (the ISP's router: pppoe-server and Kea) delegates a /56 over its ppp0;
/// its pd-agent manages ppp0 as downstream and routes the prefix via the
/// cpe's link-local address on ppp0. The cpe's pd-agent manages its ppp0
/// as upstream and holds the prefix as acquired. Traffic from the internet
/// into the prefix reaches the cpe, left to the kernel at the bng (ppp0
/// takes no XDP redirects).
#[test]
#[ignore = "needs ppp and pppoe: run with cargo xtask test vm"]
fn vm_pppoe_session() -> Result<()> {
    let _ = sh(&["modprobe", "pppoe"]);
    let (internet, bng) = upstream_and_router()?;
    let cpe = Netns::new("pcpe")?;
    veth(&bng, "srv0", &cpe, "eth0")?;
    cpe.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;

    let dir = TempDir::new("ppp")?;
    let opts = dir.path("pppoe-server.opts");
    std::fs::write(&opts, PPP_OPTS.join(" "))?;
    let _server = bng.spawn(
        &[
            "pppoe-server",
            "-F",
            "-k",
            "-I",
            "srv0",
            "-L",
            "10.0.0.1",
            "-R",
            "10.0.0.2",
            "-N",
            "1",
            "-O",
            &opts.display().to_string(),
        ],
        &dir.path("pppoe-server.log"),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut args = vec![
        "pppd",
        "plugin",
        "rp-pppoe.so",
        "eth0",
        "user",
        "cpe",
        "nodetach",
    ];
    args.extend_from_slice(PPP_OPTS);
    let _pppd = cpe.spawn(&args, &dir.path("pppd.log"))?;
    // The link-local address IPv6CP negotiated (the one with a peer): the
    // kernel's own goes when it arrives, and a server bound to that one
    // would hear nothing.
    let ll_of = |ns: &Netns| {
        let out = ns
            .exec(&[
                "ip", "-6", "-o", "addr", "show", "dev", "ppp0", "scope", "link",
            ])
            .ok()?;
        let line = out.lines().find(|l| l.contains(" peer "))?;
        let a = line
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)?;
        Some(a.split('/').next()?.to_string())
    };
    let cpe_ll = wait_for(Duration::from_secs(30), || ll_of(&cpe)).with_context(|| {
        format!(
            "no PPP session: {}",
            std::fs::read_to_string(dir.path("pppd.log")).unwrap_or_default()
        )
    })?;
    wait_for(Duration::from_secs(10), || ll_of(&bng)).context("bng's ppp0")?;
    cpe.exec(&["ip", "-6", "route", "add", "default", "dev", "ppp0"])?;

    // The bng's agent and server on the session's interface.
    let bdir = TempDir::new("pbng")?;
    let bng_agent = Agent::start_opts(&bng, &bdir, AgentOpts::new(&["ppp0"], &["wan0"]))?;
    assert!(
        bng_agent.log().contains("iface=ppp0 link=Bare"),
        "{}",
        bng_agent.log()
    );
    // Kea 2.2 takes the session's peer address for its own on a PPP
    // device and cannot bind it; a link-local address of its own (without
    // peer) gives it one to listen on. ISC dhcpd and dhclient refuse PPP
    // devices outright.
    bng.add_addr("fe80::1/64", "ppp0")?;
    let kea = start_kea_subnet(
        &bng,
        &bdir,
        KeaSubnet {
            iface: "ppp0",
            subnet: "2001:db8:ff00::/64",
            pool: "2001:db8:1200::",
            pool_len: 48,
            plen: 56,
            relayed: false,
        },
        600,
    )?;
    // The cpe's agent watches its uplink.
    let cdir = TempDir::new("pcpe")?;
    let cpe_agent = Agent::start_opts(&cpe, &cdir, AgentOpts::new(&[], &["ppp0"]))?;

    // dhcpcd, as CPE routers run it.
    let ddir = TempDir::new("pdhc")?;
    let dhcpcd = start_dhcpcd(&cpe, &ddir, "ppp0")?;
    let acquired = wait_for(Duration::from_secs(60), || {
        cpe_agent
            .bindings()
            .ok()?
            .into_iter()
            .find(|b| b["kind"] == "acquired")
    })
    .with_context(|| {
        format!(
            "the cpe's agent saw no prefix acquired over PPPoE: {}\n{}\ndhcpcd: {}\nkea: {}\nbng: {}",
            cpe_agent.log(),
            cpe_agent.stats().unwrap_or_default(),
            dhcpcd.log_text(),
            kea.log_text(),
            bng_agent.stats().unwrap_or_default()["kernel"]
        )
    })?;
    let prefix = acquired["prefix"].as_str().context("prefix")?.to_string();
    assert_eq!(acquired["iface"], "ppp0");
    let (via, dev) = route_for(&bng, &bng_agent, &prefix)?;
    assert_eq!((via.as_str(), dev.as_str()), (cpe_ll.as_str(), "ppp0"));

    let host = cpe.host_in(&prefix)?;
    count_echoes(&cpe, &host)?;
    internet.ping(&host, 5);
    let left = bng_agent.stats()?["kernel"]["fwd_no_xmit"]
        .as_u64()
        .unwrap_or(0);
    let before = echo_count(&cpe)?;
    ping_n(&internet, &host, 10);
    assert_eq!(
        echo_count(&cpe)? - before,
        10,
        "every echo request crossed the PPPoE session"
    );
    let st = bng_agent.stats()?;
    assert!(
        st["kernel"]["fwd_no_xmit"].as_u64().unwrap_or(0) >= left + 10,
        "{st}"
    );
    Ok(())
}

/// The matrix of `datapath.rs` on Debian 12's kernel, with a VLAN LAN and
/// a flowtable row (this kernel has nf_flow_table). Without xdp-features
/// (before 6.3) nothing is a redirect target.
#[test]
#[ignore = "needs 8021q: run with cargo xtask test vm"]
fn vm_fast_path_matrix() -> Result<()> {
    let _ = sh(&["modprobe", "8021q"]);
    let (cells, features) = pd_tests::matrix::run(true)?;
    eprintln!(
        "kernel {}\n{}",
        sh(&["uname", "-r"])?.trim(),
        pd_tests::matrix::table(&cells)
    );
    pd_tests::matrix::check(&cells, features)
}

/// Puts the wall clock back where it would be had it never been stepped
/// (boot clock + the offset at the start), even when the test fails.
struct ClockGuard {
    offset: i64,
}

impl ClockGuard {
    fn new() -> Self {
        ClockGuard {
            offset: pd_agent::clock::unix_now() as i64 - pd_agent::clock::now() as i64,
        }
    }

    /// `date -s` the wall clock to the undisturbed time plus `secs`.
    fn step(&self, secs: i64) -> Result<()> {
        let t = pd_agent::clock::now() as i64 + self.offset + secs;
        sh(&["date", "-s", &format!("@{t}")])?;
        Ok(())
    }
}

impl Drop for ClockGuard {
    fn drop(&mut self) {
        let _ = self.step(0);
    }
}

/// The binding of `prefix` in `agent`'s view, if it is there.
fn binding_of(agent: &Agent, prefix: &str) -> Result<Option<serde_json::Value>> {
    Ok(agent
        .bindings()?
        .into_iter()
        .find(|b| b["prefix"] == prefix))
}

/// A router without a real-time clock steps its wall clock when NTP first
/// syncs. Lifetimes are real time, so they run on the boot clock. Kea
/// delegates a /56 with a 90 s valid lifetime to dhclient, which is then
/// killed (no renewal, no release): the lease ends 90 s after the Reply.
/// In the VM (its clock is its own):
/// - the wall clock is stepped 2 h forward and the agent asked: the
///   binding and its route stay, with the same time left;
/// - stepped 4 h back: they stay;
/// - the agent is killed, the clock stepped again, and a new agent started
///   on the same store: the binding comes back with the same time left;
/// - the route and the binding are still there 80 s after the Reply and
///   gone by 100 s, by the monotonic clock, not 2 h early or late.
#[test]
#[ignore = "steps the wall clock: run with cargo xtask test vm"]
fn vm_clock_step() -> Result<()> {
    let clock = ClockGuard::new();
    let lab = RouterLab::new()?;
    let dir = TempDir::new("clk")?;
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("clk"));
    let opts = AgentOpts {
        pin_dir: Some(pin.clone()),
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    let agent = Agent::start_opts(&lab.router, &dir, opts.clone())?;
    let _kea = start_kea_subnet(
        &lab.router,
        &dir,
        KeaSubnet {
            iface: "lan0",
            subnet: "2001:db8:ffff::/64",
            pool: "2001:db8:1200::",
            pool_len: 48,
            plen: 56,
            relayed: false,
        },
        90,
    )?;
    let cdir = TempDir::new("clkc")?;
    let mut dhclient = start_dhclient(&lab.client, &cdir, "eth0")?;
    let prefix = wait_delegated(&agent, &cdir, &dhclient)?;
    let replied = std::time::Instant::now();
    dhclient.kill(libc::SIGKILL);
    dhclient.stop();
    let left = |agent: &Agent| -> Result<u64> {
        let b = binding_of(agent, &prefix)?
            .with_context(|| format!("binding of {prefix} gone: {}", agent.log()))?;
        let left = b["expires_in"].as_u64().context("expires_in")?;
        // Shown in wall-clock time as the clock reads now.
        let at = b["expires_at"].as_u64().context("expires_at")?;
        let unix = pd_agent::clock::unix_now();
        assert!(
            at.abs_diff(unix + left) <= 2,
            "expires_at {at} vs now {unix} + {left}"
        );
        Ok(left)
    };
    let routed = |agent: &Agent| -> Result<bool> {
        Ok(our_routes(&lab.router)?
            .iter()
            .any(|(p, _, _)| *p == prefix)
            && agent.map_prefixes()?.contains(&prefix))
    };
    let first = left(&agent)?;
    assert!((85..=90).contains(&first), "{first} s left of 90");
    let real_left = |t: std::time::Instant| 90 - t.elapsed().as_secs().min(90);

    clock.step(2 * 3600)?;
    let l = left(&agent)?;
    assert!(
        l.abs_diff(real_left(replied)) <= 3,
        "2 h forward: {l} s left"
    );
    assert!(routed(&agent)?, "route kept after a step forward");

    clock.step(-2 * 3600)?;
    let l = left(&agent)?;
    assert!(l.abs_diff(real_left(replied)) <= 3, "2 h back: {l} s left");
    assert!(routed(&agent)?, "route kept after a step back");

    // A restart within the same boot, the clock stepped meanwhile.
    let pin = agent.kill9_keeping_pins();
    clock.step(3600)?;
    let agent = Agent::start_opts(
        &lab.router,
        &dir,
        AgentOpts {
            pin_dir: Some(pin),
            ..opts
        },
    )?;
    let l = left(&agent)?;
    assert!(
        l.abs_diff(real_left(replied)) <= 3,
        "after a restart: {l} s left"
    );
    clock.step(-3600)?;

    // The lease's real end: still there 80 s after the Reply, gone by 100 s.
    let at80 = replied + Duration::from_secs(80);
    if let Some(d) = at80.checked_duration_since(std::time::Instant::now()) {
        std::thread::sleep(d);
    }
    assert!(
        binding_of(&agent, &prefix)?.is_some() && routed(&agent)?,
        "gone before the lease's end: {}",
        agent.log()
    );
    let gone = wait_for(Duration::from_secs(25), || {
        (binding_of(&agent, &prefix).ok()?.is_none() && !routed(&agent).ok()?).then_some(())
    });
    let secs = replied.elapsed().as_secs();
    assert!(
        gone.is_some() && secs <= 100,
        "not gone {secs} s after the Reply: {}",
        agent.log()
    );
    Ok(())
}

/// pd-agent as the relay on this kernel: Kea beyond the router delegates
/// through it to dhclient (the route goes via the client), and a burst of
/// 100 Solicits from the client's MAC past its rate limit is dropped in
/// XDP and counted: the relay's kernel parts verify and work here too.
///
/// ```text
///  upstream(Kea) eth0 --- wan0 router(pd-agent --relay-to) lan0 --- eth0 client
/// ```
#[test]
#[ignore = "run with cargo xtask test vm"]
fn vm_relay_and_its_rate_limits() -> Result<()> {
    let lab = RouterLab::new()?;
    let dir = TempDir::new("vrl")?;
    let conf = kea_config(
        &dir,
        &[KeaSubnet {
            iface: "eth0/2001:db8:feed::2",
            subnet: "2001:db8:ffff::/64",
            pool: "2001:db8:1300::",
            pool_len: 48,
            plen: 56,
            relayed: true,
        }],
        600,
    )?;
    let _kea = start_kea(&lab.upstream, &dir, &conf)?;
    let agent = Agent::start_opts(
        &lab.router,
        &dir,
        AgentOpts {
            args: vec!["--relay-to".into(), "2001:db8:feed::2".into()],
            ..AgentOpts::new(&["lan0"], &["wan0"])
        },
    )?;
    let cdir = TempDir::new("vrlc")?;
    let dhclient = start_dhclient(&lab.client, &cdir, "eth0")?;
    let prefix = wait_delegated(&agent, &cdir, &dhclient)?;
    let (via, dev) = route_for(&lab.router, &agent, &prefix)?;
    assert_eq!(
        (via, dev.as_str()),
        (lab.client.link_local("eth0")?.to_string(), "lan0")
    );
    // 100 Solicits at once from the client: past its burst (40).
    let ifindex: u32 = lab
        .client
        .exec(&["cat", "/sys/class/net/eth0/ifindex"])?
        .trim()
        .parse()?;
    {
        let _in = InNetns::enter(&lab.client)?;
        let s = std::net::UdpSocket::bind("[::]:0")?;
        let to = std::net::SocketAddrV6::new("ff02::1:2".parse()?, 547, 0, ifindex);
        let solicit = corpus::msg_raw(1, 0x0a0b0c, &corpus::tlv(1, &corpus::duid(9)));
        for _ in 0..100 {
            s.send_to(&solicit, to)?;
        }
    }
    let dropped = wait_for(Duration::from_secs(10), || {
        let n = agent.stats().ok()?["kernel"]["relay_client_rate"].as_u64()?;
        (n >= 40).then_some(n)
    })
    .with_context(|| format!("no drops counted: {}", agent.stats().unwrap_or_default()))?;
    eprintln!("relay_client_rate {dropped}");
    Ok(())
}

/// A directory (/usr) made writable for one test: an overlay whose upper
/// layer is a tmpfs of its own, unmounted on drop, so nothing reaches the
/// host's file system (the VM's root is the host's, shared). The VM's
/// /etc and /var/lib are overlays already, and its /var/log and
/// /var/cache tmpfs.
struct Writable(&'static str, String);

impl Writable {
    fn mount(dir: &'static str) -> Result<Self> {
        let tmp = format!("/run/pd-ovl{}", dir.replace('/', "-"));
        std::fs::create_dir_all(&tmp)?;
        sh(&["mount", "-t", "tmpfs", "pd-ovl", &tmp])?;
        for d in ["upper", "work"] {
            std::fs::create_dir_all(format!("{tmp}/{d}"))?;
        }
        let opts = format!("lowerdir={dir},upperdir={tmp}/upper,workdir={tmp}/work");
        sh(&["mount", "-t", "overlay", "pd-ovl", "-o", &opts, dir])?;
        Ok(Writable(dir, tmp))
    }
}

impl Drop for Writable {
    fn drop(&mut self) {
        let _ = sh(&["umount", "-l", self.0]);
        let _ = sh(&["umount", "-l", &self.1]);
    }
}

/// The agent under a small RLIMIT_MEMLOCK (64 KiB) and without
/// CAP_SYS_RESOURCE, as a unit without `LimitMEMLOCK=` or a container
/// runs it:
/// - from 5.11 on, where BPF memory is charged to the memory cgroup, it
///   becomes ready and puts the stored binding's route back;
/// - before 5.11 its maps do not fit: it exits, and the error names
///   RLIMIT_MEMLOCK and the fix, not a missing root.
#[test]
#[ignore = "run with cargo xtask test vm"]
fn vm_small_memlock_limit() -> Result<()> {
    let dir = TempDir::new("memlock")?;
    let ns = lan_with_stored_binding("mlk", &dir)?;
    let wrap = "prlimit --memlock=65536:65536 setpriv --bounding-set=-sys_resource --";
    let started = Agent::start_opts(
        &ns,
        &dir,
        AgentOpts {
            wrap: wrap.split(' ').map(String::from).collect(),
            ..AgentOpts::new(&["lan0"], &[])
        },
    );
    if kernel_before(5, 11) {
        let e = format!("{:#}", started.err().context("started before 5.11")?);
        assert!(
            e.contains("charge BPF maps to RLIMIT_MEMLOCK") && e.contains("LimitMEMLOCK=infinity"),
            "{e}"
        );
        assert!(!e.contains("needs root"), "{e}");
        eprintln!("before 5.11, as it should: {e}");
    } else {
        let agent = started?;
        let (via, dev) = route_for(&ns, &agent, STORED_PREFIX)?;
        assert_eq!((via.as_str(), dev.as_str()), ("fe80::1", "lan0"));
    }
    Ok(())
}

/// `dpkg-query -W -f FORMAT pd-agent`.
fn dpkg_query(format: &str) -> Result<String> {
    sh(&["dpkg-query", "-W", "-f", format, "pd-agent"])
}

/// The Debian package (`cargo xtask deb`, its path in `PD_DEB`) installed
/// with `dpkg -i` in the guest over overlays (the host is untouched):
/// - installed: its files in place, both conffiles registered, the unit
///   `Type=notify` running /usr/sbin/pd-agent, neither enabled nor started
///   (no `*.wants` link), `pd-agent --version` answering;
/// - /usr/sbin/pd-agent started in a namespace (`lan0` downstream, the
///   default pin directory, a stored binding whose route is missing)
///   reaches "ready" with the route back, which iproute2 shows as
///   `proto pd-agent` (the package's rt_protos.d entry); the agent is then
///   killed, its programs staying on lan0;
/// - `dpkg -r`: the binary goes, the configuration stays;
///   `dpkg --purge`: the configuration, the store and the pin directory
///   go, and with it the XDP program on lan0.
#[test]
#[ignore = "installs a package: run with cargo xtask test vm"]
fn vm_deb_install() -> Result<()> {
    let deb = std::env::var("PD_DEB").context("PD_DEB: the package (cargo xtask test vm)")?;
    // man-db's trigger would rebuild the index of every manual page,
    // which takes minutes without KVM; the flag file lives in the guest's
    // overlay only.
    let _ = std::fs::remove_file("/var/lib/man-db/auto-update");
    let _usr = Writable::mount("/usr")?;
    let out = sh(&["dpkg", "-i", &deb])?;
    eprintln!("{out}");
    assert_eq!(
        dpkg_query("${Status} ${Version}")?,
        format!("install ok installed {}-1", env!("CARGO_PKG_VERSION"))
    );
    for f in [
        "/usr/sbin/pd-agent",
        "/lib/systemd/system/pd-agent.service",
        "/etc/pd-agent/pd-agent.toml",
        "/etc/iproute2/rt_protos.d/pd-agent.conf",
        "/usr/share/doc/pd-agent/copyright",
        "/usr/share/doc/pd-agent/changelog.Debian.gz",
        "/usr/share/doc/pd-agent/examples/hooks/nft-set.sh",
        "/usr/share/man/man8/pd-agent.8.gz",
    ] {
        assert!(std::path::Path::new(f).exists(), "{f} not installed");
    }
    let conffiles = dpkg_query("${Conffiles}")?;
    for f in [
        "/etc/pd-agent/pd-agent.toml",
        "/etc/iproute2/rt_protos.d/pd-agent.conf",
    ] {
        assert!(conffiles.contains(f), "{f} not a conffile: {conffiles}");
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/pd-agent.service")?;
    assert!(unit.contains("\nType=notify\n"), "{unit}");
    assert!(
        unit.contains("\nExecStart=/usr/sbin/pd-agent run --config /etc/pd-agent/pd-agent.toml\n"),
        "{unit}"
    );
    let wants = sh(&["find", "/etc/systemd/system", "-name", "pd-agent*"])?;
    assert_eq!(wants.trim(), "", "enabled on install: {wants}");
    assert_eq!(
        sh(&["/usr/sbin/pd-agent", "--version"])?.trim(),
        format!("pd-agent {}", env!("CARGO_PKG_VERSION"))
    );

    let dir = TempDir::new("deb")?;
    let ns = lan_with_stored_binding("deb", &dir)?;
    let pin = std::path::PathBuf::from("/sys/fs/bpf/pd-agent");
    let agent = Agent::start_opts(
        &ns,
        &dir,
        AgentOpts {
            bin: Some("/usr/sbin/pd-agent".into()),
            pin_dir: Some(pin.clone()),
            ..AgentOpts::new(&["lan0"], &[])
        },
    )?;
    let named = ns.exec(&["ip", "-6", "route", "show", "proto", "pd-agent"])?;
    assert!(
        named.contains(&format!("{STORED_PREFIX} via fe80::1 dev lan0")),
        "{named}\n{}",
        agent.log()
    );
    let shown = ns.exec(&["ip", "-6", "route", "show", STORED_PREFIX])?;
    assert!(shown.contains("proto pd-agent"), "{shown}");
    // As after any stop, the programs stay on their pinned links.
    assert_eq!(agent.kill9_keeping_pins(), pin);
    assert!(ns.exec(&["ip", "link", "show", "lan0"])?.contains("xdp"));
    // The store systemd's StateDirectory= would hold.
    std::fs::create_dir_all("/var/lib/pd-agent")?;
    std::fs::write("/var/lib/pd-agent/bindings.json", "{}")?;

    sh(&["dpkg", "-r", "pd-agent"])?;
    assert!(!std::path::Path::new("/usr/sbin/pd-agent").exists());
    assert!(std::path::Path::new("/etc/pd-agent/pd-agent.toml").exists());
    assert!(pin.exists(), "remove keeps the pins");
    sh(&["dpkg", "--purge", "pd-agent"])?;
    for gone in ["/etc/pd-agent", "/var/lib/pd-agent", "/sys/fs/bpf/pd-agent"] {
        assert!(
            !std::path::Path::new(gone).exists(),
            "{gone} left after purge"
        );
    }
    assert!(
        !ns.exec(&["ip", "link", "show", "lan0"])?.contains("xdp"),
        "the XDP program outlived the purge"
    );
    assert_eq!(
        sh(&["find", "/etc/systemd/system", "-name", "pd-agent*"])?.trim(),
        ""
    );
    Ok(())
}

/// `systemctl show -p PROPERTY --value UNIT`.
fn unit_property(unit: &str, property: &str) -> Result<String> {
    Ok(sh(&["systemctl", "show", "-p", property, "--value", unit])?
        .trim()
        .to_string())
}

/// Under a real systemd (the VM tier starts it as PID 1 of a PID and
/// mount namespace in each VM, on a unit that runs this test), the
/// packaged unit (`Type=notify`,
/// `WatchdogSec=`, `Restart=on-failure`, its capability bounding set and
/// sandbox), from the .deb installed over overlays:
/// - a oneshot unit ordered `After=pd-agent.service` finds the route of a
///   stored binding already in the kernel: READY=1 came after the
///   reconcile;
/// - with the watchdog at 4 s (a drop-in), the running agent is not
///   restarted over 12 s: its event loop pings;
/// - stopped with SIGSTOP, it is killed for the watchdog timeout and
///   started again (a new main pid, one restart, the journal says
///   "Watchdog timeout"), and the route is still there.
#[test]
#[ignore = "needs systemd as PID 1: run with cargo xtask test vm"]
fn systemd_pid1_watchdog_restarts_a_stopped_agent() -> Result<()> {
    let comm = std::fs::read_to_string("/proc/1/comm")?;
    assert_eq!(comm.trim(), "systemd", "PID 1 is {comm}");
    let deb = std::env::var("PD_DEB").context("PD_DEB: the package (cargo xtask test vm)")?;
    let _ = std::fs::remove_file("/var/lib/man-db/auto-update");
    // /etc and /var/lib are the VM's overlays already.
    let _usr = Writable::mount("/usr")?;
    sh(&["dpkg", "-i", &deb])?;
    // systemd mounts bpffs at boot on a machine, not in a container (as
    // it runs here): the unit, without CAP_SYS_ADMIN, cannot mount it.
    if !sh(&["findmnt", "-t", "bpf", "/sys/fs/bpf"]).is_ok_and(|o| !o.trim().is_empty()) {
        sh(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }

    // lan0 in the VM's own namespace, a stored binding whose route is not
    // in the kernel yet.
    sh(&[
        "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ])?;
    sh(&["ip", "link", "set", "lan0", "up"])?;
    sh(&["ip", "link", "set", "lan0p", "up"])?;
    let ifindex = std::fs::read_to_string("/sys/class/net/lan0/ifindex")?;
    write_stored_binding("/var/lib/pd-agent".as_ref(), ifindex.trim())?;
    std::fs::write(
        "/etc/pd-agent/pd-agent.toml",
        "pin_dir = \"/sys/fs/bpf/pd-agent\"\nstate_dir = \"/var/lib/pd-agent\"\n\
         control = \"/run/pd-agent/control.sock\"\n[[interface]]\nname = \"lan0\"\nrole = \"downstream\"\n",
    )?;
    std::fs::create_dir_all("/etc/systemd/system/pd-agent.service.d")?;
    std::fs::write(
        "/etc/systemd/system/pd-agent.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=4s\n",
    )?;
    // What a unit ordered after pd-agent finds.
    std::fs::write(
        "/etc/systemd/system/pd-after.service",
        "[Unit]\nRequires=pd-agent.service\nAfter=pd-agent.service\n\
         [Service]\nType=oneshot\nExecStart=/bin/sh -c 'ip -6 route show proto 57 > /run/pd-after.out'\n",
    )?;
    sh(&["systemctl", "daemon-reload"])?;
    let journal = || sh(&["journalctl", "-u", "pd-agent", "--no-pager"]).unwrap_or_default();
    sh(&["systemctl", "start", "pd-after.service"]).with_context(journal)?;
    let after = std::fs::read_to_string("/run/pd-after.out")?;
    assert!(
        after.contains(&format!("{STORED_PREFIX} via fe80::1 dev lan0")),
        "the unit after pd-agent found: {after:?}\n{}",
        journal()
    );
    assert_eq!(unit_property("pd-agent", "ActiveState")?, "active");
    assert_eq!(unit_property("pd-agent", "NRestarts")?, "0");
    let pid = unit_property("pd-agent", "MainPID")?;
    assert_ne!(pid, "0");

    // Three watchdog periods: the pings keep it alive.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        unit_property("pd-agent", "NRestarts")?,
        "0",
        "{}",
        journal()
    );
    assert_eq!(unit_property("pd-agent", "MainPID")?, pid);

    sh(&["kill", "-STOP", &pid])?;
    let restarted = wait_for(Duration::from_secs(40), || {
        let now = unit_property("pd-agent", "MainPID").ok()?;
        (unit_property("pd-agent", "NRestarts").ok()? == "1"
            && now != pid
            && now != "0"
            && unit_property("pd-agent", "ActiveState").ok()? == "active")
            .then_some(now)
    });
    let log = journal();
    assert!(restarted.is_some(), "not restarted after SIGSTOP:\n{log}");
    assert!(log.contains("Watchdog timeout"), "{log}");
    let routes = sh(&["ip", "-6", "route", "show", "proto", "57"])?;
    assert!(routes.contains(STORED_PREFIX), "{routes}\n{log}");
    eprintln!("{log}");

    sh(&["systemctl", "stop", "pd-agent"])?;
    sh(&["dpkg", "--purge", "pd-agent"])?;
    Ok(())
}
