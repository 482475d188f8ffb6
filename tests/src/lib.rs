//! Helpers for pd-agent's root tests: network namespaces and veth pairs
//! that clean up on drop (even when a test panics), daemons started inside
//! them and stopped on drop, and the real DHCP servers and clients.
//!
//! Every DHCP client runs with its own empty `/etc/netns/NS/resolv.conf` and
//! with its resolver hooks off, so the host's resolver is never touched.

use std::{
    fs,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique tag for names (interfaces are limited to 15 bytes).
/// The page size (the smallest ring buffer the kernel accepts).
pub fn page_size() -> usize {
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

pub fn unique(tag: &str) -> String {
    format!(
        "pd{}{}{}",
        std::process::id() % 10000,
        SEQ.fetch_add(1, Ordering::SeqCst),
        tag
    )
}

/// Run a command; fail with its output if it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("spawning {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop with everything running in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = unique(tag);
        // The namespace's own resolv.conf, so no DHCP client can rewrite the host's.
        let etc = Path::new("/etc/netns").join(&name);
        fs::create_dir_all(&etc)?;
        fs::write(etc.join("resolv.conf"), "")?;
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.setup()?;
        Ok(ns)
    }

    /// A namespace with a fixed name (the demo's), removing a leftover of
    /// an earlier interrupted run first.
    pub fn fixed(name: &str) -> Result<Self> {
        remove_netns(name);
        let etc = Path::new("/etc/netns").join(name);
        fs::create_dir_all(&etc)?;
        fs::write(etc.join("resolv.conf"), "")?;
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ns.setup()?;
        Ok(ns)
    }

    fn setup(&self) -> Result<()> {
        self.exec(&["ip", "link", "set", "lo", "up"])?;
        for (k, v) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.accept_ra", "0"),
        ] {
            self.exec(&["sysctl", "-qw", &format!("{k}={v}")])?;
        }
        Ok(())
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Start a long-running process in the namespace; its output goes to `log`.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Result<Daemon> {
        let f = fs::File::create(log)?;
        let child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))?;
        Ok(Daemon {
            child: Some(child),
            log: log.into(),
            name: args[0].into(),
        })
    }

    /// Start a process that enters only the network namespace, keeping the
    /// host's mounts: `ip netns exec` remounts /sys, which hides the host's
    /// bpffs at /sys/fs/bpf (and with it the agent's pinned maps).
    pub fn spawn_net_only(&self, args: &[&str], log: &Path) -> Result<Daemon> {
        let f = fs::File::create(log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))?;
        Ok(Daemon {
            child: Some(child),
            log: log.into(),
            name: args[0].into(),
        })
    }

    /// Add `cidr` to `dev`, without duplicate address detection.
    pub fn add_addr(&self, cidr: &str, dev: &str) -> Result<()> {
        self.exec(&["ip", "-6", "addr", "add", cidr, "dev", dev, "nodad"])
            .map(drop)
    }

    /// The MAC address of `dev` (read through `ip netns exec`, which mounts
    /// this namespace's /sys).
    pub fn mac(&self, dev: &str) -> Result<[u8; 6]> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{dev}/address")])?;
        let v: Vec<u8> = out
            .trim()
            .split(':')
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        v.try_into()
            .map_err(|_| anyhow::anyhow!("no MAC address for {dev} in {}: {out:?}", self.name))
    }

    /// The link-local address of `dev`.
    pub fn link_local(&self, dev: &str) -> Result<Ipv6Addr> {
        let out = self.exec(&[
            "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
        ])?;
        let a = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .context("no link-local address")?;
        Ok(a.parse()?)
    }

    /// Put the first address of `prefix` (`2001:db8:a100::/56` gives
    /// `2001:db8:a100::1`) on the loopback: a host inside the prefix.
    pub fn host_in(&self, prefix: &str) -> Result<String> {
        let net = prefix.split('/').next().context("a prefix")?;
        let host = format!("{net}1");
        self.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{host}/128"),
            "dev",
            "lo",
        ])?;
        Ok(host)
    }

    /// A VLAN sub-interface `name` (802.1Q id `id`) of `parent`, up.
    pub fn add_vlan(&self, parent: &str, name: &str, id: u16) -> Result<()> {
        self.exec(&[
            "ip",
            "link",
            "add",
            "link",
            parent,
            "name",
            name,
            "type",
            "vlan",
            "id",
            &id.to_string(),
        ])?;
        self.exec(&["ip", "link", "set", name, "up"]).map(drop)
    }

    /// This host's default route via `router`'s link-local address on
    /// `router_dev`, out of `dev` (waiting for that address: a bridge or
    /// VLAN device gets it a moment after it comes up).
    pub fn default_via(&self, dev: &str, router: &Netns, router_dev: &str) -> Result<()> {
        let ll = wait_for(Duration::from_secs(10), || {
            router.link_local(router_dev).ok()
        })
        .with_context(|| format!("no link-local address on {router_dev} in {}", router.name))?
        .to_string();
        self.exec(&[
            "ip", "-6", "route", "add", "default", "via", &ll, "dev", dev,
        ])
        .map(drop)
    }

    /// `ping -6` until it answers or `tries` run out.
    pub fn ping(&self, addr: &str, tries: u32) -> bool {
        for _ in 0..tries {
            if self
                .exec(&["ping", "-6", "-c", "1", "-W", "1", addr])
                .is_ok()
            {
                return true;
            }
        }
        false
    }
}

