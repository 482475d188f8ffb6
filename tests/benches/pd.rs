//! `cargo xtask bench [--quick]`: pd-agent's performance table, each figure
//! measured against its baseline in the same run, on this machine.
//!
//! Rows 1-2 run the real kernel programs with BPF_PROG_TEST_RUN; rows 3-7 run
//! the real agent in network namespaces with real packets: DHCPv6 Replies
//! sent from the router's own stack (so its TC egress program sees them, as
//! it sees a local server's), and UDP traffic through the router. Row 11
//! drives Kea with perfdhcp through pd-agent's relay, through ISC dhcrelay,
//! and directly.
//!
//! Prints a markdown table and writes `target/bench/results.json`.

use std::{
    io::Write,
    net::{Ipv6Addr, SocketAddrV6, UdpSocket},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use dhcproto::v6::MessageType;
use pd_agent::ebpf::{LoadOptions, Programs};
use pd_tests::{corpus, *};
use serde::Serialize;

#[derive(Serialize, Clone)]
struct Row {
    row: u32,
    what: String,
    figure: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
    notes: String,
    command: String,
}

struct Bench {
    quick: bool,
    rows: Vec<Row>,
}

impl Bench {
    fn cmd(&self, row: u32) -> String {
        format!(
            "cargo xtask bench{} --row {row}",
            if self.quick { " --quick" } else { "" }
        )
    }

    fn push(&mut self, r: Row) {
        eprintln!(
            "  row {}: {} | {} | {}",
            r.row, r.what, r.figure, r.baseline
        );
        self.rows.push(r);
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<u32> = args
        .iter()
        .position(|a| a == "--row")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok());
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/results.json")
        });
    let mut b = Bench {
        quick,
        rows: Vec::new(),
    };
    let started = Instant::now();
    type RowFn = fn(&mut Bench) -> Result<()>;
    let runs: [(u32, RowFn); 11] = [
        (1, row1_snoop_cost),
        (2, row2_parse_cost),
        (3, row3_latency),
        (4, row4_programming_rate),
        (5, row5_scale),
        (6, row6_storm),
        (7, row7_fast_path),
        (8, row8_fast_path_cost),
        (9, row9_pass_decision_cost),
        (10, row10_memory),
        (11, row11_relay_throughput),
    ];
    for (n, f) in runs {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        eprintln!("row {n}...");
        let t = Instant::now();
        if let Err(e) = f(&mut b) {
            b.push(Row {
                row: n,
                what: format!("row {n}"),
                figure: "FAILED".into(),
                baseline: String::new(),
                ratio: None,
                target: String::new(),
                met: Some(false),
                notes: format!("{e:#}"),
                command: b.cmd(n),
            });
        }
        eprintln!("row {n} took {:.1}s", t.elapsed().as_secs_f64());
    }
    println!("\n| # | What | Figure | Baseline (same run) | Ratio | Target | Met |");
    println!("|---|---|---|---|---|---|---|");
    for r in &b.rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.row,
            r.what,
            r.figure,
            r.baseline,
            r.ratio
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
        );
    }
    for r in b.rows.iter().filter(|r| !r.notes.is_empty()) {
        println!("\nrow {} ({}): {}", r.row, r.what, r.notes);
    }
    println!(
        "\nrerun one row: cargo xtask bench [--quick] --row N   (total {:.0}s)",
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::json!({
            "quick": quick,
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "rows": b.rows,
        }))?,
    )?;
    println!("wrote {}", out.display());
    if b.rows.iter().any(|r| r.figure == "FAILED") {
        bail!("some rows failed");
    }
    Ok(())
}

// ---------------------------------------------------------------- helpers

struct Pin(PathBuf);
impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(fast_path: bool) -> Result<(Programs, Pin)> {
    let pin = PathBuf::from("/sys/fs/bpf").join(unique("bench"));
    let p = Programs::load_with(
        &pin,
        LoadOptions {
            fast_path,
            sav: fast_path,
            // The rigs' links are Ethernet, as the agent would load for them.
            bare_links: false,
            // An agent that snoops and does not relay (the relay's rate
            // limits are pruned then).
            relay: false,
            ..Default::default()
        },
    )?;
    Ok((p, Pin(pin)))
}

/// Average ns per run of `frame` through the program (`repeat` runs per call).
fn ns_per_run(prog: &mut aya::programs::Xdp, frame: &[u8], repeat: u32, calls: u32) -> Result<f64> {
    let mut total = 0.0;
    for _ in 0..calls {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })?;
        total += r.duration.as_nanos() as f64;
    }
    Ok(total / calls as f64)
}

fn udp_frame(total: usize) -> Vec<u8> {
    let payload = total - 14 - 40 - 8;
    let mut f = vec![
        2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    f.extend(((8 + payload) as u16).to_be_bytes());
    f.extend([17, 64]);
    f.extend("2001:db8:feed::2".parse::<Ipv6Addr>().unwrap().octets());
    f.extend("2001:db8:9999::1".parse::<Ipv6Addr>().unwrap().octets());
    f.extend(40000u16.to_be_bytes());
    f.extend(9u16.to_be_bytes());
    f.extend(((8 + payload) as u16).to_be_bytes());
    f.extend([0, 0]);
    f.resize(total, 0xab);
    f
}

/// Like `wait_for`, polling every 20 us (the latency row needs it).
fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_for_every(timeout, Duration::from_micros(20), f)
}

