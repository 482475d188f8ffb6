//! The DHCPv6 walk over the payload copied into the per-CPU [`Scratch`].
//!
//! One `bpf_loop` iteration reads one header or option (the verifier checks
//! the callback once, not once per iteration), in one of four modes: a
//! message or relay header (RFC 8415 §8, §9), a relay message's options,
//! the innermost message's options, and the current IA_PD's options
//! (§21.21). What a message says goes into `Scratch::ev`, its IA_PDs and
//! prefixes into `ia` and `pfx`; anything malformed stops the walk with
//! the reason to count.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;
use pd_common::{
    flags, msg, opt, status,
    wire::{IAPREFIX_FIXED, IA_PD_FIXED, MSG_HLEN, OPT_HLEN, RELAY_HLEN, STATUS_FIXED},
    ClientKey, ClientRecord, Counter, PdEvent, COUNTER_COUNT, DUID_MAX, MAX_IAS, MAX_PREFIXES, MAX_RELAY_DEPTH,
    MAX_TLV_STEPS, PAYLOAD_MAX,
};

use crate::maps::{count, note, why, PD_COUNTERS, PD_SCRATCH};

pub(crate) const MASK: usize = PAYLOAD_MAX - 1;
const _: () = assert!(PAYLOAD_MAX.is_power_of_two());

/// What the next step reads: a message or relay header,
const MODE_MSG: u32 = 0;
/// a relay message's options (up to its Relay Message option),
const MODE_RELAY: u32 = 1;
/// the innermost message's options,
const MODE_TOP: u32 = 2;
/// or the current IA_PD's options.
const MODE_IAPD: u32 = 3;
/// `Scratch::reject` of a message nothing has rejected.
const NO_REJECT: u32 = u32::MAX;

/// An IA_PD of the message (`ok`: T1 and T2 agree).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Ia {
    pub(crate) iaid: u32,
    pub(crate) t1: u32,
    pub(crate) t2: u32,
    pub(crate) status: u16,
    pub(crate) ok: u16,
}

/// A prefix of the message, from the IA_PD `ia`.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Pfx {
    pub(crate) prefix: [u8; 16],
    pub(crate) preferred: u32,
    pub(crate) valid: u32,
    pub(crate) ia: u32,
    pub(crate) plen: u32,
}

/// The walk's state, the payload copy, and the event and record being built.
#[repr(C)]
pub(crate) struct Scratch {
    /// DHCPv6 payload; 64 spare bytes so a masked index plus a small
    /// constant stays inside the value.
    pub(crate) buf: [u8; PAYLOAD_MAX + 64],
    len: u32,
    cursor: u32,
    end: u32,
    top_end: u32,
    mode: u32,
    reject: u32,
    done: u32,
    pub(crate) depth: u32,
    pub(crate) nia: u32,
    cur_ia: u32,
    pub(crate) nprefix: u32,
    _pad: u32,
    pub(crate) ia: [Ia; MAX_IAS],
    pub(crate) pfx: [Pfx; MAX_PREFIXES],
    pub(crate) ev: PdEvent,
    pub(crate) key: ClientKey,
    pub(crate) rec: ClientRecord,
}

/// An option header (RFC 8415 §21.1) whose option fits its container.
struct Tlv {
    code: u16,
    len: u32,
    /// Offset of the option's data.
    data: u32,
    /// Offset just past the option.
    next: u32,
}

