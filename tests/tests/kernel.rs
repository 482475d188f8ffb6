//! The kernel programs against the reference parser (root: BPF_PROG_TEST_RUN).
//!
//! Every corpus frame (synthetic and captured) runs through the XDP and the
//! TC program. For each we check, Katran-style, {input, expected action,
//! expected output packet, expected events, expected counters}: the action
//! is always "pass", the packet comes out byte-for-byte unchanged, and the
//! events and counters equal what the reference parser predicts.

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use pd_agent::{
    dhcp::{parse_frame, Outcome},
    ebpf::{Counters, Programs},
};
use pd_common::{hook, Counter, PdEvent};
use pd_tests::{corpus, unique};

/// Verifier cost ceilings: each program's verified instruction count must
/// stay below this (measured 20,747 on kernel 6.18 when it was set).
const INSN_CEILING: u32 = 40_000;

const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1

struct Loaded {
    progs: Programs,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    counters: Counters,
    pin: std::path::PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
    }
}

fn load() -> Loaded {
    let pin = std::path::PathBuf::from("/sys/fs/bpf").join(unique("ktest"));
    let mut progs = Programs::load(&pin).expect("load programs");
    let ring = progs.take_events().unwrap();
    let counters = progs.take_counters().unwrap();
    Loaded { progs, ring, counters, pin }
}

fn snapshot(c: &Counters) -> BTreeMap<&'static str, u64> {
    c.read().into_iter().collect()
}

fn delta(before: &BTreeMap<&'static str, u64>, after: &BTreeMap<&'static str, u64>) -> BTreeMap<&'static str, u64> {
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

#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kernel_matches_reference_parser_on_corpus() {
    let mut l = load();
    let cases = corpus::all();
    assert!(cases.len() > 90, "corpus has {} cases", cases.len());
    let mut checked = 0;
    for c in &cases {
        for (h, want_ret) in [(hook::XDP_INGRESS, XDP_PASS), (hook::TC_EGRESS, TC_ACT_UNSPEC)] {
            let before = snapshot(&l.counters);
            let mut out = vec![0u8; c.frame.len() + 256];
            let opts = TestRunOptions { data_in: Some(&c.frame), data_out: Some(&mut out), ..Default::default() };
            let res = if h == hook::XDP_INGRESS { l.progs.xdp().test_run(opts) } else { l.progs.tc().test_run(opts) };
            let res = match res {
                Ok(r) => r,
                // The kernel refuses test frames shorter than an Ethernet
                // header, and (for skb programs) IPv6 frames shorter than
                // an IPv6 header: such frames never reach a program. Its
                // skb test runs are also limited to one page.
                Err(_) if c.frame.len() < 14 || (h == hook::TC_EGRESS && (c.frame.len() < 54 || c.frame.len() > 3500)) => continue,
                Err(e) => panic!("{} ({h}): test run: {e}", c.name),
            };
            assert_eq!(res.return_value, want_ret, "{} ({h}): action", c.name);
            assert_eq!(&out[..res.data_size_out as usize], &c.frame[..], "{} ({h}): packet unchanged", c.name);

            let got = drain(&mut l.ring);
            let p = parse_frame(&c.frame, h, got.first().map(|e| e.ifindex).unwrap_or(0));
            let want: Vec<PdEvent> = match &p.outcome {
                Outcome::Events(e) => e.clone(),
                _ => vec![],
            };
            let strip = |v: &[PdEvent]| v.iter().map(|e| PdEvent { seq: 0, ..*e }).collect::<Vec<_>>();
            assert_eq!(strip(&got), strip(&want), "{} ({h}): events", c.name);
            if got.len() > 1 {
                assert!(got.iter().all(|e| e.seq == got[0].seq), "{}: one seq per message", c.name);
            }
            assert_eq!(
                delta(&before, &snapshot(&l.counters)),
                expected_counters(&p.outcome, &p.side),
                "{} ({h}): counters",
                c.name
            );
            checked += 1;
        }
    }
    eprintln!("{checked} frame/program runs agree");
}

#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn verified_instruction_counts_stay_under_ceiling() {
    let mut l = load();
    let (x, t) = l.progs.verified_instructions();
    let (x, t) = (x.expect("xdp count"), t.expect("tc count"));
    eprintln!("verified instructions: pd_xdp {x}, pd_tc_egress {t} (ceiling {INSN_CEILING})");
    assert!(x < INSN_CEILING, "pd_xdp verified {x} instructions");
    assert!(t < INSN_CEILING, "pd_tc_egress verified {t} instructions");
}