/// Kill every process in namespace `name` (dhcpcd's privilege-separation
/// helpers outlive their parent), then delete it and its /etc/netns files.
pub fn remove_netns(name: &str) {
    for sig in ["-TERM", "-KILL"] {
        match sh(&["ip", "netns", "pids", name]) {
            Ok(pids) if !pids.trim().is_empty() => {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill")
                        .args([sig, pid])
                        .stderr(Stdio::null())
                        .status();
                }
                thread::sleep(Duration::from_millis(200));
            }
            _ => break,
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// Moves the current thread into a namespace until dropped. Sockets and
/// BPF test runs made meanwhile belong to that namespace; children spawned
/// meanwhile start in it.
pub struct InNetns {
    home: fs::File,
}

impl InNetns {
    pub fn enter(ns: &Netns) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let home = fs::File::open("/proc/thread-self/ns/net")?;
        let target = fs::File::open(format!("/run/netns/{}", ns.name))?;
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns into {}: {}",
                ns.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(InNetns { home })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A veth pair between two namespaces, with the given names.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.exec(&[
        "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.exec(&["ip", "link", "set", a_if, "up"])?;
    b.exec(&["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

/// The topology most root tests and benchmarks use:
///
/// ```text
///  upstream eth0 ---- wan0 router lan0 ---- eth0 client
///  2001:db8:feed::2/64    ::1     2001:db8:ffff::1/64
/// ```
pub struct RouterLab {
    pub upstream: Netns,
    pub router: Netns,
    pub client: Netns,
}

/// An upstream host and a router: the upstream's eth0
/// (2001:db8:feed::2/64, its default route via the router) to the
/// router's wan0 (2001:db8:feed::1/64). The LAN side is the caller's.
pub fn upstream_and_router() -> Result<(Netns, Netns)> {
    let upstream = Netns::new("up")?;
    let router = Netns::new("rt")?;
    veth(&router, "wan0", &upstream, "eth0")?;
    router.add_addr("2001:db8:feed::1/64", "wan0")?;
    upstream.add_addr("2001:db8:feed::2/64", "eth0")?;
    upstream.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:feed::1",
    ])?;
    Ok((upstream, router))
}

impl RouterLab {
    pub fn new() -> Result<Self> {
        let (upstream, router) = upstream_and_router()?;
        let client = host_behind(&router, "lan0", "cl")?;
        router.add_addr("2001:db8:ffff::1/64", "lan0")?;
        Ok(RouterLab {
            upstream,
            router,
            client,
        })
    }
}

/// A host on a new router interface `iface`, as a container would be: its
/// eth0 is a plain veth at the kernel's defaults (no XDP program, GRO off,
/// so the router's fast path cannot redirect into it), with forwarding off
/// and a default route via the router's link-local address.
pub fn host_behind(router: &Netns, iface: &str, tag: &str) -> Result<Netns> {
    let host = Netns::new(tag)?;
    veth(router, iface, &host, "eth0")?;
    host.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
    host.default_via("eth0", router, iface)?;
    Ok(host)
}

/// Count, on `ns` itself, the ICMPv6 echo requests that arrive for `dst`
/// (an nftables named counter in a table of its own, read with
/// [`echo_count`]): what reaches the far end, not what ping reports.
pub fn count_echoes(ns: &Netns, dst: &str) -> Result<()> {
    let rules = format!(
        "table inet pdcount {{\n\
           counter echoes {{ }}\n\
           chain in {{ type filter hook input priority -300; policy accept;\n\
             ip6 daddr {dst} icmpv6 type echo-request counter name \"echoes\"\n\
           }}\n\
         }}\n"
    );
    let f = std::env::temp_dir().join(unique("count.nft"));
    fs::write(&f, rules)?;
    let r = ns.exec(&["nft", "-f", &f.display().to_string()]);
    let _ = fs::remove_file(&f);
    r.map(drop)
}

/// Echo requests counted by [`count_echoes`] so far.
pub fn echo_count(ns: &Netns) -> Result<u64> {
    let out = ns.exec(&["nft", "-j", "list", "counter", "inet", "pdcount", "echoes"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["counter"]["packets"].as_u64()))
        .with_context(|| format!("no counter in {out}"))
}

/// `ping -6 -c n` from `ns`, quickly; whether every reply came back is not
/// the point (count at the far end with [`count_echoes`]).
pub fn ping_n(ns: &Netns, dst: &str, n: u32) {
    let _ = ns
        .cmd(&[
            "ping",
            "-6",
            "-c",
            &n.to_string(),
            "-i",
            "0.05",
            "-W",
            "1",
            dst,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A process stopped on drop (SIGTERM, then SIGKILL).
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fail if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("{} exited ({st}); log:\n{}", self.name, self.log_text());
            }
        }
        Ok(())
    }

    pub fn kill(&mut self, sig: i32) {
        if let Some(c) = self.child.as_ref() {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_for_every(timeout, Duration::from_millis(100), f)
}

/// Poll `f` every `interval` until it returns `Some` or `timeout` passes.
pub fn wait_for_every<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > timeout {
            return None;
        }
        thread::sleep(interval);
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The pd-agent binary under test (set by `cargo xtask test`).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("PD_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pd-agent")
        })
}

/// A pd-agent running in a namespace with its own pin dir, state dir and
/// control socket. The pin dir is removed on drop.
pub struct Agent {
    pub daemon: Daemon,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub control: PathBuf,
}

pub const PROTO: &str = "57";

/// How to run one pd-agent.
#[derive(Default, Clone)]
pub struct AgentOpts {
    pub downstream: Vec<String>,
    pub upstream: Vec<String>,
    /// Defaults to a unique directory under /sys/fs/bpf.
    pub pin_dir: Option<PathBuf>,
    pub hooks: Vec<PathBuf>,
    /// Extra environment (hook settings).
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// How long to wait for "ready" (default 20 s; a big state store takes longer).
    pub ready_timeout: Option<Duration>,
}

impl AgentOpts {
    pub fn new(downstream: &[&str], upstream: &[&str]) -> Self {
        AgentOpts {
            downstream: downstream.iter().map(|s| s.to_string()).collect(),
            upstream: upstream.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// The repository's example hooks.
pub fn hook_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../hooks")
        .join(name)
}

impl Agent {
    pub fn start(
        ns: &Netns,
        dir: &TempDir,
        downstream: &[&str],
        upstream: &[&str],
    ) -> Result<Agent> {
        Self::start_opts(ns, dir, AgentOpts::new(downstream, upstream))
    }

    pub fn start_with(
        ns: &Netns,
        dir: &TempDir,
        downstream: &[&str],
        upstream: &[&str],
        pin_dir: PathBuf,
    ) -> Result<Agent> {
        Self::start_opts(
            ns,
            dir,
            AgentOpts {
                pin_dir: Some(pin_dir),
                ..AgentOpts::new(downstream, upstream)
            },
        )
    }

    pub fn start_opts(ns: &Netns, dir: &TempDir, o: AgentOpts) -> Result<Agent> {
        let pin_dir = o
            .pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf").join(unique("pin")));
        let state_dir = dir.path("state");
        let control = dir.path("control.sock");
        let bin = agent_bin();
        let mut args: Vec<String> = vec![bin.display().to_string(), "run".into()];
        for d in &o.downstream {
            args.extend(["--downstream".into(), d.to_string()]);
        }
        for u in &o.upstream {
            args.extend(["--upstream".into(), u.to_string()]);
        }
        for h in &o.hooks {
            args.extend(["--hook".into(), h.display().to_string()]);
        }
        args.extend([
            "--pin-dir".into(),
            pin_dir.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--control".into(),
            control.display().to_string(),
        ]);
        // The tests' protocol number, unless the test gives its own.
        if !o.args.iter().any(|a| a == "--route-proto") {
            args.extend(["--route-proto".into(), PROTO.into()]);
        }
        args.extend(o.args.iter().cloned());
        let log = dir.path("agent.log");
        let f = fs::File::create(&log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .args(&args)
            .envs(o.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning pd-agent in {}", ns.name))?;
        let mut daemon = Daemon {
            child: Some(child),
            log,
            name: format!("pd-agent({})", ns.name),
        };
        let ready = wait_for(o.ready_timeout.unwrap_or(Duration::from_secs(20)), || {
            let _ = daemon.check_alive();
            daemon.log_text().contains("ready").then_some(())
        });
        let failed = match daemon.check_alive() {
            Err(e) => Some(e),
            Ok(()) if ready.is_none() => Some(anyhow::anyhow!(
                "pd-agent did not become ready; log:\n{}",
                daemon.log_text()
            )),
            Ok(()) => None,
        };
        if let Some(e) = failed {
            daemon.stop();
            let _ = fs::remove_dir_all(&pin_dir);
            return Err(e);
        }
        Ok(Agent {
            daemon,
            pin_dir,
            state_dir,
            control,
        })
    }

    /// `pd-agent bindings --json`, parsed.
    pub fn bindings(&self) -> Result<Vec<serde_json::Value>> {
        let out = sh(&[
            &agent_bin().display().to_string(),
            "bindings",
            "--json",
            "--control",
            &self.control.display().to_string(),
            "--state-dir",
            &self.state_dir.display().to_string(),
        ])?;
        Ok(serde_json::from_str::<Vec<serde_json::Value>>(&out)?)
    }

    pub fn stats(&self) -> Result<serde_json::Value> {
        let out = sh(&[
            &agent_bin().display().to_string(),
            "stats",
            "--control",
            &self.control.display().to_string(),
        ])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The entries of one of the agent's pinned maps, dumped with bpftool.
    pub fn map_dump(&self, map: &str) -> Result<Vec<serde_json::Value>> {
        let path = self.pin_dir.join(map);
        let out = sh(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            &path.display().to_string(),
        ])?;
        match serde_json::from_str(&out)? {
            serde_json::Value::Array(v) => Ok(v),
            v => bail!("bpftool output for {}: {v}", path.display()),
        }
    }

    /// Prefixes in the pinned LPM map, read with bpftool.
    pub fn map_prefixes(&self) -> Result<Vec<String>> {
        let mut res = Vec::new();
        for e in self.map_dump(pd_common::maps::ROUTES)? {
            let key: Vec<u8> = e["key"]
                .as_array()
                .context("key")?
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap_or("0").trim_start_matches("0x"), 16)
                        .unwrap_or(0)
                })
                .collect();
            if key.len() != 20 {
                bail!("unexpected key length {}", key.len());
            }
            let plen = u32::from_le_bytes(key[0..4].try_into().unwrap());
            let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&key[4..20]).unwrap());
            res.push(format!("{addr}/{plen}"));
        }
        Ok(res)
    }

    pub fn log(&self) -> String {
        self.daemon.log_text()
    }
}

impl Agent {
    /// `kill -9` the agent and leave its pin directory (its pinned links
    /// keep the programs attached); returns the directory for the next agent.
    pub fn kill9_keeping_pins(mut self) -> PathBuf {
        self.daemon.kill(libc::SIGKILL);
        self.daemon.stop();
        std::mem::take(&mut self.pin_dir)
    }
}

/// A kernel counter of the pinned `pd_counters_v1` under `pin_dir`,
/// summed over CPUs and read with bpftool: works while no agent runs.
pub fn pinned_counter(pin_dir: &Path, c: pd_common::Counter) -> Result<u64> {
    let path = pin_dir.join(pd_common::maps::COUNTERS);
    let key = (c as u32).to_le_bytes();
    let mut args = vec![
        "bpftool".to_string(),
        "-j".into(),
        "map".into(),
        "lookup".into(),
        "pinned".into(),
        path.display().to_string(),
        "key".into(),
    ];
    args.extend(key.iter().map(|b| b.to_string()));
    let out = sh(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut sum = 0u64;
    for cpu in v["values"].as_array().context("per-CPU values")? {
        let bytes: Vec<u8> = cpu["value"]
            .as_array()
            .context("value bytes")?
            .iter()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect();
        sum += u64::from_le_bytes(bytes.get(..8).context("8 bytes")?.try_into()?);
    }
    Ok(sum)
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.daemon.stop();
        if !self.pin_dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// Routes with our protocol in `ns`: (prefix, via, dev).
pub fn our_routes(ns: &Netns) -> Result<Vec<(String, String, String)>> {
    let out = ns.exec(&["ip", "-6", "-o", "route", "show", "proto", PROTO])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let via = w
                .iter()
                .position(|x| *x == "via")
                .map(|i| w[i + 1].to_string())?;
            let dev = w
                .iter()
                .position(|x| *x == "dev")
                .map(|i| w[i + 1].to_string())?;
            Some((w[0].to_string(), via, dev))
        })
        .collect())
}

/// One Kea subnet: clients on `iface` (on-link `subnet`) get /`plen`
/// prefixes out of `pool`/`pool_len`. `relayed`: reached through a relay,
/// so not bound to an interface.
pub struct KeaSubnet<'a> {
    pub iface: &'a str,
    pub subnet: &'a str,
    pub pool: &'a str,
    pub pool_len: u8,
    pub plen: u8,
    pub relayed: bool,
}