/// Wait until `count` reaches `n` or stops moving for `idle`.
fn settle(idle: Duration, limit: Duration, n: u64, count: impl Fn() -> u64) -> u64 {
    let t = Instant::now();
    let (mut last, mut since) = (count(), Instant::now());
    while last < n && since.elapsed() < idle && t.elapsed() < limit {
        thread::sleep(Duration::from_millis(20));
        let c = count();
        if c != last {
            last = c;
            since = Instant::now();
        }
    }
    last
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// ---------------------------------------------------------------- row 1

fn row1_snoop_cost(b: &mut Bench) -> Result<()> {
    let repeat = if b.quick { 3_000_000 } else { 10_000_000 };
    let (mut on, _p1) = load(true)?;
    let (mut off, _p2) = load(false)?;
    for size in [64usize, 1500] {
        let f = udp_frame(size);
        // Interleave and take medians so both see the same machine state.
        let (mut base, mut agent, mut agent_off, mut tc) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            base.push(ns_per_run(on.baseline()?, &f, repeat / 7, 1)?);
            agent.push(ns_per_run(on.xdp()?, &f, repeat / 7, 1)?);
            agent_off.push(ns_per_run(off.xdp()?, &f, repeat / 7, 1)?);
            let r = off.tc()?.test_run(TestRunOptions {
                data_in: Some(&f),
                repeat: repeat / 7,
                ..Default::default()
            })?;
            tc.push(r.duration.as_nanos() as f64);
        }
        let (base, agent, agent_off, tc) =
            (median(base), median(agent), median(agent_off), median(tc));
        let ratio = agent_off / base;
        b.push(Row {
            row: 1,
            what: format!("snooping cost, non-DHCP {size}-byte IPv6/UDP"),
            figure: format!("{agent_off:.1} ns/pkt (fast path off); {agent:.1} ns/pkt (fast path on, miss)"),
            baseline: format!("{base:.1} ns/pkt (empty XDP_PASS)"),
            ratio: Some(ratio),
            target: "<= 1.10".into(),
            met: Some(ratio <= 1.10),
            notes: format!(
                "BPF_PROG_TEST_RUN, {repeat} repetitions per program, median of 7 interleaved runs; \
                 with the fast path on the same packet also pays its LPM lookup (ratio {:.2}); \
                 the TC egress program on the same packet: {tc:.1} ns/pkt",
                agent / base
            ),
            command: b.cmd(1),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- row 2

fn row2_parse_cost(b: &mut Bench) -> Result<()> {
    let (mut p, _pin) = load(true)?;
    let mut ring = p.take_events()?;
    let cases = corpus::synthetic();
    let get = |n: &str| cases.iter().find(|c| c.name == n).unwrap().frame.clone();
    let base_frame = get("reply-1-prefix");
    let calls = if b.quick { 20 } else { 200 };
    let mut figs = Vec::new();
    let base = ns_per_run(p.baseline()?, &base_frame, 400, calls)?;
    for (name, label) in [
        ("reply-1-prefix", "Reply, 1 IAPREFIX"),
        ("reply-8-prefixes", "Reply, 8 IAPREFIX"),
        ("relay-reply-3", "Relay-Reply 3 deep"),
    ] {
        let f = get(name);
        let mut total = 0.0;
        for _ in 0..calls {
            // 400 runs per call stay inside the ring buffer; drain between calls
            // so every run pays for a real output, not a "full" failure.
            total += ns_per_run(p.xdp()?, &f, 400, 1)?;
            while ring.next().is_some() {}
        }
        figs.push(format!("{label}: {:.0} ns", total / calls as f64));
    }
    b.push(Row {
        row: 2,
        what: "DHCPv6 parse cost (parse + ring buffer output)".into(),
        figure: figs.join("; "),
        baseline: format!("{base:.1} ns (empty XDP_PASS)"),
        ratio: None,
        target: "report".into(),
        met: None,
        notes: String::new(),
        command: b.cmd(2),
    });
    Ok(())
}

// ---------------------------------------------------------------- rig

/// [`RouterLab`]: gen (its upstream) -- router -- sink (its client). The
/// router has a permanent neighbour fe80::c for the sink's MAC, the next
/// hop of every binding.
struct Rig {
    gen: Netns,
    router: Netns,
    sink: Netns,
    dir: TempDir,
    lan0: u32,
}

const NEXT_HOP: &str = "fe80::c";

fn rig() -> Result<Rig> {
    let RouterLab {
        upstream: gen,
        router,
        client: sink,
    } = RouterLab::new()?;
    let mac = sink.exec(&["cat", "/sys/class/net/eth0/address"])?;
    router.exec(&[
        "ip",
        "-6",
        "neigh",
        "replace",
        NEXT_HOP,
        "dev",
        "lan0",
        "lladdr",
        mac.trim(),
        "nud",
        "permanent",
    ])?;
    let lan0 = {
        let _in = InNetns::enter(&router)?;
        pd_agent::ebpf::if_index("lan0")?
    };

    Ok(Rig {
        gen,
        router,
        sink,
        dir: TempDir::new("bench")?,
        lan0,
    })
}

/// The i-th benchmark prefix: a /64 under 2001:db8::/32.
fn prefix(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x1000 + (i >> 16) as u16,
        (i & 0xffff) as u16,
        0,
        0,
        0,
        0,
    )
}

/// A Reply delegating prefix `i` to client `i`.
fn reply(i: u32, valid: u32) -> Vec<u8> {
    let xid = i.to_be_bytes();
    let mut duid = corpus::duid(0);
    duid.extend(i.to_be_bytes());
    corpus::dhcproto_msg(
        MessageType::Reply,
        [xid[1], xid[2], xid[3]],
        duid,
        vec![(1, 0, 0, vec![(prefix(i), 64, valid, valid)])],
    )
}

/// Sends Replies from the router's own stack towards the sink: they leave
/// lan0, where the TC egress program sees them (as with a local server).
struct Injector {
    sock: UdpSocket,
    to: SocketAddrV6,
}

impl Injector {
    fn new(rig: &Rig) -> Result<Self> {
        let _in = InNetns::enter(&rig.router)?;
        let sock = UdpSocket::bind("[::]:0")?;
        Ok(Injector {
            sock,
            to: SocketAddrV6::new(NEXT_HOP.parse()?, 546, 0, rig.lan0),
        })
    }
    fn send(&self, pkt: &[u8]) -> Result<()> {
        self.sock.send_to(pkt, self.to)?;
        Ok(())
    }
}

/// RTM_NEWROUTE notifications with our protocol in a namespace: a netlink
/// socket read by a thread, each notification time-stamped on arrival.
struct Monitor {
    seen: Arc<std::sync::Mutex<Vec<(Ipv6Addr, Instant)>>>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    overruns: Arc<AtomicU64>,
}

impl Monitor {
    fn start(ns: &Netns, record: bool) -> Result<Monitor> {
        let fd = {
            let _in = InNetns::enter(ns)?;
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                bail!("netlink socket: {}", std::io::Error::last_os_error());
            }
            let size: libc::c_int = 64 << 20;
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &size as *const _ as *const libc::c_void,
                    4,
                );
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
            let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            sa.nl_family = libc::AF_NETLINK as u16;
            sa.nl_groups = 0x400; // RTMGRP_IPV6_ROUTE
            if unsafe {
                libc::bind(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            } != 0
            {
                bail!("netlink bind: {}", std::io::Error::last_os_error());
            }
            fd
        };
        let m = Monitor {
            seen: Default::default(),
            count: Default::default(),
            stop: Default::default(),
            overruns: Default::default(),
        };
        let (seen, count, stop, overruns) = (
            m.seen.clone(),
            m.count.clone(),
            m.stop.clone(),
            m.overruns.clone(),
        );
        thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while !stop.load(Ordering::Relaxed) {
                let n =
                    unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                let now = Instant::now();
                if n < 0 {
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                        overruns.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let mut off = 0usize;
                let n = n as usize;
                while off + 16 <= n {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                    let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                    if len < 16 || off + len > n {
                        break;
                    }
                    // RTM_NEWROUTE; rtmsg: family, dst_len, src_len, tos, table, protocol, ...
                    if ty == 24
                        && len >= 16 + 12
                        && buf[off + 16 + 5] == pd_agent::route::DEFAULT_PROTO
                    {
                        count.fetch_add(1, Ordering::Relaxed);
                        if record {
                            let mut a = off + 16 + 12;
                            while a + 4 <= off + len {
                                let alen =
                                    u16::from_ne_bytes(buf[a..a + 2].try_into().unwrap()) as usize;
                                let aty = u16::from_ne_bytes(buf[a + 2..a + 4].try_into().unwrap());
                                if alen < 4 {
                                    break;
                                }
                                if aty == 1 && alen == 20 {
                                    let d: [u8; 16] = buf[a + 4..a + 20].try_into().unwrap();
                                    seen.lock().unwrap().push((Ipv6Addr::from(d), now));
                                }
                                a += (alen + 3) & !3;
                            }
                        }
                    }
                    off += (len + 3) & !3;
                }
            }
            unsafe { libc::close(fd) };
        });
        Ok(m)
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An agent on the rig's router. The benchmark's Replies are synthetic
/// (no client sent a Request), so Reply-to-client-message matching is off.
fn start_agent(rig: &Rig, tag: &str, extra: &[&str]) -> Result<(Agent, TempDir)> {
    let dir = TempDir::new(tag)?;
    let mut args: Vec<String> = vec!["--require-client-message".into(), "off".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let opts = AgentOpts {
        args,
        ..AgentOpts::new(&["lan0"], &["wan0"])
    };
    Ok((Agent::start_opts(&rig.router, &dir, opts)?, dir))
}

fn agent_stat(agent: &Agent, path: &[&str]) -> u64 {
    let mut v = agent.stats().unwrap_or_default();
    for p in path {
        v = v[*p].clone();
    }
    v.as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------- row 3

fn row3_latency(b: &mut Bench) -> Result<()> {
    let n: u32 = if b.quick { 1_000 } else { 10_000 };
    let rig = rig()?;
    let (agent, _d) = start_agent(&rig, "lat", &[])?;
    let mon = Monitor::start(&rig.router, true)?;
    let inj = Injector::new(&rig)?;
    let pkts: Vec<Vec<u8>> = (0..n).map(|i| reply(i, 3600)).collect();
    let mut lat = Vec::with_capacity(n as usize);
    let mut missing = 0;
    for (i, p) in pkts.iter().enumerate() {
        let want = prefix(i as u32);
        let t0 = Instant::now();
        inj.send(p)?;
        let got = poll(Duration::from_secs(2), || {
            let s = mon.seen.lock().unwrap();
            s.iter()
                .rev()
                .take(4)
                .find(|(a, _)| *a == want)
                .map(|(_, t)| *t)
        });
        match got {
            Some(t) => lat.push(t.duration_since(t0).as_secs_f64() * 1e6),
            None => missing += 1,
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let (p50, p99) = (pct(0.50), pct(0.99));
    b.push(Row {
        row: 3,
        what: "event-to-route latency".into(),
        figure: format!("p50 {p50:.0} us, p99 {p99:.0} us ({} samples, {missing} missing)", lat.len()),
        baseline: "-".into(),
        ratio: None,
        target: "p99 < 1 ms".into(),
        met: Some(p99 < 1000.0 && missing == 0),
        notes: format!(
            "Reply sent from the router's stack out of lan0 -> TC egress -> ring buffer -> agent -> journal fsync -> \
             netlink -> RTM_NEWROUTE seen by a netlink listener; one Reply at a time; agent log lines: {}",
            agent.log().lines().count()
        ),
        command: b.cmd(3),
    });
    Ok(())
}

// ---------------------------------------------------------------- row 4

fn row4_programming_rate(b: &mut Bench) -> Result<()> {
    let n: u32 = if b.quick { 20_000 } else { 100_000 };
    let rig = rig()?;
    let pkts: Vec<Vec<u8>> = (0..n).map(|i| reply(i, 3600)).collect();

    // Baseline: ip -6 -batch adding the same routes in another namespace.
    let ipns = Netns::new("ipb")?;
    let peer = Netns::new("ipp")?;
    veth(&ipns, "lan0", &peer, "eth0")?;
    let batch = rig.dir.path("routes.batch");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&batch)?);
    for i in 0..n {
        writeln!(
            f,
            "route add {}/64 via {NEXT_HOP} dev lan0 proto 57",
            prefix(i)
        )?;
    }
    f.flush()?;
    drop(f);
    let t = Instant::now();
    ipns.exec(&["ip", "-6", "-batch", &batch.display().to_string()])?;
    let ip_rate = n as f64 / t.elapsed().as_secs_f64();
    let ip_count = our_routes(&ipns)?.len();

    let (agent, _d) = start_agent(&rig, "rate", &[])?;
    let mon = Monitor::start(&rig.router, false)?;
    let inj = Injector::new(&rig)?;
    let burst = 2000usize;
    let t = Instant::now();
    for (k, chunk) in pkts.chunks(burst).enumerate() {
        // At most two bursts outstanding: the ring buffer holds ~15k events.
        let floor = (k.saturating_sub(1) * burst) as u64;
        poll(Duration::from_secs(30), || {
            (mon.count() >= floor).then_some(())
        })
        .context("agent fell behind")?;
        for p in chunk {
            inj.send(p)?;
        }
    }
    let got = settle(
        Duration::from_secs(3),
        Duration::from_secs(120),
        n as u64,
        || mon.count(),
    );
    let done = (got >= n as u64).then_some(());
    let el = t.elapsed().as_secs_f64();
    let rate = got as f64 / el;
    let ratio = rate / ip_rate;
    b.push(Row {
        row: 4,
        what: format!("route programming, {n} bindings"),
        figure: format!("{rate:.0} routes/s ({got} routes in {el:.2}s{})", if done.is_none() { ", INCOMPLETE" } else { "" }),
        baseline: format!("{ip_rate:.0} routes/s (ip -6 -batch, {ip_count} routes)"),
        ratio: Some(ratio),
        target: ">= 1".into(),
        met: Some(ratio >= 1.0 && done.is_some()),
        notes: format!(
            "the agent's figure includes the whole path per binding (packet, TC parse, ring buffer, binding table, \
             journal append + fsync per batch, netlink batches of up to 512 requests per sendmsg, map update); ringbuf_full {}",
            agent_stat(&agent, &["kernel", "ringbuf_full"])
        ),
        command: b.cmd(4),
    });
    Ok(())
}

// ---------------------------------------------------------------- row 5

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn map_bytes(pin: &std::path::Path, name: &str) -> u64 {
    let out = sh(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        &pin.join(name).display().to_string(),
    ])
    .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["bytes_memlock"].as_u64())
        .unwrap_or(0)
}

fn row5_scale(b: &mut Bench) -> Result<()> {
    let sizes: &[u32] = if b.quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &n in sizes {
        let rig = rig()?;
        // An empty agent, for the baseline RSS.
        let (empty, _e) = start_agent(&rig, "empty", &[])?;
        let rss0 = rss_kb(empty.daemon.pid());
        drop(empty);
        // A state store holding n bindings, as after a crash: written in
        // this boot, its times on the lease clock.
        let dir = TempDir::new("scale")?;
        std::fs::create_dir_all(dir.path("state"))?;
        let anchor = pd_agent::clock::Anchor::now(&pd_agent::resync::boot_id());
        let now = anchor.boot;
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.path("state/bindings.json"))?);
        write!(f, "{{\"version\":1,\"bindings\":[")?;
        for i in 0..n {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(
                f,
                "{{\"prefix\":\"{}/64\",\"kind\":\"delegated\",\"iface\":\"lan0\",\"ifindex\":{},\"next_hop\":\"{NEXT_HOP}\",\
                 \"client_duid\":\"0001000100000000{i:08x}\",\"iaid\":1,\"t1\":0,\"t2\":0,\"preferred_lifetime\":3600,\
                 \"valid_lifetime\":3600,\"expires_at\":{},\"updated_at\":{now}}}",
                prefix(i),
                rig.lan0,
                now + 3600
            )?;
        }
        write!(f, "],\"clock\":{}}}", serde_json::to_string(&anchor)?)?;
        drop(f);
        let t = Instant::now();
        let opts = AgentOpts {
            ready_timeout: Some(Duration::from_secs(600)),
            ..AgentOpts::new(&["lan0"], &["wan0"])
        };
        let agent = Agent::start_opts(&rig.router, &dir, opts)?;
        let reconcile = t.elapsed().as_secs_f64();
        let routes = our_routes(&rig.router)?.len();
        let rss = rss_kb(agent.daemon.pid());
        let per = (rss.saturating_sub(rss0)) as f64 * 1024.0 / n as f64;
        let map = map_bytes(&agent.pin_dir, pd_common::maps::ROUTES);
        let stats_map = map_bytes(&agent.pin_dir, pd_common::maps::FWD_STATS);
        let met = if n >= 1_000_000 {
            Some(reconcile < 10.0 && routes == n as usize)
        } else {
            Some(routes == n as usize)
        };
        b.push(Row {
            row: 5,
            what: format!("scale, {n} bindings"),
            figure: format!(
                "reconcile at start {reconcile:.2}s ({routes} routes re-added); agent RSS {per:.0} B/binding; \
                 pd_routes_v1 {:.1} MiB ({:.0} B/binding)",
                map as f64 / 1048576.0,
                map as f64 / n as f64
            ),
            baseline: format!("empty agent RSS {} MiB; pd_fwd_stats_v1 {:.1} MiB (fixed)", rss0 / 1024, stats_map as f64 / 1048576.0),
            ratio: None,
            target: if n >= 1_000_000 { "reconcile of 1M < 10 s".into() } else { "report".into() },
            met,
            notes: String::new(),
            command: b.cmd(5),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- row 6

fn row6_storm(b: &mut Bench) -> Result<()> {
    let secs: u32 = if b.quick { 2 } else { 10 };
    let rate: u32 = 50_000;
    let n = rate * secs;
    let rig = rig()?;
    let pkts: Vec<Vec<u8>> = (0..n).map(|i| reply(i, 3600)).collect();
    let (agent, _d) = start_agent(&rig, "storm", &[])?;
    let mon = Monitor::start(&rig.router, false)?;
    let inj = Injector::new(&rig)?;
    // 500 Replies every 10 ms.
    let t0 = Instant::now();
    for (k, chunk) in pkts.chunks(500).enumerate() {
        let due = t0 + Duration::from_millis(10 * k as u64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        for p in chunk {
            inj.send(p)?;
        }
    }
    let send_time = t0.elapsed().as_secs_f64();
    settle(
        Duration::from_secs(3),
        Duration::from_secs(120),
        n as u64,
        || mon.count(),
    );
    let bindings = agent_stat(&agent, &["bindings"]);
    let lost = agent_stat(&agent, &["kernel", "ringbuf_full"]);
    let parsed = agent_stat(&agent, &["kernel", "parsed"]);
    b.push(Row {
        row: 6,
        what: format!("Reply storm, {rate}/s for {secs}s"),
        figure: format!(
            "events lost {lost}; bindings {bindings} of {n} sent; routes {}",
            mon.count()
        ),
        baseline: format!(
            "sent in {send_time:.2}s ({:.0}/s achieved); kernel parsed {parsed}",
            n as f64 / send_time
        ),
        ratio: None,
        target: "lost = 0, bindings = sent".into(),
        met: Some(lost == 0 && bindings == n as u64),
        notes: String::new(),
        command: b.cmd(6),
    });
    Ok(())
}

// ---------------------------------------------------------------- row 7

fn rx_packets(ns: &Netns) -> u64 {
    ns.exec(&["cat", "/sys/class/net/eth0/statistics/rx_packets"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends 64-byte UDP packets from gen's own stack for `secs` (the skb
/// path: each packet is a socket write); returns packets/s at the sink.
fn blast(rig: &Rig, secs: f64) -> Result<f64> {
    let sock = {
        let _in = InNetns::enter(&rig.gen)?;
        let s = UdpSocket::bind("[::]:0")?;
        s.connect(SocketAddrV6::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0x99),
            9,
            0,
            0,
        ))?;
        s
    };
    let payload = [0u8; 2];
    let before = rx_packets(&rig.sink);
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        for _ in 0..256 {
            let _ = sock.send(&payload);
            sent += 1;
        }
    }
    let el = t.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(200));
    let got = rx_packets(&rig.sink) - before;
    eprintln!("    socket: sent {sent}, sink received {got} in {el:.2}s");
    Ok(got as f64 / el)
}

/// The traffic generator: the kernel's BPF_PROG_TEST_RUN live-frames mode
/// runs an XDP_TX program on a template frame, transmitting each copy out of
/// gen's eth0 into the router, far faster than a socket could.
struct Generator {
    progs: Programs,
    _pin: Pin,
    frame: Vec<u8>,
    ctx: Vec<u8>,
}

impl Generator {
    fn new(rig: &Rig) -> Result<Generator> {
        let _in = InNetns::enter(&rig.gen)?;
        let (mut progs, pin) = load(false)?;
        progs
            .baseline()?
            .attach("eth0", aya::programs::XdpMode::Driver)?; // registers eth0's XDP rx queue
        progs.generator()?;
        let mut frame = udp_frame(64);
        frame[0..6].copy_from_slice(&rig.router.mac("wan0")?);
        frame[6..12].copy_from_slice(&rig.gen.mac("eth0")?);
        let dst = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0x99).octets();
        frame[38..54].copy_from_slice(&dst);
        let ifindex = pd_agent::ebpf::if_index("eth0")?;
        let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .collect();
        Ok(Generator {
            progs,
            _pin: pin,
            frame,
            ctx,
        })
    }

    /// Send for about `secs`; returns the packets per second that reached the sink.
    fn run(&mut self, rig: &Rig, secs: f64) -> Result<f64> {
        let _in = InNetns::enter(&rig.gen)?;
        let before = rx_packets(&rig.sink);
        let t = Instant::now();
        let mut sent = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            let n = 4096;
            self.progs.generator()?.test_run(TestRunOptions {
                data_in: Some(&self.frame),
                ctx_in: Some(&self.ctx),
                repeat: n,
                attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })?;
            sent += n as u64;
        }
        let el = t.elapsed().as_secs_f64();
        thread::sleep(Duration::from_millis(200));
        let got = rx_packets(&rig.sink) - before;
        eprintln!("    generated {sent}, sink received {got} in {el:.2}s");
        Ok(got as f64 / el)
    }
}

/// The XDP generator's pps into the sink for about `secs`, or why it
/// cannot run here: some kernels refuse BPF_F_TEST_XDP_LIVE_FRAMES (EPERM
/// as root, seen on a 6.18 machine of the development kind), and
/// `PD_BENCH_REFUSE_LIVE_FRAMES=1` makes the row act as on one of them.
fn live_frames(rig: &Rig, secs: f64) -> std::result::Result<f64, String> {
    if std::env::var_os("PD_BENCH_REFUSE_LIVE_FRAMES").is_some() {
        return Err("refused (PD_BENCH_REFUSE_LIVE_FRAMES is set)".into());
    }
    let run = || -> Result<f64> {
        let mut gen = Generator::new(rig)?;
        gen.run(rig, 0.3)?;
        gen.run(rig, secs)
    };
    run().map_err(|e| format!("{e:#}"))
}

fn row7_fast_path(b: &mut Bench) -> Result<()> {
    let secs = if b.quick { 2.0 } else { 8.0 };
    let rig = rig()?;
    // Where the fast path applies: the next hop runs an XDP program on its
    // end of the link (as a downstream router running pd-agent does, and
    // as the lab's routers do), which gives its veth the NAPI instance that
    // takes redirected frames. On a plain veth the agent leaves everything
    // to the kernel (row 9 prices that decision), so on/off would measure
    // the same path twice.
    let _sink_xdp = {
        let _in = InNetns::enter(&rig.sink)?;
        let (mut p, pin) = load(false)?;
        p.baseline()?
            .attach("eth0", aya::programs::XdpMode::Driver)
            .context("XDP on the sink's eth0")?;
        (p, pin)
    };
    // (socket pps, live-frames pps, redirected) for auto, then off.
    let mut res = Vec::new();
    for mode in ["auto", "off"] {
        let (agent, _d) = start_agent(&rig, "fp", &["--fast-path", mode])?;
        let inj = Injector::new(&rig)?;
        inj.send(&reply(0, 3600))?;
        wait_for(Duration::from_secs(5), || {
            agent
                .map_prefixes()
                .ok()?
                .contains(&format!("{}/64", prefix(0)))
                .then_some(())
        })
        .context("binding for the traffic")?;
        blast(&rig, 0.3)?;
        let sock = blast(&rig, secs)?;
        let live = live_frames(&rig, secs);
        let redirected = agent_stat(&agent, &["kernel", "fwd_redirected"]);
        if std::env::var_os("PD_BENCH_DEBUG").is_some() {
            eprintln!("{}", rig.router.exec(&["sh", "-c", "ip -s link show wan0; nstat -az | grep -Ei 'Ip6(In|Out|Forw)' | grep -v ' 0 '"]).unwrap_or_default());
        }
        if mode == "auto" && redirected == 0 {
            bail!(
                "the fast path redirected nothing; fast_path: {}",
                agent.stats().unwrap_or_default()["fast_path"]
            );
        }
        res.push((sock, live, redirected));
        drop(agent);
        // The route of the binding stays (kept on stop); remove it for the next run.
        let _ = rig
            .router
            .exec(&["ip", "-6", "route", "flush", "proto", PROTO]);
    }
    let ratio = res[0].0 / res[1].0;
    let pps = |live: &std::result::Result<f64, String>| match live {
        Ok(p) => format!("{p:.0} pps"),
        Err(e) => format!("not measurable here: {e}"),
    };
    let overload = match (&res[0].1, &res[1].1) {
        (Ok(on), Ok(off)) => format!(
            "the fast path keeps forwarding ({:.1}x) while the kernel path delivers almost nothing",
            on / off.max(1.0)
        ),
        _ => "this kernel refused the XDP generator (BPF_F_TEST_XDP_LIVE_FRAMES), so the overload half \
              is not measured; the socket sender's figures stand"
            .into(),
    };
    b.push(Row {
        row: 7,
        what: "fast-path forwarding, 64-byte IPv6/UDP over veth (into a veth that takes redirects)".into(),
        figure: format!(
            "socket sender: {:.0} pps fast path auto; XDP generator (overload): {} auto ({} redirected in XDP)",
            res[0].0,
            pps(&res[0].1),
            res[0].2
        ),
        baseline: format!(
            "socket sender: {:.0} pps fast path off; XDP generator (overload): {} off",
            res[1].0,
            pps(&res[1].1)
        ),
        ratio: Some(ratio),
        target: ">= 2 (expected)".into(),
        met: Some(ratio >= 2.0),
        notes: format!(
            "ratio = socket-sender pps on/off. With a socket sender the sending stack is the bottleneck on this 2-core \
             machine, and veth hands XDP an skb that it must copy into an XDP buffer (too little headroom), so XDP \
             gains nothing here. Under overload from an XDP generator (XDP_TX in BPF_PROG_TEST_RUN live-frames mode) \
             {overload}. A NIC with native \
             XDP and a second machine generating traffic would measure the router alone."
        ),
        command: b.cmd(7),
    });
    Ok(())
}

// ---------------------------------------------------------------- row 8

/// A router namespace with `pd_xdp` on wan0, a route and a binding for
/// 2001:db8:1000::/64 via the sink on lan0 (a static neighbour), and a
/// lease as a running agent keeps it; no interface flags yet. The calling
/// thread stays in the router's namespace while it lives.
struct FastPathRig {
    p: Programs,
    ifs: pd_agent::maps::SavMaps,
    wan0: u32,
    lan0: u32,
    _routes: pd_agent::maps::RouteMap,
    _pin: Pin,
    _in: InNetns,
    _rig: Rig,
}

fn fast_path_rig() -> Result<FastPathRig> {
    let rig = rig()?;
    let _in = InNetns::enter(&rig.router)?;
    rig.router.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:1000::/64",
        "via",
        NEXT_HOP,
        "dev",
        "lan0",
    ])?;
    let (mut p, _pin) = load(true)?;
    p.attach_xdp("wan0")?;
    let wan0 = pd_agent::ebpf::if_index("wan0")?;
    let ifs = pd_agent::maps::SavMaps {
        ifaces: p.take_ifaces()?,
        onlink: p.take_onlink()?,
    };
    p.take_lease()?.set(0, u64::MAX, 0)?;
    let mut routes = pd_agent::maps::RouteMap::new(p.take_routes()?, p.take_fwd_stats()?);
    routes.insert(&pd_agent::binding::Binding {
        prefix: "2001:db8:1000::/64".parse()?,
        kind: pd_agent::binding::Kind::Delegated,
        iface: "lan0".into(),
        ifindex: rig.lan0,
        next_hop: NEXT_HOP.parse()?,
        client_duid: vec![1],
        iaid: 1,
        t1: 0,
        t2: 0,
        preferred_lifetime: 60,
        valid_lifetime: 60,
        expires_at: None,
        updated_at: 0,
    })?;
    Ok(FastPathRig {
        p,
        ifs,
        wan0,
        lan0: rig.lan0,
        _routes: routes,
        _pin,
        _in,
        _rig: rig,
    })
}

/// Per-packet cost of the fast path in BPF_PROG_TEST_RUN, inside a namespace
/// with the route and neighbour a hit needs: a hit (forwarded), a miss
/// (destination not delegated) and a non-IPv6 packet, each against the
/// empty program, all in this run.
fn row8_fast_path_cost(b: &mut Bench) -> Result<()> {
    let repeat = if b.quick { 10_000 } else { 100_000 };
    // The rest of the rig lives to the end of the row (namespaces, pins).
    let mut rig = fast_path_rig()?;
    let (p, wan0) = (&mut rig.p, rig.wan0);
    // The agent's flags where the fast path applies: wan0 may forward (no
    // firewall), lan0 takes redirects.
    rig.ifs.set_iface(wan0, pd_common::ifflags::FWD_IN)?;
    rig.ifs.set_iface(rig.lan0, pd_common::ifflags::FWD_OUT)?;
    let mut hit = udp_frame(64);
    hit[38..54].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0x99).octets());
    let miss = udp_frame(64);
    let mut v4 = udp_frame(64);
    v4[12] = 0x08;
    v4[13] = 0x00;
    hit[21] = 255; // hop limit: each repetition of a run forwards the same buffer again
                   // A hit rewrites the buffer, so it runs in calls of 250 repetitions
                   // (each call starts from a fresh copy); the others in one call. Each
                   // call with an ingress interface costs milliseconds of setup, outside
                   // the measured loop.
    let run = |prog: &mut aya::programs::Xdp, f: &[u8], chunked: bool| -> Result<(f64, u32)> {
        let ctx: Vec<u8> = [0u32, f.len() as u32, 0, wan0, 0, 0]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; f.len()];
        let (mut total, mut action) = (0.0, 0);
        let (calls, per) = if chunked {
            (repeat / 250, 250)
        } else {
            (1, repeat)
        };
        for _ in 0..calls {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: per,
                ..Default::default()
            })?;
            total += r.duration.as_nanos() as f64;
            action = r.return_value;
        }
        Ok((total / calls as f64, action))
    };
    let mut figs = Vec::new();
    let mut bases = Vec::new();
    for (label, f, want) in [
        ("hit", &hit, 4u32),
        ("miss", &miss, 2),
        ("non-IPv6", &v4, 2),
    ] {
        let chunked = label == "hit";
        let (base, _) = run(p.baseline()?, f, chunked)?;
        let (ns, action) = run(p.xdp()?, f, chunked)?;
        if action != want {
            let c: Vec<_> = p
                .take_counters()
                .map(|c| c.read().into_iter().filter(|(_, v)| *v > 0).collect())
                .unwrap_or_default();
            bail!("{label}: action {action}, expected {want}; counters {c:?}");
        }
        figs.push(format!("{label} {ns:.0} ns ({:.2}x)", ns / base));
        bases.push(format!("{base:.0}"));
    }
    b.push(Row {
        row: 8,
        what: "fast-path cost per packet (TestRun, 64-byte frames)".into(),
        figure: figs.join("; "),
        baseline: format!("empty XDP_PASS: {} ns", bases.join(" / ")),
        ratio: None,
        target: "report".into(),
        met: None,
        notes: format!(
            "{repeat} repetitions each; a hit is an LPM lookup, bpf_fib_lookup, MAC rewrite, counter update and \
             bpf_redirect (XDP_REDIRECT); a miss pays the source-validation hash lookup and the LPM lookup"
        ),
        command: b.cmd(8),
    });
    Ok(())
}