/// Copy up to `N` bytes of an option at `data` (of length `len`) into `out`.
#[inline(always)]
fn copy_out<const N: usize>(buf: &[u8; PAYLOAD_MAX + 64], data: u32, len: u32, out: &mut [u8; N]) {
    let base = data as usize & MASK;
    let mut i = 0;
    while i < N {
        if i as u32 >= len {
            break;
        }
        out[i] = unsafe { *buf.get_unchecked(base + i) };
        i += 1;
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

    /// The option at `c`, which must end by `end`.
    #[inline(always)]
    fn option(&self, c: u32, end: u32) -> Result<Tlv, Counter> {
        if c + OPT_HLEN as u32 > end {
            return Err(Counter::OptionOverflow);
        }
        let code = self.u16(c);
        let len = self.u16(c + 2) as u32;
        let data = c + OPT_HLEN as u32;
        let next = data + len;
        if next > end {
            return Err(Counter::OptionOverflow);
        }
        Ok(Tlv { code, len, data, next })
    }

    /// Stop parsing this message: it is counted under `c` and produces no event.
    #[inline(always)]
    fn reject(&mut self, c: Counter) -> i64 {
        self.reject = c as u32;
        1
    }

    /// Start the walk of a `len`-byte message already copied into `buf`.
    #[inline(always)]
    pub(crate) fn start(&mut self, len: u32) {
        self.len = len;
        self.cursor = 0;
        self.end = len;
        self.top_end = len;
        self.mode = MODE_MSG;
        self.reject = NO_REJECT;
        self.done = 0;
        self.depth = 0;
        self.nia = 0;
        self.cur_ia = 0;
        self.nprefix = 0;
    }

    /// One header or option. Returns 0 to continue, 1 to stop.
    #[inline(always)]
    fn step(&mut self) -> i64 {
        match self.mode {
            MODE_MSG => self.message_header(),
            MODE_RELAY => self.relay_option(),
            MODE_TOP => self.top_option(),
            _ => self.iapd_option(),
        }
    }

    /// A message header (RFC 8415 §8): msg-type, transaction-id; or a
    /// relay header.
    #[inline(always)]
    fn message_header(&mut self) -> i64 {
        let c = self.cursor;
        if c + MSG_HLEN as u32 > self.end {
            return self.reject(Counter::ShortMessage);
        }
        let t = self.b(c);
        if self.depth == 0 {
            self.ev.outer_msg_type = t;
        }
        if t == msg::RELAY_FORW || t == msg::RELAY_REPL {
            return self.relay_header(c);
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

    /// A relay header (RFC 8415 §9): msg-type, hop-count, link-address,
    /// peer-address; its options follow.
    #[inline(always)]
    fn relay_header(&mut self, c: u32) -> i64 {
        if c + RELAY_HLEN as u32 > self.end {
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
        0
    }

    /// A relay message's option: the Relay Message option holds the next
    /// message in; the others are skipped.
    #[inline(always)]
    fn relay_option(&mut self) -> i64 {
        let c = self.cursor;
        if c >= self.end {
            return self.reject(Counter::RelayNoMessage);
        }
        let o = match self.option(c, self.end) {
            Ok(o) => o,
            Err(e) => return self.reject(e),
        };
        if o.code == opt::RELAY_MSG {
            self.cursor = o.data;
            self.end = o.next;
            self.mode = MODE_MSG;
        } else {
            self.cursor = o.next;
        }
        0
    }

    /// An option of the innermost message; the end of the message ends
    /// the walk.
    #[inline(always)]
    fn top_option(&mut self) -> i64 {
        let c = self.cursor;
        let end = self.end;
        if c == end {
            self.done = 1;
            return 1;
        }
        let o = match self.option(c, end) {
            Ok(o) => o,
            Err(e) => return self.reject(e),
        };
        match o.code {
            opt::CLIENTID => {
                self.ev.client_duid_len = o.len as u16;
                // A repeated Client-ID replaces the whole copy, which
                // keys the per-client records.
                self.ev.client_duid = [0; DUID_MAX];
                copy_out(&self.buf, o.data, o.len, &mut self.ev.client_duid);
            }
            opt::SERVERID => {
                self.ev.server_duid_len = o.len as u16;
                copy_out(&self.buf, o.data, o.len, &mut self.ev.server_duid);
            }
            opt::STATUS_CODE => {
                if o.len < STATUS_FIXED as u32 {
                    return self.reject(Counter::BadOptionLength);
                }
                self.ev.status = self.u16(o.data);
            }
            opt::RAPID_COMMIT => self.ev.flags |= flags::RAPID_COMMIT,
            opt::IA_PD => return self.ia_pd(&o, end),
            _ => {}
        }
        self.cursor = o.next;
        0
    }

    /// An IA_PD (RFC 8415 §21.21): IAID, T1, T2, then its options, which
    /// the next steps walk before the message's options resume at `end`.
    #[inline(always)]
    fn ia_pd(&mut self, o: &Tlv, end: u32) -> i64 {
        if o.len < IA_PD_FIXED as u32 {
            return self.reject(Counter::BadOptionLength);
        }
        let data = o.data;
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
                note(Counter::BadT1T2, self.ev.ifindex);
            }
            let iaid = self.u32(data);
            let ia = unsafe { self.ia.get_unchecked_mut(n as usize & (MAX_IAS - 1)) };
            *ia = Ia { iaid, t1, t2, status: status::ABSENT, ok: ok as u16 };
            self.cur_ia = n;
            self.nia = n + 1;
        }
        self.top_end = end;
        self.end = o.next;
        self.cursor = data + IA_PD_FIXED as u32;
        self.mode = MODE_IAPD;
        0
    }

    /// An option of the current IA_PD; its end returns to the message's
    /// options.
    #[inline(always)]
    fn iapd_option(&mut self) -> i64 {
        let c = self.cursor;
        let end = self.end;
        if c == end {
            self.mode = MODE_TOP;
            self.end = self.top_end;
            return 0;
        }
        let o = match self.option(c, end) {
            Ok(o) => o,
            Err(e) => return self.reject(e),
        };
        let ia = self.cur_ia;
        if o.code == opt::IAPREFIX {
            if o.len < IAPREFIX_FIXED as u32 {
                return self.reject(Counter::BadOptionLength);
            }
            self.iaprefix(o.data, ia);
        } else if o.code == opt::STATUS_CODE && (ia as usize) < MAX_IAS {
            if o.len < STATUS_FIXED as u32 {
                return self.reject(Counter::BadOptionLength);
            }
            let st = self.u16(o.data);
            unsafe { self.ia.get_unchecked_mut(ia as usize & (MAX_IAS - 1)) }.status = st;
        }
        self.cursor = o.next;
        0
    }

    /// An IAPREFIX (RFC 8415 §21.22) of the IA_PD `ia`: preferred, valid,
    /// prefix-length, prefix. Kept, or counted as discarded.
    #[inline(always)]
    fn iaprefix(&mut self, data: u32, ia: u32) {
        let preferred = self.u32(data);
        let valid = self.u32(data + 4);
        let plen = self.b(data + 8) as u32;
        if plen == 0 || plen > 128 {
            return note(Counter::BadPrefixLength, self.ev.ifindex);
        }
        if preferred > valid {
            return note(Counter::BadLifetimes, self.ev.ifindex);
        }
        if ia as usize >= MAX_IAS {
            return self.drop_prefix();
        }
        // An IA_PD with T1 > T2 was counted once (BadT1T2); its prefixes
        // are ignored.
        if unsafe { self.ia.get_unchecked(ia as usize & (MAX_IAS - 1)) }.ok == 0 {
            return;
        }
        if self.nprefix as usize >= MAX_PREFIXES {
            return self.drop_prefix();
        }
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

    /// A prefix past [`MAX_IAS`] IA_PDs or [`MAX_PREFIXES`] prefixes.
    #[inline(always)]
    fn drop_prefix(&mut self) {
        note(Counter::TooManyPrefixes, self.ev.ifindex);
        self.ev.flags |= flags::PREFIXES_DROPPED;
    }
}

unsafe extern "C" fn step_cb(_index: u64, _ctx: *mut c_void) -> i64 {
    match PD_SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { (*s).step() },
        None => 1,
    }
}

/// One step of the walk for kernels without `bpf_loop` (before 5.17): a
/// global function (exported, so its BTF linkage is global), which the
/// verifier checks once on its own and at each call only by its
/// signature, as it does `bpf_loop`'s callback. Kernels before 5.12 take
/// no pointers but the context in a global function's arguments, so it
/// finds the scratch value itself.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pd_tlv_step() -> i64 {
    match PD_SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { (*s).step() },
        None => 1,
    }
}

