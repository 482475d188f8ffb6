//! The service manager's notification protocol (sd_notify(3)): readiness,
//! status, the watchdog and stopping, each one datagram of `KEY=VALUE`
//! lines sent to the socket named by `$NOTIFY_SOCKET`.
//!
//! Written by hand (about as long as the glue a crate would need) rather
//! than with the `sd-notify` crate: its 0.5 connects to `$NOTIFY_SOCKET`
//! as a file path, so a Linux abstract socket (`@name`, which sd_notify(3)
//! allows) is never reached, and it takes `WATCHDOG_USEC=0` for a zero
//! interval where libsystemd says "no watchdog".
//!
//! Without `$NOTIFY_SOCKET` (not started as a `Type=notify` service)
//! nothing is sent; without `$WATCHDOG_USEC` for this process no watchdog
//! timer runs.

use std::{
    ffi::OsStr,
    os::unix::{
        ffi::OsStrExt,
        net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

use tracing::{debug, warn};

/// The variables of the protocol. Hooks do not inherit them: a hook that
/// speaks sd_notify itself must not talk for pd-agent.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Where notifications go, and the watchdog's interval; inert when the
/// service manager asked for neither.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    /// The last STATUS= sent, and the bindings count it showed.
    status: String,
    bindings: Option<usize>,
    /// A send failed already (later failures are logged at debug only).
    failed: bool,
}

impl Notifier {
    /// From the process environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let sock = socket_addr(&s)
                .and_then(|addr| {
                    let sock = UnixDatagram::unbound()?;
                    // A full queue at the manager drops a message instead
                    // of holding up the event loop.
                    sock.set_nonblocking(true)?;
                    Ok((sock, addr))
                })
                .map_err(|e| warn!(socket = ?s, error = %e, "NOTIFY_SOCKET is unusable; not notifying the service manager"))
                .ok()?;
            Some(sock)
        });
        let watchdog = target.as_ref().and(watchdog_timeout(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        ));
        Notifier {
            target,
            watchdog,
            status: String::new(),
            bindings: None,
            failed: false,
        }
    }

    /// How often to send WATCHDOG=1: half the manager's timeout, as
    /// sd_watchdog_enabled(3) recommends. `None`: no watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|t| t / 2)
    }

    /// A free-form STATUS= line, sent only when it changed.
    pub fn status(&mut self, status: &str) {
        if self.target.is_none() || self.status == status {
            return;
        }
        status.clone_into(&mut self.status);
        self.send(&format!("STATUS={status}\n"));
    }

    /// STATUS= with the number of bindings, sent only when it changed.
    pub fn bindings(&mut self, n: usize) {
        if self.target.is_none() || self.bindings == Some(n) {
            return;
        }
        self.bindings = Some(n);
        self.status(&format!("running: {n} bindings"));
    }

    /// READY=1: the programs are attached and the routes reconciled.
    pub fn ready(&mut self, bindings: usize) {
        if self.target.is_none() {
            return;
        }
        self.bindings = Some(bindings);
        self.status = format!("running: {bindings} bindings");
        self.send(&format!("READY=1\nSTATUS={}\n", self.status));
    }

    /// WATCHDOG=1: the event loop is turning.
    pub fn watchdog(&mut self) {
        self.send("WATCHDOG=1\n");
    }

    /// STOPPING=1, with what stopping does.
    pub fn stopping(&mut self, flush: bool) {
        if self.target.is_none() {
            return;
        }
        let what = if flush {
            "stopping: removing bindings, routes and programs (--flush-on-exit)"
        } else {
            "stopping: routes, state and programs are kept"
        };
        self.send(&format!("STOPPING=1\nSTATUS={what}\n"));
    }

    fn send(&mut self, msg: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            let first = msg.lines().next().unwrap_or_default();
            if self.failed {
                debug!(message = first, error = %e, "notifying the service manager failed");
            } else {
                self.failed = true;
                warn!(message = first, error = %e, "notifying the service manager failed (further failures are logged at debug level)");
            }
        }
    }
}

/// The socket `$NOTIFY_SOCKET` names: a path (`/...`) or, with a leading
/// `@`, a name in Linux's abstract namespace (sd_notify(3)). Other forms
/// (`vsock:`) are refused.
pub fn socket_addr(s: &OsStr) -> std::io::Result<SocketAddr> {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(s),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor @abstract",
        )),
    }
}

/// The watchdog timeout the manager set for process `own_pid`, as
/// sd_watchdog_enabled(3) reads it: `WATCHDOG_USEC` a number of
/// microseconds, neither 0 nor infinity (`u64::MAX`); `WATCHDOG_PID`,
/// when present, must name this process (otherwise the variables were
/// inherited from a parent and are not ours).
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 || usec == u64::MAX {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_variables() {
        let t = |u, p| watchdog_timeout(u, p, 4242);
        assert_eq!(t(Some("30000000"), None), Some(Duration::from_secs(30)));
        assert_eq!(
            t(Some("2000000"), Some("4242")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(t(Some("1500"), None), Some(Duration::from_micros(1500)));
        // Not ours: set for another process (we inherited it).
        assert_eq!(t(Some("2000000"), Some("1")), None);
        // Malformed or disabled.
        assert_eq!(t(None, None), None);
        assert_eq!(t(None, Some("4242")), None);
        assert_eq!(t(Some(""), None), None);
        assert_eq!(t(Some("0"), None), None);
        assert_eq!(t(Some("18446744073709551615"), None), None);
        assert_eq!(t(Some("-5"), None), None);
        assert_eq!(t(Some("2s"), None), None);
        assert_eq!(t(Some("2000000"), Some("")), None);
        assert_eq!(t(Some("2000000"), Some("abc")), None);
        assert_eq!(t(Some("2000000"), Some("-4242")), None);
    }

    #[test]
    fn socket_forms() {
        let a = socket_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        use std::os::linux::net::SocketAddrExt;
        let a = socket_addr(OsStr::new("@sd-notify/123")).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"sd-notify/123"[..]));
        assert!(socket_addr(OsStr::new("vsock:2:1234")).is_err());
        assert!(socket_addr(OsStr::new("relative/path")).is_err());
        assert!(socket_addr(OsStr::new("")).is_err());
    }

    /// The datagrams as a manager receives them, on a socket of the test's own.
    #[test]
    fn messages_on_the_wire() {
        let dir = std::env::temp_dir().join(format!("pd-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                socket_addr(path.as_os_str()).unwrap(),
            )),
            watchdog: None,
            status: String::new(),
            bindings: None,
            failed: false,
        };
        let recv = || {
            let mut buf = [0u8; 512];
            let len = rx.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        };
        n.ready(3);
        assert_eq!(recv(), "READY=1\nSTATUS=running: 3 bindings\n");
        n.bindings(3); // unchanged: nothing sent
        n.watchdog();
        assert_eq!(recv(), "WATCHDOG=1\n");
        n.bindings(4);
        assert_eq!(recv(), "STATUS=running: 4 bindings\n");
        n.stopping(false);
        assert_eq!(
            recv(),
            "STOPPING=1\nSTATUS=stopping: routes, state and programs are kept\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
