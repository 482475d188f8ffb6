//! The amd64 VM tier: Debian's own kernels booted with virtme-ng under
//! QEMU without KVM (nested KVM fails on these machines), over the host's
//! root file system, each running the tests that tell something on it.
//!
//! Debian 12's 6.1 (the kernel most routers run) is part of `cargo xtask
//! test`; 6.12 and Debian 11's 5.10 are part of `cargo xtask test matrix`.
//! One boot per kernel runs all of its tests: the kernel tests
//! (`tests/kernel.rs`), the `vm_` namespace tests, and, where it adds
//! something, `systemd_pid1_*` under a real systemd.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    apt_install, deb, root_dir, status,
    tally::{guest_runner, not_run},
    test_executables, Tally,
};

/// Debian packages the VM tier needs on the host (the guest shares its
/// root file system): QEMU, the initramfs' busybox, and what its tests use
/// that the host tests do not.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "ppp", "pppoe"];
/// virtme-ng (PyPI) boots a kernel over the host's root file system.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// A kernel series the VM tier boots by default (generic flavour: the
/// cloud one lacks 9p).
pub struct VmKernel {
    /// Package name prefix and suffix around the ABI number.
    prefix: &'static str,
    suffix: &'static str,
    /// apt-cache pattern of its packages.
    pattern: &'static str,
    /// An archive the host's apt sources lack (one-line `deb` entries),
    /// read through an apt configuration of the project's own under
    /// target/vm/apt: the host's sources stay as they are.
    sources: Option<&'static str>,
    /// Its row in the timing table.
    name: &'static str,
    /// Part of `cargo xtask test` (else of `cargo xtask test matrix`).
    default: bool,
    /// What runs there: (part, test target, libtest filters).
    guest: Guest,
    /// Whether `systemd_pid1_*` runs there.
    systemd: bool,
    /// What its tests took here (seconds, boot excluded): the timeout is
    /// three times this, scaled by the machine's measured speed.
    budget: u64,
    /// How long it takes here to boot to the guest's script: the unit of
    /// the machine's measured speed ([`run_vm`]).
    boot: Duration,
}

