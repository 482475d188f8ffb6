//! The userspace reference parser: what the kernel programs must report
//! for a frame, written plainly with checked reads. Tests run every corpus
//! packet through both and compare; fuzzing targets this parser.
//!
//! It follows the kernel's rules exactly, including its limits
//! ([`MAX_RELAY_DEPTH`], [`MAX_PREFIXES`], [`DUID_MAX`], ...), and takes
//! the same steps: one per header to find the payload (`pd-ebpf`'s
//! `headers.rs`), then one per message header or option (its `parse.rs`).
//! Every read is checked; a read past the end reports the reason the
//! length check before it would have (the check always comes first).

use pd_common::{
    flags, msg, opt, status,
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV6, IAPREFIX_FIXED, IA_PD_FIXED,
        IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, IPPROTO_UDP, IPV6_HLEN, MAX_EXT_HEADERS, MAX_UDP_OFFSET,
        MSG_HLEN, OPT_HLEN, RELAY_HLEN, STATUS_FIXED, UDP_HLEN, VLAN_HLEN,
    },
    Counter, PdEvent, CLIENT_PORT, DUID_MAX, MAX_IAS, MAX_PREFIXES, MAX_RELAY_DEPTH, MAX_TLV_STEPS,
    PAYLOAD_MAX, SERVER_DUID_MAX, SERVER_PORT,
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
    if loc.len < MSG_HLEN {
        return Err(Counter::ShortMessage);
    }
    if loc.len > PAYLOAD_MAX {
        return Err(Counter::TooLong);
    }
    let payload = Reader(frame)
        .bytes(loc.payload, loc.len)
        .ok_or(Counter::TruncatedHeader)?;
    let mut ev = packet_fields(frame, &loc, bare)?;
    ev.ifindex = ifindex;
    ev.hook = hook;
    let mut walk = Walk {
        r: Reader(payload),
        steps: 0,
        ev,
        depth: 0,
        ias: Vec::new(),
        pfx: Vec::new(),
        side,
    };
    let (cur, end) = walk.headers(0, loc.len)?;
    walk.options(cur, end)?;
    walk.events()
}

/// Checked big-endian reads from a byte slice: `None` past its end.
#[derive(Clone, Copy)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn bytes(&self, off: usize, n: usize) -> Option<&'a [u8]> {
        self.0.get(off..off.checked_add(n)?)
    }
    fn array<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.bytes(off, N)?.try_into().ok()
    }
    fn u8(&self, off: usize) -> Option<u8> {
        self.0.get(off).copied()
    }
    fn u16(&self, off: usize) -> Option<u16> {
        self.array(off).map(u16::from_be_bytes)
    }
    fn u32(&self, off: usize) -> Option<u32> {
        self.array(off).map(u32::from_be_bytes)
    }
}

/// Where the DHCPv6 payload sits in a frame.
struct Loc {
    /// Offset of the IPv6 header.
    l3: usize,
    /// Offset of the UDP payload.
    payload: usize,
    /// UDP payload length.
    len: usize,
    vlan: Option<u16>,
}

/// A frame and the offset of the next header to parse.
struct Cursor<'a> {
    r: Reader<'a>,
    off: usize,
}

impl Cursor<'_> {
    /// Ethernet, with at most one 802.1Q/802.1ad tag: the EtherType and
    /// the VLAN id. None: the frame is too short for them.
    fn ethernet(&mut self) -> Option<(u16, Option<u16>)> {
        let proto = self.r.u16(12)?;
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            self.off = ETH_HLEN;
            return Some((proto, None));
        }
        let tci = self.r.u16(14)?;
        let proto = self.r.u16(16)?;
        self.off = ETH_HLEN + VLAN_HLEN;
        Some((proto, Some(tci & 0x0fff)))
    }

    /// The IPv6 header: its payload length and next header.
    fn ipv6(&mut self) -> Result<(usize, u8), Counter> {
        let h: [u8; IPV6_HLEN] = self.r.array(self.off).ok_or(Counter::TruncatedHeader)?;
        self.off += IPV6_HLEN;
        Ok((u16::from_be_bytes([h[4], h[5]]) as usize, h[6]))
    }

    /// Hop-by-hop and destination-options headers, up to
    /// [`MAX_EXT_HEADERS`]: the next header after them, and their length.
    fn ext_headers(&mut self, mut nh: u8) -> Result<(u8, usize), Counter> {
        let mut ext_len = 0;
        for _ in 0..MAX_EXT_HEADERS {
            if nh != IPPROTO_HOPOPTS && nh != IPPROTO_DSTOPTS {
                break;
            }
            // Next Header and Hdr Ext Len (the kernel reads them as one window).
            let w = self.r.u16(self.off).ok_or(Counter::TruncatedHeader)?;
            nh = (w >> 8) as u8;
            let hl = ((w & 0xff) as usize + 1) * 8;
            self.off += hl;
            ext_len += hl;
        }
        if nh == IPPROTO_HOPOPTS || nh == IPPROTO_DSTOPTS {
            return Err(Counter::ExtHeaders);
        }
        Ok((nh, ext_len))
    }

    /// The UDP header: destination port and length.
    fn udp(&mut self) -> Result<(u16, usize), Counter> {
        if self.off > MAX_UDP_OFFSET {
            return Err(Counter::ExtHeaders);
        }
        let h: [u8; UDP_HLEN] = self.r.array(self.off).ok_or(Counter::TruncatedHeader)?;
        self.off += UDP_HLEN;
        Ok((
            u16::from_be_bytes([h[2], h[3]]),
            u16::from_be_bytes([h[4], h[5]]) as usize,
        ))
    }
}

