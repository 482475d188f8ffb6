//! pd-agent's kernel programs.
//!
//! `pd_xdp` (XDP, ingress) and `pd_tc_egress` (TC, egress) share one parser:
//! each finds the UDP payload of an IPv6 packet to port 546/547 with direct
//! packet access, copies the payload into a per-CPU scratch buffer with
//! `bpf_{xdp,skb}_load_bytes`, and walks the DHCPv6 TLVs there in a
//! `bpf_loop` callback, which the verifier checks once rather than once per
//! iteration. Every delegated prefix becomes a [`PdEvent`] in `PD_EVENTS`.
//!
//! Snooping never drops or changes a packet. Non-DHCP IPv6 packets then
//! meet the XDP fast path: source-address validation on downstream
//! interfaces (the only place a packet is ever dropped), and, for a
//! destination inside a delegated prefix (`pd_routes_v1`), forwarding with
//! `bpf_fib_lookup` + MAC rewrite + redirect, but only from an Ethernet
//! link with no netfilter hook on the forwarding path into a device that
//! takes redirects (the agent's `pd_ifaces_v1` flags). Anything unusual
//! goes to the kernel untouched, counted by reason, and the kernel's FIB
//! decides the egress either way, so the fast path never changes where a
//! packet goes. Links without a link-layer header (ppp, tun) are parsed
//! from their IPv6 header.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, xdp_md, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_fib_lookup, bpf_get_smp_processor_id, bpf_ktime_get_boot_ns, bpf_loop, bpf_redirect,
        bpf_skb_load_bytes, bpf_xdp_load_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use pd_common::{
    class, flags, hook, ifflags, maps, msg, opt, status,
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV6, IAPREFIX_FIXED, IA_PD_FIXED, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS,
        IPPROTO_UDP, IPV6_HLEN, MAX_EXT_HEADERS, MAX_UDP_OFFSET, MSG_HLEN, OPT_HLEN, RELAY_HLEN, STATUS_FIXED, UDP_HLEN,
        VLAN_HLEN,
    },
    ClientKey, ClientRecord, Counter, FwdStats, PdEvent, RecordPrefix, RouteValue, CLIENT_PORT, COUNTER_COUNT, DUID_MAX,
    MAX_IAS, MAX_PREFIXES, MAX_RELAY_DEPTH, MAX_TLV_STEPS, NO_SLOT, PAYLOAD_MAX, RECORD_PREFIXES, SEQ_CPU_SHIFT,
    SERVER_DUID_MAX, SERVER_PORT,
};

/// Set by the loader (`--fast-path` other than `off`): forward delegated
/// prefixes in XDP where the agent's interface flags allow it.
#[unsafe(no_mangle)]
static FAST_PATH: u8 = 1;
/// Set by the loader: some interface has source-address validation on.
#[unsafe(no_mangle)]
static SAV: u8 = 1;
/// Set by the loader: some managed link carries bare IP packets (`L3`).
/// Without one, the TC program needs no flag lookup per packet.
#[unsafe(no_mangle)]
static BARE_LINKS: u8 = 1;

// The event path's maps are pinned like the agent's: the programs stay
// attached through pinned links while the agent restarts, and the next
// agent carries on with the same ring buffer, records and sequence numbers.
//
// Names and sizes are `pd_common::maps`'s. `#[map(name = ...)]` takes only a
// string literal, so each name is spelled once more here; pd-agent's test
// `object_matches_pd_common` checks the built object against pd-common.

/// Delegated-prefix events for the agent (the loader may resize it).
#[map(name = "pd_events_v1")]
static PD_EVENTS: RingBuf = RingBuf::pinned(maps::EVENTS_BYTES, 0);

/// Per-CPU outcome counters, indexed by [`Counter`].
#[map(name = "pd_counters_v1")]
static PD_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

