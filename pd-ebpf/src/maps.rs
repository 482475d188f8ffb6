//! The programs' maps and load-time switches, and small accessors for them.
//!
//! The agent finds each of these by its symbol name: map names and sizes
//! are `pd_common::maps`'s, switch names `pd_common::global`'s.
//! `#[map(name = ...)]` (aya-ebpf 0.2.1) takes only a string literal, as
//! does the `export_name` it expands to, so each map name is spelled here
//! once more; pd-agent's unit test `object_matches_pd_common` checks the
//! built object against pd-common.
//!
//! The event path's maps are pinned like the agent's: the programs stay
//! attached through pinned links while the agent restarts, and the next
//! agent carries on with the same ring buffer, records and sequence numbers.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use pd_common::{
    maps, Bucket, BucketKey, ClientKey, ClientRecord, Counter, FwdStats, MacKey, RelayLimits, RouteValue,
    COUNTER_COUNT,
};

use crate::parse::Scratch;

/// Set by the loader (`--fast-path` other than `off`): forward delegated
/// prefixes in XDP where the agent's interface flags allow it.
#[unsafe(no_mangle)]
pub(crate) static FAST_PATH: u8 = 1;
/// Set by the loader: some interface has source-address validation on.
#[unsafe(no_mangle)]
pub(crate) static SAV: u8 = 1;
/// Set by the loader: some managed link carries bare IP packets (`L3`).
/// Without one, the TC program needs no flag lookup per packet.
#[unsafe(no_mangle)]
pub(crate) static BARE_LINKS: u8 = 1;

/// Set by the loader when pd-agent relays (`--relay-to`): see
/// [`crate::relay`].
#[unsafe(no_mangle)]
pub(crate) static RELAY: u8 = 1;

/// Delegated-prefix events for the agent (the loader may resize it).
#[map(name = "pd_events_v1")]
pub(crate) static PD_EVENTS: RingBuf = RingBuf::pinned(maps::EVENTS_BYTES, 0);

/// Per-CPU outcome counters, indexed by [`Counter`].
#[map(name = "pd_counters_v1")]
pub(crate) static PD_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

/// Per-CPU message counters (`PdEvent::seq` below `SEQ_CPU_SHIFT`).
#[map(name = "pd_seq_v1")]
pub(crate) static PD_SEQ: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Each client's latest message of each class, per interface and hook:
/// the state the agent resynchronises from when ring buffer events were
/// lost (the loader may resize it). Not preallocated: it takes memory as
/// clients come, and the agent deletes the records its store has covered
/// for a while, so it holds the last few minutes of activity's clients.
#[map(name = "pd_clients_v1")]
pub(crate) static PD_CLIENTS: HashMap<ClientKey, ClientRecord> =
    HashMap::pinned(maps::CLIENTS_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU parser state and payload copy (too big for the 512-byte stack).
#[map(name = "PD_SCRATCH")]
pub(crate) static PD_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Delegated prefixes, written by the agent and pinned under its pin
/// directory: the fast path's destinations, and source validation's
/// delegated sources.
#[map(name = "pd_routes_v1")]
pub(crate) static PD_ROUTES: LpmTrie<[u8; 16], RouteValue> = LpmTrie::pinned(maps::ROUTES_ENTRIES, 0);

/// Per-binding forwarding counters, indexed by `RouteValue::slot`.
#[map(name = "pd_fwd_stats_v1")]
pub(crate) static PD_FWD_STATS: PerCpuArray<FwdStats> = PerCpuArray::pinned(maps::FWD_STATS_ENTRIES, 0);

/// Per-interface flags ([`pd_common::ifflags`]), written by the agent.
#[map(name = "pd_ifaces_v1")]
pub(crate) static PD_IFACES: HashMap<u32, u32> = HashMap::pinned(maps::IFACES_ENTRIES, 0);

/// Until when (`bpf_ktime_get_boot_ns`) the agent vouches for the fast
/// path's flags: it renews this every few seconds while it watches the
/// firewall and the devices' xdp-features. Past it (the agent stopped,
/// crashed or hangs) nothing is forwarded in XDP.
#[map(name = "pd_fwd_lease_v1")]
pub(crate) static PD_FWD_LEASE: Array<u64> = Array::pinned(1, 0);

/// On-link prefixes of downstream interfaces -> ifindex (strict SAV).
#[map(name = "pd_onlink_v1")]
pub(crate) static PD_ONLINK: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(maps::ONLINK_ENTRIES, 0);

/// The relay's rate limits (entry 0), written by the agent.
#[map(name = "pd_relay_limits_v1")]
pub(crate) static PD_RELAY_LIMITS: Array<RelayLimits> = Array::with_max_entries(1, 0);

/// The relay's token buckets, per interface and per client MAC.
#[map(name = "pd_relay_buckets_v1")]
pub(crate) static PD_RELAY_BUCKETS: LruHashMap<BucketKey, Bucket> =
    LruHashMap::with_max_entries(maps::RELAY_BUCKETS_ENTRIES, 0);

/// Each client address's MAC, per interface, for the relay's Client
/// Link-Layer Address option.
#[map(name = "pd_relay_macs_v1")]
pub(crate) static PD_RELAY_MACS: LruHashMap<MacKey, [u8; 8]> = LruHashMap::with_max_entries(maps::RELAY_MACS_ENTRIES, 0);

/// Count one outcome.
#[inline(always)]
pub(crate) fn count(c: Counter) {
    if let Some(p) = PD_COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}

/// The agent's flags for an interface ([`pd_common::ifflags`]; 0 when unmanaged).
#[inline(always)]
pub(crate) fn iface_flags(ifindex: u32) -> u32 {
    unsafe { PD_IFACES.get(&ifindex) }.copied().unwrap_or(0)
}

/// Count one outcome that left a packet unreported (a DHCPv6 reject) or
/// to the kernel (a fast-path pass), and, with `--kernel-debug`, log it
/// with the interface: the message is `pd_common::log::FORMAT`. Logging
/// is off unless the agent sets aya-log's load-time level: the verifier
/// then prunes the call, as with [`FAST_PATH`].
#[inline(always)]
pub(crate) fn note(c: Counter, ifindex: u32) {
    count(c);
    why(c as u32, ifindex);
}

/// Log counter `c` (an index into `pd_counters_v1`) on `ifindex`, with
/// `--kernel-debug` only (see [`note`]).
#[inline(always)]
pub(crate) fn why(c: u32, ifindex: u32) {
    use aya_log_ebpf::macro_support::{level_enabled, Level};
    // Only the check is inlined: the record is written by a BPF
    // subprogram, so the code around each call keeps its shape (and its
    // speed) whether or not the verifier prunes the call.
    if level_enabled(Level::Debug) {
        log_why(c, ifindex);
    }
}

#[inline(never)]
fn log_why(c: u32, ifindex: u32) {
    aya_log_ebpf::debug!(&(), "why {} ifindex {}", c, ifindex);
}

/// Whether a load-time switch is on (read so that the verifier prunes
/// what is off).
#[inline(always)]
pub(crate) fn on(switch: &u8) -> bool {
    unsafe { core::ptr::read_volatile(switch) != 0 }
}