/// What a VM runs: (part, test target, libtest filters).
type Guest = &'static [(&'static str, &'static str, &'static [&'static str])];

/// Everything: the kernel tests and every `vm_` test.
const ALL: Guest = &[("kernel.rs", "kernel", &[]), ("vm.rs", "vm", &["vm_"])];

/// Debian 12's own 6.1 (no tcx, no xdp-features, no netfilter hook
/// list) runs everything; the 6.12 Debian 12 also ships (all three, as
/// the development kernel) runs what differs from 6.1 there: the
/// verifier and JIT (the kernel tests, but the 64 loads of the debug-log
/// one, 110 s here, which 6.1's older verifier and the host's newer one
/// both pass), and the links the development kernel cannot build, with
/// tcx and redirects in XDP (VLAN, PPPoE, the fast-path matrix). Debian 11's 5.10, the oldest LTS kernel Debian's
/// archive still serves (archive.debian.org, where buster's 4.19 lives,
/// is out of reach here), has neither `bpf_loop` nor
/// `bpf_xdp_load_bytes` (the compat programs) and charges maps to
/// RLIMIT_MEMLOCK: the kernel tests, real traffic through the compat
/// programs over VLAN and PPPoE, the relay on them, and the agent under a
/// small memlock limit. There the fast-path matrix reaches 6.1's verdicts
/// (no xdp-features: every row left to the kernel) in 200 s, and the unit
/// under systemd takes 190 s to show what a unit test of the packaged
/// unit's `LimitMEMLOCK=infinity` and `vm_small_memlock_limit` show:
/// 6.1 only, as are the package's install and purge, and the clock
/// steps, which run the same code on every kernel.
const VM_KERNELS: [VmKernel; 3] = [
    VmKernel {
        prefix: "6.1.0-",
        suffix: "-amd64",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        sources: None,
        name: "vm 6.1 amd64",
        default: true,
        guest: ALL,
        systemd: true,
        budget: 600,
        boot: Duration::from_secs(22),
    },
    VmKernel {
        prefix: "6.12.",
        suffix: "+deb12-amd64",
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
        sources: None,
        name: "vm 6.12 amd64",
        default: false,
        guest: &[
            (
                "kernel.rs",
                "kernel",
                &["--skip", "kernel_debug_log_names_each_reject"],
            ),
            (
                "vm.rs",
                "vm",
                &[
                    "--exact",
                    "vm_vlan_sub_interface",
                    "vm_pppoe_session",
                    "vm_fast_path_matrix",
                ],
            ),
        ],
        systemd: false,
        budget: 250,
        boot: Duration::from_secs(21),
    },
    VmKernel {
        prefix: "5.10.0-",
        suffix: "-amd64",
        pattern: r"^linux-image-5\.10\.0-[0-9]+-amd64$",
        sources: Some(
            "deb http://deb.debian.org/debian bullseye main\n\
             deb http://deb.debian.org/debian-security bullseye-security main\n",
        ),
        name: "vm 5.10 amd64",
        default: false,
        guest: &[
            ("kernel.rs", "kernel", &[]),
            (
                "vm.rs",
                "vm",
                &[
                    "--exact",
                    "vm_vlan_sub_interface",
                    "vm_pppoe_session",
                    "vm_relay_and_its_rate_limits",
                    "vm_small_memlock_limit",
                ],
            ),
        ],
        systemd: false,
        budget: 400,
        boot: Duration::from_secs(31),
    },
];

/// `cargo xtask test vm [KERNEL...]`: the VM tier alone, on the given
/// kernels (a /boot/vmlinuz-* path or its version; each runs everything),
/// or on all of [`VM_KERNELS`].
pub fn test_vm(kernels: &[String]) -> Result<()> {
    crate::deps()?;
    let mut tally = Tally::new("vm");
    let r = (|| {
        tally.step("build", || crate::build_agent().map(|_| ()))?;
        let jobs = if kernels.is_empty() {
            jobs(&mut tally, VM_KERNELS.iter().collect())?
        } else {
            given(&mut tally, kernels)?
        };
        run_jobs(&mut tally, jobs)
    })();
    crate::finish(tally, r)
}

/// The kernels of `cargo xtask test` (`default`) or of the matrix.
pub fn kernels(default: bool) -> Vec<&'static VmKernel> {
    VM_KERNELS.iter().filter(|k| k.default == default).collect()
}

fn given(tally: &mut Tally, kernels: &[String]) -> Result<Vec<Job>> {
    let pre = std::sync::Arc::new(prepare(tally)?);
    kernels
        .iter()
        .map(|k| {
            let p = if k.starts_with('/') {
                PathBuf::from(k)
            } else {
                PathBuf::from(format!("/boot/vmlinuz-{k}"))
            };
            if !p.exists() {
                bail!("kernel {k}: {} does not exist", p.display());
            }
            let name = format!(
                "vm {}",
                p.display().to_string().trim_start_matches("/boot/vmlinuz-")
            );
            Ok(job(&pre, p, name, ALL, true, 600, AMD64_BOOT))
        })
        .collect()
}

