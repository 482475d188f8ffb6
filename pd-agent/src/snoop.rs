//! Ring buffer records -> whole DHCPv6 messages.
//!
//! The kernel pushes one [`PdEvent`] per delegated prefix; the events of one
//! message share `seq` and are numbered `index` of `count`. [`Assembler`]
//! puts them back together into a [`Message`], which is what the binding
//! table reasons about.

use std::{collections::HashMap, net::Ipv6Addr};

use pd_common::{flags, status, ClientRecord, PdEvent, RECORD_PREFIXES};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes, expected {1}")]
    Size(usize, usize),
    #[error("event index {index} >= count {count}")]
    Index { index: u8, count: u8 },
}

/// Decode one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<PdEvent, DecodeError> {
    let want = std::mem::size_of::<PdEvent>();
    if bytes.len() != want {
        return Err(DecodeError::Size(bytes.len(), want));
    }
    // SAFETY: PdEvent is repr(C) plain data without padding, every bit
    // pattern is valid, and read_unaligned copes with any alignment.
    let ev: PdEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const PdEvent) };
    if ev.count == 0 || ev.index >= ev.count {
        return Err(DecodeError::Index {
            index: ev.index,
            count: ev.count,
        });
    }
    Ok(ev)
}

/// One delegated prefix in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixInfo {
    pub iaid: u32,
    pub t1: u32,
    pub t2: u32,
    pub ia_status: u16,
    pub prefix: Ipv6Addr,
    pub len: u8,
    pub preferred: u32,
    pub valid: u32,
}

/// A DHCPv6 message as the kernel saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    /// When the kernel saw it (CLOCK_BOOTTIME ns).
    pub ts_ns: u64,
    /// Replayed from the kernel's per-client record (not the ring buffer).
    pub from_record: bool,
    pub hook: u8,
    pub ifindex: u32,
    /// TC egress: where a forwarded packet came in (0: sent by this host).
    pub in_ifindex: u32,
    pub msg_type: u8,
    pub outer_msg_type: u8,
    pub xid: u32,
    pub relay_depth: u8,
    pub flags: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub dst_mac: [u8; 6],
    pub peer_addr: Ipv6Addr,
    pub link_addr: Ipv6Addr,
    pub outer_peer_addr: Ipv6Addr,
    pub status: u16,
    /// Status of the first IA_PD when the message lists no prefix.
    pub ia_status: u16,
    /// IAID of the first IA_PD (0 when none).
    pub iaid: u32,
    /// Client DUID (bounded copy) and its true length.
    pub client_duid: Vec<u8>,
    pub client_duid_len: u16,
    pub server_duid: Vec<u8>,
    pub prefixes: Vec<PrefixInfo>,
}

impl Message {
    fn from_first(e: &PdEvent) -> Self {
        let cd = (e.client_duid_len as usize).min(e.client_duid.len());
        let sd = (e.server_duid_len as usize).min(e.server_duid.len());
        Message {
            seq: e.seq,
            ts_ns: e.ts_ns,
            from_record: false,
            hook: e.hook,
            ifindex: e.ifindex,
            in_ifindex: e.in_ifindex,
            msg_type: e.msg_type,
            outer_msg_type: e.outer_msg_type,
            xid: e.xid,
            relay_depth: e.relay_depth,
            flags: e.flags & !flags::HAS_PREFIX,
            src: Ipv6Addr::from(e.src),
            dst: Ipv6Addr::from(e.dst),
            dst_mac: e.dst_mac,
            peer_addr: Ipv6Addr::from(e.peer_addr),
            link_addr: Ipv6Addr::from(e.link_addr),
            outer_peer_addr: Ipv6Addr::from(e.outer_peer_addr),
            status: e.status,
            ia_status: e.ia_status,
            iaid: e.iaid,
            client_duid: e.client_duid[..cd].to_vec(),
            client_duid_len: e.client_duid_len,
            server_duid: e.server_duid[..sd].to_vec(),
            prefixes: Vec::with_capacity(e.count as usize),
        }
    }

