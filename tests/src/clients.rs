//! The real DHCPv6 clients, ISC dhclient, dhcpcd and WIDE dhcp6c, asking
//! for prefixes.
//!
//! None touches the host's resolver: each runs in a namespace with its
//! own empty resolv.conf (see [`crate::netns`]), dhclient with a script
//! that configures nothing ([`null_script`]), dhcpcd with its resolv.conf
//! hook and DNS option off ([`dhcpcd_config`]), dhcp6c with no `script`
//! and no `request` in its config ([`dhcp6c_config`]).

use std::{fs, path::PathBuf};

use anyhow::Result;

use crate::{sh, Daemon, Netns, TempDir};

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

/// dhcpcd as [`start_dhcpcd`] starts it, but with state of its own.
/// dhcpcd keeps its DUID and leases (`eth0.lease6`) in /var/lib/dhcpcd and
/// its pid file and control socket (`eth0-6.pid`) in /run/dhcpcd, the same
/// directories in every namespace: a lease left by an earlier client on an
/// `eth0` makes the next one start with a Rebind for that prefix instead of
/// a Solicit, and a dhcpcd on an `eth0` elsewhere (another test run) holds
/// the pid file. Directories in `dir` are bind-mounted over both, in the
/// mount namespace `ip netns exec` makes for this process alone; release
/// with [`dhcpcd_release_private`].
pub fn start_dhcpcd_private(ns: &Netns, dir: &TempDir, iface: &str) -> Result<Daemon> {
    let conf = dhcpcd_config(dir, iface)?;
    let (state, run) = (dir.path("dhcpcd-lib"), dir.path("dhcpcd-run"));
    fs::create_dir_all(&state)?;
    fs::create_dir_all(&run)?;
    let script = format!(
        "mount --bind {state} /var/lib/dhcpcd && mount --bind {run} /run/dhcpcd && \
         exec dhcpcd -f {conf} -B -6 -d {iface}",
        state = state.display(),
        run = run.display(),
        conf = conf.display(),
    );
    let mut d = ns.spawn(&["sh", "-c", &script], &dir.path("dhcpcd.log"))?;
    d.name = "dhcpcd".into();
    Ok(d)
}

/// `dhcpcd -k` for a dhcpcd from [`start_dhcpcd_private`], run in its
/// namespaces (network and mounts) to reach its control socket.
pub fn dhcpcd_release_private(dhcpcd: &Daemon, dir: &TempDir, iface: &str) -> Result<()> {
    let conf = dir.path("dhcpcd.conf");
    sh(&[
        "nsenter",
        "-t",
        &dhcpcd.pid().to_string(),
        "-m",
        "-n",
        "dhcpcd",
        "-f",
        &conf.display().to_string(),
        "-6",
        "-k",
        iface,
    ])?;
    Ok(())
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

/// dhcp6c config asking for one prefix (IA_PD 0) on `iface`. No `script`
/// statement: dhcp6c then runs nothing (Debian's example config names
/// /etc/wide-dhcpv6/dhcp6c-script, which rewrites resolv.conf), and no
/// `request` of DNS options. The prefix is delegated to no interface
/// (an empty `id-assoc pd`).
pub fn dhcp6c_config(dir: &TempDir, iface: &str) -> Result<PathBuf> {
    let p = dir.path("dhcp6c.conf");
    fs::write(
        &p,
        format!("interface {iface} {{\n  send ia-pd 0;\n}};\nid-assoc pd 0 {{\n}};\n"),
    )?;
    Ok(p)
}

/// WIDE dhcp6c in the foreground (`-f`, debug log `-D`) asking for a
/// prefix on `iface`. dhcp6c keeps its DUID in /var/lib/dhcpv6, a path it
/// cannot be told otherwise: `dir` is bind-mounted there, in the mount
/// namespace `ip netns exec` makes for this process alone, so each client
/// has its own DUID and the host's directory stays untouched. SIGTERM
/// (what [`Daemon::stop`] sends) makes dhcp6c release its prefix and exit.
pub fn start_dhcp6c(ns: &Netns, dir: &TempDir, iface: &str) -> Result<Daemon> {
    if !std::path::Path::new("/usr/sbin/dhcp6c").exists() {
        anyhow::bail!("dhcp6c is missing: install the Debian package wide-dhcpv6-client");
    }
    let conf = dhcp6c_config(dir, iface)?;
    let script = format!(
        "mount --bind {dir} /var/lib/dhcpv6 && exec dhcp6c -f -D -c {conf} -p {pid} {iface}",
        dir = dir.0.display(),
        conf = conf.display(),
        pid = dir.path("dhcp6c.pid").display(),
    );
    let mut d = ns.spawn(&["sh", "-c", &script], &dir.path("dhcp6c.log"))?;
    d.name = "dhcp6c".into();
    Ok(d)
}

/// The prefix dhcp6c holds, from its debug log (`update_prefix: create a
/// prefix P pltime=...`), unless it removed it since.
pub fn dhcp6c_prefix(log: &str) -> Option<String> {
    let mut held = None;
    for l in log.lines() {
        if let Some(rest) = l.split("create a prefix ").nth(1) {
            held = rest.split_whitespace().next().map(String::from);
        } else if l.contains("remove a site prefix") {
            held = None;
        }
    }
    held
}