/// Kea DHCPv6 server config for `subnets`, with valid lifetime `valid`
/// (T1 = valid/4, T2 = valid/2, preferred = 3/4 valid).
pub fn kea_config(dir: &TempDir, subnets: &[KeaSubnet], valid: u32) -> Result<PathBuf> {
    let sock = dir.path("kea.sock");
    let lease = dir.path("kea.leases");
    let ifaces: Vec<String> = subnets
        .iter()
        .filter(|s| !s.relayed)
        .map(|s| format!("\"{}\"", s.iface))
        .collect();
    let subs: Vec<String> = subnets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let iface = if s.relayed {
                String::new()
            } else {
                format!(r#""interface": "{}","#, s.iface)
            };
            // An empty pool: the subnet delegates nothing (until a hook fills it).
            let pools = if s.pool.is_empty() {
                String::new()
            } else {
                format!(
                    r#"{{ "prefix": "{}", "prefix-len": {}, "delegated-len": {} }}"#,
                    s.pool, s.pool_len, s.plen
                )
            };
            format!(
                r#"{{ "id": {id}, "subnet": "{subnet}", {iface} "rapid-commit": true, "pd-pools": [ {pools} ] }}"#,
                id = i + 1,
                subnet = s.subnet
            )
        })
        .collect();
    let conf = format!(
        r#"{{ "Dhcp6": {{
  "interfaces-config": {{ "interfaces": [ {ifaces} ] }},
  "lease-database": {{ "type": "memfile", "persist": false, "name": "{lease}" }},
  "control-socket": {{ "socket-type": "unix", "socket-name": "{sock}" }},
  "renew-timer": {t1}, "rebind-timer": {t2}, "preferred-lifetime": {pref}, "valid-lifetime": {valid},
  "subnet6": [ {subs} ],
  "loggers": [ {{ "name": "kea-dhcp6", "output_options": [ {{ "output": "stdout" }} ], "severity": "INFO" }} ]
}} }}"#,
        ifaces = ifaces.join(", "),
        subs = subs.join(",\n    "),
        lease = lease.display(),
        sock = sock.display(),
        t1 = valid / 4,
        t2 = valid / 2,
        pref = valid * 3 / 4,
    );
    let p = dir.path("kea.json");
    fs::write(&p, conf)?;
    fs::create_dir_all("/run/kea")?;
    fs::create_dir_all("/var/lib/kea")?;
    Ok(p)
}

