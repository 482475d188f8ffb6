//! Reporting a parsed message: one event per delegated prefix into the
//! ring buffer (`pd_events_v1`), and the message as its client's latest
//! into `pd_clients_v1`, which keeps what the ring buffer loses.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_boot_ns};
use pd_common::{
    class, flags, ifflags, msg, Counter, PdEvent, RecordPrefix, DUID_MAX, MAX_IAS, MAX_PREFIXES, RECORD_PREFIXES,
    SEQ_CPU_SHIFT,
};

use crate::{
    maps::{count, note, PD_CLIENTS, PD_EVENTS, PD_IFACES, PD_SEQ},
    parse::Scratch,
};

/// Number the message, record it, and push its events.
#[inline(always)]
pub(crate) fn emit(s: &mut Scratch) {
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
        note(Counter::RecordsFull, s.ev.ifindex);
    }
}

/// Push one event; a full ring buffer is counted.
#[inline(always)]
fn output(ev: &PdEvent) {
    match PD_EVENTS.output::<PdEvent>(ev, 0) {
        Ok(()) => count(Counter::Events),
        Err(_) => note(Counter::RingbufFull, ev.ifindex),
    }
}