/// Per-CPU message counters (`PdEvent::seq` below `SEQ_CPU_SHIFT`).
#[map(name = "pd_seq_v1")]
static PD_SEQ: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// Each client's latest message of each class, per interface and hook:
/// the state the agent resynchronises from when ring buffer events were
/// lost (the loader may resize it). Not preallocated: it takes memory as
/// clients come, and the agent deletes the records its store has covered
/// for a while, so it holds the last few minutes of activity's clients.
#[map(name = "pd_clients_v1")]
static PD_CLIENTS: HashMap<ClientKey, ClientRecord> = HashMap::pinned(maps::CLIENTS_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU parser state and payload copy (too big for the 512-byte stack).
#[map(name = "PD_SCRATCH")]
static PD_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Delegated prefixes, written by the agent and pinned under its pin
/// directory. Read by the fast path (a later change); kept here so the
/// agent's map and the programs' map are one object.
#[map(name = "pd_routes_v1")]
static PD_ROUTES: LpmTrie<[u8; 16], RouteValue> = LpmTrie::pinned(maps::ROUTES_ENTRIES, 0);

/// Per-binding forwarding counters, indexed by `RouteValue::slot`.
#[map(name = "pd_fwd_stats_v1")]
static PD_FWD_STATS: PerCpuArray<FwdStats> = PerCpuArray::pinned(maps::FWD_STATS_ENTRIES, 0);

/// Per-interface flags ([`ifflags`]), written by the agent.
#[map(name = "pd_ifaces_v1")]
static PD_IFACES: HashMap<u32, u32> = HashMap::pinned(maps::IFACES_ENTRIES, 0);

/// Until when (`bpf_ktime_get_boot_ns`) the agent vouches for the fast
/// path's flags: it renews this every few seconds while it watches the
/// firewall and the devices' xdp-features. Past it (the agent stopped,
/// crashed or hangs) nothing is forwarded in XDP.
#[map(name = "pd_fwd_lease_v1")]
static PD_FWD_LEASE: Array<u64> = Array::pinned(1, 0);

/// On-link prefixes of downstream interfaces -> ifindex (strict SAV).
#[map(name = "pd_onlink_v1")]
static PD_ONLINK: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(maps::ONLINK_ENTRIES, 0);

/// TC: let the next program / the default action decide (tcx `TCX_NEXT`).
const TC_ACT_UNSPEC: i32 = -1;

const MASK: usize = PAYLOAD_MAX - 1;
const _: () = assert!(PAYLOAD_MAX.is_power_of_two());

const MODE_MSG: u32 = 0;
const MODE_RELAY: u32 = 1;
const MODE_TOP: u32 = 2;
const MODE_IAPD: u32 = 3;
const NO_REJECT: u32 = u32::MAX;

#[derive(Clone, Copy)]
#[repr(C)]
struct Ia {
    iaid: u32,
    t1: u32,
    t2: u32,
    status: u16,
    ok: u16,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Pfx {
    prefix: [u8; 16],
    preferred: u32,
    valid: u32,
    ia: u32,
    plen: u32,
}

#[repr(C)]
pub struct Scratch {
    /// DHCPv6 payload; 64 spare bytes so a masked index plus a small
    /// constant stays inside the value.
    buf: [u8; PAYLOAD_MAX + 64],
    len: u32,
    cursor: u32,
    end: u32,
    top_end: u32,
    mode: u32,
    reject: u32,
    done: u32,
    depth: u32,
    nia: u32,
    cur_ia: u32,
    nprefix: u32,
    _pad: u32,
    ia: [Ia; MAX_IAS],
    pfx: [Pfx; MAX_PREFIXES],
    ev: PdEvent,
    key: ClientKey,
    rec: ClientRecord,
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = PD_COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 };
    }
}

impl Scratch {
    #[inline(always)]
    fn b(&self, off: u32) -> u8 {
        // The mask keeps the verifier happy; callers have already checked
        // `off < self.len <= PAYLOAD_MAX`, so it never changes the index.
        unsafe { *self.buf.get_unchecked(off as usize & MASK) }
    }

    #[inline(always)]
    fn u16(&self, off: u32) -> u16 {
        (self.b(off) as u16) << 8 | self.b(off + 1) as u16
    }

    #[inline(always)]
    fn u32(&self, off: u32) -> u32 {
        (self.u16(off) as u32) << 16 | self.u16(off + 2) as u32
    }

    #[inline(always)]
    fn addr(&self, off: u32) -> [u8; 16] {
        let mut a = [0u8; 16];
        let base = off as usize & MASK;
        let mut i = 0;
        while i < 16 {
            a[i] = unsafe { *self.buf.get_unchecked(base + i) };
            i += 1;
        }
        a
    }

    /// Stop parsing this message: it is counted under `c` and produces no event.
    #[inline(always)]
    fn reject(&mut self, c: Counter) -> i64 {
        self.reject = c as u32;
        1
    }