// ---------------------------------------------------------------- row 9

/// What it costs to decide *not* to forward in XDP, per packet
/// (TestRun, 64-byte frames to a delegated destination), against the empty
/// program: the binding's device takes no redirects (a plain veth, a
/// bridge: LPM lookup, two flag lookups), and a firewall is loaded (LPM
/// lookup, one flag lookup). Both pass the packet to the kernel.
fn row9_pass_decision_cost(b: &mut Bench) -> Result<()> {
    let repeat = if b.quick { 10_000 } else { 100_000 };
    // The rest of the rig lives to the end of the row (namespaces, pins).
    let mut rig = fast_path_rig()?;
    let (p, ifs, wan0) = (&mut rig.p, &mut rig.ifs, rig.wan0);
    let counters = p.take_counters()?;
    let mut f = udp_frame(64);
    f[38..54].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0x99).octets());
    let ctx: Vec<u8> = [0u32, f.len() as u32, 0, wan0, 0, 0]
        .iter()
        .flat_map(|x| x.to_ne_bytes())
        .collect();
    let run = |prog: &mut aya::programs::Xdp| -> Result<(f64, u32)> {
        let mut out = vec![0u8; f.len()];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(&f),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })?;
        Ok((r.duration.as_nanos() as f64, r.return_value))
    };
    let (base, _) = run(p.baseline()?)?;
    let mut figs = Vec::new();
    for (label, wan_flags, counter) in [
        (
            "egress takes no redirects",
            pd_common::ifflags::FWD_IN,
            pd_common::Counter::FwdNoXmit,
        ),
        ("firewall loaded", 0, pd_common::Counter::FwdFirewall),
    ] {
        ifs.set_iface(wan0, wan_flags)?;
        let before = counters.get(counter);
        let (ns, action) = run(p.xdp()?)?;
        let counted = counters.get(counter) - before;
        if action != 2 || counted != repeat as u64 {
            bail!("{label}: action {action} (want XDP_PASS), {counter:?} counted {counted} of {repeat}");
        }
        figs.push(format!("{label}: {ns:.0} ns ({:.2}x)", ns / base));
    }
    b.push(Row {
        row: 9,
        what: "cost of leaving a delegated destination to the kernel (TestRun, 64-byte frames)".into(),
        figure: figs.join("; "),
        baseline: format!("empty XDP_PASS: {base:.0} ns"),
        ratio: None,
        target: "report".into(),
        met: None,
        notes: format!(
            "{repeat} repetitions each, every one counted under its reason (fwd_no_xmit, fwd_firewall); \
             neither pays a FIB lookup (row 8's hit does): the binding's interface is checked first"
        ),
        command: b.cmd(9),
    });
    Ok(())
}