/// Walk the message [`Scratch::start`] set up: with `bpf_loop`, or
/// (`COMPAT`) with a bounded loop over [`pd_tlv_step`]. Returns the scratch
/// when the message is to be reported (counted as parsed); otherwise it
/// has been counted under its reason.
#[inline(always)]
pub(crate) fn walk<const COMPAT: bool>() -> Option<&'static mut Scratch> {
    if COMPAT {
        let mut i = 0;
        while i < MAX_TLV_STEPS {
            if pd_tlv_step() != 0 {
                break;
            }
            i += 1;
        }
    } else {
        unsafe { bpf_loop(MAX_TLV_STEPS, step_cb as *mut c_void, core::ptr::null_mut(), 0) };
    }

    // The step looked the scratch value up again; re-borrow.
    let s = match PD_SCRATCH.get_ptr_mut(0) {
        Some(s) => unsafe { &mut *s },
        None => {
            count(Counter::Internal);
            return None;
        }
    };
    if s.reject != NO_REJECT {
        if s.reject < COUNTER_COUNT {
            if let Some(p) = PD_COUNTERS.get_ptr_mut(s.reject) {
                unsafe { *p += 1 };
            }
        }
        why(s.reject, s.ev.ifindex);
        return None;
    }
    if s.done == 0 {
        note(Counter::TooManyOptions, s.ev.ifindex);
        return None;
    }
    if s.ev.msg_type == msg::SOLICIT && s.ev.flags & flags::RAPID_COMMIT == 0 {
        note(Counter::IgnoredType, s.ev.ifindex);
        return None;
    }
    count(Counter::Parsed);
    Some(s)
}