    /// One TLV (or one message header). Returns 0 to continue, 1 to stop.
    #[inline(always)]
    fn step(&mut self) -> i64 {
        let c = self.cursor;
        let end = self.end;
        match self.mode {
            MODE_MSG => {
                if c + MSG_HLEN as u32 > end {
                    return self.reject(Counter::ShortMessage);
                }
                let t = self.b(c);
                if self.depth == 0 {
                    self.ev.outer_msg_type = t;
                }
                if t == msg::RELAY_FORW || t == msg::RELAY_REPL {
                    // RFC 8415 §9: msg-type, hop-count, link-address, peer-address.
                    if c + RELAY_HLEN as u32 > end {
                        return self.reject(Counter::ShortMessage);
                    }
                    if self.depth >= MAX_RELAY_DEPTH as u32 {
                        return self.reject(Counter::RelayTooDeep);
                    }
                    self.ev.link_addr = self.addr(c + 2);
                    self.ev.peer_addr = self.addr(c + 18);
                    if self.depth == 0 {
                        self.ev.outer_peer_addr = self.ev.peer_addr;
                    }
                    self.depth += 1;
                    self.ev.flags |= flags::RELAYED;
                    self.cursor = c + RELAY_HLEN as u32;
                    self.mode = MODE_RELAY;
                    return 0;
                }
                self.ev.msg_type = t;
                self.ev.xid = (self.b(c + 1) as u32) << 16 | self.u16(c + 2) as u32;
                if !msg::reported(t) {
                    return self.reject(Counter::IgnoredType);
                }
                self.cursor = c + MSG_HLEN as u32;
                self.mode = MODE_TOP;
                0
            }
            MODE_RELAY => {
                if c >= end {
                    return self.reject(Counter::RelayNoMessage);
                }
                if c + OPT_HLEN as u32 > end {
                    return self.reject(Counter::OptionOverflow);
                }
                let code = self.u16(c);
                let len = self.u16(c + 2) as u32;
                let next = c + OPT_HLEN as u32 + len;
                if next > end {
                    return self.reject(Counter::OptionOverflow);
                }
                if code == opt::RELAY_MSG {
                    self.cursor = c + OPT_HLEN as u32;
                    self.end = next;
                    self.mode = MODE_MSG;
                } else {
                    self.cursor = next;
                }
                0
            }
            MODE_TOP => {
                if c == end {
                    self.done = 1;
                    return 1;
                }
                if c + OPT_HLEN as u32 > end {
                    return self.reject(Counter::OptionOverflow);
                }
                let code = self.u16(c);
                let len = self.u16(c + 2) as u32;
                let data = c + OPT_HLEN as u32;
                let next = data + len;
                if next > end {
                    return self.reject(Counter::OptionOverflow);
                }
                match code {
                    opt::CLIENTID => {
                        self.ev.client_duid_len = len as u16;
                        let base = data as usize & MASK;
                        let mut i = 0;
                        // A repeated Client-ID replaces the whole copy, which
                        // keys the per-client records.
                        self.ev.client_duid = [0; DUID_MAX];
                        while i < DUID_MAX {
                            if i as u32 >= len {
                                break;
                            }
                            self.ev.client_duid[i] = unsafe { *self.buf.get_unchecked(base + i) };
                            i += 1;
                        }
                    }
                    opt::SERVERID => {
                        self.ev.server_duid_len = len as u16;
                        let base = data as usize & MASK;
                        let mut i = 0;
                        while i < SERVER_DUID_MAX {
                            if i as u32 >= len {
                                break;
                            }
                            self.ev.server_duid[i] = unsafe { *self.buf.get_unchecked(base + i) };
                            i += 1;
                        }
                    }
                    opt::STATUS_CODE => {
                        if len < STATUS_FIXED as u32 {
                            return self.reject(Counter::BadOptionLength);
                        }
                        self.ev.status = self.u16(data);
                    }
                    opt::RAPID_COMMIT => self.ev.flags |= flags::RAPID_COMMIT,
                    opt::IA_PD => {
                        if len < IA_PD_FIXED as u32 {
                            return self.reject(Counter::BadOptionLength);
                        }
                        let n = self.nia;
                        if n as usize >= MAX_IAS {
                            // Walk it anyway so its prefixes are counted as dropped.
                            self.cur_ia = u32::MAX;
                        } else {
                            let t1 = self.u32(data + 4);
                            let t2 = self.u32(data + 8);
                            // RFC 8415 §21.21: T1 > T2 > 0 means discard the IA_PD.
                            let ok = !(t2 > 0 && t1 > t2);
                            if !ok {
                                count(Counter::BadT1T2);
                            }
                            let iaid = self.u32(data);
                            let ia = unsafe { self.ia.get_unchecked_mut(n as usize & (MAX_IAS - 1)) };
                            *ia = Ia { iaid, t1, t2, status: status::ABSENT, ok: ok as u16 };
                            self.cur_ia = n;
                            self.nia = n + 1;
                        }
                        self.top_end = end;
                        self.end = next;
                        self.cursor = data + IA_PD_FIXED as u32;
                        self.mode = MODE_IAPD;
                        return 0;
                    }
                    _ => {}
                }
                self.cursor = next;
                0
            }
            _ => {
                // MODE_IAPD: sub-options of the current IA_PD.
                if c == end {
                    self.mode = MODE_TOP;
                    self.end = self.top_end;
                    return 0;
                }
                if c + OPT_HLEN as u32 > end {
                    return self.reject(Counter::OptionOverflow);
                }
                let code = self.u16(c);
                let len = self.u16(c + 2) as u32;
                let data = c + OPT_HLEN as u32;
                let next = data + len;
                if next > end {
                    return self.reject(Counter::OptionOverflow);
                }
                let ia = self.cur_ia;
                if code == opt::IAPREFIX {
                    // RFC 8415 §21.22: preferred, valid, prefix-length, prefix.
                    if len < IAPREFIX_FIXED as u32 {
                        return self.reject(Counter::BadOptionLength);
                    }
                    let preferred = self.u32(data);
                    let valid = self.u32(data + 4);
                    let plen = self.b(data + 8) as u32;
                    if plen == 0 || plen > 128 {
                        count(Counter::BadPrefixLength);
                    } else if preferred > valid {
                        count(Counter::BadLifetimes);
                    } else if ia as usize >= MAX_IAS {
                        count(Counter::TooManyPrefixes);
                        self.ev.flags |= flags::PREFIXES_DROPPED;
                    } else if unsafe { self.ia.get_unchecked(ia as usize & (MAX_IAS - 1)) }.ok == 0 {
                        // Counted once as BadT1T2 on the IA_PD.
                    } else if self.nprefix as usize >= MAX_PREFIXES {
                        count(Counter::TooManyPrefixes);
                        self.ev.flags |= flags::PREFIXES_DROPPED;
                    } else {
                        let prefix = self.addr(data + 9);
                        let slot = self.nprefix as usize & (MAX_PREFIXES - 1);
                        let p = unsafe { self.pfx.get_unchecked_mut(slot) };
                        p.prefix = prefix;
                        p.preferred = preferred;
                        p.valid = valid;
                        p.plen = plen;
                        p.ia = ia;
                        self.nprefix += 1;
                    }
                } else if code == opt::STATUS_CODE && (ia as usize) < MAX_IAS {
                    if len < STATUS_FIXED as u32 {
                        return self.reject(Counter::BadOptionLength);
                    }
                    let st = self.u16(data);
                    unsafe { self.ia.get_unchecked_mut(ia as usize & (MAX_IAS - 1)) }.status = st;
                }
                self.cursor = next;
                0
            }
        }
    }
}