// ---------------------------------------------------------------- row 10

/// Kernel memory (`bytes_memlock`, bpftool) of every map the agent's
/// programs use, found through its pinned links: pinned or not.
fn agent_map_bytes(agent: &Agent) -> Result<u64> {
    let links = agent.pin_dir.join("links");
    let mut progs = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&links)? {
        let out = sh(&[
            "bpftool",
            "-j",
            "link",
            "show",
            "pinned",
            &e?.path().display().to_string(),
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        progs.insert(v["prog_id"].as_u64().context("prog_id")?);
    }
    let mut maps = std::collections::BTreeSet::new();
    for id in progs {
        let out = sh(&["bpftool", "-j", "prog", "show", "id", &id.to_string()])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        for m in v["map_ids"].as_array().context("map_ids")? {
            maps.insert(m.as_u64().context("map id")?);
        }
    }
    let mut total = 0;
    for id in maps {
        let out = sh(&["bpftool", "-j", "map", "show", "id", &id.to_string()])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        total += v["bytes_memlock"].as_u64().context("bytes_memlock")?;
    }
    Ok(total)
}

/// A process's resident memory in bytes, less its mappings of BPF maps
/// (the ring buffer: kernel memory, counted with the maps).
fn rss_bytes(pid: u32) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut bpf, mut in_bpf) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let b = 1024 * kb.trim().trim_end_matches("kB").trim().parse::<u64>()?;
            total += b;
            bpf += if in_bpf { b } else { 0 };
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|a| a.contains('-'))
        {
            // A mapping's header (`start-end perms offset dev inode path`);
            // its fields follow as `Name: value` lines.
            in_bpf = line.ends_with("anon_inode:bpf-map");
        }
    }
    Ok(total - bpf)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Resident memory of a DHCPv6 relay on the same rig, started and left
