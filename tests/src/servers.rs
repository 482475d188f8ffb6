//! The real DHCPv6 servers: Kea (config and start) and ISC dhcpd, each
//! started in a namespace and stopped on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{wait_for, Daemon, Netns, TempDir};

/// One Kea subnet: clients on `iface` (on-link `subnet`) get /`plen`
/// prefixes out of `pool`/`pool_len`. `relayed`: reached through a relay,
/// so not bound to an interface; `iface` is then where Kea listens, with
/// the unicast address relays send to (`eth0/2001:db8:feed::2`).
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
    let mut ifaces: Vec<String> = subnets.iter().map(|s| format!("\"{}\"", s.iface)).collect();
    ifaces.dedup();
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
    // Seconds on a quiet machine; far more in the VM tier's emulated CPU
    // when the host is busy (once over 10 s in CI).
    wait_for(Duration::from_secs(60), || {
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
    wait_for(Duration::from_secs(60), || {
        d.log_text().contains("Sending on").then_some(())
    })
    .with_context(|| format!("dhcpd did not start: {}", d.log_text()))?;
    d.check_alive()?;
    Ok(d)
}

/// Where Kea beyond a relaying router listens: the unicast address on its
/// eth0 ([`upstream_and_router`]'s upstream).
pub const KEA_LISTEN: &str = "eth0/2001:db8:feed::2";
/// That Kea's address, for `--relay-to`.
pub const SERVER: &str = "2001:db8:feed::2";

/// Kea beyond the router with one subnet per client link (2001:db8:N::/64
/// delegating /56s out of 2001:db8:N00::/48), chosen by the link-address
/// the relay puts in.
pub fn kea_per_link(up: &Netns, dir: &TempDir, links: &[u8]) -> Result<Daemon> {
    let names: Vec<(String, String)> = links
        .iter()
        .map(|n| (format!("2001:db8:{n}::/64"), format!("2001:db8:{n}00::")))
        .collect();
    let subnets: Vec<KeaSubnet> = names
        .iter()
        .map(|(subnet, pool)| KeaSubnet {
            iface: KEA_LISTEN,
            subnet,
            pool,
            pool_len: 48,
            plen: 56,
            relayed: true,
        })
        .collect();
    let conf = kea_config(dir, &subnets, 600)?;
    start_kea(up, dir, &conf)
}

/// ISC dhcrelay -6 in `ns`, in the foreground, relaying from `lower` to
/// `upper` (`ADDR%IFACE`); returns once it holds UDP port 547.
pub fn start_dhcrelay(ns: &Netns, dir: &TempDir, lower: &str, upper: &str) -> Result<Daemon> {
    let pid = dir.path("dhcrelay.pid").display().to_string();
    let d = ns.spawn(
        &[
            "dhcrelay", "-6", "-d", "-pf", &pid, "-l", lower, "-u", upper,
        ],
        &dir.path("dhcrelay.log"),
    )?;
    wait_for(Duration::from_secs(10), || {
        ns.exec(&["ss", "-lunH", "sport = :547"])
            .ok()
            .filter(|o| !o.trim().is_empty())
    })
    .with_context(|| format!("dhcrelay did not bind port 547: {}", d.log_text()))?;
    Ok(d)
}
