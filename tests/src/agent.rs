//! The pd-agent under test: its binary, [`Agent`] (started in a namespace
//! with its own pin, state and control paths, pins removed on drop), and
//! what it shows from outside: pinned maps and counters, routes with the
//! tests' protocol number.

use std::{
    fs,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{sh, unique, wait_for, Daemon, Netns, TempDir};

/// The page size (the smallest ring buffer the kernel accepts).
pub fn page_size() -> usize {
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
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
    /// The binary to run (default: [`agent_bin`]).
    pub bin: Option<PathBuf>,
    /// A command that runs the agent (`prlimit ...`, `setpriv ...`).
    pub wrap: Vec<String>,
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
        let bin = o.bin.clone().unwrap_or_else(agent_bin);
        let mut args: Vec<String> = o.wrap.clone();
        args.extend([bin.display().to_string(), "run".into()]);
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
        let mut daemon = Daemon::spawn(
            ns.cmd_net_only(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .envs(o.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            &format!("pd-agent({})", ns.name),
            &log,
        )?;
        let ready = wait_for(
            crate::patience(o.ready_timeout.unwrap_or(Duration::from_secs(20))),
            || {
                let _ = daemon.check_alive();
                daemon.log_text().contains("ready").then_some(())
            },
        );
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

/// The prefix of the binding [`lan_with_stored_binding`] stores.
pub const STORED_PREFIX: &str = "2001:db8:100::/56";

/// A namespace with `lan0` (a veth whose peer stays beside it, both up,
/// forwarding on) and, in `dir`'s state directory (the one
/// [`Agent::start_opts`] gives the agent), a store holding one delegated
/// binding, [`STORED_PREFIX`] via fe80::1 on lan0, whose route is not in
/// the kernel: an agent's start-up reconcile installs it.
pub fn lan_with_stored_binding(tag: &str, dir: &TempDir) -> Result<Netns> {
    let ns = Netns::new(tag)?;
    ns.exec(&[
        "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ])?;
    ns.exec(&["ip", "link", "set", "lan0", "up"])?;
    ns.exec(&["ip", "link", "set", "lan0p", "up"])?;
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
    let ifindex = ns
        .exec(&["cat", "/sys/class/net/lan0/ifindex"])?
        .trim()
        .to_string();
    write_stored_binding(&dir.path("state"), &ifindex)?;
    Ok(ns)
}

/// A state store in `state_dir` holding one binding, [`STORED_PREFIX`]
/// via fe80::1 on lan0 (`ifindex`).
pub fn write_stored_binding(state_dir: &Path, ifindex: &str) -> Result<()> {
    fs::create_dir_all(state_dir)?;
    fs::write(
        state_dir.join("bindings.json"),
        format!(
            r#"{{"version":1,"bindings":[{{"prefix":"{STORED_PREFIX}","kind":"delegated","iface":"lan0","ifindex":{ifindex},
            "next_hop":"fe80::1","client_duid":"000100aa","iaid":1,"t1":1000,"t2":2000,"preferred_lifetime":3000,
            "valid_lifetime":4000,"expires_at":4000000000,"updated_at":1}}]}}"#
        ),
    )?;
    Ok(())
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

/// `GET /metrics` from an agent started with `--metrics addr`, inside `ns`:
/// the whole HTTP response.
pub fn scrape(ns: &Netns, addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let _in = crate::InNetns::enter(ns)?;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The client's link-local address on its eth0.
pub fn ll(ns: &Netns) -> Result<String> {
    Ok(ns.link_local("eth0")?.to_string())
}

/// Wait for `prefix` routed via `via` on `dev` in `ns`.
pub fn wait_route(
    ns: &Netns,
    prefix: &str,
    via: &str,
    dev: &str,
    log: impl Fn() -> String,
) -> Result<()> {
    wait_for(Duration::from_secs(20), || {
        our_routes(ns)
            .ok()?
            .iter()
            .any(|(p, v, d)| p == prefix && v == via && d == dev)
            .then_some(())
    })
    .with_context(|| {
        format!(
            "no route {prefix} via {via} dev {dev} in {}: {:?}\n{}",
            ns.name,
            our_routes(ns),
            log()
        )
    })
}

/// Wait until `ns` has no route of ours for `prefix`.
pub fn wait_no_route(ns: &Netns, prefix: &str, log: impl Fn() -> String) -> Result<()> {
    wait_for(Duration::from_secs(20), || {
        (!our_routes(ns).ok()?.iter().any(|(p, _, _)| p == prefix)).then_some(())
    })
    .with_context(|| format!("{prefix} still routed in {}\n{}", ns.name, log()))
}

/// A counter from `pd-agent stats` (0 when absent).
pub fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Whether the running kernel is older than `major.minor` (aya's reading
/// of its version, as the agent's).
pub fn kernel_before(major: u8, minor: u8) -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(major, minor, 0))
}

/// The agent chose the programs and fallbacks this kernel calls for (or,
/// `forced`, `PD_AGENT_COMPAT=1`'s), and said so at start and in `stats`:
/// the compat programs without `bpf_loop` (5.17) or `bpf_xdp_load_bytes`
/// (5.18), a clsact filter without tcx (6.6).
pub fn assert_fallbacks(agent: &Agent, forced: bool) -> Result<()> {
    let no_loop = forced || kernel_before(5, 17);
    let no_load_bytes = forced || kernel_before(5, 18);
    let no_tcx = kernel_before(6, 6);
    let st = agent.stats()?;
    let p = &st["programs"];
    let compat = no_loop || no_load_bytes;
    let want = if compat {
        (
            pd_common::prog::XDP_COMPAT,
            pd_common::prog::TC_EGRESS_COMPAT,
        )
    } else {
        (pd_common::prog::XDP, pd_common::prog::TC_EGRESS)
    };
    assert_eq!(
        (p["xdp"].as_str(), p["tc"].as_str()),
        (Some(want.0), Some(want.1)),
        "{st}"
    );
    assert_eq!(p["tcx"], !no_tcx, "{st}");
    let log = agent.log();
    let said = |what: &str| log.contains(&format!("kernel fallback: {what}"));
    assert_eq!(said("no bpf_loop"), no_loop, "forced {forced}: {log}");
    assert_eq!(said("no bpf_xdp_load_bytes"), no_load_bytes, "{log}");
    assert_eq!(said("no tcx"), no_tcx, "{log}");
    assert_eq!(
        log.contains("kernel fallbacks: none"),
        !(no_loop || no_load_bytes || no_tcx),
        "{log}"
    );
    let fb = p["fallbacks"].as_array().map(|a| a.len()).unwrap_or(0);
    assert_eq!(
        fb,
        no_loop as usize + no_load_bytes as usize + no_tcx as usize,
        "{st}"
    );
    Ok(())
}