/// idle for 2 s (one at a time: both bind port 547): dnsmasq's, and ISC
/// dhcrelay's.
fn relay_rss(rig: &Rig) -> Result<(u64, u64)> {
    let idle_rss = |args: &[&str], log: &str| -> Result<u64> {
        let mut d = rig.router.spawn(args, &rig.dir.path(log))?;
        thread::sleep(Duration::from_secs(2));
        d.check_alive()?;
        let rss = rss_bytes(d.pid())?;
        d.stop();
        Ok(rss)
    };
    let dnsmasq = idle_rss(
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--dhcp-relay=2001:db8:ffff::1,2001:db8:feed::2",
        ],
        "dnsmasq.log",
    )?;
    let pid = rig.dir.path("dhcrelay.pid").display().to_string();
    let dhcrelay = idle_rss(
        &[
            "dhcrelay",
            "-6",
            "-d",
            "-pf",
            &pid,
            "-l",
            "lan0",
            "-u",
            "2001:db8:feed::2%wan0",
        ],
        "dhcrelay.log",
    )?;
    Ok((dnsmasq, dhcrelay))
}

fn row10_memory(b: &mut Bench) -> Result<()> {
    let n: u32 = if b.quick { 2_000 } else { 20_000 };
    let rig = rig()?;
    let (dnsmasq, dhcrelay) = relay_rss(&rig)?;
    let (agent, _d) = start_agent(&rig, "mem", &[])?;
    let pid = agent.daemon.pid();
    thread::sleep(Duration::from_secs(3));
    let (k0, u0) = (agent_map_bytes(&agent)?, rss_bytes(pid)?);
    let inj = Injector::new(&rig)?;
    for i in 0..n {
        inj.send(&reply(i, 3600))?;
        if i % 500 == 499 {
            thread::sleep(Duration::from_millis(10));
        }
    }
    settle(
        Duration::from_secs(3),
        Duration::from_secs(60),
        n as u64,
        || agent_stat(&agent, &["bindings"]),
    );
    let bound = agent_stat(&agent, &["bindings"]);
    thread::sleep(Duration::from_secs(2));
    let (k1, u1) = (agent_map_bytes(&agent)?, rss_bytes(pid)?);
    let idle = k0 + u0;
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / bound.max(1) as f64;
    b.push(Row {
        row: 10,
        what: "Memory: idle, and per binding (kernel maps + agent RSS)".into(),
        figure: format!(
            "idle {} ({} maps + {} RSS); per binding {:.0} B maps + {:.0} B RSS ({bound} bindings)",
            mib(idle),
            mib(k0),
            mib(u0),
            per(k0, k1),
            per(u0, u1),
        ),
        baseline: format!("dnsmasq relay RSS {}; ISC dhcrelay RSS {}", mib(dnsmasq), mib(dhcrelay)),
        ratio: Some(idle as f64 / dnsmasq as f64),
        target: "idle <= 16 MiB".into(),
        met: Some(idle <= 16 << 20 && bound == n as u64),
        notes: "RSS excludes the agent's mapping of the ring buffer (kernel memory, counted with the maps); the agent's binary pages are in its RSS, as dnsmasq's are in its".into(),
        command: b.cmd(10),
    });
    Ok(())
}

