//! The real DHCPv6 clients, ISC dhclient and dhcpcd, asking for prefixes.
//!
//! Neither touches the host's resolver: each runs in a namespace with its
//! own empty resolv.conf (see [`crate::netns`]), dhclient with a script
//! that configures nothing ([`null_script`]), dhcpcd with its resolv.conf
//! hook and DNS option off ([`dhcpcd_config`]).

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
