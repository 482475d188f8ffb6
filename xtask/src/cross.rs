//! The agent for other architectures: arm64 routers.
//!
//! rustup cannot add targets on these machines, so a foreign target is
//! built with the nightly toolchain's rust-src (`-Z build-std`, as the
//! kernel programs are) and linked by Debian's cross gcc. Its unit tests
//! run under qemu-user (`qemu-aarch64`, with the cross libc as its
//! sysroot). Where the stable toolchain has the target's standard library
//! (installed by rustup elsewhere), stable builds it as it builds the
//! host's.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{apt_install, root_dir, status};

/// The arm64 target: `cargo xtask deb --target` and the cross tier.
pub const ARM64: &str = "aarch64-unknown-linux-gnu";

/// What building and running one foreign target needs.
pub struct Cross {
    pub target: &'static str,
    /// The cross gcc, used as the linker.
    gcc: &'static str,
    /// Debian packages: the cross gcc, its libc, qemu-user.
    packages: &'static [&'static str],
    /// qemu-user's binary for the target, and the sysroot it loads
    /// shared libraries from.
    qemu: &'static str,
    sysroot: &'static str,
}

const CROSSES: &[Cross] = &[Cross {
    target: ARM64,
    gcc: "aarch64-linux-gnu-gcc",
    packages: &[
        "gcc-aarch64-linux-gnu",
        "libc6-dev-arm64-cross",
        "qemu-user",
    ],
    qemu: "qemu-aarch64",
    sysroot: "/usr/aarch64-linux-gnu",
}];

impl Cross {
    /// The cross set-up for `target`, its packages installed.
    pub fn of(target: &str) -> Result<&'static Cross> {
        let c = CROSSES
            .iter()
            .find(|c| c.target == target)
            .with_context(|| format!("no cross toolchain known for {target}"))?;
        apt_install(c.packages)?;
        Ok(c)
    }

    /// `CARGO_TARGET_<TRIPLE>_<KEY>`.
    fn env_key(&self, key: &str) -> String {
        format!(
            "CARGO_TARGET_{}_{key}",
            self.target.to_uppercase().replace('-', "_")
        )
    }

    /// Whether the stable toolchain has the target's standard library.
    fn stable_has_target(&self) -> bool {
        Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .map(|o| {
                PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                    .join("lib/rustlib")
                    .join(self.target)
                    .join("lib")
                    .exists()
            })
            .unwrap_or(false)
    }

    /// `cargo SUBCOMMAND` for the target, in the workspace: the linker and
    /// the qemu-user runner set, and (without the target in the stable
    /// toolchain) nightly with `-Z build-std`. Its artifacts go to
    /// target/TRIPLE as cargo's `--target` puts them.
    pub fn cargo(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root_dir());
        let nightly = !self.stable_has_target();
        if nightly {
            cmd.arg("+nightly");
            cmd.env_remove("RUSTUP_TOOLCHAIN");
        }
        cmd.args([subcommand, "--target", self.target]);
        if nightly {
            cmd.args(["-Z", "build-std=std,panic_abort"]);
        }
        cmd.env(self.env_key("LINKER"), self.gcc).env(
            self.env_key("RUNNER"),
            format!("{} -L {}", self.qemu, self.sysroot),
        );
        cmd
    }

    /// The packages whose unit tests run under qemu-user.
    const UNIT_PACKAGES: [&'static str; 6] =
        ["-p", "pd-common", "-p", "pd-agent", "-p", "pd-tests"];

    /// Build (not run) the unit tests and the root tests for the target.
    pub fn build_tests(&self, obj: &std::path::Path) -> Result<()> {
        status(
            self.cargo("test")
                .args(Self::UNIT_PACKAGES)
                .arg("--no-run")
                .env("PD_EBPF_OBJ", obj),
        )
    }

    /// The unit tests (no root) of the agent, its shared types and the
    /// reference parser's corpus, built for the target and run under
    /// qemu-user.
    pub fn unit_tests(&self, obj: &std::path::Path) -> Result<String> {
        let t = std::time::Instant::now();
        let out = self
            .cargo("test")
            .args(Self::UNIT_PACKAGES)
            .env("PD_EBPF_OBJ", obj)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cargo test --target {}", self.target))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            anyhow::bail!("unit tests for {} under {} failed", self.target, self.qemu);
        }
        eprintln!(
            "xtask: unit tests for {} under {} in {:.0}s",
            self.target,
            self.qemu,
            t.elapsed().as_secs_f64()
        );
        Ok(text)
    }

    /// The release build of the agent for the target.
    pub fn build_release(&self, obj: &std::path::Path) -> Result<PathBuf> {
        status(
            self.cargo("build")
                .args(["--release", "-p", "pd-agent"])
                .env("PD_EBPF_OBJ", obj),
        )?;
        Ok(root_dir()
            .join("target")
            .join(self.target)
            .join("release/pd-agent"))
    }
}
