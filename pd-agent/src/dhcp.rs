//! The userspace reference parser: what the kernel programs must report
//! for a frame, written plainly with checked reads. Tests run every corpus
//! packet through both and compare; fuzzing targets this parser.
//!
//! It follows the kernel's rules exactly, including its limits
//! ([`MAX_RELAY_DEPTH`], [`MAX_PREFIXES`], [`DUID_MAX`], ...).

use pd_common::{
    flags, msg, opt, status, Counter, PdEvent, CLIENT_PORT, DUID_MAX, MAX_IAS, MAX_PREFIXES,
    MAX_RELAY_DEPTH, MAX_TLV_STEPS, PAYLOAD_MAX, SERVER_DUID_MAX, SERVER_PORT,
};

/// What the kernel does with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv6/UDP to port 546/547 (or not parseable as such): no counter.
    NotDhcp,
    /// Counted under this reason; no event.
    Rejected(Counter),
    /// Parsed; these events (in order, `seq` left 0).
    Events(Vec<PdEvent>),
}

/// Reference result: the outcome plus the side counters the kernel bumps
/// without rejecting the message (per-IA and per-prefix discards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub outcome: Outcome,
    pub side: Vec<Counter>,
}

struct Cur<'a> {
    b: &'a [u8],
}

impl Cur<'_> {
    fn u8(&self, off: usize) -> Option<u8> {
        self.b.get(off).copied()
    }
    fn u16(&self, off: usize) -> Option<u16> {
        Some(u16::from_be_bytes(
            self.b.get(off..off + 2)?.try_into().ok()?,
        ))
    }
    fn u32(&self, off: usize) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.b.get(off..off + 4)?.try_into().ok()?,
        ))
    }
    fn addr(&self, off: usize) -> Option<[u8; 16]> {
        self.b.get(off..off + 16)?.try_into().ok()
    }
}

struct Loc {
    l3: usize,
    payload: usize,
    len: usize,
    vlan: Option<u16>,
}

/// Ethernet (with one optional 802.1Q/802.1ad tag), or on links without
/// a link-layer header (`bare`) an IPv6 header first.
fn locate(f: &[u8], bare: bool) -> Result<Option<Loc>, Counter> {
    let c = Cur { b: f };
    let mut l3 = 14;
    let mut vlan = None;
    if bare {
        // IPv4 shares such links: the version nibble tells them apart
        // (the kernel reads it as a 2-byte window).
        if c.u16(0).is_none_or(|w| w >> 12 != 6) {
            return Ok(None);
        }
        l3 = 0;
    } else {
        let Some(mut proto) = c.u16(12) else {
            return Ok(None);
        };
        if proto == 0x8100 || proto == 0x88a8 {
            let (Some(tci), Some(p)) = (c.u16(14), c.u16(16)) else {
                return Ok(None);
            };
            vlan = Some(tci & 0x0fff);
            proto = p;
            l3 = 18;
        }
        if proto != 0x86dd {
            return Ok(None);
        }
    }
    if f.len() < l3 + 40 {
        return Err(Counter::TruncatedHeader);
    }
    let ip_payload_len = c.u16(l3 + 4).unwrap() as usize;
    let mut nh = c.u8(l3 + 6).unwrap();
    let mut off = l3 + 40;
    let mut ext_len = 0;
    for _ in 0..4 {
        if nh != 0 && nh != 60 {
            break;
        }
        let w = c.u16(off).ok_or(Counter::TruncatedHeader)?;
        nh = (w >> 8) as u8;
        let hl = ((w & 0xff) as usize + 1) * 8;
        off += hl;
        ext_len += hl;
    }
    if nh != 17 {
        if nh == 0 || nh == 60 {
            return Err(Counter::ExtHeaders);
        }
        return Ok(None);
    }
    if off > 256 {
        return Err(Counter::ExtHeaders);
    }
    if f.len() < off + 8 {
        return Err(Counter::TruncatedHeader);
    }
    let dport = c.u16(off + 2).unwrap();
    if dport != CLIENT_PORT && dport != SERVER_PORT {
        return Ok(None);
    }
    let udp_len = c.u16(off + 4).unwrap() as usize;
    if udp_len < 8 || ext_len + udp_len != ip_payload_len {
        return Err(Counter::UdpLength);
    }
    Ok(Some(Loc {
        l3,
        payload: off + 8,
        len: udp_len - 8,
        vlan,
    }))
}

#[derive(Clone, Copy)]
struct Ia {
    iaid: u32,
    t1: u32,
    t2: u32,
    status: u16,
    ok: bool,
}

/// Parse a whole frame (Ethernet first) as the kernel program would.
pub fn parse_frame(frame: &[u8], hook: u8, ifindex: u32) -> Parsed {
    parse_packet(frame, hook, ifindex, false)
}