/// Start Kea in `ns` with `conf`.
pub fn start_kea(ns: &Netns, dir: &TempDir, conf: &Path) -> Result<Daemon> {
    // Each Kea gets its own pid and lock files: Kea refuses to start when
    // another instance's pid file (same config file name) is live.
    let pid_dir = format!("KEA_PIDFILE_DIR={}", dir.0.display());
    let lock_dir = format!("KEA_LOCKFILE_DIR={}", dir.0.display());
    let mut d = ns.spawn(
        &[
            "env",
            &pid_dir,
            &lock_dir,
            "kea-dhcp6",
            "-c",
            &conf.display().to_string(),
        ],
        &dir.path("kea.log"),
    )?;
    wait_for(Duration::from_secs(10), || {
        d.log_text().contains("DHCP6_STARTED").then_some(())
    })
    .with_context(|| format!("kea did not start: {}", d.log_text()))?;
    d.check_alive()?;
    Ok(d)
}

/// Kea in `ns` serving one subnet, with valid lifetime `valid`.
pub fn start_kea_subnet(
    ns: &Netns,
    dir: &TempDir,
    subnet: KeaSubnet,
    valid: u32,
) -> Result<Daemon> {
    let conf = kea_config(dir, &[subnet], valid)?;
    start_kea(ns, dir, &conf)
}