/// Find an IPv6/UDP packet to port 546 or 547: Ethernet (with one
/// optional 802.1Q/802.1ad tag), or on links without a link-layer header
/// (`bare`) an IPv6 header first. `Ok(None)`: not DHCPv6, nothing counted.
fn locate(f: &[u8], bare: bool) -> Result<Option<Loc>, Counter> {
    let mut cur = Cursor {
        r: Reader(f),
        off: 0,
    };
    let mut vlan = None;
    if bare {
        // IPv4 shares such links: the version nibble tells them apart
        // (the kernel reads it as a 2-byte window).
        if cur.r.u16(0).is_none_or(|w| w >> 12 != 6) {
            return Ok(None);
        }
    } else {
        match cur.ethernet() {
            Some((ETH_P_IPV6, tag)) => vlan = tag,
            _ => return Ok(None),
        }
    }
    let l3 = cur.off;
    let (ip_payload_len, nh) = cur.ipv6()?;
    let (nh, ext_len) = cur.ext_headers(nh)?;
    if nh != IPPROTO_UDP {
        return Ok(None);
    }
    let (dport, udp_len) = cur.udp()?;
    if dport != CLIENT_PORT && dport != SERVER_PORT {
        return Ok(None);
    }
    if udp_len < UDP_HLEN || ext_len + udp_len != ip_payload_len {
        return Err(Counter::UdpLength);
    }
    Ok(Some(Loc {
        l3,
        payload: cur.off,
        len: udp_len - UDP_HLEN,
        vlan,
    }))
}

/// An event's fields from the frame's headers: addresses, MACs (where the
/// link has them) and the VLAN tag.
fn packet_fields(frame: &[u8], loc: &Loc, bare: bool) -> Result<PdEvent, Counter> {
    let r = Reader(frame);
    let mut ev = PdEvent::zeroed();
    ev.src = r.array(loc.l3 + 8).ok_or(Counter::TruncatedHeader)?;
    ev.dst = r.array(loc.l3 + 24).ok_or(Counter::TruncatedHeader)?;
    if !bare {
        ev.dst_mac = r.array(0).ok_or(Counter::TruncatedHeader)?;
        ev.src_mac = r.array(6).ok_or(Counter::TruncatedHeader)?;
    }
    if let Some(v) = loc.vlan {
        ev.flags |= flags::VLAN;
        ev.vlan = v;
    }
    Ok(ev)
}

/// An IA_PD of the message (`ok`: T1 and T2 agree).
#[derive(Clone, Copy)]
struct Ia {
    iaid: u32,
    t1: u32,
    t2: u32,
    status: u16,
    ok: bool,
}

/// A prefix kept from an IAPREFIX of the IA_PD `ia`.
struct Prefix {
    ia: usize,
    prefix: [u8; 16],
    plen: u8,
    preferred: u32,
    valid: u32,
}

/// An option (RFC 8415 §21.1) that fits its container.
struct Tlv<'a> {
    code: u16,
    /// The option's data.
    body: Reader<'a>,
    /// Offset of the option's data.
    data: usize,
    /// Offset just past the option.
    next: usize,
}

/// The walk over one DHCPv6 payload: one step per message header or
/// option, as the kernel's `bpf_loop`, at most [`MAX_TLV_STEPS`].
struct Walk<'a> {
    r: Reader<'a>,
    steps: u32,
    ev: PdEvent,
    depth: u8,
    ias: Vec<Ia>,
    pfx: Vec<Prefix>,
    side: &'a mut Vec<Counter>,
}

