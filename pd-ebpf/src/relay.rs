//! The relay's help from the kernel (`--relay-to`): on a downstream
//! interface pd-agent relays for, a client's message to port 547 meets two
//! token buckets before anything parses it, its MAC's and then the
//! interface's, so a flood from the LAN is dropped here, counted by
//! reason, and neither reaches the relay's socket nor the server. A
//! message that passes has its sender's MAC recorded for the relay's
//! Client Link-Layer Address option (RFC 6939): the socket does not tell.
//!
//! The buckets are read and written without a lock: two CPUs taking from
//! one bucket at once may let a message more through, never fewer.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use pd_common::{
    msg::RELAY_FORW,
    wire::{ETH_HLEN, IPV6_HLEN, MAX_UDP_OFFSET, UDP_HLEN},
    Bucket, BucketKey, Counter, MacKey, SERVER_PORT,
};

use crate::{
    maps::{note, PD_RELAY_BUCKETS, PD_RELAY_LIMITS, PD_RELAY_MACS},
};

/// One message's worth of tokens.
const TOKEN: u64 = 1_000_000_000;
/// Refill at most this long a gap (keeps `elapsed * rate` in 64 bits).
const MAX_ELAPSED_NS: u64 = 100_000_000_000;

/// A DHCPv6 message to port `dport` whose IPv6 header is at `l3` and
/// payload at `payload`: true to drop it (a client message over a rate
/// limit).
#[inline(always)]
pub(crate) fn guard(data: usize, end: usize, dport: u16, l3: usize, payload: usize, ifindex: u32) -> bool {
    // Client messages come to port 547, from a link with MACs.
    if dport != SERVER_PORT || l3 != ETH_HLEN && l3 != ETH_HLEN + 4 {
        return false;
    }
    if payload > MAX_UDP_OFFSET + UDP_HLEN + ETH_HLEN + 4 {
        return false;
    }
    let ip = data + l3;
    let p = data + payload;
    if ip + IPV6_HLEN > end || p + 2 > end || data + ETH_HLEN > end {
        return false;
    }
    let Some(limits) = PD_RELAY_LIMITS.get(0) else {
        return false;
    };
    let (mac, src, msg_type) = unsafe {
        (
            *((data + 6) as *const [u8; 6]),
            *((ip + 8) as *const [u8; 16]),
            // The message type, read as a 2-byte window.
            (u16::from_be(*(p as *const u16)) >> 8) as u8,
        )
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // A lower relay's Relay-Forw stands for many clients: the interface's
    // limit only. The client's bucket first, so that one flooding client
    // spends only its own share of the interface's.
    if msg_type != RELAY_FORW
        && limits.client_rate != 0
        && !take(
            &BucketKey { ifindex, mac, pad: [0; 2] },
            limits.client_rate,
            limits.client_burst,
            now,
        )
    {
        note(Counter::RelayClientRate, ifindex);
        return true;
    }
    if limits.iface_rate != 0
        && !take(
            &BucketKey { ifindex, mac: [0; 6], pad: [0; 2] },
            limits.iface_rate,
            limits.iface_burst,
            now,
        )
    {
        note(Counter::RelayIfaceRate, ifindex);
        return true;
    }
    let m = [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0];
    let _ = PD_RELAY_MACS.insert(&MacKey { ifindex, addr: src }, &m, 0);
    false
}

/// Take one message's tokens from `key`'s bucket (filled at `rate` per
/// second up to `burst`); false when it has too few.
#[inline(always)]
fn take(key: &BucketKey, rate: u32, burst: u32, now: u64) -> bool {
    let cap = (burst as u64).max(1) * TOKEN;
    match PD_RELAY_BUCKETS.get_ptr_mut(key) {
        Some(b) => {
            let b = unsafe { &mut *b };
            let elapsed = now.saturating_sub(b.at_ns).min(MAX_ELAPSED_NS);
            let tokens = (b.tokens + elapsed * rate as u64).min(cap);
            b.at_ns = now;
            if tokens >= TOKEN {
                b.tokens = tokens - TOKEN;
                true
            } else {
                b.tokens = tokens;
                false
            }
        }
        None => {
            let _ = PD_RELAY_BUCKETS.insert(key, &Bucket { tokens: cap - TOKEN, at_ns: now }, 0);
            true
        }
    }
}