/// Wait until the dhclient whose lease file is in `cdir` holds a prefix
/// and `agent` has put it in its map; the prefix.
pub fn wait_delegated(agent: &Agent, cdir: &TempDir, dhclient: &Daemon) -> Result<String> {
    let prefix = wait_for(Duration::from_secs(60), || dhclient_prefix(cdir))
        .with_context(|| format!("dhclient got no prefix: {}", dhclient.log_text()))?;
    wait_for(Duration::from_secs(10), || {
        agent.map_prefixes().ok()?.contains(&prefix).then_some(())
    })
    .with_context(|| format!("{prefix} not routed: {}", agent.log()))?;
    Ok(prefix)
}

/// A prefix Kea on a router delegated (a /56 of a /48 pool) to dhclient on
/// a client, routed by the router's agent, with the first address of it on
/// the client's loopback (`host`).
pub struct Delegated {
    pub agent: Agent,
    pub kea: Daemon,
    pub dhclient: Daemon,
    pub cdir: TempDir,
    pub dir: TempDir,
    pub prefix: String,
    pub host: String,
}

/// Start an agent on `router` with `opts`, Kea there on `lan` (on-link
/// `subnet`, /56s out of `pool`/48) and dhclient on `client`'s `client_if`;
/// wait for the delegation.
pub fn delegate(
    router: &Netns,
    lan: &str,
    subnet: &str,
    pool: &str,
    client: &Netns,
    client_if: &str,
    opts: AgentOpts,
) -> Result<Delegated> {
    let dir = TempDir::new("dlg")?;
    let agent = Agent::start_opts(router, &dir, opts)?;
    let kea = start_kea_subnet(
        router,
        &dir,
        KeaSubnet {
            iface: lan,
            subnet,
            pool,
            pool_len: 48,
            plen: 56,
            relayed: false,
        },
        600,
    )?;
    let cdir = TempDir::new("dlgc")?;
    let dhclient = start_dhclient(client, &cdir, client_if)?;
    let prefix = wait_delegated(&agent, &cdir, &dhclient)?;
    let host = client.host_in(&prefix)?;
    Ok(Delegated {
        agent,
        kea,
        dhclient,
        cdir,
        dir,
        prefix,
        host,
    })
}