unsafe extern "C" fn step_cb(_index: u64, _ctx: *mut c_void) -> i64 {
    match PD_SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { (*s).step() },
        None => 1,
    }
}

/// Where the DHCPv6 payload sits in a packet.
struct Located {
    /// Offset of the IPv6 header.
    l3: usize,
    /// Offset of the UDP payload.
    payload: usize,
    /// UDP payload length.
    len: usize,
    vlan: u16,
    has_vlan: bool,
}

#[inline(always)]
fn ld_u16(data: usize, end: usize, off: usize) -> Option<u16> {
    let p = data + off;
    if p + 2 > end {
        return None;
    }
    Some(u16::from_be(unsafe { *(p as *const u16) }))
}

/// Find an IPv6/UDP packet to port 546 or 547. `Ok(None)`: not DHCPv6,
/// pass it on without counting anything. `bare`: the link has no
/// link-layer header, so the frame starts with the IPv6 header.
#[inline(always)]
fn locate(data: usize, end: usize, bare: bool) -> Result<Option<Located>, Counter> {
    let mut l3 = ETH_HLEN;
    let mut vlan = 0u16;
    let mut has_vlan = false;
    if bare {
        // IPv4 and IPv6 share such links: the version nibble tells them
        // apart (read as a 2-byte window, which the verifier can bound).
        match ld_u16(data, end, 0) {
            Some(w) if w >> 12 == 6 => {}
            _ => return Ok(None),
        }
        l3 = 0;
    } else {
        if data + ETH_HLEN > end {
            return Ok(None);
        }
        let mut proto = u16::from_be(unsafe { *((data + 12) as *const u16) });
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            if data + ETH_HLEN + VLAN_HLEN > end {
                return Ok(None);
            }
            vlan = u16::from_be(unsafe { *((data + 14) as *const u16) }) & 0x0fff;
            proto = u16::from_be(unsafe { *((data + 16) as *const u16) });
            has_vlan = true;
            l3 = ETH_HLEN + VLAN_HLEN;
        }
        if proto != ETH_P_IPV6 {
            return Ok(None);
        }
    }
    if data + l3 + IPV6_HLEN > end {
        return Err(Counter::TruncatedHeader);
    }
    let ip = data + l3;
    let ip_payload_len = u16::from_be(unsafe { *((ip + 4) as *const u16) }) as usize;
    let mut nh = unsafe { *((ip + 6) as *const u8) };
    let mut off = l3 + IPV6_HLEN;
    let mut ext_len = 0usize;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        if nh != IPPROTO_HOPOPTS && nh != IPPROTO_DSTOPTS {
            break;
        }
        // Next Header and Hdr Ext Len, read as one 2-byte window.
        let w = match ld_u16(data, end, off) {
            Some(w) => w,
            None => return Err(Counter::TruncatedHeader),
        };
        nh = (w >> 8) as u8;
        let hl = ((w & 0xff) as usize + 1) * 8;
        off += hl;
        ext_len += hl;
        i += 1;
    }
    if nh != IPPROTO_UDP {
        if nh == IPPROTO_HOPOPTS || nh == IPPROTO_DSTOPTS {
            return Err(Counter::ExtHeaders);
        }
        return Ok(None);
    }
    if off > MAX_UDP_OFFSET {
        return Err(Counter::ExtHeaders);
    }
    let udp = data + off;
    if udp + UDP_HLEN > end {
        return Err(Counter::TruncatedHeader);
    }
    let dport = u16::from_be(unsafe { *((udp + 2) as *const u16) });
    if dport != CLIENT_PORT && dport != SERVER_PORT {
        return Ok(None);
    }
    count(Counter::Seen);
    let udp_len = u16::from_be(unsafe { *((udp + 4) as *const u16) }) as usize;
    if udp_len < UDP_HLEN || ext_len + udp_len != ip_payload_len {
        return Err(Counter::UdpLength);
    }
    let payload = off + UDP_HLEN;
    let len = udp_len - UDP_HLEN;
    // A packet shorter than its headers claim fails in load_bytes below.
    Ok(Some(Located { l3, payload, len, vlan, has_vlan }))
}

