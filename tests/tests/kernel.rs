//! The kernel programs against the reference parser (root: BPF_PROG_TEST_RUN).
//!
//! Every corpus frame (synthetic and captured) runs through the XDP and the
//! TC program. For each we check, Katran-style, {input, expected action,
//! expected output packet, expected events, expected counters}: the action
//! is always "pass", the packet comes out byte-for-byte unchanged, and the
//! events and counters equal what the reference parser predicts.

use std::{collections::BTreeMap, net::Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use pd_agent::{
    dhcp::{parse_packet, Outcome},
    ebpf::{Counters, LoadOptions, Programs},
};
use pd_common::{hook, Counter, PdEvent};
use pd_tests::{corpus, repetitions, unique};

/// Verifier cost ceilings: each program's verified instruction count must
/// stay below this (measured 20,747 on kernel 6.18 when it was set).
const INSN_CEILING: u32 = 40_000;
/// The same with `--kernel-debug` (the log subprogram is verified at every
/// call site; measured 84,206 on 6.18 when set; the kernel's limit is a
/// million).
const DEBUG_INSN_CEILING: u32 = 200_000;
/// The compat programs' ([`load_compat`]), without and with logging
/// (measured at most 69,709 and 124,127 on 6.18 when set).
const COMPAT_INSN_CEILING: u32 = 100_000;
const COMPAT_DEBUG_INSN_CEILING: u32 = 300_000;
/// How much higher the ceilings are on kernels before 6.12 ([`ceiling_of`]).
const OLD_VERIFIER_FACTOR: u32 = 3;

/// The largest test frame every kernel runs: skb test runs, and XDP's
/// before 5.18, take one page less the head- and tailroom.
const ONE_PAGE_FRAME: usize = 3500;

const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1

struct Loaded {
    progs: Programs,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    counters: Counters,
    clients: aya::maps::HashMap<aya::maps::MapData, pd_common::ClientKey, pd_common::ClientRecord>,
    pin: std::path::PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

fn load() -> Loaded {
    load_with(LoadOptions::default())
}

/// The compat programs (no `bpf_loop`, no `bpf_xdp_load_bytes`), which
/// kernels before 5.18 get, on any kernel.
fn load_compat() -> Loaded {
    load_with(LoadOptions {
        force_compat: true,
        ..Default::default()
    })
}

fn load_with(opts: LoadOptions) -> Loaded {
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("ktest"));
    let mut progs = Programs::load_with(&pin, opts).expect("load programs");
    let ring = progs.take_events().unwrap();
    let counters = progs.take_counters().unwrap();
    let clients = progs.take_clients().unwrap();
    Loaded {
        progs,
        ring,
        counters,
        clients,
        pin,
    }
}

fn snapshot(c: &Counters) -> BTreeMap<&'static str, u64> {
    c.read().into_iter().collect()
}

fn delta(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .filter(|(k, _)| **k != Counter::Seen.name())
        .map(|(k, v)| (*k, v - before[k]))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn expected_counters(o: &Outcome, side: &[Counter]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    match o {
        Outcome::NotDhcp => {}
        Outcome::Rejected(c) => *m.entry(c.name()).or_insert(0) += 1,
        Outcome::Events(e) => {
            m.insert(Counter::Parsed.name(), 1);
            m.insert(Counter::Events.name(), e.len() as u64);
        }
    }
    for c in side {
        *m.entry(c.name()).or_insert(0) += 1;
    }
    m
}

fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<PdEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(pd_agent::snoop::decode(&item).expect("decodable event"));
    }
    out
}

/// Run `frame` through both programs and compare with the reference
/// parser; returns how many program runs were compared (XDP, then TC).
/// `bare`: the test
/// runs' interface (loopback) is flagged as a link without link-layer
/// header, and `frame` starts with its IPv6 header.
fn check(l: &mut Loaded, name: &str, frame: &[u8], bare: bool) -> usize {
    check_hooks(l, name, frame, bare).iter().sum()
}

