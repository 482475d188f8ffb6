//! `cargo xtask deb`: the Debian package, built with dpkg-deb from a
//! staged tree (no packaging tools beyond dpkg-dev), then checked with
//! lintian, which must report no error. Writes
//! `target/deb/pd-agent_VERSION_ARCH.deb` and returns its path.
//!
//! The architecture follows the Rust target (`--target`): each entry of
//! [`ARCHES`] names its Debian architecture and the strip that reads its
//! binaries, so an arm64 package is one more row plus a cross toolchain.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{root_dir, status};

/// Rust target triple, Debian architecture, strip for its binaries.
const ARCHES: &[(&str, &str, &str)] = &[
    ("x86_64-unknown-linux-gnu", "amd64", "strip"),
    (
        "aarch64-unknown-linux-gnu",
        "arm64",
        "aarch64-linux-gnu-strip",
    ),
];

/// The target the packages are built for by default (the host's).
pub const DEFAULT_TARGET: &str = "x86_64-unknown-linux-gnu";

const NAME: &str = "pd-agent";
/// Debian revision of the package built from this tree.
const REVISION: &str = "1";
/// The project's own identity, as in its commits.
const MAINTAINER: &str = "pd-agent maintainers <maintainers@users.noreply.r-seed-2a0d15a4.example>";

/// The conffiles: dpkg keeps the operator's edits across upgrades and
/// removes them only on purge.
const CONFFILES: &[&str] = &[
    "/etc/pd-agent/pd-agent.toml",
    "/etc/iproute2/rt_protos.d/pd-agent.conf",
];

/// Where the unit goes: Debian 12's debhelper still installs units under
/// /lib (merged /usr makes it /usr/lib/systemd/system on disk).
const UNIT_DIR: &str = "lib/systemd/system";

/// Build the package for `target` and run lintian on it.
pub fn build(target: &str) -> Result<PathBuf> {
    let &(_, arch, strip) = ARCHES
        .iter()
        .find(|(t, _, _)| *t == target)
        .with_context(|| {
            format!(
                "no Debian architecture known for {target} (known: {})",
                ARCHES.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")
            )
        })?;
    let t = std::time::Instant::now();
    let bin = build_release(target)?;
    let version = format!("{}-{REVISION}", env!("CARGO_PKG_VERSION"));
    let out = root_dir().join("target/deb");
    // The tree is staged as debhelper stages it (debian/PACKAGE), where
    // dpkg-shlibdeps expects the binaries it reads.
    let work = out.join(format!("build-{arch}"));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    let stage = work.join("debian").join(NAME);
    fs::create_dir_all(&stage)?;
    let commit = Commit::head()?;

    // The binary, stripped as dh_strip strips.
    let sbin = stage.join("usr/sbin/pd-agent");
    install(&bin, &sbin, 0o755)?;
    status(
        Command::new(strip)
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg(&sbin),
    )
    .with_context(|| format!("{strip} (binutils for {arch})"))?;

    let src = root_dir();
    install_text(
        &stage.join(UNIT_DIR).join("pd-agent.service"),
        &unit(&fs::read_to_string(
            src.join("packaging/systemd/pd-agent.service"),
        )?)?,
        0o644,
    )?;
    install(
        &src.join("packaging/config/pd-agent.toml"),
        &stage.join("etc/pd-agent/pd-agent.toml"),
        0o644,
    )?;
    install(
        &src.join("packaging/rt_protos.d/pd-agent.conf"),
        &stage.join("etc/iproute2/rt_protos.d/pd-agent.conf"),
        0o644,
    )?;

    let doc = stage.join("usr/share/doc/pd-agent");
    install_text(&doc.join("copyright"), &copyright(&commit), 0o644)?;
    install_gz(
        &doc.join("changelog.Debian.gz"),
        changelog(&version, &commit).as_bytes(),
    )?;
    install_gz(&doc.join("README.md.gz"), &fs::read(src.join("README.md"))?)?;
    install_gz(
        &stage.join("usr/share/man/man8/pd-agent.8.gz"),
        &fs::read(src.join("packaging/man/pd-agent.8"))?,
    )?;
    // Examples: the other sample configs and the hooks (bad-*.toml are
    // the tests' error cases).
    let ex = doc.join("examples");
    for name in ["minimal.toml", "relay.toml"] {
        install(
            &src.join("packaging/config").join(name),
            &ex.join(name),
            0o644,
        )?;
    }
    install(
        &src.join("packaging/bird/pd-agent-bgp.conf"),
        &ex.join("bird/pd-agent-bgp.conf"),
        0o644,
    )?;
    let mut hooks: Vec<PathBuf> = fs::read_dir(src.join("hooks"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    hooks.sort();
    for h in hooks {
        install(&h, &ex.join("hooks").join(h.file_name().unwrap()), 0o755)?;
    }

    // Control files.
    let debian = stage.join("DEBIAN");
    install_text(
        &debian.join("conffiles"),
        &(CONFFILES.join("\n") + "\n"),
        0o644,
    )?;
    install_text(&debian.join("postinst"), POSTINST, 0o755)?;
    install_text(&debian.join("prerm"), PRERM, 0o755)?;
    install_text(&debian.join("postrm"), POSTRM, 0o755)?;
    install_text(&debian.join("md5sums"), &md5sums(&stage)?, 0o644)?;
    let depends = depends(&work, &sbin)?;
    install_text(
        &debian.join("control"),
        &control(&version, arch, &depends, installed_size(&stage)?),
        0o644,
    )?;

    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb)
            // Clamps the archive's mtimes: the same tree, the same bytes.
            .env("SOURCE_DATE_EPOCH", commit.epoch.to_string()),
    )?;
    lintian(&deb)?;
    eprintln!(
        "xtask: {} (Depends: {depends}) in {:.0}s",
        deb.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(deb)
}

/// The release build of the agent for `target` (the kernel object built
/// first). The host's target builds into target/release, shared with the
/// benchmarks' build; another is cross-built ([`crate::cross`]).
pub(crate) fn build_release(target: &str) -> Result<PathBuf> {
    let obj = crate::build_ebpf()?;
    if target != host_target()? {
        return crate::cross::Cross::of(target)?.build_release(&obj);
    }
    status(
        Command::new("cargo")
            .current_dir(root_dir())
            .args(["build", "--release", "-p", "pd-agent"])
            .env("PD_EBPF_OBJ", &obj),
    )?;
    Ok(root_dir().join("target/release/pd-agent"))
}

pub(crate) fn host_target() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(String::from))
        .context("no host line in rustc -vV")
}