// ---------------------------------------------------------------- row 11

/// Where row 11's Kea listens for relays (and the relays send).
const KEA_UNICAST: &str = "2001:db8:feed::2";

/// The path perfdhcp's exchanges take to Kea.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// perfdhcp on Kea's own link, no relay: Kea's own limit.
    Direct,
    /// ISC dhcrelay -6 on the router.
    Dhcrelay,
    /// pd-agent --relay-to on the router.
    PdAgent,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Dhcrelay => "dhcrelay",
            Via::PdAgent => "pd-agent",
        }
    }
}

/// One exchange type's figures from a perfdhcp run (delays in ms).
#[derive(Default)]
struct Exchange {
    sent: u64,
    received: u64,
    drops: u64,
    orphans: u64,
    min: f64,
    avg: f64,
    max: f64,
    /// Each completed exchange's delay (from `-x t`), sorted.
    delays: Vec<f64>,
}

impl Exchange {
    fn pct(&self, q: f64) -> f64 {
        match self.delays.len() {
            0 => f64::NAN,
            n => self.delays[((n as f64 * q) as usize).min(n - 1)],
        }
    }

    fn show(&self) -> String {
        format!(
            "min/avg/max {:.2}/{:.2}/{:.2} ms, p50 {:.2} p99 {:.2}",
            self.min,
            self.avg,
            self.max,
            self.pct(0.5),
            self.pct(0.99)
        )
    }
}

/// One perfdhcp run: its Solicit-Advertise and Request-Reply exchanges.
struct Perf {
    sa: Exchange,
    rr: Exchange,
    secs: u32,
    load: Load,
}

/// What the processes did during one perfdhcp run (its period and exit
/// wait): CPU time as % of one core, and datagrams the kernel dropped
/// because a UDP socket's receive buffer was full (Udp6RcvbufErrors), per
/// namespace.
#[derive(Default)]
struct Load {
    relay_cpu: Option<f64>,
    kea_cpu: f64,
    /// Client (perfdhcp), router (the relay; none direct), server (Kea).
    overflows: [u64; 3],
}