/// If the packet is DHCPv6 (or a mangled candidate), snoop it and return
/// true: it then passes untouched. `load` copies payload bytes into the
/// scratch buffer.
#[inline(always)]
fn snoop(
    data: usize,
    end: usize,
    ifindex: u32,
    in_ifindex: u32,
    hook_id: u8,
    bare: bool,
    load: impl FnOnce(&mut Scratch, u32, u32) -> bool,
) -> bool {
    let loc = match locate(data, end, bare) {
        Ok(Some(l)) => l,
        Ok(None) => return false,
        Err(c) => {
            count(c);
            return true;
        }
    };
    dhcp(data, end, loc, ifindex, in_ifindex, hook_id, load);
    true
}

/// Parse one DHCPv6 message found by [`locate`] and emit its events.
#[inline(always)]
fn dhcp(
    data: usize,
    end: usize,
    loc: Located,
    ifindex: u32,
    in_ifindex: u32,
    hook_id: u8,
    load: impl FnOnce(&mut Scratch, u32, u32) -> bool,
) {
    let s = match PD_SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { &mut *s },
        None => return count(Counter::Internal),
    };
    if loc.len < MSG_HLEN {
        return count(Counter::ShortMessage);
    }
    if loc.len > PAYLOAD_MAX {
        return count(Counter::TooLong);
    }
    let len = loc.len;
    s.ev = PdEvent::zeroed();
    // Launder the length through memory so LLVM cannot fold the mask
    // away: the verifier must see the range [1, PAYLOAD_MAX] on the very
    // register passed to the helper. For 4..=PAYLOAD_MAX this is identity.
    let len = unsafe { core::ptr::read_volatile(&(len as u32)) };
    let len = ((len - 1) & MASK as u32) + 1;
    if !load(s, loc.payload as u32, len) {
        return count(Counter::TruncatedHeader);
    }
    // Addresses and MACs at fixed offsets from checked pointers.
    let ip = data + loc.l3;
    if ip + IPV6_HLEN > end {
        return;
    }
    unsafe {
        s.ev.src = *((ip + 8) as *const [u8; 16]);
        s.ev.dst = *((ip + 24) as *const [u8; 16]);
    }
    // MACs where the link has them (zero on links without a link-layer header).
    if loc.l3 >= ETH_HLEN && data + ETH_HLEN <= end {
        unsafe {
            s.ev.dst_mac = *(data as *const [u8; 6]);
            s.ev.src_mac = *((data + 6) as *const [u8; 6]);
        }
    }
    if loc.has_vlan {
        s.ev.flags |= flags::VLAN;
        s.ev.vlan = loc.vlan;
    }
    s.ev.ifindex = ifindex;
    s.ev.in_ifindex = in_ifindex;
    s.ev.hook = hook_id;
    s.len = len;
    s.cursor = 0;
    s.end = len;
    s.top_end = len;
    s.mode = MODE_MSG;
    s.reject = NO_REJECT;
    s.done = 0;
    s.depth = 0;
    s.nia = 0;
    s.cur_ia = 0;
    s.nprefix = 0;

    unsafe { bpf_loop(MAX_TLV_STEPS, step_cb as *mut c_void, core::ptr::null_mut(), 0) };

    // bpf_loop's callback looked the scratch value up again; re-borrow.
    let s = match PD_SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { &mut *s },
        None => return count(Counter::Internal),
    };
    if s.reject != NO_REJECT {
        if s.reject < COUNTER_COUNT {
            if let Some(p) = PD_COUNTERS.get_ptr_mut(s.reject) {
                unsafe { *p += 1 };
            }
        }
        return;
    }
    if s.done == 0 {
        return count(Counter::TooManyOptions);
    }
    if s.ev.msg_type == msg::SOLICIT && s.ev.flags & flags::RAPID_COMMIT == 0 {
        return count(Counter::IgnoredType);
    }
    count(Counter::Parsed);
    emit(s);
}