/// The unit as packaged: the binary in /usr/sbin, the README where the
/// package puts it. Fails if the unit no longer reads as expected.
fn unit(text: &str) -> Result<String> {
    let mut out = text.to_string();
    for (from, to) in [
        (
            "ExecStart=/usr/local/bin/pd-agent ",
            "ExecStart=/usr/sbin/pd-agent ",
        ),
        (
            "Documentation=file:///usr/local/share/doc/pd-agent/README.md",
            "Documentation=man:pd-agent(8) file:///usr/share/doc/pd-agent/README.md.gz",
        ),
    ] {
        if !out.contains(from) {
            bail!("packaging/systemd/pd-agent.service has no {from:?}");
        }
        out = out.replace(from, to);
    }
    Ok(out)
}

/// The commit the package is built from: its hash and time (the
/// changelog's date and the archive's mtimes).
struct Commit {
    hash: String,
    epoch: u64,
    date: String,
    year: String,
}

impl Commit {
    fn head() -> Result<Commit> {
        let out = Command::new("git")
            .current_dir(root_dir())
            .args([
                "log",
                "-1",
                "--format=%h%n%ct%n%cD%n%cd",
                "--date=format:%Y",
            ])
            .output()
            .context("git log")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let l: Vec<&str> = text.lines().collect();
        if l.len() != 4 {
            bail!("git log -1: {text:?}");
        }
        Ok(Commit {
            hash: l[0].into(),
            epoch: l[1].parse()?,
            date: l[2].into(),
            year: l[3].into(),
        })
    }
}

fn changelog(version: &str, c: &Commit) -> String {
    format!(
        "{NAME} ({version}) unstable; urgency=medium\n\
         \n  * Built by cargo xtask deb from commit {}.\n\
         \n -- {MAINTAINER}  {}\n",
        c.hash, c.date
    )
}

/// debian/copyright in the machine-readable format (DEP-5); the licence is
/// the workspace's (`MIT OR Apache-2.0`).
fn copyright(c: &Commit) -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: pd-agent\n\
         \n\
         Files: *\n\
         Copyright: {year} pd-agent developers\n\
         License: Expat or Apache-2.0\n\
         \n\
         License: Expat\n{EXPAT}\n\
         License: Apache-2.0\n\
         \x20Licensed under the Apache License, Version 2.0 (the \"License\");\n\
         \x20you may not use this file except in compliance with the License.\n\
         \x20You may obtain a copy of the License at\n\
         \x20.\n\
         \x20    http://www.apache.org/licenses/LICENSE-2.0\n\
         \x20.\n\
         \x20Unless required by applicable law or agreed to in writing, software\n\
         \x20distributed under the License is distributed on an \"AS IS\" BASIS,\n\
         \x20WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.\n\
         \x20See the License for the specific language governing permissions and\n\
         \x20limitations under the License.\n\
         \x20.\n\
         \x20On Debian systems, the complete text of the Apache License, Version 2.0\n\
         \x20can be found in \"/usr/share/common-licenses/Apache-2.0\".\n",
        year = c.year
    )
}

