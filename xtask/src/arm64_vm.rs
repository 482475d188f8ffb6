//! The arm64 VM tier: the cross-built agent and tests on Debian 12's
//! arm64 kernels (6.1 and 6.12), under qemu-system-aarch64 without KVM
//! (full emulation).
//!
//! qemu-user runs the unit tests but loads no BPF: only a kernel of the
//! target architecture verifies and JITs the programs. virtme-ng boots
//! each kernel over a root file system of the project's own, made from
//! Debian's arm64 packages by extraction alone (`dpkg-deb -x`: no arm64
//! code runs on the host, no maintainer script runs), fetched through a
//! private apt configuration (target/vm/arm64/apt): the host's sources and
//! architectures stay as they are. The repository is mounted read-only at
//! its own path, so the tests find their fixtures as on the host.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    apt_install,
    cross::Cross,
    root_dir, status,
    tally::{guest_runner, not_run},
    test_executables,
    vm::{run_vm, vng, Job, Outcome},
    Tally,
};

/// The guest's packages: the shell and tools virtme-ng's init and the
/// tests call, and the servers and client the traffic tests start.
const ROOT_PACKAGES: &[&str] = &[
    "base-passwd",
    "bash",
    "bpftool",
    "busybox-static",
    "conntrack",
    "coreutils",
    "dash",
    "findutils",
    "grep",
    "iproute2",
    "iputils-ping",
    "isc-dhcp-client",
    "kea-dhcp6-server",
    "kmod",
    "libc6",
    "libgcc-s1",
    "mount",
    "nftables",
    "procps",
    "python3",
    "sed",
    "udev",
    "util-linux",
];

const SOURCES: &str = "\
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
";

/// The kernels booted, by the metapackage that names the newest of each
/// series: Debian 12's own 6.1 (no tcx, no xdp-features: the kernel
/// forwards what the fast path would redirect) and the 6.12 Debian 12
/// also ships (both: redirects in XDP on arm64's JIT).
const KERNELS: &[&str] = &["linux-image-arm64", "linux-image-6.12-arm64"];

/// What runs in the guest, with libtest's arguments: the kernel tests
/// (load under every switch, the TestRun corpus and mutants through both
/// program sets: the arm64 JIT; the 64 loads of the debug-log test only
/// exercise the verifier, the same on every architecture, and would take
/// ten minutes emulated), the agent under a small memlock limit (attach,
/// reconcile), ring-buffer replay and the trust checks with a made-up
/// server, and real Kea and dhclient across the fast path's matrix of
/// links and firewalls, counted at the far end.
/// The arm64 layout of the kernel's records and the agent under a small
/// memlock limit are the same on both kernels (both past 5.11): these
/// run on the first of the [`KERNELS`] only; the JIT and the fast path's
/// redirects differ, and run on both.
const FIRST_ONLY: &[&str] = &["vm", "durability"];

const GUEST_TESTS: &[(&str, &[&str])] = &[
    ("kernel", &["--skip", "kernel_debug_log_names_each_reject"]),
    ("vm", &["--exact", "vm_small_memlock_limit"]),
    (
        "durability",
        &[
            "--exact",
            "lost_ring_events_are_replayed_from_client_records",
            "forged_replies_from_a_client_link_install_nothing",
        ],
    ),
    ("datapath", &["--exact", "fast_path_matrix"]),
];

/// apt-get or apt-cache through the private configuration.
fn apt(dir: &Path, tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env("APT_CONFIG", dir.join("apt.conf"));
    c
}