#[inline(always)]
fn emit(s: &mut Scratch) {
    let Some(seq) = PD_SEQ.get_ptr_mut(0) else {
        return count(Counter::Internal);
    };
    let seq = unsafe {
        *seq = (*seq + 1) & ((1 << SEQ_CPU_SHIFT) - 1);
        *seq
    };
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    s.ev.seq = cpu << SEQ_CPU_SHIFT | seq;
    s.ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    s.ev.relay_depth = s.depth as u8;
    if s.nia > 0 {
        let ia = s.ia[0];
        s.ev.iaid = ia.iaid;
        s.ev.t1 = ia.t1;
        s.ev.t2 = ia.t2;
        s.ev.ia_status = ia.status;
    }
    // Not what this host forwarded from anywhere but upstream (a rogue's
    // hairpinned Reply must not replace the server's record).
    let in_ifindex = s.ev.in_ifindex;
    let trusted = in_ifindex == 0
        || unsafe { PD_IFACES.get(&in_ifindex) }.is_some_and(|f| *f & ifflags::UPSTREAM != 0);
    if s.ev.client_duid_len > 0 && trusted {
        record(s);
    }
    let n = s.nprefix as usize;
    if n == 0 {
        s.ev.count = 1;
        s.ev.index = 0;
        output(&s.ev);
        return;
    }
    s.ev.count = n as u8;
    s.ev.flags |= flags::HAS_PREFIX;
    let mut i = 0;
    while i < MAX_PREFIXES {
        if i >= n {
            break;
        }
        let p = s.pfx[i];
        let ia = s.ia[p.ia as usize & (MAX_IAS - 1)];
        s.ev.index = i as u8;
        s.ev.prefix = p.prefix;
        s.ev.prefix_len = p.plen as u8;
        s.ev.preferred = p.preferred;
        s.ev.valid = p.valid;
        s.ev.iaid = ia.iaid;
        s.ev.t1 = ia.t1;
        s.ev.t2 = ia.t2;
        s.ev.ia_status = ia.status;
        output(&s.ev);
        i += 1;
    }
}

/// Keep the message as its client's latest of its class, before it goes
/// into the ring buffer: whatever the ring buffer loses, this keeps.
#[inline(always)]
fn record(s: &mut Scratch) {
    let n = s.nprefix as usize;
    s.key.ifindex = s.ev.ifindex;
    s.key.hook = s.ev.hook;
    s.key.class = if s.ev.msg_type == msg::REPLY { class::REPLY } else { class::CLIENT };
    let len = s.ev.client_duid_len as usize;
    s.key.duid_len = if len > DUID_MAX { DUID_MAX as u16 } else { len as u16 };
    // The event's copy is zero past the DUID's end.
    s.key.duid = s.ev.client_duid;
    s.rec.ev = s.ev;
    s.rec.nprefix = if n > RECORD_PREFIXES { RECORD_PREFIXES as u32 } else { n as u32 };
    if n > RECORD_PREFIXES {
        s.rec.ev.flags |= flags::PREFIXES_DROPPED;
    }
    let mut i = 0;
    while i < RECORD_PREFIXES {
        let r = if i < n {
            let p = s.pfx[i];
            let ia = s.ia[p.ia as usize & (MAX_IAS - 1)];
            RecordPrefix {
                prefix: p.prefix,
                iaid: ia.iaid,
                t1: ia.t1,
                t2: ia.t2,
                preferred: p.preferred,
                valid: p.valid,
                ia_status: ia.status,
                prefix_len: p.plen as u8,
                _pad: 0,
            }
        } else {
            RecordPrefix {
                prefix: [0; 16],
                iaid: 0,
                t1: 0,
                t2: 0,
                preferred: 0,
                valid: 0,
                ia_status: 0,
                prefix_len: 0,
                _pad: 0,
            }
        };
        s.rec.pfx[i] = r;
        i += 1;
    }
    if PD_CLIENTS.insert(&s.key, &s.rec, 0).is_err() {
        count(Counter::RecordsFull);
    }
}

