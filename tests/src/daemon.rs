//! Processes the tests start and stop: [`Daemon`] (stopped on drop) and
//! [`Daemon::spawn`], the one way every daemon starts, with its output in
//! a log file; polling with [`wait_for`]; scratch directories ([`TempDir`]).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::unique;

/// A process stopped on drop (SIGTERM, then SIGKILL).
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Daemon {
    /// Start `cmd` as `name` with stdin closed and stdout and stderr both
    /// going to a new file `log`. Every daemon the tests start comes
    /// through here.
    pub fn spawn(cmd: &mut Command, name: &str, log: &Path) -> Result<Daemon> {
        let f = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Daemon {
            child: Some(child),
            log: log.into(),
            name: name.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fail if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("{} exited ({st}); log:\n{}", self.name, self.log_text());
            }
        }
        Ok(())
    }

    pub fn kill(&mut self, sig: i32) {
        if let Some(c) = self.child.as_ref() {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_for_every(timeout, Duration::from_millis(100), f)
}

/// Poll `f` every `interval` until it returns `Some` or `timeout` passes.
pub fn wait_for_every<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > timeout {
            return None;
        }
        thread::sleep(interval);
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