/// utime + stime of `pid` (all its threads), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Udp6RcvbufErrors in `ns`.
fn rcvbuf_errors(ns: &Netns) -> u64 {
    ns.exec(&["cat", "/proc/net/snmp6"])
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Udp6RcvbufErrors")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Perf {
    /// Completed 4-way exchanges (Replies received) per second of the test
    /// period. (perfdhcp's own "Rate" divides by the period plus the exit
    /// wait.)
    fn rate(&self) -> f64 {
        self.rr.received as f64 / self.secs as f64
    }

    fn drops(&self) -> u64 {
        self.sa.drops + self.rr.drops
    }

    fn show(&self) -> String {
        format!(
            "{:.0}/s, drops S-A {} R-R {}{}; S-A {}; R-R {}",
            self.rate(),
            self.sa.drops,
            self.rr.drops,
            match self.sa.orphans + self.rr.orphans {
                0 => String::new(),
                n => format!(" (orphans {n})"),
            },
            self.sa.show(),
            self.rr.show()
        ) + &self.load.show()
    }

    /// This run's delay less `direct`'s (same offered rate), in us.
    fn added(&self, direct: &Perf) -> String {
        let us = |a: f64, b: f64| format!("{:+.0}", (a - b) * 1e3);
        format!(
            "p50 {}/{} us, avg {}/{} us (S-A/R-R)",
            us(self.sa.pct(0.5), direct.sa.pct(0.5)),
            us(self.rr.pct(0.5), direct.rr.pct(0.5)),
            us(self.sa.avg, direct.sa.avg),
            us(self.rr.avg, direct.rr.avg),
        )
    }
}

impl Load {
    fn show(&self) -> String {
        let [c, r, k] = self.overflows;
        format!(
            "; CPU {}Kea {:.0}%{}",
            self.relay_cpu
                .map(|x| format!("relay {x:.0}%, "))
                .unwrap_or_default(),
            self.kea_cpu,
            if c + r + k == 0 {
                String::new()
            } else {
                format!("; full socket buffers: client {c}, router {r}, Kea {k}")
            }
        )
    }
}

/// perfdhcp's statistics and, with `-x t`, its per-exchange timestamps.
fn parse_perfdhcp(out: &str, secs: u32) -> Result<Perf> {
    let mut ex = [Exchange::default(), Exchange::default()];
    // (timestamps section?, 0 = Solicit-Advertise / 1 = Request-Reply)
    let mut section: Option<(bool, usize)> = None;
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("***") {
            let i = if h.contains("SOLICIT-ADVERTISE") {
                Some(0)
            } else if h.contains("REQUEST-REPLY") {
                Some(1)
            } else {
                None
            };
            section = i.map(|i| (h.starts_with("Timestamps"), i));
            continue;
        }
        let Some((times, i)) = section else { continue };
        let e = &mut ex[i];
        if times {
            if let Some((a, b)) = line
                .strip_prefix("sent / received: ")
                .and_then(|r| r.split_once(" / "))
            {
                e.delays
                    .push((b.trim().parse::<f64>()? - a.trim().parse::<f64>()?) * 1e3);
            }
        } else if let Some((k, v)) = line.split_once(": ") {
            let num = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            match k {
                "sent packets" => e.sent = num as u64,
                "received packets" => e.received = num as u64,
                "drops" => e.drops = num as u64,
                "orphans" => e.orphans = num as u64,
                "min delay" => e.min = num,
                "avg delay" => e.avg = num,
                "max delay" => e.max = num,
                _ => {}
            }
        }
    }
    for e in &mut ex {
        e.delays.sort_by(|a, b| a.total_cmp(b));
    }
    if ex[0].sent == 0 {
        bail!(
            "no Solicit-Advertise statistics in perfdhcp's output:\n{}",
            out.chars().take(4000).collect::<String>()
        );
    }
    let [sa, rr] = ex;
    Ok(Perf {
        sa,
        rr,
        secs,
        load: Load::default(),
    })
}