impl<'a> Walk<'a> {
    fn step(&mut self) -> Result<(), Counter> {
        self.steps += 1;
        if self.steps > MAX_TLV_STEPS {
            return Err(Counter::TooManyOptions);
        }
        Ok(())
    }

    /// The option at `cur`, which must end by `end`.
    fn option(&self, cur: usize, end: usize) -> Result<Tlv<'a>, Counter> {
        if cur + OPT_HLEN > end {
            return Err(Counter::OptionOverflow);
        }
        let code = self.r.u16(cur).ok_or(Counter::OptionOverflow)?;
        let len = self.r.u16(cur + 2).ok_or(Counter::OptionOverflow)? as usize;
        let data = cur + OPT_HLEN;
        let next = data + len;
        if next > end {
            return Err(Counter::OptionOverflow);
        }
        let body = self.r.bytes(data, len).ok_or(Counter::OptionOverflow)?;
        Ok(Tlv {
            code,
            body: Reader(body),
            data,
            next,
        })
    }

    /// Relay layers (RFC 8415 §9), then the innermost message's header
    /// (§8): where that message's options start and end.
    fn headers(&mut self, mut cur: usize, mut end: usize) -> Result<(usize, usize), Counter> {
        loop {
            self.step()?;
            if cur + MSG_HLEN > end {
                return Err(Counter::ShortMessage);
            }
            let t = self.r.u8(cur).ok_or(Counter::ShortMessage)?;
            if self.depth == 0 {
                self.ev.outer_msg_type = t;
            }
            if t != msg::RELAY_FORW && t != msg::RELAY_REPL {
                self.ev.msg_type = t;
                self.ev.xid = self.r.u32(cur).ok_or(Counter::ShortMessage)? & 0x00ff_ffff;
                if !msg::reported(t) {
                    return Err(Counter::IgnoredType);
                }
                return Ok((cur + MSG_HLEN, end));
            }
            (cur, end) = self.relay(cur, end)?;
        }
    }

    /// A relay header (msg-type, hop-count, link-address, peer-address),
    /// then its options up to the Relay Message option: where the message
    /// it carries starts and ends.
    fn relay(&mut self, cur: usize, end: usize) -> Result<(usize, usize), Counter> {
        if cur + RELAY_HLEN > end {
            return Err(Counter::ShortMessage);
        }
        if self.depth >= MAX_RELAY_DEPTH {
            return Err(Counter::RelayTooDeep);
        }
        self.ev.link_addr = self.r.array(cur + 2).ok_or(Counter::ShortMessage)?;
        self.ev.peer_addr = self.r.array(cur + 18).ok_or(Counter::ShortMessage)?;
        if self.depth == 0 {
            self.ev.outer_peer_addr = self.ev.peer_addr;
        }
        self.depth += 1;
        self.ev.flags |= flags::RELAYED;
        let mut cur = cur + RELAY_HLEN;
        loop {
            self.step()?;
            if cur >= end {
                return Err(Counter::RelayNoMessage);
            }
            let o = self.option(cur, end)?;
            if o.code == opt::RELAY_MSG {
                return Ok((o.data, o.next));
            }
            cur = o.next;
        }
    }

    /// The innermost message's options, from `cur` to `end`.
    fn options(&mut self, mut cur: usize, end: usize) -> Result<(), Counter> {
        loop {
            self.step()?;
            if cur == end {
                return Ok(());
            }
            let o = self.option(cur, end)?;
            match o.code {
                opt::CLIENTID => {
                    let id = o.body.0;
                    self.ev.client_duid_len = id.len() as u16;
                    // A repeated Client-ID replaces the whole copy (the
                    // kernel keys its per-client records by it).
                    let n = id.len().min(DUID_MAX);
                    self.ev.client_duid = [0; DUID_MAX];
                    self.ev.client_duid[..n].copy_from_slice(&id[..n]);
                }
                opt::SERVERID => {
                    let id = o.body.0;
                    self.ev.server_duid_len = id.len() as u16;
                    let n = id.len().min(SERVER_DUID_MAX);
                    self.ev.server_duid[..n].copy_from_slice(&id[..n]);
                }
                opt::STATUS_CODE => self.ev.status = status_code(&o)?,
                opt::RAPID_COMMIT => self.ev.flags |= flags::RAPID_COMMIT,
                opt::IA_PD => self.ia_pd(&o)?,
                _ => {}
            }
            cur = o.next;
        }
    }

    /// An IA_PD (RFC 8415 §21.21): IAID, T1, T2, then its options. Past
    /// [`MAX_IAS`] it is still walked, so that its prefixes are counted
    /// as dropped.
    fn ia_pd(&mut self, o: &Tlv) -> Result<(), Counter> {
        if o.body.len() < IA_PD_FIXED {
            return Err(Counter::BadOptionLength);
        }
        let ia = if self.ias.len() >= MAX_IAS {
            None
        } else {
            let short = Counter::BadOptionLength;
            let t1 = o.body.u32(4).ok_or(short)?;
            let t2 = o.body.u32(8).ok_or(short)?;
            // T1 > T2 > 0 means discard the IA_PD.
            let ok = !(t2 > 0 && t1 > t2);
            if !ok {
                self.side.push(Counter::BadT1T2);
            }
            self.ias.push(Ia {
                iaid: o.body.u32(0).ok_or(short)?,
                t1,
                t2,
                status: status::ABSENT,
                ok,
            });
            Some(self.ias.len() - 1)
        };
        let mut cur = o.data + IA_PD_FIXED;
        loop {
            self.step()?;
            if cur == o.next {
                return Ok(());
            }
            let s = self.option(cur, o.next)?;
            if s.code == opt::IAPREFIX {
                self.iaprefix(ia, &s)?;
            } else if s.code == opt::STATUS_CODE {
                if let Some(i) = ia {
                    self.ias[i].status = status_code(&s)?;
                }
            }
            cur = s.next;
        }
    }

    /// An IAPREFIX (RFC 8415 §21.22) of the IA_PD `ia`: preferred, valid,
    /// prefix-length, prefix. Kept, or counted as discarded.
    fn iaprefix(&mut self, ia: Option<usize>, o: &Tlv) -> Result<(), Counter> {
        if o.body.len() < IAPREFIX_FIXED {
            return Err(Counter::BadOptionLength);
        }
        let short = Counter::BadOptionLength;
        let preferred = o.body.u32(0).ok_or(short)?;
        let valid = o.body.u32(4).ok_or(short)?;
        let plen = o.body.u8(8).ok_or(short)?;
        let prefix = o.body.array(9).ok_or(short)?;
        if plen == 0 || plen > 128 {
            self.side.push(Counter::BadPrefixLength);
            return Ok(());
        }
        if preferred > valid {
            self.side.push(Counter::BadLifetimes);
            return Ok(());
        }
        let Some(ia) = ia else {
            self.drop_prefix();
            return Ok(());
        };
        // An IA_PD with T1 > T2 was counted once (BadT1T2); its prefixes
        // are ignored.
        if !self.ias[ia].ok {
            return Ok(());
        }
        if self.pfx.len() >= MAX_PREFIXES {
            self.drop_prefix();
            return Ok(());
        }
        self.pfx.push(Prefix {
            ia,
            prefix,
            plen,
            preferred,
            valid,
        });
        Ok(())
    }

    /// A prefix past [`MAX_IAS`] IA_PDs or [`MAX_PREFIXES`] prefixes.
    fn drop_prefix(&mut self) {
        self.side.push(Counter::TooManyPrefixes);
        self.ev.flags |= flags::PREFIXES_DROPPED;
    }

    /// The message's events: one per kept prefix, or one without a prefix.
    fn events(self) -> Result<Outcome, Counter> {
        let mut ev = self.ev;
        if ev.msg_type == msg::SOLICIT && ev.flags & flags::RAPID_COMMIT == 0 {
            return Err(Counter::IgnoredType);
        }
        ev.relay_depth = self.depth;
        if let Some(ia) = self.ias.first() {
            ev.iaid = ia.iaid;
            ev.t1 = ia.t1;
            ev.t2 = ia.t2;
            ev.ia_status = ia.status;
        }
        if self.pfx.is_empty() {
            ev.count = 1;
            return Ok(Outcome::Events(vec![ev]));
        }
        ev.count = self.pfx.len() as u8;
        ev.flags |= flags::HAS_PREFIX;
        let mut out = Vec::with_capacity(self.pfx.len());
        for (i, p) in self.pfx.iter().enumerate() {
            let ia = self.ias[p.ia];
            let mut e = ev;
            e.index = i as u8;
            e.prefix = p.prefix;
            e.prefix_len = p.plen;
            e.preferred = p.preferred;
            e.valid = p.valid;
            e.iaid = ia.iaid;
            e.t1 = ia.t1;
            e.t2 = ia.t2;
            e.ia_status = ia.status;
            out.push(e);
        }
        Ok(Outcome::Events(out))
    }
}

/// A Status Code option's status-code (RFC 8415 §21.13).
fn status_code(o: &Tlv) -> Result<u16, Counter> {
    if o.body.len() < STATUS_FIXED {
        return Err(Counter::BadOptionLength);
    }
    o.body.u16(0).ok_or(Counter::BadOptionLength)
}
