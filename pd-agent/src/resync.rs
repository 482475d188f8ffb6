//! Lost ring buffer events: detecting them, and what to replay instead.
//!
//! Every message the kernel reports carries `seq` = CPU << 48 | a per-CPU
//! counter (the counter lives in the pinned `pd_seq_v1` map, so it carries
//! on across agent restarts). On one CPU the programs never nest, so that
//! CPU's messages reach the ring buffer in counter order: a jump means
//! messages were lost (ring buffer full, or an agent killed between reading
//! and applying them).
//!
//! The kernel also keeps each client's latest message of each class in
//! `pd_clients_v1` ([`pd_common::ClientRecord`]), written before the ring
//! buffer. Resynchronising means replaying, in the order the kernel saw
//! them, the records whose `seq` this agent has not applied: the newest
//! state of every client survives any loss, and older messages of the same
//! client that were lost are superseded by it.

use std::collections::{BTreeMap, HashMap};

use pd_common::SEQ_CPU_SHIFT;

/// Missing ranges kept per CPU: only a storm of losses between two
/// resyncs reaches this; the oldest range is then given up.
const MAX_RANGES: usize = 4096;

/// (CPU, per-CPU counter) of a message's `seq`.
pub fn split(seq: u64) -> (u16, u64) {
    (
        (seq >> SEQ_CPU_SHIFT) as u16,
        seq & ((1 << SEQ_CPU_SHIFT) - 1),
    )
}

#[derive(Default, Debug)]
struct Cpu {
    /// Highest counter seen.
    hw: u64,
    /// Counters below `hw` not seen: inclusive ranges, start -> end.
    missing: BTreeMap<u64, u64>,
}

impl Cpu {
    fn add_missing(&mut self, a: u64, b: u64) -> u64 {
        if a > b {
            return 0;
        }
        self.missing.insert(a, b);
        if self.missing.len() > MAX_RANGES {
            if let Some((a, b)) = self.missing.pop_first() {
                return b - a + 1;
            }
        }
        0
    }

    /// The range holding `n`, if any.
    fn range_of(&self, n: u64) -> Option<(u64, u64)> {
        self.missing
            .range(..=n)
            .next_back()
            .map(|(a, b)| (*a, *b))
            .filter(|&(_, b)| n <= b)
    }

    fn take(&mut self, n: u64) -> bool {
        let Some((a, b)) = self.range_of(n) else {
            return false;
        };
        self.missing.remove(&a);
        if a < n {
            self.missing.insert(a, n - 1);
        }
        if n < b {
            self.missing.insert(n + 1, b);
        }
        true
    }

    /// Drop what lies at or below `upto`; returns how many counters.
    fn settle(&mut self, upto: u64) -> u64 {
        let mut dropped = 0;
        let below: Vec<(u64, u64)> = self.missing.range(..=upto).map(|(a, b)| (*a, *b)).collect();
        for (a, b) in below {
            self.missing.remove(&a);
            dropped += b.min(upto) - a + 1;
            if b > upto {
                self.missing.insert(upto + 1, b);
            }
        }
        dropped
    }
}

/// Whether a message is news to this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    /// Already applied (from the ring buffer or a replay): skip it.
    Duplicate,
}

/// Which message sequence numbers this agent has applied.
#[derive(Default, Debug)]
pub struct SeqTracker {
    cpus: HashMap<u16, Cpu>,
    /// Messages known lost and given up on (not recoverable from the records).
    pub given_up: u64,
}

impl SeqTracker {
    /// Note a message as applied. A jump past the highest counter seen
    /// marks the counters in between missing.
    pub fn observe(&mut self, seq: u64) -> Seen {
        let (cpu, n) = split(seq);
        let c = self.cpus.entry(cpu).or_default();
        if n > c.hw {
            let hw = c.hw;
            c.hw = n;
            self.given_up += c.add_missing(hw + 1, n - 1);
            Seen::New
        } else if c.take(n) {
            Seen::New
        } else {
            Seen::Duplicate
        }
    }

    /// Mark an observed message unseen again (a Reply left for the
    /// replay to apply in order).
    pub fn unobserve(&mut self, seq: u64) {
        let (cpu, n) = split(seq);
        if let Some(c) = self.cpus.get_mut(&cpu) {
            if n <= c.hw && c.range_of(n).is_none() {
                c.missing.insert(n, n);
            }
        }
    }

    /// At start, once the backlog and the records are applied: counters up
    /// to `hw` (the kernel's, read before draining) are settled, whatever
    /// was or was not seen of them; later ones still come.
    pub fn seed(&mut self, cpu: u16, hw: u64) {
        let c = self.cpus.entry(cpu).or_default();
        c.settle(hw);
        if hw > c.hw {
            c.hw = hw;
        }
    }

    /// Would [`SeqTracker::observe`] say New (without noting it)?
    pub fn is_new(&self, seq: u64) -> bool {
        let (cpu, n) = split(seq);
        match self.cpus.get(&cpu) {
            None => true,
            Some(c) => n > c.hw || c.range_of(n).is_some(),
        }
    }

