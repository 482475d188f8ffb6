//! `cargo xtask`: provisioning, building the kernel programs, tests, demo.
//!
//! - `deps`: installs what a fresh Debian machine lacks (idempotent, fast
//!   when everything is there);
//! - `build-ebpf`: builds `pd-ebpf` on nightly for bpfel-unknown-none;
//! - `test`: unit tests, then the root tests (namespaces, real servers);
//! - `deb`: the Debian package, checked with lintian;
//! - `demo`: a live lab in network namespaces.

mod arm64_vm;
mod cross;
mod deb;
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
    /// Unit tests, root integration tests, then the VM tier (needs root).
    /// `cargo xtask test FILTER` runs the root tests matching FILTER;
    /// `cargo xtask test vm [KERNEL...]` only the VM tier, on the given
    /// kernels (a /boot/vmlinuz-* path or its version; default: Debian
    /// 12's 6.1 and 6.12, and Debian 11's 5.10); `cargo xtask test
    /// cross` only the arm64 tier: unit tests under qemu-user, the .deb,
    /// and root tests on Debian 12's arm64 kernels, 6.1 and 6.12
    /// (emulated).
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
        /// A filter for the root tests, or `vm` and kernels.
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
        Cmd::Test { unit, args } => match args.split_first() {
            Some((first, kernels)) if first == "vm" => test_vm(kernels),
            Some((first, _)) if first == "cross" => {
                deps()?;
                let mut tally = Tally::default();
                cross_tier(&mut tally)?;
                tally.print();
                Ok(())
            }
            _ => test(unit, args.first().cloned()),
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
    // The VM tier's tests run in the VM only.
    cmd.args(["--skip", "vm_", "--skip", "systemd_pid1"]);
    if let Some(f) = &filter {
        cmd.arg(f);
    }
    tally.run(&mut cmd)?;
    if filter.is_none() {
        cross_tier(&mut tally)?;
        vm_tier(&mut tally, &[])?;
    }
    tally.print();
    Ok(())
}

/// The arm64 agent: its unit tests under qemu-user, its Debian package
/// (built and checked with lintian as the host's is), then its programs
/// and traffic on an arm64 kernel ([`arm64_vm`]).
fn cross_tier(tally: &mut Tally) -> Result<()> {
    let obj = build_ebpf()?;
    let arm64 = cross::Cross::of(cross::ARM64)?;
    let text = arm64.unit_tests(&obj)?;
    tally.scan(&text);
    deb::build(cross::ARM64)?;
    arm64_vm::tier(tally, arm64, &obj)?;
    Ok(())
}

/// Debian packages the VM tier needs on the host (the guest shares its
/// root file system): QEMU, the initramfs' busybox, and what its tests use
/// that the host tests do not.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "ppp", "pppoe"];
/// virtme-ng (PyPI) boots a kernel over the host's root file system.
const VIRTME_NG: &str = "virtme-ng==1.42";

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

/// A kernel series the VM tier boots by default (generic flavour: the
/// cloud one lacks 9p).
struct VmKernel {
    /// Package name prefix and suffix around the ABI number.
    prefix: &'static str,
    suffix: &'static str,
    /// apt-cache pattern of its packages.
    pattern: &'static str,
    /// An archive the host's apt sources lack (one-line `deb` entries),
    /// read through an apt configuration of the project's own under
    /// target/vm/apt: the host's sources stay as they are.
    sources: Option<&'static str>,
}

/// Debian 12's own 6.1 (no tcx, no xdp-features, no netfilter hook
/// list), the 6.12 Debian 12 also ships (all three), and Debian 11's
/// 5.10, the oldest LTS kernel Debian's archive still serves (archive.debian.org,
/// where buster's 4.19 lives, is out of reach here), which has neither
/// `bpf_loop` nor `bpf_xdp_load_bytes`: the compat programs.
const VM_KERNELS: [VmKernel; 3] = [
    VmKernel {
        prefix: "6.1.0-",
        suffix: "-amd64",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        sources: None,
    },
    VmKernel {
        prefix: "6.12.",
        suffix: "+deb12-amd64",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
        sources: None,
    },
    VmKernel {
        prefix: "5.10.0-",
        suffix: "-amd64",
        pattern: r"^linux-image-5\.10\.0-[0-9]+-amd64$",
        sources: Some(
            "deb http://deb.debian.org/debian bullseye main\n\
             deb http://deb.debian.org/debian-security bullseye-security main\n",
        ),
    },
];