/// [`parse_frame`] for any link: `bare` means the link has no link-layer
/// header (ppp, tun, WireGuard, GRE: `ifflags::L3`), so the packet starts
/// with its IPv6 header and the event's MACs stay zero.
pub fn parse_packet(frame: &[u8], hook: u8, ifindex: u32, bare: bool) -> Parsed {
    let mut side = Vec::new();
    let outcome = match parse_inner(frame, hook, ifindex, bare, &mut side) {
        Ok(o) => o,
        Err(c) => Outcome::Rejected(c),
    };
    Parsed { outcome, side }
}

fn parse_inner(
    frame: &[u8],
    hook: u8,
    ifindex: u32,
    bare: bool,
    side: &mut Vec<Counter>,
) -> Result<Outcome, Counter> {
    let Some(loc) = locate(frame, bare)? else {
        return Ok(Outcome::NotDhcp);
    };
    if loc.len < 4 {
        return Err(Counter::ShortMessage);
    }
    if loc.len > PAYLOAD_MAX {
        return Err(Counter::TooLong);
    }
    let mut ev = PdEvent::zeroed();
    let len = loc.len;
    let payload = frame
        .get(loc.payload..loc.payload + len)
        .ok_or(Counter::TruncatedHeader)?;
    ev.src = frame[loc.l3 + 8..loc.l3 + 24].try_into().unwrap();
    ev.dst = frame[loc.l3 + 24..loc.l3 + 40].try_into().unwrap();
    if !bare {
        ev.dst_mac = frame[0..6].try_into().unwrap();
        ev.src_mac = frame[6..12].try_into().unwrap();
    }
    if let Some(v) = loc.vlan {
        ev.flags |= flags::VLAN;
        ev.vlan = v;
    }
    ev.ifindex = ifindex;
    ev.hook = hook;

    let c = Cur { b: payload };
    let mut end = len;
    let mut cur = 0usize;
    let mut depth = 0u8;
    let mut steps = 0u32;
    let mut ias: Vec<Ia> = Vec::new();
    let mut pfx: Vec<(usize, [u8; 16], u8, u32, u32)> = Vec::new();
    // One step per message header or TLV, as the kernel's bpf_loop.
    let step = |steps: &mut u32| -> Result<(), Counter> {
        *steps += 1;
        if *steps > MAX_TLV_STEPS {
            Err(Counter::TooManyOptions)
        } else {
            Ok(())
        }
    };

    // Relay layers, then the innermost message header.
    loop {
        step(&mut steps)?;
        if cur + 4 > end {
            return Err(Counter::ShortMessage);
        }
        let t = c.u8(cur).unwrap();
        if depth == 0 {
            ev.outer_msg_type = t;
        }
        if t == msg::RELAY_FORW || t == msg::RELAY_REPL {
            if cur + 34 > end {
                return Err(Counter::ShortMessage);
            }
            if depth >= MAX_RELAY_DEPTH {
                return Err(Counter::RelayTooDeep);
            }
            ev.link_addr = c.addr(cur + 2).unwrap();
            ev.peer_addr = c.addr(cur + 18).unwrap();
            if depth == 0 {
                ev.outer_peer_addr = ev.peer_addr;
            }
            depth += 1;
            ev.flags |= flags::RELAYED;
            cur += 34;
            // Find the Relay Message option.
            loop {
                step(&mut steps)?;
                if cur >= end {
                    return Err(Counter::RelayNoMessage);
                }
                if cur + 4 > end {
                    return Err(Counter::OptionOverflow);
                }
                let code = c.u16(cur).unwrap();
                let olen = c.u16(cur + 2).unwrap() as usize;
                let next = cur + 4 + olen;
                if next > end {
                    return Err(Counter::OptionOverflow);
                }
                if code == opt::RELAY_MSG {
                    cur += 4;
                    end = next;
                    break;
                }
                cur = next;
            }
            continue;
        }
        ev.msg_type = t;
        ev.xid = c.u32(cur).unwrap() & 0x00ff_ffff;
        match t {
            msg::REPLY
            | msg::RENEW
            | msg::REBIND
            | msg::RELEASE
            | msg::DECLINE
            | msg::REQUEST
            | msg::SOLICIT => {}
            _ => return Err(Counter::IgnoredType),
        }
        cur += 4;
        break;
    }

    // Top-level options, descending into IA_PD.
    loop {
        step(&mut steps)?;
        if cur == end {
            break;
        }
        if cur + 4 > end {
            return Err(Counter::OptionOverflow);
        }
        let code = c.u16(cur).unwrap();
        let olen = c.u16(cur + 2).unwrap() as usize;
        let data = cur + 4;
        let next = data + olen;
        if next > end {
            return Err(Counter::OptionOverflow);
        }
        match code {
            opt::CLIENTID => {
                ev.client_duid_len = olen as u16;
                // A repeated Client-ID replaces the whole copy (the kernel
                // keys its per-client records by it).
                let n = olen.min(DUID_MAX);
                ev.client_duid = [0; DUID_MAX];
                ev.client_duid[..n].copy_from_slice(&payload[data..data + n]);
            }
            opt::SERVERID => {
                ev.server_duid_len = olen as u16;
                let n = olen.min(SERVER_DUID_MAX);
                ev.server_duid[..n].copy_from_slice(&payload[data..data + n]);
            }
            opt::STATUS_CODE => {
                if olen < 2 {
                    return Err(Counter::BadOptionLength);
                }
                ev.status = c.u16(data).unwrap();
            }
            opt::RAPID_COMMIT => ev.flags |= flags::RAPID_COMMIT,
            opt::IA_PD => {
                if olen < 12 {
                    return Err(Counter::BadOptionLength);
                }
                let cur_ia = if ias.len() >= MAX_IAS {
                    None
                } else {
                    let t1 = c.u32(data + 4).unwrap();
                    let t2 = c.u32(data + 8).unwrap();
                    let ok = !(t2 > 0 && t1 > t2);
                    if !ok {
                        side.push(Counter::BadT1T2);
                    }
                    ias.push(Ia {
                        iaid: c.u32(data).unwrap(),
                        t1,
                        t2,
                        status: status::ABSENT,
                        ok,
                    });
                    Some(ias.len() - 1)
                };
                let ia_end = next;
                let mut sc = data + 12;
                loop {
                    step(&mut steps)?;
                    if sc == ia_end {
                        break;
                    }
                    if sc + 4 > ia_end {
                        return Err(Counter::OptionOverflow);
                    }
                    let scode = c.u16(sc).unwrap();
                    let slen = c.u16(sc + 2).unwrap() as usize;
                    let sdata = sc + 4;
                    let snext = sdata + slen;
                    if snext > ia_end {
                        return Err(Counter::OptionOverflow);
                    }
                    if scode == opt::IAPREFIX {
                        if slen < 25 {
                            return Err(Counter::BadOptionLength);
                        }
                        let preferred = c.u32(sdata).unwrap();
                        let valid = c.u32(sdata + 4).unwrap();
                        let plen = c.u8(sdata + 8).unwrap();
                        if plen == 0 || plen > 128 {
                            side.push(Counter::BadPrefixLength);
                        } else if preferred > valid {
                            side.push(Counter::BadLifetimes);
                        } else if let Some(i) = cur_ia {
                            if !ias[i].ok {
                            } else if pfx.len() >= MAX_PREFIXES {
                                side.push(Counter::TooManyPrefixes);
                                ev.flags |= flags::PREFIXES_DROPPED;
                            } else {
                                pfx.push((i, c.addr(sdata + 9).unwrap(), plen, preferred, valid));
                            }
                        } else {
                            side.push(Counter::TooManyPrefixes);
                            ev.flags |= flags::PREFIXES_DROPPED;
                        }
                    } else if scode == opt::STATUS_CODE {
                        if let Some(i) = cur_ia {
                            if slen < 2 {
                                return Err(Counter::BadOptionLength);
                            }
                            ias[i].status = c.u16(sdata).unwrap();
                        }
                    }
                    sc = snext;
                }
                cur = next;
                continue;
            }
            _ => {}
        }
        cur = next;
    }
    if ev.msg_type == msg::SOLICIT && ev.flags & flags::RAPID_COMMIT == 0 {
        return Err(Counter::IgnoredType);
    }

    ev.relay_depth = depth;
    if let Some(ia) = ias.first() {
        ev.iaid = ia.iaid;
        ev.t1 = ia.t1;
        ev.t2 = ia.t2;
        ev.ia_status = ia.status;
    }
    if pfx.is_empty() {
        ev.count = 1;
        return Ok(Outcome::Events(vec![ev]));
    }
    ev.count = pfx.len() as u8;
    ev.flags |= flags::HAS_PREFIX;
    let mut out = Vec::with_capacity(pfx.len());
    for (i, (ia, prefix, plen, preferred, valid)) in pfx.into_iter().enumerate() {
        let ia = ias[ia];
        let mut e = ev;
        e.index = i as u8;
        e.prefix = prefix;
        e.prefix_len = plen;
        e.preferred = preferred;
        e.valid = valid;
        e.iaid = ia.iaid;
        e.t1 = ia.t1;
        e.t2 = ia.t2;
        e.ia_status = ia.status;
        out.push(e);
    }
    Ok(Outcome::Events(out))
}
