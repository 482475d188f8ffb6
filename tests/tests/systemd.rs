//! systemd's notification protocol (sd_notify(3)) as pd-agent speaks it
//! under a `Type=notify` unit with `WatchdogSec=`: READY=1 once the
//! programs are attached and the routes reconciled, WATCHDOG=1 from the
//! event loop at half the timeout, STOPPING=1 on SIGTERM.
//!
//! No systemd can run here (nothing on these machines or in the VM tier's
//! guest is PID 1 systemd), so these tests play the service manager: each
//! binds a datagram socket of its own, starts the agent in a namespace with
//! `NOTIFY_SOCKET` (and `WATCHDOG_USEC`, `WATCHDOG_PID`) set as systemd
//! would set them, and reads what arrives. The protocol is checked; the
//! restart a real systemd would make is not.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use pd_tests::*;

/// One datagram as the manager received it, and what was in place when it
/// arrived (probed only for READY=1).
#[derive(Clone, Debug)]
struct Msg {
    at: Instant,
    text: String,
    probe: Option<Probe>,
}

/// What a unit ordered after pd-agent would find when READY=1 arrives.
#[derive(Clone, Debug, Default)]
struct Probe {
    /// Pinned links under PIN_DIR/links (the programs attached).
    links: Vec<String>,
    /// The control socket exists.
    control: bool,
    /// `ip -6 route show proto 57` in the agent's namespace.
    routes: String,
}

/// The test's stand-in for systemd's notification socket: a thread
/// receiving datagrams into a list.
struct Manager {
    msgs: Arc<Mutex<Vec<Msg>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    path: Option<PathBuf>,
}