/// The newest kernel of one [`VM_KERNELS`] series: from /boot if one is
/// installed, else the newest in the package archive, installed.
fn debian_kernel(k: &VmKernel) -> Result<PathBuf> {
    let newest = |names: Vec<String>| {
        names
            .into_iter()
            .filter_map(|n| {
                let abi = n.strip_prefix(k.prefix)?.strip_suffix(k.suffix)?;
                Some((abi.parse::<u32>().ok()?, n))
            })
            .max()
            .map(|(_, n)| n)
    };
    let in_boot: Vec<String> = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("vmlinuz-")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(v) = newest(in_boot) {
        return Ok(PathBuf::from(format!("/boot/vmlinuz-{v}")));
    }
    // Options that point apt at the private sources, lists and cache.
    let private: Vec<String> = match k.sources {
        None => vec![],
        Some(list) => {
            let dir = root_dir().join("target/vm/apt");
            for d in ["lists/partial", "cache/archives/partial"] {
                std::fs::create_dir_all(dir.join(d))?;
            }
            std::fs::write(dir.join("sources.list"), list)?;
            let opts = vec![
                format!(
                    "-oDir::Etc::SourceList={}",
                    dir.join("sources.list").display()
                ),
                "-oDir::Etc::SourceParts=-".to_string(),
                format!("-oDir::State::Lists={}", dir.join("lists").display()),
                format!("-oDir::Cache={}", dir.join("cache").display()),
            ];
            status(Command::new("apt-get").args(&opts).args(["update", "-q"]))?;
            opts
        }
    };
    let out = Command::new("apt-cache")
        .args(&private)
        .args(["search", "--names-only", k.pattern])
        .output()
        .with_context(|| format!("apt-cache search {}", k.pattern))?;
    let names = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("linux-image-")
                .map(String::from)
        })
        .collect();
    let v = newest(names).with_context(|| format!("no kernel package matching {}", k.pattern))?;
    if private.is_empty() {
        apt_install(&[&format!("linux-image-{v}")])?;
    } else {
        // Downloaded through the private configuration, installed from
        // the file (its dependencies are the host's own packages).
        let dir = root_dir().join("target/vm/apt");
        status(
            Command::new("apt-get")
                .current_dir(&dir)
                .args(&private)
                .args(["download", &format!("linux-image-{v}")]),
        )?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("linux-image-{v}_")) && n.ends_with(".deb")
                })
            })
            .with_context(|| format!("apt-get download linux-image-{v} left no package"))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .arg(&deb)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(PathBuf::from(format!("/boot/vmlinuz-{v}")))
}

/// The `vng` script of the Python that runs `python3`, installed if needed.
fn vng() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .context("python3 (virtme-ng runs on it)")?;
    let vng = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("vng");
    if !vng.exists() {
        eprintln!("xtask: installing {VIRTME_NG}");
        status(Command::new("python3").args(["-m", "pip", "install", "-q", VIRTME_NG]))?;
    }
    Ok(vng)
}

fn test_vm(kernels: &[String]) -> Result<()> {
    deps()?;
    build_agent()?;
    let mut tally = Tally::default();
    vm_tier(&mut tally, kernels)?;
    tally.print();
    if tally.failed > 0 {
        bail!("{} VM test(s) failed", tally.failed);
    }
    Ok(())
}