/// The root file system under target/vm/arm64/root, built unless the one
/// there was built from the same packages; returns it and the versions
/// of the [`KERNELS`] in it.
fn root_fs() -> Result<(PathBuf, Vec<String>)> {
    let base = root_dir().join("target/vm/arm64");
    let apt_dir = base.join("apt");
    let root = base.join("root");
    for d in ["state/lists/partial", "cache/archives/partial", "empty"] {
        std::fs::create_dir_all(apt_dir.join(d))?;
    }
    std::fs::write(apt_dir.join("state/status"), "")?;
    std::fs::write(apt_dir.join("sources.list"), SOURCES)?;
    let a = apt_dir.display();
    std::fs::write(
        apt_dir.join("apt.conf"),
        format!(
            "APT::Architecture \"arm64\";\n\
             APT::Architectures {{ \"arm64\"; }};\n\
             Dir::State \"{a}/state\";\n\
             Dir::State::status \"{a}/state/status\";\n\
             Dir::Cache \"{a}/cache\";\n\
             Dir::Etc::SourceList \"{a}/sources.list\";\n\
             Dir::Etc::SourceParts \"{a}/empty\";\n\
             Dir::Etc::PreferencesParts \"{a}/empty\";\n"
        ),
    )?;
    status(apt(&apt_dir, "apt-get").args(["update", "-q"]))?;
    // The kernel each metapackage names today (the ABI number moves with
    // security updates).
    let kernel_pkgs: Vec<String> = KERNELS
        .iter()
        .map(|meta| {
            let out = apt(&apt_dir, "apt-cache")
                .args(["depends", meta])
                .output()
                .with_context(|| format!("apt-cache depends {meta}"))?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("Depends: ")
                        .filter(|p| p.starts_with("linux-image-"))
                        .map(String::from)
                })
                .with_context(|| format!("{meta} names no kernel"))
        })
        .collect::<Result<_>>()?;
    let kvers: Vec<String> = kernel_pkgs
        .iter()
        .map(|p| p.trim_start_matches("linux-image-").to_string())
        .collect();
    let stamp = format!("{} {}\n", kernel_pkgs.join(" "), ROOT_PACKAGES.join(" "));
    let stamp_file = base.join("root.stamp");
    if kvers
        .iter()
        .all(|v| root.join(format!("boot/vmlinuz-{v}")).exists())
        && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)
    {
        return Ok((root, kvers));
    }
    eprintln!(
        "xtask: building the arm64 guest's root file system ({})",
        kernel_pkgs.join(", ")
    );
    let archives = apt_dir.join("cache/archives");
    // Only this build's packages: every .deb there is unpacked, and an
    // older version left from a build before would be unpacked too.
    for e in std::fs::read_dir(&archives)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            std::fs::remove_file(e.path())?;
        }
    }
    status(
        apt(&apt_dir, "apt-get")
            .args(["install", "-y", "-q", "-d", "--no-install-recommends"])
            .args(ROOT_PACKAGES),
    )?;
    status(
        apt(&apt_dir, "apt-get")
            .current_dir(&archives)
            .args(["download", "-q"])
            .args(&kernel_pkgs),
    )?;
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&archives)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    for deb in &debs {
        status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    // What the maintainer scripts would have done, as far as the guest
    // needs it.
    for (master, file) in [("passwd", "passwd"), ("group", "group")] {
        std::fs::copy(
            root.join(format!("usr/share/base-passwd/{master}.master")),
            root.join("etc").join(file),
        )?;
    }
    std::fs::write(root.join("etc/fstab"), "")?;
    // iproute2 keeps named namespaces in /var/run/netns, the tests in
    // /run/netns: one directory, as on any Debian system.
    let var_run = root.join("var/run");
    if var_run.is_dir() && !var_run.is_symlink() {
        std::fs::remove_dir_all(&var_run)?;
    }
    std::os::unix::fs::symlink("/run", &var_run)?;
    let _ = std::fs::remove_file(root.join("bin/poweroff"));
    std::os::unix::fs::symlink("busybox", root.join("bin/poweroff"))?;
    for v in &kvers {
        status(Command::new("depmod").arg("-b").arg(&root).arg(v))?;
    }
    std::fs::write(&stamp_file, stamp)?;
    Ok((root, kvers))
}

/// Boot each of Debian's arm64 [`KERNELS`] and run [`GUEST_TESTS`] there.
/// The VMs are returned to be booted with [`run_jobs`], beside others.
pub fn jobs(tally: &mut Tally, cross: &Cross, obj: &Path) -> Result<Vec<Job>> {
    apt_install(&["qemu-system-arm"])?;
    let vng = vng()?;
    let (root, kvers) = tally.step("arm64 root file system", root_fs)?;
    let targets: Vec<&str> = GUEST_TESTS.iter().map(|(t, _)| *t).collect();
    let exes = test_executables(cross.cargo("test"), &targets, obj)?;
    // The release build the .deb packs (built by then: no second build).
    let agent = cross.build_release(obj)?;
    // Mount points in the (read-only) root: the repository at its own
    // path, and the directory the guest writes its log to.
    let repo = root_dir();
    std::fs::create_dir_all(root.join(repo.strip_prefix("/")?))?;
    std::fs::create_dir_all(root.join("out"))?;
    // No RUST_BACKTRACE: symbolizing a failing test's backtrace from the
    // debug binary takes many minutes emulated; the errors carry their
    // context. PD_TEST_EMULATED: fewer TestRun repetitions.
    let script = |first: bool| {
        let mut runs = String::new();
        for (exe, (target, args)) in exes.iter().zip(GUEST_TESTS) {
            if first || !FIRST_ONLY.contains(target) {
                runs.push_str(&format!(
                    "run {target}.rs {} {}\n",
                    exe.display(),
                    args.join(" ")
                ));
            }
        }
        format!(
            "#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /run/netns /run/pd-tmp
export TMPDIR=/run/pd-tmp PD_AGENT_BIN={agent} PD_TEST_EMULATED=16
uname -rm > /out/log
{runner}rc=0
{runs}echo $rc > /out/rc
",
            agent = agent.display(),
            runner = guest_runner("/out/log"),
        )
    };
    let mut jobs = Vec::new();
    for (i, kver) in kvers.into_iter().enumerate() {
        let first = i == 0;
        // "6.1.0-57-arm64" and "6.12.118+deb12-arm64": "arm64 vm 6.1", "arm64 vm 6.12".
        let series: Vec<&str> = kver.split(['.', '-', '+']).take(2).collect();
        let name = format!("arm64 vm {}", series.join("."));
        let out = root_dir()
            .join("target/vm/arm64")
            .join(name.replace(' ', "-"));
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("run.sh"), script(first))?;
        status(Command::new("chmod").arg("+x").arg(out.join("run.sh")))?;
        let (vng, root, repo) = (vng.clone(), root.clone(), repo.clone());
        jobs.push(Job {
            name: name.clone(),
            run: Box::new(move || boot(&name, &vng, &root, &kver, &repo, &out, first)),
        });
    }
    Ok(jobs)
}