/// perfdhcp's arguments for one run: asking for prefixes (IA_PD) for up to
/// a million simulated clients, 4-way, from eth0 to ff02::1:2, for `secs`,
/// then waiting 1 s (the drop time) for answers still on their way;
/// `rate` None: unthrottled.
fn perfdhcp_args(rate: Option<u32>, secs: u32) -> Vec<String> {
    let mut a: Vec<String> = [
        "perfdhcp",
        "-6",
        "-l",
        "eth0",
        "-e",
        "prefix-only",
        "-R",
        "1000000",
        "-p",
        &secs.to_string(),
        "-W",
        "1000000",
        "-x",
        "t",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(r) = rate {
        a.extend(["-r".into(), r.to_string()]);
    }
    a.push("all".into());
    a
}

/// Run perfdhcp in `client` (bounded by `timeout`); exit status 3 means
/// some exchanges did not complete, which the figures count.
fn perfdhcp(client: &Netns, rate: Option<u32>, secs: u32) -> Result<Perf> {
    let mut args = vec!["timeout".to_string(), (secs + 60).to_string()];
    args.extend(perfdhcp_args(rate, secs));
    let out = client
        .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .context("spawning perfdhcp")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !matches!(out.status.code(), Some(0) | Some(3)) {
        bail!(
            "{args:?}: {}\n{}",
            out.status,
            text.chars().take(4000).collect::<String>()
        );
    }
    parse_perfdhcp(&text, secs)
}

/// A second of 4-way exchanges at 10/s through whatever is in the path,
/// every one completed (exit status 0). (perfdhcp's `-n 1` does not make
/// one exchange: unthrottled it floods, throttled it exits before the Reply.)
fn exchanges_complete(client: &Netns) -> bool {
    client
        .cmd(&[
            "timeout",
            "10",
            "perfdhcp",
            "-6",
            "-l",
            "eth0",
            "-e",
            "prefix-only",
            "-r",
            "10",
            "-p",
            "1",
            "-W",
            "1000000",
            "all",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn rate_label(rate: Option<u32>) -> String {
    match rate {
        Some(r) => format!("{r}/s offered"),
        None => "unthrottled".into(),
    }
}

/// The ladder's runs through one path, and what the relay showed after.
struct Ladder {
    runs: Vec<Perf>,
    after: String,
}

/// Fresh namespaces with Kea (subnet 2001:db8:1::/64, /64s delegated out
/// of 2001:db8:1000::/36), `via` in the path, perfdhcp in a client
/// namespace; the ladder of `rates` for `secs` each.
///
/// ```text
///  direct:   Kea eth0 ---- eth0 client (perfdhcp)
///  relayed:  Kea eth0 ---- wan0 router (relay) lan0 ---- eth0 client (perfdhcp)
///  2001:db8:feed::2/64       ::1          2001:db8:1::1/64
/// ```
fn relay_ladder(via: Via, rates: &[Option<u32>], secs: u32) -> Result<Ladder> {
    let dir = TempDir::new("r11")?;
    let direct = via == Via::Direct;
    let (server, router, client) = if direct {
        let server = Netns::new("ks")?;
        let client = Netns::new("pc")?;
        veth(&server, "eth0", &client, "eth0")?;
        client.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
        (server, None, client)
    } else {
        let (up, router) = upstream_and_router()?;
        let client = host_behind(&router, "lan0", "pc")?;
        router.add_addr("2001:db8:1::1/64", "lan0")?;
        (up, Some(router), client)
    };
    for ns in [&server, &client] {
        wait_for(Duration::from_secs(10), || ns.link_local("eth0").ok())
            .with_context(|| format!("no link-local address in {}", ns.name))?;
    }
    let listen = format!("eth0/{KEA_UNICAST}");
    let conf = kea_config(
        &dir,
        &[KeaSubnet {
            iface: if direct { "eth0" } else { &listen },
            subnet: "2001:db8:1::/64",
            pool: "2001:db8:1000::",
            pool_len: 36,
            plen: 64,
            relayed: !direct,
        }],
        3600,
    )?;
    let mut kea = start_kea(&server, &dir, &conf)?;
    let mut dhcrelay = None;
    let mut agent = None;
    if let Some(r) = &router {
        if via == Via::Dhcrelay {
            dhcrelay = Some(start_dhcrelay(
                r,
                &dir,
                "lan0",
                &format!("{KEA_UNICAST}%wan0"),
            )?);
        } else {
            agent = Some(Agent::start_opts(
                r,
                &dir,
                AgentOpts {
                    // perfdhcp's clients all come from one MAC: the
                    // relay's rate limits (20/s per MAC, 1000/s per
                    // interface) would measure themselves.
                    args: vec![
                        "--relay-to".into(),
                        KEA_UNICAST.into(),
                        "--relay-client-rate".into(),
                        "0".into(),
                        "--relay-iface-rate".into(),
                        "0".into(),
                    ],
                    ..AgentOpts::new(&["lan0"], &["wan0"])
                },
            )?);
        }
    }
    // The logs' last lines (Kea logs every lease).
    let tail = |t: String| {
        let l: Vec<&str> = t.lines().collect();
        l[l.len().saturating_sub(30)..].join("\n")
    };
    let logs = |dhcrelay: &Option<Daemon>, agent: &Option<Agent>| {
        format!(
            "kea:\n{}\ndhcrelay:\n{}\npd-agent:\n{}",
            tail(std::fs::read_to_string(dir.path("kea.log")).unwrap_or_default()),
            tail(dhcrelay.as_ref().map(|d| d.log_text()).unwrap_or_default()),
            tail(agent.as_ref().map(|a| a.log()).unwrap_or_default())
        )
    };
    wait_for(Duration::from_secs(20), || {
        exchanges_complete(&client).then_some(())
    })
    .with_context(|| {
        format!(
            "exchanges did not complete {}:\n{}",
            via.name(),
            logs(&dhcrelay, &agent)
        )
    })?;

    let mut runs = Vec::new();
    for &rate in rates {
        let relay_pid = dhcrelay
            .as_ref()
            .map(|d| d.pid())
            .or(agent.as_ref().map(|a| a.daemon.pid()));
        let spaces = [Some(&client), router.as_ref(), Some(&server)];
        let overflows = |ns: &[Option<&Netns>; 3]| ns.map(|n| n.map(rcvbuf_errors).unwrap_or(0));
        let (o0, r0, k0, t) = (
            overflows(&spaces),
            relay_pid.map(cpu_secs),
            cpu_secs(kea.pid()),
            Instant::now(),
        );
        let mut p = perfdhcp(&client, rate, secs)
            .with_context(|| format!("{} {}", via.name(), rate_label(rate)))?;
        let wall = t.elapsed().as_secs_f64();
        let o1 = overflows(&spaces);
        p.load = Load {
            relay_cpu: relay_pid.map(|pid| (cpu_secs(pid) - r0.unwrap_or(0.0)) / wall * 100.0),
            kea_cpu: (cpu_secs(kea.pid()) - k0) / wall * 100.0,
            overflows: [0, 1, 2].map(|i| o1[i] - o0[i]),
        };
        eprintln!("    {} {}: {}", via.name(), rate_label(rate), p.show());
        runs.push(p);
        thread::sleep(Duration::from_millis(300));
    }
    kea.check_alive()?;

    let after = match (&router, dhcrelay.as_mut(), &agent) {
        (Some(_), Some(d), _) => {
            d.check_alive()?;
            format!(
                "dhcrelay: {} log lines (-d logs each relayed message)",
                d.log_text().lines().count()
            )
        }
        (Some(r), None, Some(agent)) => {
            // Routes trail the Replies: wait until their count stops moving.
            let count = || {
                r.exec(&[
                    "sh",
                    "-c",
                    &format!("ip -6 route show proto {PROTO} | wc -l"),
                ])
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
            };
            let t = Instant::now();
            let mut routes = count();
            while t.elapsed() < Duration::from_secs(30) {
                thread::sleep(Duration::from_millis(500));
                let c = count();
                if c == routes {
                    break;
                }
                routes = c;
            }
            let st = agent.stats()?;
            let relay = &st["relay"];
            let sum = |v: &serde_json::Value| -> u64 {
                v.as_object()
                    .map(|m| m.values().filter_map(|x| x.as_u64()).sum())
                    .unwrap_or(0)
            };
            let log = agent.log();
            let problems: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
                .collect();
            format!(
                "pd-agent: routes (proto {PROTO}) {routes}; bindings {}; relayed up {} / down {} (lan0: {} / {}); \
                 relay.drops {}; send_errors {}; kernel ringbuf_full {}; log: {} lines, {} WARN/ERROR{}",
                st["bindings"],
                sum(&relay["up"]["lan0"]),
                sum(&relay["down"]["lan0"]),
                relay["up"]["lan0"],
                relay["down"]["lan0"],
                relay["drops"],
                relay["send_errors"],
                st["kernel"]["ringbuf_full"],
                log.lines().count(),
                problems.len(),
                problems
                    .first()
                    .map(|l| format!(" (first: {})", l.trim()))
                    .unwrap_or_default()
            )
        }
        _ => String::new(),
    };
    Ok(Ladder { runs, after })
}

/// Relay throughput and added latency: perfdhcp drives one Kea through
/// pd-agent's relay, through ISC dhcrelay, and directly (Kea's own limit),
/// at the same offered rates, each path in fresh namespaces.
fn row11_relay_throughput(b: &mut Bench) -> Result<()> {
    let secs: u32 = if b.quick { 3 } else { 10 };
    let rates = [Some(100), Some(500), Some(1000), Some(2000), None];
    let resolv = std::fs::read("/etc/resolv.conf").ok();
    let direct = relay_ladder(Via::Direct, &rates, secs)?;
    let dhcrelay = relay_ladder(Via::Dhcrelay, &rates, secs)?;
    let agent = relay_ladder(Via::PdAgent, &rates, secs)?;
    if std::fs::read("/etc/resolv.conf").ok() != resolv {
        bail!("the host's /etc/resolv.conf changed during row 11");
    }
    for (k, &rate) in rates.iter().enumerate() {
        let (d, r, a) = (&direct.runs[k], &dhcrelay.runs[k], &agent.runs[k]);
        let ratio = a.rate() / r.rate().max(1e-9);
        // Below Kea's own limit: the offered rate completed directly without a drop.
        let below_kea = rate.is_some() && d.drops() == 0;
        b.push(Row {
            row: 11,
            what: format!("relay throughput and added latency, {}", rate_label(rate)),
            figure: format!("pd-agent {}; added vs direct: {}", a.show(), a.added(d)),
            baseline: format!(
                "dhcrelay {}; added vs direct: {}. Direct Kea {}",
                r.show(),
                r.added(d),
                d.show()
            ),
            ratio: Some(ratio),
            target: ">= 0.99 of dhcrelay; 0 drops where direct has none".into(),
            met: Some(ratio >= 0.99 && (!below_kea || a.drops() == 0)),
            notes: String::new(),
            command: b.cmd(11),
        });
    }
    b.push(Row {
        row: 11,
        what: "relays after the ladder".into(),
        figure: agent.after,
        baseline: dhcrelay.after,
        ratio: None,
        target: "report".into(),
        met: None,
        notes: format!(
            "`{}` (-r RATE omitted for the unthrottled run; -x t prints each exchange's timestamps), in a client \
             namespace behind the router's lan0 (direct: on Kea's own link, no relay); Kea 2.2 (memfile, not \
             persisted), subnet 2001:db8:1::/64, pd-pool 2001:db8:1000::/36 delegating /64s, valid 3600 s, \
             listening on eth0/{KEA_UNICAST} for the relays; fresh namespaces and Kea for each path, the same \
             ladder in the same order. Rate = Replies received / test period (4-way exchanges completed). \
             Drops are perfdhcp's: no answer within its 1 s drop time, including any still unanswered 1 s after \
             the period. Delays min/avg/max as perfdhcp reports them; p50/p99 computed from its per-exchange \
             timestamps. CPU: the relay's and Kea's user+system time over the run (period + 1 s wait), in % of \
             one core; full socket buffers: Udp6RcvbufErrors during the run in the client's, the router's (the \
             relay's socket) and Kea's namespace. 'Added vs direct' is the relayed delay less the direct one at the same offered rate: \
             the relay's work both ways plus one more veth hop and the router's forwarding. pd-agent also snoops \
             every Reply and installs a route per delegated prefix (dhcrelay installs none); routes counted after \
             the ladder. pd-agent runs with its rate limits off (--relay-client-rate 0 --relay-iface-rate 0): \
             perfdhcp's simulated clients share one MAC. The host's /etc/resolv.conf was unchanged. perfdhcp, Kea, the relay and the routes share \
             this machine's {} cores.",
            perfdhcp_args(Some(0), secs).join(" ").replace("-r 0", "-r RATE"),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ),
        command: b.cmd(11),
    });
    Ok(())
}