/// [`check`], counting compared runs per program: [XDP, TC].
fn check_hooks(l: &mut Loaded, name: &str, frame: &[u8], bare: bool) -> [usize; 2] {
    let mut checked = [0; 2];
    for (h, want_ret) in [
        (hook::XDP_INGRESS, XDP_PASS),
        (hook::TC_EGRESS, TC_ACT_UNSPEC),
    ] {
        let before = snapshot(&l.counters);
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let res = if h == hook::XDP_INGRESS {
            l.progs.xdp().unwrap().test_run(opts)
        } else {
            l.progs.tc().unwrap().test_run(opts)
        };
        let res = match res {
            Ok(r) => r,
            // The kernel refuses test frames shorter than an Ethernet
            // header, and (for skb programs) IPv6 frames shorter than an
            // IPv6 header: such frames never reach a program. Its skb test
            // runs are also limited to one page, and so are XDP's before
            // 5.18 (no fragments).
            Err(_)
                if frame.len() < 14
                    || frame.len() > ONE_PAGE_FRAME
                    || (h == hook::TC_EGRESS && (frame.len() < 54 || bare)) =>
            {
                continue
            }
            Err(e) => panic!("{name} ({h}): test run: {e}"),
        };
        assert_eq!(res.return_value, want_ret, "{name} ({h}): action");
        assert_eq!(
            &out[..res.data_size_out as usize],
            frame,
            "{name} ({h}): packet unchanged"
        );

        let got = drain(&mut l.ring);
        let p = parse_packet(frame, h, got.first().map(|e| e.ifindex).unwrap_or(0), bare);
        let want: Vec<PdEvent> = match &p.outcome {
            Outcome::Events(e) => e.clone(),
            _ => vec![],
        };
        let strip = |v: &[PdEvent]| {
            v.iter()
                .map(|e| PdEvent {
                    seq: 0,
                    ts_ns: 0,
                    ..*e
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip(&got),
            strip(&want),
            "{name} ({h}): events; frame {}",
            hex(frame)
        );
        if got.len() > 1 {
            assert!(
                got.iter().all(|e| e.seq == got[0].seq),
                "{name}: one seq per message"
            );
        }
        let slot = usize::from(h == hook::TC_EGRESS);
        if let Some(first) = got.first().filter(|e| e.client_duid_len > 0) {
            check_record(l, name, first, &got);
        }
        assert_eq!(
            delta(&before, &snapshot(&l.counters)),
            expected_counters(&p.outcome, &p.side),
            "{name} ({h}): counters; frame {}",
            hex(frame)
        );
        checked[slot] += 1;
    }
    checked
}

/// The message's record in `pd_clients_v1` replays as the same message
/// the events assemble into (up to the record's prefix limit).
fn check_record(l: &Loaded, name: &str, first: &PdEvent, events: &[PdEvent]) {
    use pd_common::{class, ClientKey, DUID_MAX, RECORD_PREFIXES};
    let mut duid = [0u8; DUID_MAX];
    let n = (first.client_duid_len as usize).min(DUID_MAX);
    duid[..n].copy_from_slice(&first.client_duid[..n]);
    let key = ClientKey {
        ifindex: first.ifindex,
        hook: first.hook,
        class: if first.msg_type == pd_common::msg::REPLY {
            class::REPLY
        } else {
            class::CLIENT
        },
        duid_len: n as u16,
        duid,
    };
    let rec = l
        .clients
        .get(&key, 0)
        .unwrap_or_else(|e| panic!("{name}: no client record: {e}"));
    assert_eq!(
        rec.ev.seq, first.seq,
        "{name}: record is the latest message"
    );
    let mut asm = pd_agent::snoop::Assembler::default();
    let mut want = events
        .iter()
        .find_map(|e| asm.push(e))
        .expect("whole message");
    let mut got = pd_agent::snoop::Message::from_record(&rec);
    if want.prefixes.len() > RECORD_PREFIXES {
        assert_ne!(
            got.flags & pd_common::flags::PREFIXES_DROPPED,
            0,
            "{name}: record marks dropped prefixes"
        );
        // The record keeps the message's first prefixes, in wire order.
        let first: Vec<(Ipv6Addr, u8)> = events[..RECORD_PREFIXES]
            .iter()
            .map(|e| (Ipv6Addr::from(e.prefix), e.prefix_len))
            .collect();
        let mut kept: Vec<(Ipv6Addr, u8)> =
            got.prefixes.iter().map(|p| (p.prefix, p.len)).collect();
        let mut first_sorted = first.clone();
        first_sorted.sort();
        kept.sort();
        assert_eq!(
            kept, first_sorted,
            "{name}: record holds the first {RECORD_PREFIXES} prefixes"
        );
        want.prefixes.retain(|p| first.contains(&(p.prefix, p.len)));
        got.flags = want.flags;
    }
    got.from_record = false;
    assert_eq!(got, want, "{name}: record replays as the message");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kernel_matches_reference_parser_on_corpus() {
    corpus_agrees(load());
}

/// The compat programs (the bounded-loop walk, the probe-read copy) agree
/// with the reference parser as the others do. On kernels before 5.18
/// [`load`] gets them too, so every test here runs them.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn compat_programs_match_reference_parser_on_corpus_and_mutants() {
    let l = load_compat();
    assert_eq!(
        (l.progs.xdp_name(), l.progs.tc_name()),
        (
            pd_common::prog::XDP_COMPAT,
            pd_common::prog::TC_EGRESS_COMPAT
        )
    );
    mutants_agree(corpus_agrees(l));
}

fn corpus_agrees(mut l: Loaded) -> Loaded {
    let cases = corpus::all();
    assert!(cases.len() > 90, "corpus has {} cases", cases.len());
    let checked: usize = cases
        .iter()
        .map(|c| check(&mut l, &c.name, &c.frame, false))
        .sum();
    eprintln!(
        "{}/{}: {checked} frame/program runs agree",
        l.progs.xdp_name(),
        l.progs.tc_name()
    );
    l
}

/// The same corpus and mutants as they arrive on a link without a
/// link-layer header (ppp, tun, WireGuard): the IPv6 header first, on an
/// interface the agent flagged `L3`.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kernel_matches_reference_parser_on_bare_ip_links() {
    let mut l = load();
    // Test runs without a context see the loopback device (ifindex 1).
    let mut ifaces = l.progs.take_ifaces().unwrap();
    ifaces.insert(1u32, pd_common::ifflags::L3, 0).unwrap();
    let cases = corpus::all();
    let untagged = |f: &[u8]| f.len() > 14 && f[12..14] == [0x86, 0xdd];
    let mut checked = [0; 2];
    let mut with_events = 0;
    let mut run = |l: &mut Loaded, name: &str, f: &[u8]| {
        let before = snapshot(&l.counters)[Counter::Events.name()];
        let [x, t] = check_hooks(l, name, &f[14..], true);
        checked[0] += x;
        checked[1] += t;
        if snapshot(&l.counters)[Counter::Events.name()] > before {
            with_events += 1;
        }
    };
    for c in cases.iter().filter(|c| untagged(&c.frame)) {
        run(&mut l, &c.name, &c.frame);
    }
    let mut rng = Rng(0x05ee_d0f9_db4e);
    let n = repetitions(1000);
    for i in 0..n {
        let c = &cases[rng.below(cases.len())];
        let m = mutate(&mut rng, &c.frame);
        if untagged(&m) {
            run(&mut l, &format!("bare mutant {i} of {}", c.name), &m);
        }
    }
    // An IPv4 packet on the same link is not DHCPv6 (version nibble).
    let mut v4 = corpus::all()[0].frame[14..].to_vec();
    v4[0] = 0x45;
    checked[0] += check(&mut l, "IPv4 on a bare link", &v4, true);
    eprintln!(
        "{} XDP and {} TC bare runs agree ({with_events} produced events)",
        checked[0], checked[1]
    );
    assert!(
        with_events > n / 10,
        "bare frames reach the event path: {with_events} of {n}"
    );
    // The TC program is tested on bare packets too, not only skipped.
    assert!(checked[1] > 100, "TC runs on bare packets: {}", checked[1]);
}

/// A small deterministic PRNG (xorshift64*): the same mutants every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutate the DHCPv6 payload of a corpus frame (flip, overwrite with
/// interesting values, truncate, insert, duplicate), then, most of the
/// time, fix the IPv6 and UDP lengths so the mutant reaches the parser.
fn mutate(rng: &mut Rng, frame: &[u8]) -> Vec<u8> {
    const PAYLOAD: usize = 14 + 40 + 8;
    let mut f = frame.to_vec();
    if f.len() <= PAYLOAD || f[12..14] != [0x86, 0xdd] || f[20] != 17 {
        // Not a plain IPv6/UDP frame: mutate anywhere, keep lengths.
        let i = rng.below(f.len());
        f[i] ^= 1 << rng.below(8);
        return f;
    }
    let mut p = f.split_off(PAYLOAD);
    for _ in 0..1 + rng.below(4) {
        let len = p.len().max(1);
        match rng.below(6) {
            0 => {
                let i = rng.below(len);
                if i < p.len() {
                    p[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(len);
                let v = [0u8, 1, 0x7f, 0x80, 0xff, 9, 13, 25, 26, 12, 13][rng.below(11)];
                if i < p.len() {
                    p[i] = v;
                }
            }
            2 => p.truncate(rng.below(len)),
            3 => {
                let i = rng.below(len);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                let at = i.min(p.len());
                p.splice(at..at, bytes);
            }
            4 => {
                let a = rng.below(len).min(p.len());
                let b = (a + rng.below(40)).min(p.len());
                let seg = p[a..b].to_vec();
                p.splice(b..b, seg);
            }
            _ => {
                // An option length field set to something odd.
                if p.len() > 8 {
                    let i = 4 + 2 * rng.below((p.len() - 6) / 2);
                    let v = [0u16, 1, 2, 3, 11, 12, 24, 25, 0xffff][rng.below(9)];
                    p[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    if rng.below(8) != 0 {
        let udp_len = (8 + p.len()) as u16;
        f[18..20].copy_from_slice(&udp_len.to_be_bytes());
        f[58..60].copy_from_slice(&udp_len.to_be_bytes());
    }
    f.extend(p);
    f
}

/// A few thousand mutants of the corpus, generated with a fixed seed, agree
/// between the kernel programs and the reference parser.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kernel_matches_reference_parser_on_mutants() {
    mutants_agree(load());
}

fn mutants_agree(mut l: Loaded) {
    let cases = corpus::all();
    let mut rng = Rng(0x5eed_0f9d_2026);
    let mut checked = 0;
    let mut with_events = 0;
    let n = repetitions(4000);
    for i in 0..n {
        let c = &cases[rng.below(cases.len())];
        let m = mutate(&mut rng, &c.frame);
        let before = snapshot(&l.counters)[Counter::Events.name()];
        checked += check(&mut l, &format!("mutant {i} of {}", c.name), &m, false);
        if snapshot(&l.counters)[Counter::Events.name()] > before {
            with_events += 1;
        }
    }
    eprintln!("{checked} mutant runs agree ({with_events} mutants still produced events)");
    assert!(
        with_events > n / 10,
        "mutants should still reach the event path: {with_events} of {n}"
    );
}

#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn verified_instruction_counts_stay_under_ceiling() {
    for mut l in [load(), load_compat()] {
        let (xn, tn) = (l.progs.xdp_name(), l.progs.tc_name());
        let ceiling = ceiling_of(xn, false);
        let (Some(x), Some(t)) = l.progs.verified_instructions() else {
            eprintln!("{xn}, {tn} loaded; this kernel does not report verified instruction counts (before 5.16)");
            continue;
        };
        eprintln!("verified instructions: {xn} {x}, {tn} {t} (ceiling {ceiling})");
        assert!(x < ceiling, "{xn} verified {x} instructions");
        assert!(t < ceiling, "{tn} verified {t} instructions");
    }
}

/// The ceiling for a program: the compat walk is a loop the verifier
/// unrolls (256 calls of the step), which costs more. The ceilings were
/// set on 6.18; older verifiers prune fewer states (6.1 counted 69,587
/// for `pd_xdp` at its defaults where 6.18 counts 36,878), so before 6.12
/// each is [`OLD_VERIFIER_FACTOR`] times as high, still far below the
/// kernel's limit of a million.
fn ceiling_of(xdp_name: &str, kernel_log: bool) -> u32 {
    let base = match (xdp_name == pd_common::prog::XDP_COMPAT, kernel_log) {
        (false, false) => INSN_CEILING,
        (false, true) => DEBUG_INSN_CEILING,
        (true, false) => COMPAT_INSN_CEILING,
        (true, true) => COMPAT_DEBUG_INSN_CEILING,
    };
    if pd_tests::kernel_before(6, 12) {
        base * OLD_VERIFIER_FACTOR
    } else {
        base
    }
}

/// A `log::Log` keeping every message, for reading the kernel's log.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0.lock().unwrap().push(r.args().to_string());
    }
    fn flush(&self) {}
}

/// `--kernel-debug`. Loaded with logging on, the programs verify under
/// their ceiling, and every malformed corpus frame the XDP program rejects is
/// logged once under the counter the reference parser names; a packet to
/// a delegated prefix the fast path leaves to the kernel (no flags for its
/// interface: `fwd_firewall`) is logged with its reason too. Loaded with
/// logging off, the same packets log nothing: the calls were pruned. Every
/// combination of the load-time switches verifies, logging on or off.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kernel_debug_log_names_each_reject() {
    use pd_agent::{
        binding::{Binding, Kind},
        klog,
        maps::RouteMap,
    };
    let rejects: Vec<(String, Vec<u8>, Counter)> = corpus::all()
        .into_iter()
        .filter(|c| c.frame.len() >= 14)
        .filter_map(
            |c| match parse_packet(&c.frame, hook::XDP_INGRESS, 0, false).outcome {
                Outcome::Rejected(r) => Some((c.name.clone(), c.frame.clone(), r)),
                _ => None,
            },
        )
        .collect();
    assert!(rejects.len() > 20, "the corpus has malformed frames");
    // An ICMPv6 echo to 2001:db8:100::1, inside a delegated prefix.
    let mut echo = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    echo.extend([0x60, 0, 0, 0, 0, 8, 58, 64]);
    echo.extend("2001:db8:ffff::1".parse::<Ipv6Addr>().unwrap().octets());
    echo.extend("2001:db8:100::1".parse::<Ipv6Addr>().unwrap().octets());
    echo.extend([128, 0, 0, 0, 0, 1, 0, 1]);
    // Every combination of load-time switches verifies, with logging and
    // without (each prunes other code, and so leaves LLVM's code other
    // paths).
    // A kernel that needs the compat programs loads them whatever
    // `force_compat` says: the second half would repeat the first.
    let mut compat_anyway = false;
    for bits in 0..64u8 {
        if bits & 32 != 0 && compat_anyway {
            break;
        }
        let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("klog"));
        let _cleanup = PinDir(pin.clone());
        let opts = LoadOptions {
            fast_path: bits & 1 != 0,
            sav: bits & 2 != 0,
            bare_links: bits & 4 != 0,
            kernel_log: bits & 8 != 0,
            relay: bits & 16 != 0,
            force_compat: bits & 32 != 0,
            ..Default::default()
        };
        let mut progs = Programs::load_with(&pin, opts)
            .unwrap_or_else(|e| panic!("loading with logging and {opts:?}: {e:#}"));
        let (xn, tn) = (progs.xdp_name(), progs.tc_name());
        if bits == 0 && xn == pd_common::prog::XDP_COMPAT {
            eprintln!("this kernel needs the compat programs: 32 combinations");
            compat_anyway = true;
        }
        let (Some(x), Some(t)) = progs.verified_instructions() else {
            eprintln!("{opts:?}: {xn}, {tn} loaded (no instruction counts before 5.16)");
            continue;
        };
        eprintln!("{opts:?}: {xn} {x}, {tn} {t}");
        // Without logging, every combination an agent may load stays under
        // the default build's ceiling.
        let ceiling = ceiling_of(xn, opts.kernel_log);
        assert!(x < ceiling && t < ceiling, "{opts:?}: {x}, {t}");
    }
    for on in [true, false] {
        let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("klog"));
        let _cleanup = PinDir(pin.clone());
        let opts = LoadOptions {
            kernel_log: on,
            ..Default::default()
        };
        let mut progs = Programs::load_with(&pin, opts).expect("load programs");
        if on {
            if let (Some(x), Some(t)) = progs.verified_instructions() {
                let (xn, tn) = (progs.xdp_name(), progs.tc_name());
                eprintln!("with kernel logging: {xn} {x}, {tn} {t} verified instructions");
                let ceiling = ceiling_of(xn, true);
                assert!(x < ceiling && t < ceiling, "{x}, {t}");
            }
        }
        let mut routes = RouteMap::new(
            progs.take_routes().unwrap(),
            progs.take_fwd_stats().unwrap(),
        );
        routes
            .insert(&Binding {
                prefix: "2001:db8:100::/56".parse().unwrap(),
                kind: Kind::Delegated,
                iface: "lan0".into(),
                ifindex: 1,
                next_hop: "fe80::c".parse().unwrap(),
                client_duid: vec![0, 1, 2],
                iaid: 1,
                t1: 0,
                t2: 0,
                preferred_lifetime: 100,
                valid_lifetime: 200,
                expires_at: None,
                updated_at: 0,
            })
            .unwrap();
        let capture = Capture::default();
        let mut logger = progs
            .take_kernel_log(capture.clone())
            .expect("aya-log's map");
        let mut run = |frame: &[u8]| -> Option<Vec<(Counter, u32)>> {
            let opts = TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            };
            if let Err(e) = progs.xdp().unwrap().test_run(opts) {
                // Before 5.18 an XDP test frame fits in one page.
                assert!(frame.len() > ONE_PAGE_FRAME, "test run: {e}");
                return None;
            }
            logger.flush();
            let got: Vec<String> = std::mem::take(&mut *capture.0.lock().unwrap());
            Some(
                got.iter()
                    .map(|m| klog::parse(m).unwrap_or_else(|| panic!("unreadable record {m:?}")))
                    .collect(),
            )
        };
        for (name, frame, want) in &rejects {
            let Some(got) = run(frame) else { continue };
            if on {
                assert!(
                    got.iter().any(|(c, _)| c == want),
                    "{name}: rejected as {}, logged {got:?}",
                    want.name()
                );
            } else {
                assert!(got.is_empty(), "{name}: logged {got:?} with logging off");
            }
        }
        let got = run(&echo).expect("the echo runs");
        if on {
            assert_eq!(
                got.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
                [Counter::FwdFirewall]
            );
        } else {
            assert!(got.is_empty(), "fast path logged {got:?} with logging off");
        }
    }
}