/// Start ISC dhcpd -6 in `ns` on `iface` with `conf` text.
pub fn start_dhcpd(ns: &Netns, dir: &TempDir, iface: &str, conf: &str) -> Result<Daemon> {
    let cf = dir.path("dhcpd.conf");
    let lf = dir.path("dhcpd.leases");
    let pf = dir.path("dhcpd.pid");
    fs::write(&cf, conf)?;
    fs::write(&lf, "")?;
    let mut d = ns.spawn(
        &[
            "dhcpd",
            "-6",
            "-d",
            "-cf",
            &cf.display().to_string(),
            "-lf",
            &lf.display().to_string(),
            "-pf",
            &pf.display().to_string(),
            iface,
        ],
        &dir.path("dhcpd.log"),
    )?;
    wait_for(Duration::from_secs(10), || {
        d.log_text().contains("Sending on").then_some(())
    })
    .with_context(|| format!("dhcpd did not start: {}", d.log_text()))?;
    d.check_alive()?;
    Ok(d)
}

/// A dhclient script that configures nothing (dhclient's default script
/// would rewrite resolv.conf).
pub fn null_script(dir: &TempDir) -> Result<PathBuf> {
    let p = dir.path("dhclient-script");
    fs::write(&p, "#!/bin/sh\nexit 0\n")?;
    sh(&["chmod", "+x", &p.display().to_string()])?;
    Ok(p)
}