/// Boot each kernel (default: [`VM_KERNELS`]) in a VM without KVM (nested
/// KVM fails on these machines) and run there the kernel tests
/// (`tests/kernel.rs`: program load under every switch, the TestRun
/// corpus and mutants), the `vm_` namespace tests, and `systemd_pid1_*`
/// under a real systemd (the packaged unit's readiness and watchdog):
/// virtme-ng's own `--systemd` boot is of no use here, as systemd sees
/// the host's `/.dockerenv` through the shared root, takes itself for a
/// container and ignores the kernel command line. The Debian
/// package is built (and checked with lintian) first: `vm_deb_install`
/// installs it in the guest (`PD_DEB`) over overlays, so the host is
/// untouched.
fn vm_tier(tally: &mut Tally, kernels: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the VM tier needs root: run `sudo -E cargo xtask test vm`");
    }
    apt_install(VM_PACKAGES)?;
    let vng = vng()?;
    let kernels: Vec<PathBuf> = if kernels.is_empty() {
        VM_KERNELS
            .iter()
            .map(debian_kernel)
            .collect::<Result<_>>()?
    } else {
        kernels
            .iter()
            .map(|k| {
                let p = if k.starts_with('/') {
                    PathBuf::from(k)
                } else {
                    PathBuf::from(format!("/boot/vmlinuz-{k}"))
                };
                if p.exists() {
                    Ok(p)
                } else {
                    bail!("kernel {k}: {} does not exist", p.display())
                }
            })
            .collect::<Result<_>>()?
    };
    let deb = deb::build(deb::DEFAULT_TARGET)?;
    let obj = root_dir().join("target/bpf/bpfel-unknown-none/release/pd-ebpf");
    let mut host_cargo = Command::new("cargo");
    host_cargo.current_dir(root_dir()).arg("test");
    let [exe, kernel_exe]: [PathBuf; 2] = test_executables(host_cargo, &["vm", "kernel"], &obj)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two test executables expected"))?;
    let out = root_dir().join("target/vm");
    std::fs::create_dir_all(&out)?;
    let bin = root_dir().join("target/debug/pd-agent");
    let env = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
         export PD_AGENT_BIN={} PD_EBPF_OBJ={} PD_DEB={} RUST_BACKTRACE=1",
        bin.display(),
        obj.display(),
        deb.display()
    );
    for kernel in &kernels {
        let log = out.join("vm-test.log");
        let rc = out.join("rc");
        let sd_rc = out.join("systemd.rc");
        for f in [&log, &rc, &sd_rc] {
            let _ = std::fs::remove_file(f);
        }
        let console = out.join("console.log");
        let console_err = out.join("console.err");
        let script = out.join("run.sh");
        let (log_s, rc_s, sd_rc_s) = (log.display(), rc.display(), sd_rc.display());
        // `systemd_pid1_*` runs under a real systemd: PID 1 of a PID and
        // mount namespace of the guest's (as in a container), started on
        // the unit that runs the test and exits with it. Its boot-time
        // tmpfiles would empty /tmp (`D /tmp`), where a clone under /tmp
        // keeps the test binaries (the guest's overlay only: the host's
        // /tmp is its read-only lower layer): masked.
        let sd_script = out.join("systemd.sh");
        std::fs::write(
            &sd_script,
            format!(
                "#!/bin/sh
                 mount -t tmpfs pd-vartmp /var/tmp
                 {env}
                 {exe} --ignored --test-threads=1 --nocapture systemd_pid1 >> {log_s} 2>&1
                 echo $? > {sd_rc_s}
",
                exe = exe.display(),
            ),
        )?;
        status(Command::new("chmod").arg("+x").arg(&sd_script))?;
        let body = format!(
            "mkdir -p /run/netns
             {env}
             uname -r > {log_s}
             {kernel_exe} --ignored --test-threads=1 --nocapture >> {log_s} 2>&1
             k=$?
             {exe} --ignored --test-threads=1 --nocapture vm_ >> {log_s} 2>&1
             v=$?
             mkdir -p /run/systemd/system
             ln -sf /dev/null /run/systemd/system/systemd-tmpfiles-setup.service
             ln -sf /dev/null /run/systemd/system/systemd-tmpfiles-clean.timer
             printf '[Unit]\\nSuccessAction=exit\\nFailureAction=exit\\n[Service]\\nType=oneshot\\nExecStart={sd}\\n' \\
                 > /run/systemd/system/pd-test.service
             unshare --pid --fork --mount --mount-proc env -i container=pd-vm \\
                 /lib/systemd/systemd --unit=pd-test.service > {out}/systemd.log 2>&1
             s=$(cat {sd_rc_s} 2>/dev/null || echo 1)
             echo $((k + v + s)) > {rc_s}",
            exe = exe.display(),
            kernel_exe = kernel_exe.display(),
            sd = sd_script.display(),
            out = out.display(),
        );
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n"))?;
        status(Command::new("chmod").arg("+x").arg(&script))?;
        eprintln!("xtask: VM tier on {} (no KVM: slow)", kernel.display());
        let t = std::time::Instant::now();
        let st = Command::new("timeout")
            .arg("1200")
            .arg(&vng)
            .arg("-r")
            .arg(kernel)
            .args(["--disable-kvm", "--memory", "2G", "--cpus", "2"])
            .args([
                "--overlay-rwdir",
                "/tmp",
                "--overlay-rwdir",
                "/etc",
                "--overlay-rwdir",
                "/var/lib",
            ])
            .arg("--rwdir")
            .arg(&out)
            .arg("--exec")
            .arg(&script)
            .current_dir(root_dir())
            .stdin(std::process::Stdio::null())
            // The guest's console goes to a file: QEMU can reopen and
            // truncate an inherited stdout, taking the host tests' log.
            .stdout(std::fs::File::create(&console)?)
            .stderr(std::fs::File::create(&console_err)?)
            .status()
            .context("running vng")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        tally.scan(&text);
        println!("{text}");
        let code = std::fs::read_to_string(&rc).unwrap_or_default();
        eprintln!(
            "xtask: VM tier on {} took {:.0}s",
            kernel.display(),
            t.elapsed().as_secs_f64()
        );
        if code.trim() != "0" {
            tally.print();
            bail!(
                "the VM tier on {} failed (vng {st}, tests exit {:?}); log: {}, console: {}, systemd: {}",
                kernel.display(),
                code.trim(),
                log.display(),
                console.display(),
                out.join("systemd.log").display()
            );
        }
    }
    Ok(())
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

/// Adds up cargo test's "test result:" lines so the run ends with one
/// overall line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Add the "test result:" lines of a finished run's output.
    fn scan(&mut self, text: &str) {
        for line in text.lines() {
            self.line(line);
        }
    }

    fn line(&mut self, line: &str) {
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

    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {cmd:?}"))?;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line?;
            println!("{line}");
            self.line(&line);
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