const EXPAT: &str = " Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the \"Software\"),
 to deal in the Software without restriction, including without limitation
 the rights to use, copy, modify, merge, publish, distribute, sublicense,
 and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included
 in all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS
 OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
 IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
 CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
 TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
 SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.";

fn control(version: &str, arch: &str, depends: &str, size_kib: u64) -> String {
    format!(
        "Package: {NAME}
Version: {version}
Architecture: {arch}
Maintainer: {MAINTAINER}
Installed-Size: {size_kib}
Depends: {depends}
Suggests: iproute2, nftables, python3, radvd
Section: net
Priority: optional
Description: routes for DHCPv6 prefix delegation, learnt from the wire
 pd-agent watches DHCPv6 prefix delegation on a router's links with eBPF
 programs (XDP and TC), installs a route to each delegated prefix via the
 client that received it, and removes it when the prefix is released or
 expires. It can relay DHCPv6 itself, forward delegated traffic in XDP and
 validate source addresses.
 .
 The service is installed neither enabled nor started: edit
 /etc/pd-agent/pd-agent.toml first, then run
 systemctl enable --now pd-agent.
"
    )
}

// Maintainer scripts: debhelper's snippets for a unit installed with
// `dh_installsystemd --no-enable --no-start` (Debian 12's debhelper 13).
// A router agent must be configured before it runs, so installing enables
// and starts nothing; on upgrade a running agent is restarted
// (try-restart), which keeps forwarding (the programs stay on their
// pinned links); an operator's enablement is kept across upgrades.

const POSTINST: &str = r#"#!/bin/sh
set -e

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if deb-systemd-helper debian-installed 'pd-agent.service'; then
		# This will only remove masks created by d-s-h on package removal.
		deb-systemd-helper unmask 'pd-agent.service' >/dev/null || true

		if deb-systemd-helper --quiet was-enabled 'pd-agent.service'; then
			# Create new symlinks, if any.
			deb-systemd-helper enable 'pd-agent.service' >/dev/null || true
		fi
	fi

	# Update the statefile to add new symlinks (if any), which need to be cleaned
	# up on purge. Also remove old symlinks.
	deb-systemd-helper update-state 'pd-agent.service' >/dev/null || true
fi

# Not started on a first install: pd-agent must be configured first.
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke try-restart 'pd-agent.service' >/dev/null || true
		fi
	fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e

if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop 'pd-agent.service' >/dev/null || true
fi
"#;

/// On remove the agent's state and pinned programs stay, as after any
/// stop (the configuration too); purge removes them: the store, and the
/// default pin directory, whose pinned links hold the programs on the
/// interfaces. Routes already installed stay until their interface goes
/// or the next reboot.
const POSTRM: &str = r#"#!/bin/sh
set -e