/// Removes a test's pin directory.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The relay's rate limits (`--relay-to`): on an interface flagged
/// `RELAY`, a client's messages to port 547 past its MAC's burst are
/// dropped in XDP and counted `relay_client_rate`, while another MAC's
/// pass; a lower relay's Relay-Forw meets only the interface's limit;
/// past the interface's burst every MAC is dropped (`relay_iface_rate`).
/// What passes has its sender's MAC recorded for option 79. Without the
/// flag, nothing is limited.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn relay_rate_limits_drop_floods_in_xdp() {
    const XDP_DROP: u32 = 1;
    let mut l = load();
    let mut ifaces = l.progs.take_ifaces().unwrap();
    let macs = l.progs.take_relay_macs().unwrap();
    l.progs
        .set_relay_limits(pd_common::RelayLimits {
            iface_rate: 1,
            iface_burst: 40,
            client_rate: 1,
            client_burst: 10,
        })
        .unwrap();
    let solicit = corpus::msg_raw(1, 0x0a0b0c, &corpus::tlv(1, &corpus::duid(3)));
    let frame = |mac: u8, payload: &[u8]| {
        let mut f = corpus::Frame {
            src: "fe80::c1".parse().unwrap(),
            dst: "ff02::1:2".parse().unwrap(),
            dport: 547,
            ..Default::default()
        }
        .build(payload);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, mac]);
        f
    };
    let run = |l: &mut Loaded, f: &[u8]| -> u32 {
        let mut out = vec![0u8; f.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(f),
            data_out: Some(&mut out),
            ..Default::default()
        };
        l.progs.xdp().unwrap().test_run(opts).unwrap().return_value
    };
    let count = |l: &Loaded, c: Counter| snapshot(&l.counters)[c.name()];
    // Not flagged: never limited.
    for _ in 0..30 {
        assert_eq!(run(&mut l, &frame(1, &solicit)), XDP_PASS);
    }
    assert_eq!(count(&l, Counter::RelayClientRate), 0);
    // Test runs without a context see the loopback device (ifindex 1).
    ifaces.insert(1u32, pd_common::ifflags::RELAY, 0).unwrap();
    let verdicts: Vec<u32> = (0..15).map(|_| run(&mut l, &frame(1, &solicit))).collect();
    assert_eq!(&verdicts[..10], &[XDP_PASS; 10], "the burst passes");
    assert_eq!(&verdicts[10..], &[XDP_DROP; 5], "then MAC 1 is dropped");
    assert_eq!(count(&l, Counter::RelayClientRate), 5);
    // Another client on the link is served.
    assert_eq!(run(&mut l, &frame(2, &solicit)), XDP_PASS);
    // A lower relay's Relay-Forw from the flooding MAC: the interface's limit only.
    let forw = corpus::relay(
        12,
        0,
        corpus::a("2001:db8:1::1"),
        corpus::a("fe80::c9"),
        &[],
        &solicit,
    );
    assert_eq!(run(&mut l, &frame(1, &forw)), XDP_PASS);
    // The interface's burst (40) is spent by the 10 + 1 + 1 above and these.
    let more: Vec<u32> = (0..40)
        .map(|i| run(&mut l, &frame(10 + i, &solicit)))
        .collect();
    assert_eq!(
        more.iter().filter(|v| **v == XDP_PASS).count(),
        28,
        "{more:?}"
    );
    assert_eq!(count(&l, Counter::RelayIfaceRate), 12);
    // The MAC the last passing message came from, by its address.
    let key = pd_common::MacKey {
        ifindex: 1,
        addr: "fe80::c1".parse::<Ipv6Addr>().unwrap().octets(),
    };
    let m = macs.get(&key, 0).expect("a MAC recorded for fe80::c1");
    assert_eq!(&m[..6], &[2, 0, 0, 0, 0, 10 + 27]);
}