/// dhclient -6 -P for `iface` with its lease file in `dir` and a script
/// that configures nothing, plus `extra` flags.
fn dhclient_args(dir: &TempDir, iface: &str, pidfile: &str, extra: &str) -> Result<Vec<String>> {
    let script = null_script(dir)?;
    Ok(["dhclient", "-6", "-P", extra, "-lf"]
        .iter()
        .map(|s| s.to_string())
        .chain([
            dir.path("dhclient.leases").display().to_string(),
            "-pf".into(),
            dir.path(pidfile).display().to_string(),
            "-sf".into(),
            script.display().to_string(),
            iface.into(),
        ])
        .collect())
}

/// dhclient -6 -P in the foreground.
pub fn start_dhclient(ns: &Netns, dir: &TempDir, iface: &str) -> Result<Daemon> {
    let args = dhclient_args(dir, iface, "dhclient.pid", "-d")?;
    ns.spawn(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.path("dhclient.log"),
    )
}

/// `dhclient -6 -P -r`: release the prefix held in the lease file.
pub fn dhclient_release(ns: &Netns, dir: &TempDir, iface: &str) -> Result<()> {
    let args = dhclient_args(dir, iface, "dhclient-release.pid", "-r")?;
    ns.exec(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(())
}

/// The delegated prefix in a dhclient lease file.
pub fn dhclient_prefix(dir: &TempDir) -> Option<String> {
    let text = fs::read_to_string(dir.path("dhclient.leases")).ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("iaprefix "))
        .filter_map(|l| l.split_whitespace().next())
        .next_back()
        .map(String::from)
}

/// dhcpcd config asking for one prefix, touching nothing outside the namespace.
pub fn dhcpcd_config(dir: &TempDir, iface: &str) -> Result<PathBuf> {
    let p = dir.path("dhcpcd.conf");
    fs::write(
        &p,
        format!(
            "nohook resolv.conf\nnoipv4\nipv6only\nnoipv6rs\nnooption domain_name_servers\nallowinterfaces {iface}\ninterface {iface}\n  ipv6rs\n  ia_pd 1\n"
        ),
    )?;
    Ok(p)
}

pub fn start_dhcpcd(ns: &Netns, dir: &TempDir, iface: &str) -> Result<Daemon> {
    let conf = dhcpcd_config(dir, iface)?;
    ns.spawn(
        &[
            "dhcpcd",
            "-f",
            &conf.display().to_string(),
            "-B",
            "-6",
            "-d",
            iface,
        ],
        &dir.path("dhcpcd.log"),
    )
}

pub fn dhcpcd_release(ns: &Netns, dir: &TempDir, iface: &str) -> Result<()> {
    let conf = dir.path("dhcpcd.conf");
    ns.exec(&[
        "dhcpcd",
        "-f",
        &conf.display().to_string(),
        "-6",
        "-k",
        iface,
    ])?;
    Ok(())
}

pub mod corpus;
pub mod lab;
pub mod matrix;
pub mod wire;