if [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	systemctl --system daemon-reload >/dev/null || true
fi

if [ "$1" = "remove" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper mask 'pd-agent.service' >/dev/null || true
	fi
fi

if [ "$1" = "purge" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper purge 'pd-agent.service' >/dev/null || true
		deb-systemd-helper unmask 'pd-agent.service' >/dev/null || true
	fi
	# The binding store, and the pinned maps and links (detaching the
	# programs) under the default pin directory.
	rm -rf /var/lib/pd-agent
	if [ -d /sys/fs/bpf/pd-agent ]; then
		rm -rf /sys/fs/bpf/pd-agent
	fi
fi
"#;

/// `Depends:` for the binary's shared libraries: dpkg-shlibdeps when it
/// can read them (the host's architecture, or a foreign one installed
/// through multiarch), else the versions the binary's symbol references
/// ask for, read with readelf.
fn depends(work: &Path, bin: &Path) -> Result<String> {
    // dpkg-shlibdeps reads the package's name from debian/control.
    fs::write(
        work.join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .current_dir(work)
        .arg("-O")
        .arg(format!(
            "-e{}",
            bin.strip_prefix(work).unwrap_or(bin).display()
        ))
        .output();
    if let Ok(out) = &out {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(d) = text.lines().find_map(|l| l.strip_prefix("shlibs:Depends=")) {
                return Ok(d.trim().to_string());
            }
        }
        eprintln!(
            "xtask: dpkg-shlibdeps failed ({}); reading the symbol versions with readelf",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    depends_from_versions(bin)
}

/// The fallback: each library the binary needs, mapped to its Debian
/// package, at least the newest symbol version it references (glibc's
/// `GLIBC_2.x`); libgcc_s unversioned. An unknown library is an error.
fn depends_from_versions(bin: &Path) -> Result<String> {
    let out = Command::new("readelf")
        .args(["--wide", "--dynamic", "--version-info"])
        .arg(bin)
        .output()
        .context("readelf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut glibc = (2u32, 0u32);
    let mut libgcc = false;
    for line in text.lines() {
        if let Some(lib) = line
            .split("Shared library: [")
            .nth(1)
            .and_then(|r| r.split(']').next())
        {
            match lib {
                "libc.so.6" | "libm.so.6" | "libdl.so.2" | "libpthread.so.0" | "librt.so.1"
                | "libutil.so.1" => {}
                l if l.starts_with("ld-linux") => {}
                "libgcc_s.so.1" => libgcc = true,
                l => bail!(
                    "{}: needs {l}, which no package is known for",
                    bin.display()
                ),
            }
        }
        if let Some(v) = line
            .split("Name: GLIBC_")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            let mut p = v.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
            let v = (p.next().unwrap_or(0), p.next().unwrap_or(0));
            glibc = glibc.max(v);
        }
    }
    let mut deps = vec![format!("libc6 (>= {}.{})", glibc.0, glibc.1)];
    if libgcc {
        deps.push("libgcc-s1".into());
    }
    Ok(deps.join(", "))
}

/// lintian on the package: its output printed; any error (E:) fails.
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--display-info"])
        .arg(deb)
        .output()
        .context("lintian (installed by cargo xtask deps)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = text.lines().filter(|l| l.starts_with("E: ")).count();
    let warnings = text.lines().filter(|l| l.starts_with("W: ")).count();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("xtask: lintian: {errors} errors, {warnings} warnings");
    if errors > 0 || !out.status.success() {
        bail!("lintian found errors in {} ({})", deb.display(), out.status);
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    mkdirs(to.parent().unwrap())?;
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn install_text(to: &Path, text: &str, mode: u32) -> Result<()> {
    mkdirs(to.parent().unwrap())?;
    fs::write(to, text)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// gzip -9n, as dh_compress does (no name, no time: reproducible).
fn install_gz(to: &Path, data: &[u8]) -> Result<()> {
    mkdirs(to.parent().unwrap())?;
    let mut child = Command::new("gzip")
        .args(["-9nc"])
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(to)?)
        .spawn()
        .context("gzip")?;
    child.stdin.take().unwrap().write_all(data)?;
    if !child.wait()?.success() {
        bail!("gzip failed for {}", to.display());
    }
    fs::set_permissions(to, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Directories 0755 whatever the umask.
fn mkdirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.file_name().is_none() || p.ends_with("debian") {
            break;
        }
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        d = p.parent();
    }
    Ok(())
}

/// Every regular file outside DEBIAN/, relative, with its MD5 (md5sum's
/// format, as dh_md5sums writes it).
fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    walk(stage, &mut files)?;
    files.retain(|f| !f.starts_with(stage.join("DEBIAN")));
    files.sort();
    let rel: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(stage).unwrap().display().to_string())
        .collect();
    let out = Command::new("md5sum")
        .current_dir(stage)
        .args(&rel)
        .output()
        .context("md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed");
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            walk(&e.path(), files)?;
        } else {
            files.push(e.path());
        }
    }
    Ok(())
}

/// Installed-Size in KiB, as dpkg-gencontrol counts it (`du -sk` of the tree).
fn installed_size(stage: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-sk", "--exclude=DEBIAN"])
        .arg(stage)
        .output()
        .context("du")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("du output")?
        .parse()
        .context("du output")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The readelf fallback on a binary of this host (this test's own):
    /// glibc at the newest version it references, as dpkg-shlibdeps
    /// would have it for that library.
    #[test]
    fn depends_from_symbol_versions() {
        let exe = std::env::current_exe().unwrap();
        let d = depends_from_versions(&exe).unwrap();
        assert!(d.starts_with("libc6 (>= 2."), "{d}");
        let v: u32 = d["libc6 (>= 2.".len()..]
            .split(')')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((17..100).contains(&v), "{d}");
    }

    #[test]
    fn unit_as_packaged() {
        let text =
            fs::read_to_string(root_dir().join("packaging/systemd/pd-agent.service")).unwrap();
        let u = unit(&text).unwrap();
        assert!(u.contains("\nExecStart=/usr/sbin/pd-agent run "), "{u}");
        assert!(
            !u.lines()
                .any(|l| !l.starts_with('#') && l.contains("/usr/local")),
            "{u}"
        );
        assert!(unit("[Service]\nExecStart=/opt/pd-agent run\n").is_err());
        // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, and the
        // unit has no CAP_SYS_RESOURCE to raise it: without this line the
        // packaged agent fails on 5.10 (found by the unit under systemd on
        // 5.10; the VM tier now runs that test on 6.1, and
        // vm_small_memlock_limit shows on 5.10 what a finite limit does).
        assert!(u.lines().any(|l| l == "LimitMEMLOCK=infinity"), "{u}");
    }
}
