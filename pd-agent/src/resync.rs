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

use std::collections::HashMap;

use pd_common::SEQ_CPU_SHIFT;

/// Missing ranges kept per CPU: only a storm of losses between two
/// resyncs reaches this; the oldest range is then given up.
const MAX_RANGES: usize = 4096;

fn split(seq: u64) -> (u16, u64) {
    (
        (seq >> SEQ_CPU_SHIFT) as u16,
        seq & ((1 << SEQ_CPU_SHIFT) - 1),
    )
}

#[derive(Default, Debug)]
struct Cpu {
    /// Highest counter seen.
    hw: u64,
    /// Inclusive ranges of counters below `hw` not seen.
    missing: Vec<(u64, u64)>,
}

impl Cpu {
    fn add_missing(&mut self, a: u64, b: u64) -> u64 {
        if a > b {
            return 0;
        }
        self.missing.push((a, b));
        if self.missing.len() > MAX_RANGES {
            let oldest = (0..self.missing.len())
                .min_by_key(|&i| self.missing[i].0)
                .unwrap_or(0);
            let (a, b) = self.missing.swap_remove(oldest);
            return b - a + 1;
        }
        0
    }

    fn take(&mut self, n: u64) -> bool {
        let Some(i) = self.missing.iter().position(|&(a, b)| a <= n && n <= b) else {
            return false;
        };
        let (a, b) = self.missing[i];
        self.missing.swap_remove(i);
        if a < n {
            self.missing.push((a, n - 1));
        }
        if n < b {
            self.missing.push((n + 1, b));
        }
        true
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
    /// Note a message as applied. The first message of a CPU marks every
    /// earlier counter of that CPU missing: an earlier agent may have died
    /// holding them (the replay's time floor keeps this from replaying
    /// what that agent had applied).
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

    /// At start, once the backlog and the records are applied: counters up
    /// to `hw` (the kernel's, read before draining) are settled, whatever
    /// was or was not seen of them.
    pub fn seed(&mut self, cpu: u16, hw: u64) {
        let c = self.cpus.entry(cpu).or_default();
        c.hw = c.hw.max(hw);
        c.missing.retain(|&(a, _)| a > hw);
        for r in c.missing.iter_mut() {
            r.0 = r.0.max(hw + 1);
        }
    }

    /// Would [`SeqTracker::observe`] say New (without noting it)?
    pub fn is_new(&self, seq: u64) -> bool {
        let (cpu, n) = split(seq);
        match self.cpus.get(&cpu) {
            None => true,
            Some(c) => n > c.hw || c.missing.iter().any(|&(a, b)| a <= n && n <= b),
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

    /// After a replay: what is still missing had no record left (a newer
    /// message of the same client replaced it, or the LRU evicted it).
    /// Returns how many.
    pub fn forget_missing(&mut self) -> u64 {
        let n = self.missing();
        for c in self.cpus.values_mut() {
            c.missing.clear();
        }
        self.given_up += n;
        n
    }
}

/// CLOCK_BOOTTIME in ns: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This boot's id: kernel timestamps only compare within one boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Unix seconds at which the kernel saw a message stamped `ts_ns`.
pub fn unix_time_of(ts_ns: u64, now_unix: u64, now_boot_ns: u64) -> u64 {
    now_unix.saturating_sub(now_boot_ns.saturating_sub(ts_ns) / 1_000_000_000)
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
        assert_eq!(t.forget_missing(), 7);
        assert_eq!(t.given_up, 7);
        assert!(!t.is_new(s(1, 6)));
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

    #[test]
    fn event_time_from_boot_clock() {
        assert_eq!(unix_time_of(5_000_000_000, 1_000, 65_000_000_000), 940);
        assert_eq!(unix_time_of(70_000_000_000, 1_000, 65_000_000_000), 1_000);
        assert!(boot_ns() > 0);
    }
}
