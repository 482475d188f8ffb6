//! `cargo xtask`: provisioning, building the kernel programs, tests, demo.
//!
//! - `deps`: installs what a fresh Debian machine lacks (idempotent, fast
//!   when everything is there);
//! - `build-ebpf`: builds `pd-ebpf` on nightly for bpfel-unknown-none;
//! - `test`: unit tests, the root tests (namespaces, real servers), the
//!   VM tier on Debian 12's 6.1; `test matrix`: every other tier (amd64
//!   6.12 and 5.10, arm64 under qemu-user and on 6.1 and 6.12); both end
//!   with a timing table ([`tally`]);
//! - `deb`: the Debian package, checked with lintian;
//! - `demo`: a live lab in network namespaces.

mod arm64_vm;
mod cross;
mod deb;
mod demo;
mod tally;
mod vm;

use tally::Tally;

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
    /// Unit tests, the host's root tests, then the VM tier on Debian 12's
    /// 6.1 (needs root). `cargo xtask test FILTER` runs the root tests
    /// matching FILTER (no VM); `cargo xtask test matrix` every other
    /// tier: Debian 12's 6.12 and Debian 11's 5.10 (amd64), the arm64
    /// unit tests under qemu-user, the arm64 .deb and Debian 12's arm64
    /// kernels, 6.1 and 6.12 (emulated); `cargo xtask test vm
    /// [KERNEL...]` the amd64 VM tier alone, on the given kernels (a
    /// /boot/vmlinuz-* path or its version) or on all three; `cargo
    /// xtask test cross` the arm64 tier alone.
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
        /// Only this root test file (`routes` for tests/tests/routes.rs);
        /// with FILTER, only its tests matching FILTER.
        #[arg(long)]
        file: Option<String>,
        /// A filter for the root tests, or `matrix`, `vm` and kernels, or `cross`.
        args: Vec<String>,
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
    /// Build the Debian package into target/deb (release build, stripped)
    /// and check it with lintian; fails on any lintian error.
    Deb {
        /// The Rust target to package (its Debian architecture follows).
        #[arg(long, default_value = deb::DEFAULT_TARGET)]
        target: String,
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
    // perfdhcp, the load generator of bench row 11 (relay throughput).
    "kea-admin",
    "isc-dhcp-server",
    "isc-dhcp-client",
    "isc-dhcp-relay",
    "dhcpcd-base",
    // dhcp6c, a third client behind the relay (its init script and
    // ifupdown hook do nothing here: no systemd, no ifupdown).
    "wide-dhcpv6-client",
    // The memory row's baseline (the binary only: no service, no resolv.conf hook).
    "dnsmasq-base",
    "radvd",
    "ethtool",
    "nftables",
    "conntrack",
    "python3",
    "bird2",
    "systemd",
    "tcpdump",
    // `cargo xtask deb`: dpkg-deb and dpkg-shlibdeps, strip and readelf,
    // and lintian to check the package.
    "dpkg-dev",
    "binutils",
    "lintian",
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
        Cmd::Test { unit, file, args } => match args.split_first() {
            Some((first, kernels)) if first == "vm" => vm::test_vm(kernels),
            Some((first, _)) if first == "cross" => {
                deps()?;
                let mut tally = Tally::new("cross");
                let r = cross_jobs(&mut tally).and_then(|jobs| vm::run_jobs(&mut tally, jobs));
                finish(tally, r)
            }
            Some((first, _)) if first == "matrix" => matrix(),
            _ => test(unit, file, args.first().cloned()),
        },
        Cmd::Bench { quick, row } => bench(quick, row),
        Cmd::Deb { target } => {
            deps()?;
            deb::build(&target)?;
            Ok(())
        }
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

pub(crate) fn is_root() -> bool {
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

pub(crate) fn deps() -> Result<()> {
    apt_install(APT_PACKAGES)?;
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
pub(crate) fn build_agent() -> Result<PathBuf> {
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
    // The agent under test is the release build (the package's).
    let agent = deb::build_release(&deb::host_target()?)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root_dir())
        .args(["bench", "-p", "pd-tests", "--bench", "pd", "--"])
        .env("PD_AGENT_BIN", agent)
        .env("PD_EBPF_OBJ", &obj);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(r) = row {
        cmd.args(["--row", &r.to_string()]);
    }
    status(&mut cmd)
}

fn test(unit_only: bool, file: Option<String>, filter: Option<String>) -> Result<()> {
    if !unit_only {
        deps()?;
    }
    let mut tally = Tally::new("test");
    let r = test_tiers(&mut tally, unit_only, file, filter);
    finish(tally, r)
}

/// The timing table and closing line, whatever happened, then the error.
pub(crate) fn finish(tally: Tally, r: Result<()>) -> Result<()> {
    tally.print();
    r?;
    if tally.failed() > 0 {
        bail!("{} test(s) failed", tally.failed());
    }
    Ok(())
}

fn test_tiers(
    tally: &mut Tally,
    unit_only: bool,
    file: Option<String>,
    filter: Option<String>,
) -> Result<()> {
    let obj = root_dir().join("target/bpf/bpfel-unknown-none/release/pd-ebpf");
    let (bin, exes) = tally.step("build", || {
        let bin = build_agent()?;
        // The benchmarks are not run here, but they must keep compiling.
        status(
            Command::new("cargo")
                .current_dir(root_dir())
                .args(["check", "-q", "-p", "pd-tests", "--benches"])
                .env("PD_EBPF_OBJ", &obj),
        )?;
        let mut cargo = Command::new("cargo");
        cargo.current_dir(root_dir()).arg("test");
        Ok((bin, root_test_files(cargo, &obj)?))
    })?;
    tally.run(
        "unit",
        Command::new("cargo")
            .current_dir(root_dir())
            .args(["test", "--workspace"])
            .env("PD_EBPF_OBJ", &obj),
    )?;
    if unit_only {
        return Ok(());
    }
    if !is_root() {
        bail!("the root tests need root (namespaces, BPF): run `sudo -E cargo xtask test`, or `cargo xtask test --unit`");
    }
    let everything = filter.is_none() && file.is_none();
    // The VM on 6.1 boots while the host's root tests run: they wait on
    // servers and timers most of the time, the guest mostly computes
    // (niced, its limits scaled by its measured speed).
    let vm_jobs = if everything {
        vm::jobs(tally, vm::kernels(true))?
    } else {
        Vec::new()
    };
    let (host, vms) = std::thread::scope(|s| {
        let vms = s.spawn(|| vm::boot_all(vm_jobs));
        let host = host_tests(tally, &exes, &bin, &obj, file.as_deref(), filter.as_deref());
        (host, vms.join().expect("the VM thread"))
    });
    let vms = vm::record(tally, vms);
    host?;
    vms
}

/// The host's root tests, file by file (one row each); every file runs
/// even when one fails.
fn host_tests(
    tally: &mut Tally,
    exes: &[(String, PathBuf)],
    bin: &Path,
    obj: &Path,
    file: Option<&str>,
    filter: Option<&str>,
) -> Result<()> {
    let mut failed = Vec::new();
    let mut matched = false;
    for (name, exe) in exes {
        if file.is_some_and(|f| f.trim_end_matches(".rs") != name) {
            continue;
        }
        matched = true;
        let mut cmd = Command::new(exe);
        // As cargo runs a test: from the package's directory.
        cmd.current_dir(root_dir().join("tests"))
            .args(["--ignored", "--test-threads=1"])
            // The VM tier's tests run in the VM only.
            .args(["--skip", "vm_", "--skip", "systemd_pid1"])
            .env("PD_AGENT_BIN", bin)
            .env("PD_EBPF_OBJ", obj);
        if let Some(f) = filter {
            cmd.arg(f);
        }
        eprintln!("xtask: root tests of tests/tests/{name}.rs");
        if let Err(e) = tally.run(&format!("host: {name}.rs"), &mut cmd) {
            eprintln!("xtask: {e:#}");
            failed.push(name.clone());
        }
    }
    if let Some(f) = file {
        if !matched {
            bail!(
                "no root test file {f} (there are: {})",
                exes.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if !failed.is_empty() {
        bail!("root tests failed in {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo xtask test matrix`: every tier `cargo xtask test` leaves out.
fn matrix() -> Result<()> {
    deps()?;
    let mut tally = Tally::new("matrix");
    let r = (|| {
        tally.step("build", || build_agent().map(|_| ()))?;
        // The builds first, then the VMs, two at a time: the amd64 and the
        // arm64 ones in one queue.
        let mut jobs = cross_jobs(&mut tally)?;
        jobs.extend(vm::jobs(&mut tally, vm::kernels(false))?);
        vm::run_jobs(&mut tally, jobs)
    })();
    finish(tally, r)
}

/// The root test files (pd-tests' test targets) and their executables,
/// built by `cargo` if need be, by name.
fn root_test_files(mut cargo: Command, obj: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = cargo
        .args([
            "-p",
            "pd-tests",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .env("PD_EBPF_OBJ", obj)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the root tests")?;
    if !out.status.success() {
        bail!("building the root tests failed");
    }
    let mut files: Vec<(String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["kind"][0] == "test")
        .filter_map(|v| {
            Some((
                v["target"]["name"].as_str()?.to_string(),
                PathBuf::from(v["executable"].as_str()?),
            ))
        })
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// The arm64 agent: its unit tests under qemu-user, its Debian package
/// (built and checked with lintian as the host's is), then its programs
/// and traffic on arm64 kernels ([`arm64_vm`]): the VMs are returned, to
/// be booted with the others.
fn cross_jobs(tally: &mut Tally) -> Result<Vec<vm::Job>> {
    let obj = build_ebpf()?;
    let arm64 = cross::Cross::of(cross::ARM64)?;
    tally.step("arm64 build (tests)", || arm64.build_tests(&obj))?;
    let t = std::time::Instant::now();
    let text = arm64.unit_tests(&obj)?;
    tally.scan("arm64 unit (qemu-user)", &text, t.elapsed().as_secs_f64());
    tally.step("arm64 package (.deb, lintian)", || deb::build(cross::ARM64))?;
    arm64_vm::jobs(tally, arm64, &obj)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run as root (e.g. sudo -E cargo xtask deps)");
    }
    eprintln!("xtask: installing {missing:?}");
    // wide-dhcpv6-client's package would start dhcp6c on the host's eth0
    // (its debconf default), with a script that rewrites resolv.conf,
    // wherever an init system runs: the tests start their own, in
    // namespaces only.
    let mut preseed = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running debconf-set-selections")?;
    if let Some(mut stdin) = preseed.stdin.take() {
        use std::io::Write;
        stdin.write_all(b"wide-dhcpv6-client wide-dhcpv6-client/interfaces string \n")?;
    }
    if !preseed.wait()?.success() {
        bail!("debconf-set-selections failed");
    }
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The executables of pd-tests' test targets `targets`, in that order,
/// built by `cargo` (`cargo test`, for the host or a cross target) if needed.
fn test_executables(mut cargo: Command, targets: &[&str], obj: &Path) -> Result<Vec<PathBuf>> {
    cargo.args(["-p", "pd-tests", "--no-run", "--message-format=json"]);
    for t in targets {
        cargo.args(["--test", t]);
    }
    let out = cargo
        .env("PD_EBPF_OBJ", obj)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("building the tests {targets:?}"))?;
    if !out.status.success() {
        bail!("building the tests {targets:?} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    targets
        .iter()
        .map(|t| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["target"]["name"] == *t)
                .find_map(|v| v["executable"].as_str().map(PathBuf::from))
                .with_context(|| format!("no executable for test target {t}"))
        })
        .collect()
}