/// What every boot shares: virtme-ng, the test executables, the package.
struct Prepared {
    vng: PathBuf,
    exes: Vec<(&'static str, PathBuf)>,
    deb: PathBuf,
    obj: PathBuf,
}

fn prepare(tally: &mut Tally) -> Result<Prepared> {
    if !crate::is_root() {
        bail!("the VM tier needs root: run `sudo -E cargo xtask test vm`");
    }
    apt_install(VM_PACKAGES)?;
    let vng = vng()?;
    let deb = tally.step("package (.deb, lintian)", || {
        deb::build(deb::DEFAULT_TARGET)
    })?;
    let obj = root_dir().join("target/bpf/bpfel-unknown-none/release/pd-ebpf");
    let mut host_cargo = Command::new("cargo");
    host_cargo.current_dir(root_dir()).arg("test");
    let targets = ["vm", "kernel"];
    let exes = test_executables(host_cargo, &targets, &obj)?;
    Ok(Prepared {
        vng,
        exes: targets.into_iter().zip(exes).collect(),
        deb,
        obj,
    })
}

/// The VMs of `kernels` (installed from Debian's archive if need be),
/// ready to boot with [`run_jobs`]. The Debian package is built (and
/// checked with lintian) first: `vm_deb_install` installs it in the guest
/// (`PD_DEB`) over overlays, so the host is untouched.
pub fn jobs(tally: &mut Tally, kernels: Vec<&'static VmKernel>) -> Result<Vec<Job>> {
    let paths: Vec<PathBuf> = tally.step("vm kernels (install)", || {
        kernels
            .iter()
            .map(|k| debian_kernel(k))
            .collect::<Result<_>>()
    })?;
    let pre = std::sync::Arc::new(prepare(tally)?);
    Ok(kernels
        .iter()
        .zip(paths)
        .map(|(k, path)| {
            job(
                &pre,
                path,
                k.name.to_string(),
                k.guest,
                k.systemd,
                k.budget,
                k.boot,
            )
        })
        .collect())
}

/// One VM to boot, and what it runs.
pub struct Job {
    pub name: String,
    pub run: Box<dyn FnOnce() -> Result<Outcome> + Send>,
}

/// What a finished VM left: its log and how it ended.
pub struct Outcome {
    pub log: String,
    pub run: VmRun,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

impl Outcome {
    /// A guest's log judged with the exit status its script wrote to `rc`:
    /// failed when a test failed, the VM timed out, or tests it should
    /// have run did not (`missing`, [`not_run`]); `files` say where to
    /// look.
    pub fn judge(
        log: String,
        run: VmRun,
        rc: &Path,
        missing: Vec<String>,
        files: &[&Path],
    ) -> Outcome {
        let code = std::fs::read_to_string(rc).unwrap_or_default();
        let code = code.trim();
        let failure = (code != "0" || run.timed_out || !missing.is_empty()).then(|| {
            format!(
                "{}; tests exit {code:?}{}; see {}",
                run.summary(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; did not run: {}", missing.join(", "))
                },
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        Outcome { log, run, failure }
    }
}

/// Boot `jobs` ([`boot_all`]) and record them in the table ([`record`]).
pub fn run_jobs(tally: &mut Tally, jobs: Vec<Job>) -> Result<()> {
    let done = boot_all(jobs);
    record(tally, done)
}

/// A finished job: its name, and what it left.
pub type Done = (String, Result<Outcome>);

/// Boot `jobs` one after the other; every VM runs even when one fails.
/// Two at a time on two cores made the matrix 1,399 s against 1,660 s
/// one at a time, within what the arm64 guests' stalls alone move it
/// (arm64 6.12's kernel tests took 148 s and 474 s in those two runs), and slowed each
/// guest enough that an agent on 5.10 missed its 20 s wait to become
/// ready: one at a time.
pub fn boot_all(jobs: Vec<Job>) -> Vec<Done> {
    jobs.into_iter()
        .map(|job| {
            let t = Instant::now();
            let out = (job.run)();
            eprintln!(
                "xtask: {} done after {:.0}s",
                job.name,
                t.elapsed().as_secs_f64()
            );
            (job.name, out)
        })
        .collect()
}

/// Print each finished VM's log and add its rows to the table; an error
/// naming every VM that failed.
pub fn record(tally: &mut Tally, done: Vec<Done>) -> Result<()> {
    let mut failures = Vec::new();
    for (name, out) in done {
        match out {
            Ok(o) => {
                println!("xtask: {name}: guest log\n{}", o.log);
                tally.scan_guest(&name, &o.log, o.run.secs);
                eprintln!("xtask: {name}: {}", o.run.summary());
                if let Some(f) = o.failure {
                    failures.push(format!("{name} failed ({f})"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// One VM: `guest`'s tests, then `systemd_pid1_*` if `systemd`. Its files
/// live in target/vm/NAME.
///
/// `systemd_pid1_*` runs under a real systemd: PID 1 of a PID and mount
/// namespace of the guest's (as in a container), started on the unit that
/// runs the test and exits with it. virtme-ng's own `--systemd` boot is
/// of no use here, as systemd sees the host's `/.dockerenv` through the
/// shared root, takes itself for a container and ignores the kernel
/// command line. Its boot-time tmpfiles would empty /tmp (`D /tmp`),
/// where a clone under /tmp keeps the test binaries (the guest's overlay
/// only: the host's /tmp is its read-only lower layer): masked.
fn job(
    pre: &std::sync::Arc<Prepared>,
    kernel: PathBuf,
    name: String,
    guest: Guest,
    systemd: bool,
    budget: u64,
    boot_here: Duration,
) -> Job {
    let pre = pre.clone();
    Job {
        name: name.clone(),
        run: Box::new(move || boot(&pre, &kernel, &name, guest, systemd, budget, boot_here)),
    }
}

fn boot(
    pre: &Prepared,
    kernel: &Path,
    name: &str,
    guest: Guest,
    systemd: bool,
    budget: u64,
    boot_here: Duration,
) -> Result<Outcome> {
    let out = root_dir().join("target/vm").join(name.replace(' ', "-"));
    std::fs::create_dir_all(&out)?;
    let log = out.join("vm-test.log");
    let rc = out.join("rc");
    let sd_rc = out.join("systemd.rc");
    for f in [&log, &rc, &sd_rc] {
        let _ = std::fs::remove_file(f);
    }
    let exe = |target: &str| {
        pre.exes
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, p)| p.display().to_string())
            .with_context(|| format!("no test executable {target}"))
    };
    let bin = root_dir().join("target/debug/pd-agent");
    // PD_TEST_EMULATED: fewer TestRun repetitions (the corpus runs
    // whole, the mutants in part); the host runs them all.
    let env = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PD_AGENT_BIN={} PD_EBPF_OBJ={} PD_DEB={} PD_TEST_EMULATED=4 RUST_BACKTRACE=1",
        bin.display(),
        pre.obj.display(),
        pre.deb.display()
    );
    let (log_s, rc_s, sd_rc_s) = (log.display(), rc.display(), sd_rc.display());
    let runner = guest_runner(&log_s.to_string());
    let mut runs = String::new();
    for (part, target, args) in guest {
        runs.push_str(&format!("run {part} {} {}\n", exe(target)?, args.join(" ")));
    }
    let sd_script = out.join("systemd.sh");
    std::fs::write(
        &sd_script,
        format!(
            "#!/bin/sh
mount -t tmpfs pd-vartmp /var/tmp
{env}
{runner}rc=0
run systemd {} systemd_pid1
echo $rc > {sd_rc_s}
",
            exe("vm")?
        ),
    )?;
    status(Command::new("chmod").arg("+x").arg(&sd_script))?;
    let sd_run = if systemd {
        format!(
            "mkdir -p /run/systemd/system
ln -sf /dev/null /run/systemd/system/systemd-tmpfiles-setup.service
ln -sf /dev/null /run/systemd/system/systemd-tmpfiles-clean.timer
printf '[Unit]\\nSuccessAction=exit\\nFailureAction=exit\\n[Service]\\nType=oneshot\\nExecStart={sd}\\n' \\
    > /run/systemd/system/pd-test.service
unshare --pid --fork --mount --mount-proc env -i container=pd-vm \\
    /lib/systemd/systemd --unit=pd-test.service > {out}/systemd.log 2>&1
[ \"$(cat {sd_rc_s} 2>/dev/null)\" = 0 ] || rc=1
",
            sd = sd_script.display(),
            out = out.display(),
        )
    } else {
        String::new()
    };
    let script = out.join("run.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
mkdir -p /run/netns
{env}
uname -r > {log_s}
{runner}rc=0
{runs}{sd_run}echo $rc > {rc_s}
"
        ),
    )?;
    status(Command::new("chmod").arg("+x").arg(&script))?;
    let console = out.join("console.log");
    eprintln!("xtask: {name}: {} (no KVM: slow)", kernel.display());
    let mut vng = Command::new(&pre.vng);
    vng.arg("-r")
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
        // The guest's console goes to a file: QEMU can reopen and
        // truncate an inherited stdout, taking the host tests' log.
        .stdout(std::fs::File::create(&console)?)
        .stderr(std::fs::File::create(out.join("console.err"))?);
    let run = run_vm(&mut vng, &log, boot_here, budget)?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let missing = not_run(&text, guest.iter().map(|(_, _, args)| *args));
    Ok(Outcome::judge(
        text,
        run,
        &rc,
        missing,
        &[&log, &console, &out.join("systemd.log")],
    ))
}

/// How long an amd64 guest of a kernel not in [`VM_KERNELS`] is taken
/// to boot here.
const AMD64_BOOT: Duration = Duration::from_secs(20);

/// How a VM run ended.
pub struct VmRun {
    pub secs: f64,
    /// Seconds until the guest's script wrote its first line.
    pub boot: Option<f64>,
    /// How much slower than here the boot was (at least 1).
    pub factor: f64,
    pub timed_out: bool,
    pub status: Option<std::process::ExitStatus>,
}

impl VmRun {
    pub fn summary(&self) -> String {
        format!(
            "{:.0}s, boot {}, speed factor {:.1}{}",
            self.secs,
            self.boot
                .map(|b| format!("{b:.0}s"))
                .unwrap_or_else(|| "never reached the script".into()),
            self.factor,
            match (self.timed_out, self.status) {
                (true, _) => ", timed out".to_string(),
                (false, Some(st)) if !st.success() => format!(", vng {st}"),
                _ => String::new(),
            }
        )
    }
}

/// Run a VM (`vng`, in a process group of its own) until it exits or its
/// time is up. The time is measured, not fixed: the boot, from start to
/// the guest script's first line in `log`, shows how fast this machine
/// emulates, against `boot_here`, the boot on the machines the budgets
/// were measured on. The guest then gets three times `budget` seconds,
/// times that factor (never less than 1): a slower machine takes longer
/// and no test fails for it. A boot that takes ten times `boot_here` has
/// hung.
pub fn run_vm(cmd: &mut Command, log: &Path, boot_here: Duration, budget: u64) -> Result<VmRun> {
    use std::os::unix::process::CommandExt;
    let t = Instant::now();
    // Niced: the host's own tests may run beside a VM, and their timing
    // matters more than the guest's, whose limits scale.
    let mut child = unsafe {
        cmd.stdin(std::process::Stdio::null())
            .process_group(0)
            .pre_exec(|| {
                libc::nice(10);
                Ok(())
            })
    }
    .spawn()
    .with_context(|| format!("running {cmd:?}"))?;
    let mut run = VmRun {
        secs: 0.0,
        boot: None,
        factor: 1.0,
        timed_out: false,
        status: None,
    };
    let mut deadline = boot_here * 10;
    loop {
        if let Some(st) = child.try_wait()? {
            run.status = Some(st);
            break;
        }
        if run.boot.is_none() && std::fs::metadata(log).is_ok_and(|m| m.len() > 0) {
            let boot = t.elapsed();
            run.boot = Some(boot.as_secs_f64());
            run.factor = (boot.as_secs_f64() / boot_here.as_secs_f64()).max(1.0);
            deadline = boot + Duration::from_secs_f64(3.0 * budget as f64 * run.factor);
            eprintln!(
                "xtask: guest up after {:.0}s (speed factor {:.1}): allowed {:.0}s more",
                boot.as_secs_f64(),
                run.factor,
                (deadline - boot).as_secs_f64()
            );
        }
        if t.elapsed() > deadline {
            run.timed_out = true;
            // The whole group: vng, QEMU and what they started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            run.status = child.wait().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    run.secs = t.elapsed().as_secs_f64();
    Ok(run)
}

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
pub fn vng() -> Result<PathBuf> {
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