    /// A message as kept in the kernel's per-client record.
    pub fn from_record(r: &ClientRecord) -> Self {
        let mut m = Message::from_first(&r.ev);
        m.from_record = true;
        let n = (r.nprefix as usize).min(RECORD_PREFIXES);
        // A message with prefixes takes its IA fields from its first
        // prefix, as one assembled from events does (each event carries
        // its prefix's IA; the record's header carries the first IA's).
        if let Some(p) = r.pfx[..n].first() {
            m.iaid = p.iaid;
            m.ia_status = p.ia_status;
        }
        for p in &r.pfx[..n] {
            m.prefixes.push(PrefixInfo {
                iaid: p.iaid,
                t1: p.t1,
                t2: p.t2,
                ia_status: p.ia_status,
                prefix: Ipv6Addr::from(p.prefix),
                len: p.prefix_len,
                preferred: p.preferred,
                valid: p.valid,
            });
        }
        m.prefixes.sort_by_key(|p| (p.iaid, p.prefix, p.len));
        m
    }

    /// Top-level status is Success (an absent Status Code means Success).
    pub fn success(&self) -> bool {
        self.status == status::ABSENT || self.status == status::SUCCESS
    }

    /// The client DUID as the binding key: the bytes the kernel copied
    /// (the first [`pd_common::DUID_MAX`] of a longer DUID).
    pub fn duid_key(&self) -> Vec<u8> {
        self.client_duid.clone()
    }
}

/// Most messages waiting for the rest of their events.
const MAX_PARTIAL: usize = 1024;

/// Reassembles messages from events that may interleave across CPUs.
#[derive(Default)]
pub struct Assembler {
    partial: HashMap<u64, (Message, u8)>,
    /// Messages abandoned because their events never all arrived.
    pub incomplete: u64,
}

impl Assembler {
    /// Feed one event; returns the message when its last event arrives.
    pub fn push(&mut self, e: &PdEvent) -> Option<Message> {
        if e.flags & flags::HAS_PREFIX == 0 {
            return Some(Message::from_first(e));
        }
        let entry = self
            .partial
            .entry(e.seq)
            .or_insert_with(|| (Message::from_first(e), 0));
        entry.0.prefixes.push(PrefixInfo {
            iaid: e.iaid,
            t1: e.t1,
            t2: e.t2,
            ia_status: e.ia_status,
            prefix: Ipv6Addr::from(e.prefix),
            len: e.prefix_len,
            preferred: e.preferred,
            valid: e.valid,
        });
        entry.1 += 1;
        if entry.1 >= e.count {
            let (mut m, _) = self.partial.remove(&e.seq)?;
            m.prefixes.sort_by_key(|p| (p.iaid, p.prefix, p.len));
            return Some(m);
        }
        // A lost event would leave a partial forever: bound the table.
        if self.partial.len() > MAX_PARTIAL {
            if let Some(oldest) = self.partial.keys().min().copied() {
                self.partial.remove(&oldest);
                self.incomplete += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, index: u8, count: u8, last: u8) -> PdEvent {
        let mut e = PdEvent::zeroed();
        e.seq = seq;
        e.index = index;
        e.count = count;
        e.flags = flags::HAS_PREFIX;
        e.prefix = [
            0x20, 0x01, 0x0d, 0xb8, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        e.prefix_len = 56;
        e
    }

    #[test]
    fn interleaved_events_reassemble() {
        let mut a = Assembler::default();
        assert!(a.push(&ev(1, 0, 2, 1)).is_none());
        assert!(a.push(&ev(2, 0, 2, 3)).is_none());
        let m1 = a.push(&ev(1, 1, 2, 2)).unwrap();
        assert_eq!(m1.prefixes.len(), 2);
        let m2 = a.push(&ev(2, 1, 2, 4)).unwrap();
        assert_eq!(
            m2.prefixes[1].prefix,
            "2001:db8:4::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn decode_rejects_wrong_size_and_index() {
        assert!(matches!(decode(&[0u8; 10]), Err(DecodeError::Size(10, _))));
        let mut e = ev(1, 2, 2, 0);
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &e as *const PdEvent as *const u8,
                std::mem::size_of::<PdEvent>(),
            )
        }
        .to_vec();
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Index { index: 2, count: 2 })
        );
        e.index = 1;
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &e as *const PdEvent as *const u8,
                std::mem::size_of::<PdEvent>(),
            )
        };
        assert_eq!(decode(bytes).unwrap().index, 1);
    }
}