impl Manager {
    /// A socket at `path` (in /tmp: unix sockets do not work on 9p shares),
    /// or, for `@name`, in the abstract namespace of `ns` (abstract names
    /// belong to a network namespace). `probe` runs as READY=1 arrives.
    fn start(
        addr: &str,
        ns: &Netns,
        probe: impl Fn() -> Probe + Send + 'static,
    ) -> Result<Manager> {
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_name = ns.name.clone();
        let (m, s, a) = (msgs.clone(), stop.clone(), addr.to_string());
        let thread = thread::spawn(move || {
            let bound = (|| -> Result<UnixDatagram> {
                if let Some(name) = a.strip_prefix('@') {
                    use std::os::{fd::AsRawFd, linux::net::SocketAddrExt};
                    // This thread moves into the namespace for good.
                    let f = std::fs::File::open(format!("/run/netns/{ns_name}"))?;
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    Ok(UnixDatagram::bind_addr(&addr)?)
                } else {
                    Ok(UnixDatagram::bind(&a)?)
                }
            })();
            let sock = match bound {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::SeqCst) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let probe = text.lines().any(|l| l == "READY=1").then(&probe);
                    m.lock().unwrap().push(Msg { at, text, probe });
                }
            }
        });
        rx.recv().context("notification socket thread")??;
        Ok(Manager {
            msgs,
            stop,
            thread: Some(thread),
            path: (!addr.starts_with('@')).then(|| PathBuf::from(addr)),
        })
    }

    fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// The first message with the line `line`, waiting up to `timeout`.
    fn wait_line(&self, line: &str, timeout: Duration) -> Option<Msg> {
        wait_for_every(timeout, Duration::from_millis(20), || {
            self.all()
                .into_iter()
                .find(|m| m.text.lines().any(|l| l == line))
        })
    }

    /// Arrival times of WATCHDOG=1 pings.
    fn pings(&self) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|m| m.text.lines().any(|l| l == "WATCHDOG=1"))
            .map(|m| m.at)
            .collect()
    }

    fn transcript(&self) -> String {
        self.all()
            .iter()
            .map(|m| format!("{:?}", m.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What is in place: the agent's pinned links, its control socket, its routes.
fn probe(ns_name: String, pin: PathBuf, control: PathBuf) -> impl Fn() -> Probe {
    move || Probe {
        links: std::fs::read_dir(pin.join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
        control: control.exists(),
        routes: sh(&[
            "ip", "netns", "exec", &ns_name, "ip", "-6", "route", "show", "proto", PROTO,
        ])
        .unwrap_or_default(),
    }
}

fn links_of(p: &Probe, iface: &str) -> (bool, bool) {
    let has = |kind: &str| {
        p.links
            .iter()
            .any(|l| l.starts_with(&format!("{kind}_{iface}_")))
    };
    (has("xdp"), has("tc"))
}

fn signal(agent: &Agent, sig: i32) {
    unsafe { libc::kill(agent.daemon.pid() as i32, sig) };
}

/// Topology: one namespace, `lan0` downstream; the store holds a binding
/// whose route is missing. Input: the agent started with
/// `NOTIFY_SOCKET=/tmp/...` (the test's socket) and `WATCHDOG_USEC=2000000`.
/// Expected: READY=1 arrives once, when the XDP and TC links of lan0 are
/// pinned, the control socket exists and the stored binding's route is in
/// the kernel (the first reconcile is done), with a STATUS= counting the
/// binding; no WATCHDOG=1 before it; then WATCHDOG=1 about every second
/// (never 1.9 s apart); none for 3 s while the agent is stopped with
/// SIGSTOP, again after SIGCONT; STOPPING=1 on SIGTERM.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn notify_ready_watchdog_and_stopping() -> Result<()> {
    let dir = TempDir::new("sd")?;
    let ns = lan_with_stored_binding("sd", &dir)?;
    let pin = Path::new("/sys/fs/bpf").join(unique("sd"));
    let sock = format!("/tmp/{}.notify", unique("sd"));
    let mgr = Manager::start(
        &sock,
        &ns,
        probe(ns.name.clone(), pin.clone(), dir.path("control.sock")),
    )?;
    let started = Instant::now();
    let agent = Agent::start_opts(
        &ns,
        &dir,
        AgentOpts {
            pin_dir: Some(pin.clone()),
            env: vec![
                ("NOTIFY_SOCKET".into(), sock.clone()),
                ("WATCHDOG_USEC".into(), "2000000".into()),
            ],
            ..AgentOpts::new(&["lan0"], &[])
        },
    )?;
    let ready = mgr
        .wait_line("READY=1", Duration::from_secs(10))
        .with_context(|| format!("no READY=1; got:\n{}", mgr.transcript()))?;
    eprintln!(
        "READY=1 {:?} after start: {:?}",
        ready.at - started,
        ready.text
    );
    let p = ready.probe.clone().unwrap();
    assert_eq!(
        links_of(&p, "lan0"),
        (true, true),
        "READY=1 before the programs were attached: {p:?}"
    );
    assert!(p.control, "READY=1 before the control socket: {p:?}");
    assert!(
        p.routes
            .contains(&format!("{STORED_PREFIX} via fe80::1 dev lan0")),
        "READY=1 before the reconcile installed the stored binding's route: {p:?}\n{}",
        agent.log()
    );
    assert!(
        ready.text.contains("STATUS=running: 1 bindings"),
        "{ready:?}"
    );
    // The log says "ready" first (its writer is a thread of its own, so
    // the line may reach the file a moment after the datagram).
    assert!(wait_for(Duration::from_secs(2), || agent
        .log()
        .contains("ready")
        .then_some(()))
    .is_some());
    let all = mgr.all();
    let ready_idx = all.iter().position(|m| m.text.contains("READY=1")).unwrap();
    assert!(
        !all[..ready_idx].iter().any(|m| m.text.contains("WATCHDOG")),
        "a watchdog ping before READY=1:\n{}",
        mgr.transcript()
    );
    assert_eq!(
        all.iter().filter(|m| m.text.contains("READY=1")).count(),
        1,
        "{}",
        mgr.transcript()
    );

    // The pings: half of WATCHDOG_USEC apart.
    thread::sleep(Duration::from_secs(5));
    let pings: Vec<Instant> = mgr.pings().into_iter().filter(|t| *t >= ready.at).collect();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("{} pings in 5 s, gaps {gaps:?}", pings.len());
    assert!(
        (4..=7).contains(&pings.len()),
        "about one WATCHDOG=1 a second: {} in 5 s\n{}",
        pings.len(),
        mgr.transcript()
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(1900)),
        "a gap near the 2 s timeout: {gaps:?}"
    );

    // A stopped agent sends nothing; the manager would restart it.
    signal(&agent, libc::SIGSTOP);
    thread::sleep(Duration::from_millis(300));
    let frozen = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let during: Vec<Instant> = mgr.pings().into_iter().filter(|t| *t > frozen).collect();
    signal(&agent, libc::SIGCONT);
    let resumed = Instant::now();
    assert!(
        during.is_empty(),
        "{} WATCHDOG=1 while the agent was stopped",
        during.len()
    );
    let again = wait_for_every(Duration::from_secs(3), Duration::from_millis(20), || {
        mgr.pings().into_iter().find(|t| *t > resumed)
    })
    .context("no WATCHDOG=1 after SIGCONT")?;
    eprintln!("first ping {:?} after SIGCONT", again - resumed);
    thread::sleep(Duration::from_millis(2500));
    let after = mgr.pings().into_iter().filter(|t| *t > resumed).count();
    assert!(after >= 2, "pings resumed: {after} in 2.5 s");

    // SIGTERM (what `systemctl stop` sends).
    let pid = agent.daemon.pid();
    drop(agent);
    let stopping = mgr
        .wait_line("STOPPING=1", Duration::from_secs(3))
        .with_context(|| format!("no STOPPING=1 from {pid}; got:\n{}", mgr.transcript()))?;
    assert!(stopping.text.contains("STATUS=stopping"), "{stopping:?}");
    Ok(())
}

/// Topology: one namespace, `lan0` downstream. Input: the agent started
/// with `NOTIFY_SOCKET=@name`, an abstract socket the test binds in the
/// agent's namespace, `WATCHDOG_USEC=2000000` and `WATCHDOG_PID` naming
/// another process (the test's own: the variables were meant for a parent).
/// Expected: READY=1 arrives over the abstract socket, and no WATCHDOG=1
/// in 3 s; STOPPING=1 on SIGTERM.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn watchdog_meant_for_another_pid_is_not_pinged() -> Result<()> {
    let dir = TempDir::new("sd")?;
    let ns = lan_with_stored_binding("sd", &dir)?;
    let name = format!("@{}", unique("sd-notify"));
    let mgr = Manager::start(&name, &ns, Probe::default)?;
    let agent = Agent::start_opts(
        &ns,
        &dir,
        AgentOpts {
            env: vec![
                ("NOTIFY_SOCKET".into(), name.clone()),
                ("WATCHDOG_USEC".into(), "2000000".into()),
                ("WATCHDOG_PID".into(), std::process::id().to_string()),
            ],
            ..AgentOpts::new(&["lan0"], &[])
        },
    )?;
    assert_ne!(agent.daemon.pid(), std::process::id());
    let ready = mgr
        .wait_line("READY=1", Duration::from_secs(10))
        .with_context(|| format!("no READY=1 over {name}; got:\n{}", mgr.transcript()))?;
    thread::sleep(Duration::from_secs(3));
    let pings = mgr.pings();
    if !pings.is_empty() {
        bail!(
            "{} WATCHDOG=1 for a watchdog meant for pid {}:\n{}",
            pings.len(),
            std::process::id(),
            mgr.transcript()
        );
    }
    assert!(ready.text.contains("STATUS="), "{ready:?}");
    drop(agent);
    mgr.wait_line("STOPPING=1", Duration::from_secs(3))
        .with_context(|| format!("no STOPPING=1; got:\n{}", mgr.transcript()))?;
    Ok(())
}