    /// Messages known missing right now.
    pub fn missing(&self) -> u64 {
        self.cpus
            .values()
            .flat_map(|c| c.missing.iter())
            .map(|(a, b)| b - a + 1)
            .sum()
    }

    /// After a replay of the records up to the kernel's counters `upto`
    /// (per CPU, read before the ring buffer was drained): what is still
    /// missing at or below them had no record left (a newer message of the
    /// same client replaced it, or the LRU evicted it) and is given up.
    /// Later counters may still be on their way through the ring buffer.
    /// Returns how many were given up.
    pub fn forget_missing(&mut self, upto: &[u64]) -> u64 {
        let mut n = 0;
        for (cpu, c) in self.cpus.iter_mut() {
            if let Some(&u) = upto.get(*cpu as usize) {
                n += c.settle(u);
            }
        }
        self.given_up += n;
        n
    }
}

/// This boot's id: kernel timestamps only compare within one boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(cpu: u64, n: u64) -> u64 {
        cpu << SEQ_CPU_SHIFT | n
    }

    #[test]
    fn in_order_messages_leave_nothing_missing() {
        let mut t = SeqTracker::default();
        for n in 1..=5 {
            assert_eq!(t.observe(s(0, n)), Seen::New);
        }
        assert_eq!(t.missing(), 0);
        assert_eq!(t.observe(s(0, 3)), Seen::Duplicate);
        assert!(!t.is_new(s(0, 5)));
        assert!(t.is_new(s(0, 6)));
    }

    #[test]
    fn a_jump_is_a_gap_filled_by_late_or_replayed_messages() {
        let mut t = SeqTracker::default();
        t.observe(s(1, 1));
        t.observe(s(1, 10));
        assert_eq!(t.missing(), 8);
        assert!(t.is_new(s(1, 5)));
        assert_eq!(t.observe(s(1, 5)), Seen::New);
        assert_eq!(t.observe(s(1, 5)), Seen::Duplicate);
        assert_eq!(t.missing(), 7);
        // Only counters up to the kernel's snapshot are given up.
        assert_eq!(t.forget_missing(&[0, 7]), 5);
        assert_eq!(t.given_up, 5);
        assert!(!t.is_new(s(1, 6)));
        assert!(t.is_new(s(1, 8)));
        assert_eq!(t.forget_missing(&[0, 10]), 2);
    }

    #[test]
    fn cpus_are_independent_and_the_first_message_marks_earlier_ones_missing() {
        let mut t = SeqTracker::default();
        t.observe(s(0, 4));
        assert_eq!(t.missing(), 3);
        t.observe(s(3, 1));
        assert_eq!(t.missing(), 3);
        assert!(t.is_new(s(2, 1)));
        assert!(t.is_new(s(0, 2)));
        assert!(!t.is_new(s(3, 1)));
    }

    #[test]
    fn seeding_keeps_what_lies_beyond_the_snapshot() {
        let mut t = SeqTracker::default();
        t.observe(s(0, 130));
        t.seed(0, 120);
        assert!(!t.is_new(s(0, 100)));
        assert!(
            t.is_new(s(0, 125)),
            "emitted after the snapshot, still in the ring"
        );
        assert_eq!(t.missing(), 9);
        assert_eq!(t.observe(s(0, 125)), Seen::New);
        assert_eq!(t.observe(s(0, 125)), Seen::Duplicate);
    }

    #[test]
    fn an_unobserved_message_is_new_again() {
        let mut t = SeqTracker::default();
        t.observe(s(0, 1));
        t.observe(s(0, 2));
        t.unobserve(s(0, 2));
        assert!(t.is_new(s(0, 2)));
        assert_eq!(t.missing(), 1);
        assert_eq!(t.observe(s(0, 2)), Seen::New);
        assert_eq!(t.missing(), 0);
    }

    #[test]
    fn many_gaps_stay_cheap_and_bounded() {
        let mut t = SeqTracker::default();
        for n in (2..20_000u64).step_by(2) {
            t.observe(s(0, n));
        }
        assert_eq!(t.missing(), MAX_RANGES as u64);
        assert!(t.given_up > 0);
        assert!(t.is_new(s(0, 19_997)));
        assert!(!t.is_new(s(0, 19_998)));
    }

    #[test]
    fn seeding_settles_the_past_without_giving_it_up() {
        let mut t = SeqTracker::default();
        t.observe(s(0, 100));
        assert_eq!(t.missing(), 99);
        t.seed(0, 120);
        t.seed(1, 7);
        assert_eq!((t.missing(), t.given_up), (0, 0));
        assert!(!t.is_new(s(0, 110)));
        assert_eq!(t.observe(s(0, 121)), Seen::New);
        assert_eq!(t.missing(), 0);
        assert_eq!(t.observe(s(1, 8)), Seen::New);
        assert_eq!(t.missing(), 0);
    }
}
