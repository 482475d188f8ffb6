//! The lease clock: lifetimes run on CLOCK_BOOTTIME, not the wall clock.
//!
//! A delegated prefix lives for its valid lifetime of real time, and the
//! client renews it on its own monotonic timers. A router without a
//! real-time clock starts at a made-up date and steps its wall clock when
//! NTP first syncs; a lease kept in wall-clock time would then end hours
//! early or late. So bindings carry their times in seconds of
//! CLOCK_BOOTTIME (which counts suspend, as lifetimes do, and is what the
//! kernel programs stamp events with), and only what operators read is
//! shown in wall-clock time, converted at the moment of asking.
//!
//! Those times mean nothing in another boot. The store therefore holds an
//! [`Anchor`]: a reading of both clocks, taken at each compaction and
//! again whenever the wall clock has stepped. Within one boot the store's
//! times are used as they are. Across a reboot they are carried over with
//! [`rebase`], which measures the time since the anchor with the wall
//! clock, but never less than the store shows the previous boot ran.

use serde::{Deserialize, Serialize};

const NS: u64 = 1_000_000_000;

/// CLOCK_BOOTTIME in nanoseconds (what `bpf_ktime_get_boot_ns` reads).
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * NS + ts.tv_nsec as u64
}

/// The lease clock now: seconds of CLOCK_BOOTTIME.
pub fn now() -> u64 {
    boot_ns() / NS
}

/// The lease-clock second of a kernel timestamp.
pub fn of_kernel(ts_ns: u64) -> u64 {
    ts_ns / NS
}

/// The wall clock now, unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One reading of both clocks, in one boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub boot_id: String,
    /// Lease clock (CLOCK_BOOTTIME seconds).
    pub boot: u64,
    /// Wall clock (unix seconds).
    pub unix: u64,
}

/// The wall clock moved against the lease clock by more than this since
/// the last anchor: it stepped (NTP, `date -s`), write a new anchor.
pub const STEP_SECS: i64 = 2;

impl Anchor {
    pub fn now(boot_id: &str) -> Self {
        // Two reads a few nanoseconds apart: as good as simultaneous.
        let boot = now();
        Anchor {
            boot_id: boot_id.to_string(),
            unix: unix_now(),
            boot,
        }
    }

    /// Wall clock minus lease clock, seconds.
    pub fn offset(&self) -> i64 {
        self.unix as i64 - self.boot as i64
    }

    /// A lease-clock time of this anchor's boot in wall-clock time, as the
    /// wall clock read when the anchor was taken.
    pub fn to_unix(&self, t: u64) -> u64 {
        (t as i64).saturating_add(self.offset()).max(0) as u64
    }

    /// The wall clock has stepped since `earlier` (same boot), or it is of
    /// another boot.
    pub fn stepped_since(&self, earlier: &Anchor) -> bool {
        self.boot_id != earlier.boot_id || (self.offset() - earlier.offset()).abs() > STEP_SECS
    }
}

/// What to add to a stored lease-clock time to carry it into `here`'s
/// boot, for a store written under `then`:
///
/// - the same boot: nothing (the wall clock plays no part);
/// - no anchor: a store of an older pd-agent, whose times are unix
///   seconds: convert by the wall clock now;
/// - another boot: the time since `then` is the wall clock's elapsed time,
///   but at least `ran` (seconds the store proves the previous boot ran
///   past the anchor) and never negative. A wall clock that reads earlier
///   than at the anchor (no real-time clock, NTP not synced yet) counts
///   as no time passed beyond `ran`: leases then outlive their real end by
///   at most the time the router was down, and a client that still
///   renews refreshes them.
pub fn rebase(then: Option<&Anchor>, here: &Anchor, ran: u64) -> i64 {
    match then {
        None => -here.offset(),
        Some(a) if a.boot_id == here.boot_id => 0,
        Some(a) => {
            let wall = here.unix as i64 - a.unix as i64;
            let elapsed = wall.max(ran as i64).max(0);
            here.boot as i64 - a.boot as i64 - elapsed
        }
    }
}

/// `t` moved by `shift`, not before the clock's start.
pub fn shifted(t: u64, shift: i64) -> u64 {
    (t as i64).saturating_add(shift).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(boot_id: &str, boot: u64, unix: u64) -> Anchor {
        Anchor {
            boot_id: boot_id.into(),
            boot,
            unix,
        }
    }

    #[test]
    fn same_boot_ignores_the_wall_clock() {
        // The wall clock stepped two hours forward since the anchor: a
        // lease stored in this boot keeps its lease-clock time exactly.
        let then = at("a", 1_000, 1_700_000_000);
        let here = at("a", 1_100, 1_700_007_300);
        assert_eq!(rebase(Some(&then), &here, 0), 0);
        assert!(here.stepped_since(&then));
        assert!(!at("a", 1_100, 1_700_000_101).stepped_since(&then));
    }

    #[test]
    fn reboot_counts_the_wall_clock_time_between() {
        // Anchor at boot second 5000 (unix 1.7e9); a lease ending at boot
        // second 8600 (3600 s later). Rebooted, 600 s of real time later,
        // now at boot second 30: 3000 s remain.
        let then = at("a", 5_000, 1_700_000_000);
        let here = at("b", 30, 1_700_000_600);
        let s = rebase(Some(&then), &here, 0);
        assert_eq!(shifted(8_600, s), 30 + 3_000);
    }

    #[test]
    fn reboot_with_a_clock_behind_counts_what_the_store_proves() {
        // No RTC: the wall clock reads 1970 after the reboot. The store
        // shows the previous boot ran 200 s past its anchor; that much is
        // counted, the downtime is not.
        let then = at("a", 5_000, 1_700_000_000);
        let here = at("b", 30, 10);
        let s = rebase(Some(&then), &here, 200);
        assert_eq!(shifted(8_600, s), 30 + 3_400);
    }

    #[test]
    fn legacy_unix_times_convert_by_the_wall_clock() {
        let here = at("b", 100, 1_700_000_000);
        let s = rebase(None, &here, 0);
        assert_eq!(shifted(1_700_000_060, s), 160);
        // Long gone: the clock's start, expired at once.
        assert_eq!(shifted(1_600_000_000, s), 0);
    }

    #[test]
    fn wall_time_of_a_lease_clock_time() {
        let a = at("a", 100, 1_700_000_000);
        assert_eq!(a.to_unix(160), 1_700_000_060);
        assert!(now() > 0 && boot_ns() > 0);
    }
}
