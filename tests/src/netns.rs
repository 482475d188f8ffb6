//! Network namespaces and the links between them: unique names, `sh`,
//! [`Netns`] (deleted on drop with everything running in it, even when a
//! test panics), [`InNetns`], veth pairs, the usual router topology, and
//! counting echo requests at the far end.
//!
//! Every namespace gets its own empty `/etc/netns/NS/resolv.conf`, which
//! `ip netns exec` mounts over `/etc/resolv.conf`: a DHCP client started
//! in it cannot rewrite the host's.

use std::{
    fs,
    net::Ipv6Addr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{wait_for, Daemon};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique tag for names (interfaces are limited to 15 bytes).
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
        Daemon::spawn(&mut self.cmd(args), args[0], log)
    }

    /// A command that enters only the network namespace, keeping the
    /// host's mounts: `ip netns exec` remounts /sys, which hides the host's
    /// bpffs at /sys/fs/bpf (and with it the agent's pinned maps).
    pub fn cmd_net_only(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).args(args);
        c
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

    /// A counter of `/proc/net/snmp6` (`Ip6OutForwDatagrams`: how often
    /// this namespace forwarded, which a capture would miss for frames an
    /// XDP program redirects).
    pub fn snmp6(&self, key: &str) -> Result<u64> {
        self.exec(&["cat", "/proc/net/snmp6"])?
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == key).then(|| w.next()?.parse().ok())?
            })
            .with_context(|| format!("{key} in {}'s /proc/net/snmp6", self.name))
    }

    /// One echo request to `to`, and what ping printed ("Destination
    /// unreachable", "Time exceeded", ...); a looping request is given
    /// time to run out of hops.
    pub fn ping_once(&self, to: &str) -> Result<String> {
        let out = self
            .cmd(&["ping", "-6", "-c", "1", "-W", "2", to])
            .output()
            .context("ping")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