/// One VM on `kver`, running out/run.sh (`out` is its /out).
fn boot(
    name: &str,
    vng: &Path,
    root: &Path,
    kver: &str,
    repo: &Path,
    out: &Path,
    first: bool,
) -> Result<Outcome> {
    for f in ["log", "rc"] {
        let _ = std::fs::remove_file(out.join(f));
    }
    eprintln!("xtask: {name}: {kver} (emulated: slow)");
    let mut vng = Command::new(vng);
    vng.arg("-r")
        .arg(root.join(format!("boot/vmlinuz-{kver}")))
        .args(["--arch", "arm64", "--root"])
        .arg(root)
        .args(["--disable-kvm", "--memory", "2G", "--cpus", "2"])
        .args(["--overlay-rwdir", "/etc", "--overlay-rwdir", "/var/lib"])
        .arg("--rodir")
        .arg(format!("{}={}", repo.display(), repo.display()))
        .arg("--rwdir")
        .arg(format!("/out={}", out.display()))
        .args(["--exec", "/out/run.sh"])
        .current_dir(out)
        // The guest's console goes to a file, as in the amd64 tier.
        .stdout(std::fs::File::create(out.join("console.log"))?)
        .stderr(std::fs::File::create(out.join("console.err"))?);
    let run = run_vm(&mut vng, &out.join("log"), BOOT, BUDGET)?;
    let text = std::fs::read_to_string(out.join("log")).unwrap_or_default();
    let missing = missing_results(&text, first);
    Ok(Outcome::judge(
        text,
        run,
        &out.join("rc"),
        missing,
        &[&out.join("log"), &out.join("console.log")],
    ))
}

/// How long an arm64 guest takes here to reach its script: the unit of
/// the machine's measured speed ([`run_vm`]).
const BOOT: std::time::Duration = std::time::Duration::from_secs(31);
/// What [`GUEST_TESTS`] took here (seconds, boot excluded): 450 to 540
/// on either kernel. One test sometimes stalls for minutes in the arm64
/// guest (the corpus took 357 s in one run, 8 s in another), hence the
/// upper end.
const BUDGET: u64 = 550;

/// What in [`GUEST_TESTS`] the guest's log does not show as run (whether
/// it passed the exit status says): each test named after `--exact`, and
/// each target whose filters matched no test (the runner's `xtask-none`
/// line: a filter that matches nothing would pass with 0 tests).
fn missing_results(log: &str, first: bool) -> Vec<String> {
    not_run(
        log,
        GUEST_TESTS
            .iter()
            .filter(|(target, _)| first || !FIRST_ONLY.contains(target))
            .map(|(_, args)| *args),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest log as the runner writes it (`--nocapture`: a test's
    /// output sits between its name and its verdict).
    fn log(kernel_runs: &str) -> String {
        let mut l = format!("6.12.117+deb12-arm64 aarch64\n{kernel_runs}");
        for (target, args) in &GUEST_TESTS[1..] {
            for name in args.iter().skip(1) {
                l.push_str(&format!(
                    "test {name} ... some output\nok\n\
                     test result: ok. 1 passed; 0 failed\nxtask-time {target}.rs {name} 1000\n"
                ));
            }
        }
        l
    }

    #[test]
    fn a_run_that_matched_no_test_is_caught() {
        let ran = "test corpus ... ok\ntest result: ok. 1 passed; 0 failed\n";
        assert_eq!(missing_results(&log(ran), true), Vec::<String>::new());
        let none = "xtask-none kernel.rs\n";
        assert_eq!(
            missing_results(&log(none), true),
            ["kernel.rs (no test matched)"]
        );
        let renamed = log(ran).replace("test fast_path_matrix ... ", "");
        assert_eq!(missing_results(&renamed, true), ["fast_path_matrix"]);
        let second = log(ran).replace("test vm_small_memlock_limit ... ", "");
        assert_eq!(missing_results(&second, false), Vec::<String>::new());
        assert_eq!(missing_results(&second, true), ["vm_small_memlock_limit"]);
    }
}
