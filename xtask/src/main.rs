//! `cargo xtask`: provisioning, building the kernel programs, tests, demo.
//!
//! - `deps`: installs what a fresh Debian machine lacks (idempotent, fast
//!   when everything is there);
//! - `build-ebpf`: builds `pd-ebpf` on nightly for bpfel-unknown-none;
//! - `test`: unit tests, then the root tests (namespaces, real servers);
//! - `demo`: a live lab in network namespaces.

mod demo;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing packages, rust-src for nightly and bpf-linker.
    Deps,
    /// Build the kernel programs; prints the object's path.
    BuildEbpf,
    /// Unit tests, then root integration tests (needs root).
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
        /// Extra filter passed to the root tests.
        filter: Option<String>,
    },
    /// The performance table (needs root); writes target/bench/results.json.
    Bench {
        /// A reduced set that runs in under two minutes.
        #[arg(long)]
        quick: bool,
        /// Only this row.
        #[arg(long)]
        row: Option<u32>,
    },
    /// Run the live demo in network namespaces (needs root).
    Demo {
        /// Leave the lab running and print how to look around.
        #[arg(long)]
        keep: bool,
    },
}

/// Debian packages the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "procps",
    "util-linux",
    "kea-dhcp6-server",
    "isc-dhcp-server",
    "isc-dhcp-client",
    "isc-dhcp-relay",
    "dhcpcd-base",
    "radvd",
    "ethtool",
    "nftables",
    "conntrack",
    "python3",
    "bird2",
    "systemd",
    "tcpdump",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Deps => deps(),
        Cmd::BuildEbpf => {
            let obj = build_ebpf()?;
            println!("{}", obj.display());
            Ok(())
        }
        Cmd::Test { unit, filter } => test(unit, filter),
        Cmd::Bench { quick, row } => bench(quick, row),
        Cmd::Demo { keep } => {
            deps()?;
            let bin = build_agent()?;
            demo::run(&bin, keep)
        }
    }
}

pub fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn deps() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages {missing:?}; run as root (e.g. sudo -E cargo xtask deps)"
            );
        }
        eprintln!("xtask: installing {missing:?}");
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup (the nightly toolchain is needed for the kernel programs)")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask: adding rust-src to nightly");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        eprintln!("xtask: building bpf-linker against LLVM 22 (a few minutes, once)");
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        status(
            Command::new("cargo")
                .args([
                    "install",
                    "--locked",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("PATH", path)
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .env_remove("RUSTUP_TOOLCHAIN"),
        )?;
    }
    Ok(())
}

/// Build the kernel programs into `target/bpf` (the same place build.rs uses).
fn build_ebpf() -> Result<PathBuf> {
    let root = root_dir();
    let target = root.join("target/bpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("pd-ebpf"))
        .args(["+nightly", "build", "--release", "--target-dir"])
        .arg(&target)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    status(&mut cmd)?;
    Ok(target.join("bpfel-unknown-none/release/pd-ebpf"))
}

/// Build the agent (its build.rs embeds the kernel object) and return its path.
fn build_agent() -> Result<PathBuf> {
    let obj = build_ebpf()?;
    status(
        Command::new("cargo")
            .current_dir(root_dir())
            .args(["build", "-p", "pd-agent"])
            .env("PD_EBPF_OBJ", &obj),
    )?;
    Ok(root_dir().join("target/debug/pd-agent"))
}

fn bench(quick: bool, row: Option<u32>) -> Result<()> {
    deps()?;
    if !is_root() {
        bail!("the benchmarks need root (namespaces, BPF): run `sudo -E cargo xtask bench`");
    }
    let obj = build_ebpf()?;
    // The agent under test is the release build.
    status(
        Command::new("cargo")
            .current_dir(root_dir())
            .args(["build", "--release", "-p", "pd-agent"])
            .env("PD_EBPF_OBJ", &obj),
    )?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root_dir())
        .args(["bench", "-p", "pd-tests", "--bench", "pd", "--"])
        .env("PD_AGENT_BIN", root_dir().join("target/release/pd-agent"))
        .env("PD_EBPF_OBJ", &obj);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(r) = row {
        cmd.args(["--row", &r.to_string()]);
    }
    status(&mut cmd)
}

fn test(unit_only: bool, filter: Option<String>) -> Result<()> {
    if !unit_only {
        deps()?;
    }
    let bin = build_agent()?;
    let obj = root_dir().join("target/bpf/bpfel-unknown-none/release/pd-ebpf");
    let mut tally = Tally::default();
    tally.run(
        Command::new("cargo")
            .current_dir(root_dir())
            .args(["test", "--workspace"])
            .env("PD_EBPF_OBJ", &obj),
    )?;
    // The benchmarks are not run here, but they must keep compiling.
    status(
        Command::new("cargo")
            .current_dir(root_dir())
            .args(["check", "-q", "-p", "pd-tests", "--benches"])
            .env("PD_EBPF_OBJ", &obj),
    )?;
    if unit_only {
        tally.print();
        return Ok(());
    }
    if !is_root() {
        bail!("the root tests need root (namespaces, BPF): run `sudo -E cargo xtask test`, or `cargo xtask test --unit`");
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root_dir())
        .args([
            "test",
            "-p",
            "pd-tests",
            "--",
            "--ignored",
            "--test-threads=1",
        ])
        .env("PD_AGENT_BIN", &bin)
        .env("PD_EBPF_OBJ", &obj);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    tally.run(&mut cmd)?;
    tally.print();
    Ok(())
}

/// Adds up cargo test's "test result:" lines so the run ends with one
/// overall line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {cmd:?}"))?;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |word: &str| {
                    rest.split(';')
                        .find_map(|p| {
                            p.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .strip_suffix(word)
                        })
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                self.passed += num(" passed");
                self.failed += num(" failed");
                self.ignored += num(" ignored");
            }
        }
        let st = child.wait()?;
        if !st.success() {
            self.print();
            bail!("{cmd:?} failed: {st}");
        }
        Ok(())
    }

    fn print(&self) {
        println!("\nxtask: {} passed, {} failed", self.passed, self.failed);
    }
}
