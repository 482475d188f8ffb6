//! The userspace reference parser must never panic, and what it reports
//! must hold together (counts, indexes, bounded DUID lengths).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pd_agent::dhcp::{parse_frame, Outcome};
use pd_common::{flags, hook, MAX_PREFIXES};

fuzz_target!(|data: &[u8]| {
    for h in [hook::XDP_INGRESS, hook::TC_EGRESS] {
        if let Outcome::Events(ev) = parse_frame(data, h, 1).outcome {
            assert!(!ev.is_empty() && ev.len() <= MAX_PREFIXES);
            for (i, e) in ev.iter().enumerate() {
                assert_eq!(e.index as usize, i);
                assert_eq!(e.count as usize, ev.len());
                if e.flags & flags::HAS_PREFIX != 0 {
                    assert!(e.prefix_len >= 1 && e.prefix_len <= 128 && e.preferred <= e.valid);
                }
            }
        }
    }
});