#[inline(always)]
fn output(ev: &PdEvent) {
    match PD_EVENTS.output::<PdEvent>(ev, 0) {
        Ok(()) => count(Counter::Events),
        Err(_) => count(Counter::RingbufFull),
    }
}

/// The agent's flags for an interface ([`ifflags`]; 0 when unmanaged).
#[inline(always)]
fn iface_flags(ifindex: u32) -> u32 {
    unsafe { PD_IFACES.get(&ifindex) }.copied().unwrap_or(0)
}

/// Whether a load-time switch is on (read so that the verifier prunes
/// what is off).
#[inline(always)]
fn on(switch: &u8) -> bool {
    unsafe { core::ptr::read_volatile(switch) != 0 }
}

#[xdp]
pub fn pd_xdp(ctx: XdpContext) -> u32 {
    let md = ctx.ctx;
    let ifindex = ctx.ingress_ifindex() as u32;
    // One flag lookup serves the link type, source validation and the fast
    // path; with none of them loaded there is nothing to look up.
    let ifl = if on(&BARE_LINKS) || on(&SAV) || on(&FAST_PATH) {
        iface_flags(ifindex)
    } else {
        0
    };
    let bare = ifl & ifflags::L3 != 0;
    let handled = snoop(ctx.data(), ctx.data_end(), ifindex, 0, hook::XDP_INGRESS, bare, |s, off, len| unsafe {
        bpf_xdp_load_bytes(md as *mut xdp_md, off, s.buf.as_mut_ptr() as *mut c_void, len) == 0
    });
    if handled {
        return xdp_action::XDP_PASS;
    }
    fast_path(&ctx, ifindex, ifl)
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const AF_INET6: u8 = 10;

#[inline(always)]
fn addr_at(p: usize) -> [u8; 16] {
    unsafe { *(p as *const [u8; 16]) }
}

/// Source-address validation (RFC 8987 §3.1). Returns false to drop.
#[inline(always)]
fn source_ok(ip: usize, end: usize, ifindex: u32, ifl: u32) -> bool {
    let src = addr_at(ip + 8);
    // Link-local (fe80::/10) and unspecified (DAD) sources always pass.
    if src[0] == 0xfe && src[1] & 0xc0 == 0x80 {
        return true;
    }
    if src == [0u8; 16] {
        return true;
    }
    let nh = unsafe { *((ip + 6) as *const u8) };
    if nh == IPPROTO_ICMPV6 && ip + IPV6_HLEN + 1 <= end {
        // MLD (130-132, 143) and ND (133-137) always pass.
        let t = unsafe { *((ip + IPV6_HLEN) as *const u8) };
        if (130..=137).contains(&t) || t == 143 {
            return true;
        }
    }
    match PD_ROUTES.get(Key::new(128, src)) {
        Some(v) => {
            if v.ifindex != ifindex {
                count(Counter::SavDropped);
                return false;
            }
            true
        }
        None => {
            if ifl & ifflags::SAV_STRICT == 0 {
                return true;
            }
            match PD_ONLINK.get(Key::new(128, src)) {
                Some(i) if *i == ifindex => true,
                _ => {
                    count(Counter::SavStrictDropped);
                    false
                }
            }
        }
    }
}

/// Validation, then forwarding for delegated destinations.
///
/// A delegated destination is forwarded here only where that is exactly
/// what the kernel would do: the ingress link is Ethernet and no netfilter
/// hook sits on the forwarding path ([`ifflags::FWD_IN`], kept by the
/// agent), and the egress device takes redirected frames
/// ([`ifflags::FWD_OUT`]: its xdp-features list `ndo_xdp_xmit`). Anything
/// else goes to the kernel, counted by reason.
#[inline(always)]
fn fast_path(ctx: &XdpContext, ifindex: u32, ifl: u32) -> u32 {
    // Both switches are load-time constants: with both off the verifier
    // prunes everything below and snooping is all that runs.
    let sav = on(&SAV);
    let fast_path = on(&FAST_PATH);
    if !sav && !fast_path {
        return xdp_action::XDP_PASS;
    }
    let data = ctx.data();
    let end = ctx.data_end();
    let bare = ifl & ifflags::L3 != 0;
    // Untagged IPv6 only; everything else is the kernel's. Each link kind
    // checks its own constant bounds.
    let ip = if bare {
        if data + IPV6_HLEN > end || unsafe { *(data as *const u8) } >> 4 != 6 {
            return xdp_action::XDP_PASS;
        }
        data
    } else {
        if data + ETH_HLEN + IPV6_HLEN > end
            || u16::from_be(unsafe { *((data + 12) as *const u16) }) != ETH_P_IPV6
        {
            return xdp_action::XDP_PASS;
        }
        data + ETH_HLEN
    };
    if ip + IPV6_HLEN > end {
        return xdp_action::XDP_PASS;
    }
    if sav && ifl & ifflags::SAV != 0 && !source_ok(ip, end, ifindex, ifl) {
        return xdp_action::XDP_DROP;
    }
    if !fast_path {
        return xdp_action::XDP_PASS;
    }
    let dst = addr_at(ip + 24);
    let Some(route) = PD_ROUTES.get(Key::new(128, dst)) else {
        return xdp_action::XDP_PASS;
    };
    if bare {
        count(Counter::FwdLinkType);
        return xdp_action::XDP_PASS;
    }
    if ifl & ifflags::FWD_IN == 0 {
        count(Counter::FwdFirewall);
        return xdp_action::XDP_PASS;
    }
    let lease = PD_FWD_LEASE.get(0).copied().unwrap_or(0);
    if unsafe { bpf_ktime_get_boot_ns() } >= lease {
        count(Counter::FwdNoAgent);
        return xdp_action::XDP_PASS;
    }
    let slot = route.slot;
    // The binding's own interface first: where it takes no redirects (a
    // plain veth, a bridge) the FIB lookup would be wasted. The FIB's
    // choice of egress is checked again below.
    if iface_flags(route.ifindex) & ifflags::FWD_OUT == 0 {
        count(Counter::FwdNoXmit);
        return xdp_action::XDP_PASS;
    }
    let nh = unsafe { *((ip + 6) as *const u8) };
    if nh != IPPROTO_TCP && nh != IPPROTO_UDP && nh != IPPROTO_ICMPV6 {
        count(Counter::FwdNotHandled);
        return xdp_action::XDP_PASS;
    }
    let hop_limit = unsafe { *((ip + 7) as *const u8) };
    if hop_limit <= 1 {
        count(Counter::FwdHopLimit);
        return xdp_action::XDP_PASS;
    }
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.l4_protocol = nh;
    p.__bindgen_anon_1.tot_len = (u16::from_be(unsafe { *((ip + 4) as *const u16) }) as usize + IPV6_HLEN) as u16;
    p.ifindex = ifindex;
    // Flow label (the 20 low bits of the first word), network order.
    p.__bindgen_anon_2.flowinfo = unsafe { *(ip as *const u32) } & u32::to_be(0x000f_ffff);
    p.__bindgen_anon_3.ipv6_src = unsafe { *((ip + 8) as *const [u32; 4]) };
    p.__bindgen_anon_4.ipv6_dst = unsafe { *((ip + 24) as *const [u32; 4]) };
    let rc = unsafe {
        bpf_fib_lookup(ctx.ctx as *mut c_void, &mut p, core::mem::size_of::<FibParams>() as i32, 0)
    } as u32;
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        count(if rc == BPF_FIB_LKUP_RET_NO_NEIGH { Counter::FwdNoNeigh } else { Counter::FwdFibOther });
        return xdp_action::XDP_PASS;
    }
    // A redirect into a device that cannot take it is dropped after XDP
    // returns; the kernel would have delivered the packet.
    if iface_flags(p.ifindex) & ifflags::FWD_OUT == 0 {
        count(Counter::FwdNoXmit);
        return xdp_action::XDP_PASS;
    }
    unsafe {
        *(data as *mut [u8; 6]) = p.dmac;
        *((data + 6) as *mut [u8; 6]) = p.smac;
        *((ip + 7) as *mut u8) = hop_limit - 1;
    }
    if slot != NO_SLOT {
        if let Some(st) = PD_FWD_STATS.get_ptr_mut(slot) {
            unsafe {
                (*st).packets += 1;
                (*st).bytes += (end - data) as u64;
            }
        }
    }
    count(Counter::FwdRedirected);
    unsafe { bpf_redirect(p.ifindex, 0) as u32 }
}

/// An empty program: the baseline the benchmarks compare `pd_xdp` against.
#[xdp]
pub fn pd_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Sends every frame back out (XDP_TX): the benchmarks' traffic generator,
/// run in BPF_PROG_TEST_RUN's live-frames mode.
#[xdp]
pub fn pd_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[classifier]
pub fn pd_tc_egress(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let ifindex = unsafe { (*skb).ifindex };
    // Non-zero for a forwarded packet: a Reply a downstream host sent
    // through this router is not one this host's server or relay sent.
    let in_ifindex = unsafe { (*skb).ingress_ifindex };
    let bare = on(&BARE_LINKS) && iface_flags(ifindex) & ifflags::L3 != 0;
    let _ = snoop(ctx.data(), ctx.data_end(), ifindex, in_ifindex, hook::TC_EGRESS, bare, |s, off, len| unsafe {
        bpf_skb_load_bytes(skb as *const c_void, off, s.buf.as_mut_ptr() as *mut c_void, len) == 0
    });
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
