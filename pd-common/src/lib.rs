//! Types and constants that the kernel programs (`pd-ebpf`) and the agent
//! (`pd-agent`) agree on. Everything here is `#[repr(C)]` plain data: the
//! kernel writes it into a ring buffer or a map, the agent reads the bytes.
//!
//! Pinned maps carry a layout suffix in their names (`_v1`); at load the
//! agent also compares each pinned map's key size, value size, entries and
//! flags with what this build wants, and replaces one that differs.
#![no_std]

/// DHCPv6 UDP ports (RFC 8415 §7.2).
pub const CLIENT_PORT: u16 = 546;
pub const SERVER_PORT: u16 = 547;

/// DHCPv6 message types (RFC 8415 §7.3) that the parsers name.
pub mod msg {
    pub const SOLICIT: u8 = 1;
    pub const REQUEST: u8 = 3;
    pub const RENEW: u8 = 5;
    pub const REBIND: u8 = 6;
    pub const REPLY: u8 = 7;
    pub const RELEASE: u8 = 8;
    pub const DECLINE: u8 = 9;
    pub const RELAY_FORW: u8 = 12;
    pub const RELAY_REPL: u8 = 13;

    /// The message types the programs report; every other type is counted
    /// as `Counter::IgnoredType`. A Solicit is reported only with Rapid
    /// Commit (checked once its options are read).
    #[inline(always)]
    pub const fn reported(t: u8) -> bool {
        matches!(
            t,
            REPLY | RENEW | REBIND | RELEASE | DECLINE | REQUEST | SOLICIT
        )
    }
}

/// DHCPv6 option codes we read (RFC 8415 §21).
pub mod opt {
    pub const CLIENTID: u16 = 1;
    pub const SERVERID: u16 = 2;
    pub const RELAY_MSG: u16 = 9;
    pub const STATUS_CODE: u16 = 13;
    pub const RAPID_COMMIT: u16 = 14;
    pub const IA_PD: u16 = 25;
    pub const IAPREFIX: u16 = 26;
}

/// Status codes (RFC 8415 §21.13).
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const NO_PREFIX_AVAIL: u16 = 6;
    /// No Status Code option was present (which means Success).
    pub const ABSENT: u16 = 0xffff;
}

/// The frame and DHCPv6 layouts both parsers walk (the kernel programs and
/// the agent's reference parser), and the limits past which a packet is
/// passed on uncounted or counted as rejected.
pub mod wire {
    /// Ethernet header: destination, source, EtherType.
    pub const ETH_HLEN: usize = 14;
    /// An 802.1Q/802.1ad tag: TCI, then the inner EtherType.
    pub const VLAN_HLEN: usize = 4;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88a8;
    pub const IPV6_HLEN: usize = 40;
    pub const IPPROTO_HOPOPTS: u8 = 0;
    pub const IPPROTO_UDP: u8 = 17;
    pub const IPPROTO_DSTOPTS: u8 = 60;
    pub const UDP_HLEN: usize = 8;
    /// Hop-by-hop / destination-options headers skipped before giving up
    /// (`Counter::ExtHeaders`).
    pub const MAX_EXT_HEADERS: usize = 4;
    /// Furthest offset of the UDP header from the frame's start; further
    /// is `Counter::ExtHeaders`. The kernel needs the bound before adding
    /// the offset to a packet pointer.
    pub const MAX_UDP_OFFSET: usize = 256;
    /// msg-type and transaction-id (RFC 8415 §8).
    pub const MSG_HLEN: usize = 4;
    /// msg-type, hop-count, link-address, peer-address (RFC 8415 §9).
    pub const RELAY_HLEN: usize = 34;
    /// option-code and option-len (RFC 8415 §21.1).
    pub const OPT_HLEN: usize = 4;
    /// IA_PD's IAID, T1 and T2, before its options (RFC 8415 §21.21).
    pub const IA_PD_FIXED: usize = 12;
    /// IAPREFIX's preferred and valid lifetimes, prefix-length and prefix,
    /// before its options (RFC 8415 §21.22).
    pub const IAPREFIX_FIXED: usize = 25;
    /// Status Code's status-code, before its message (RFC 8415 §21.13).
    pub const STATUS_FIXED: usize = 2;
}

/// RFC 8415 §7.6 HOP_COUNT_LIMIT: relay layers we follow.
pub const MAX_RELAY_DEPTH: u8 = 8;
/// Prefixes reported per packet; more are counted as `TooManyPrefixes`.
pub const MAX_PREFIXES: usize = 16;
/// Identity associations remembered per packet.
pub const MAX_IAS: usize = 4;
/// Bytes of the client DUID copied into an event (RFC 8415 §11.1 allows 130).
pub const DUID_MAX: usize = 64;
/// Bytes of the server DUID copied into an event.
pub const SERVER_DUID_MAX: usize = 32;
/// Largest DHCPv6 payload the kernel parses; longer ones (possible only
/// with jumbo frames) are counted as [`Counter::TooLong`] and passed on.
pub const PAYLOAD_MAX: usize = 2048;
/// TLV steps (options, sub-options, message headers) walked per packet: a
/// 2048-byte payload holds at most ~70 IAPREFIX options, so only padding
/// games reach this.
pub const MAX_TLV_STEPS: u32 = 256;
/// Infinite lifetime (RFC 8415 §7.7).
pub const INFINITY: u32 = 0xffff_ffff;

/// The kernel object's programs, by the names the agent loads them by
/// (the functions' names in `pd-ebpf`).
pub mod prog {
    /// XDP, ingress: snooping, source-address validation, the fast path.
    pub const XDP: &str = "pd_xdp";
    /// TC, egress: snooping.
    pub const TC_EGRESS: &str = "pd_tc_egress";
    /// An empty XDP program: the benchmarks' baseline.
    pub const XDP_PASS: &str = "pd_xdp_pass";
    /// XDP_TX on every frame: the benchmarks' traffic generator.
    pub const XDP_TX: &str = "pd_xdp_tx";
    /// [`XDP`] for kernels without `bpf_loop` (5.17) or
    /// `bpf_xdp_load_bytes` (5.18): the TLV walk is a bounded loop over a
    /// global function, the copy `bpf_probe_read_kernel`.
    pub const XDP_COMPAT: &str = "pd_xdp_compat";
    /// [`TC_EGRESS`] for kernels without `bpf_loop`.
    pub const TC_EGRESS_COMPAT: &str = "pd_tc_egress_compat";
    /// Feature probe: loads only where the kernel has `bpf_loop`.
    pub const PROBE_LOOP: &str = "pd_probe_loop";
    /// Feature probe: loads only where the kernel has `bpf_xdp_load_bytes`.
    pub const PROBE_XDP_LOAD_BYTES: &str = "pd_probe_xdp_load_bytes";
}

/// The programs' load-time switches (read-only `u8` globals the loader
/// overrides by name, so that the verifier prunes what is off).
pub mod global {
    /// Forward delegated prefixes in XDP.
    pub const FAST_PATH: &str = "FAST_PATH";
    /// Some interface has source-address validation on.
    pub const SAV: &str = "SAV";
    /// Some managed link carries bare IP packets (`ifflags::L3`).
    pub const BARE_LINKS: &str = "BARE_LINKS";
    /// aya-log's level (0: no logging; the verifier prunes every log call).
    pub const LOG_LEVEL: &str = "AYA_LOG_LEVEL";
    /// pd-agent relays (`--relay-to`): client messages on interfaces with
    /// [`super::ifflags::RELAY`] meet the rate limits, and their senders'
    /// MACs are recorded for the Client Link-Layer Address option.
    pub const RELAY: &str = "RELAY";
}

/// Kernel debug logging (`--kernel-debug`), over aya-log's own ring buffer.
pub mod log {
    /// aya-log's ring buffer (not pinned; one page unless logging is on).
    pub const MAP: &str = "AYA_LOGS";
    /// aya-log's level for `debug!` (`Level::Debug`).
    pub const DEBUG: u8 = 4;
    /// The message every log record carries: the counter a packet was
    /// counted under (a reject or pass reason), then the interface index,
    /// both in decimal; the agent names them.
    pub const FORMAT: &str = "why {} ifindex {}";
}

/// The programs' maps: their names (also their pin names under the agent's
/// pin directory; the `_v1` suffix is the layout version) and their sizes
/// in the object, which the loader may override.
pub mod maps {
    /// Ring buffer of [`super::PdEvent`]s.
    pub const EVENTS: &str = "pd_events_v1";
    /// Ring buffer bytes (with 2 MiB, bench row 6's 10 s storm of 500,000
    /// events lost none; with 1 MiB it lost some).
    pub const EVENTS_BYTES: u32 = 2 << 20;
    /// Per-CPU outcome counters, indexed by [`super::Counter`].
    pub const COUNTERS: &str = "pd_counters_v1";
    /// Per-CPU message counters (low bits of [`super::PdEvent::seq`]).
    pub const SEQ: &str = "pd_seq_v1";
    /// Each client's latest messages ([`super::ClientKey`] -> [`super::ClientRecord`]).
    pub const CLIENTS: &str = "pd_clients_v1";
    pub const CLIENTS_ENTRIES: u32 = 65536;
    /// Delegated prefixes (LPM trie -> [`super::RouteValue`]), written by the agent.
    pub const ROUTES: &str = "pd_routes_v1";
    pub const ROUTES_ENTRIES: u32 = 1 << 20;
    /// Per-binding forwarding counters ([`super::FwdStats`]).
    pub const FWD_STATS: &str = "pd_fwd_stats_v1";
    /// Entries of [`FWD_STATS`] (per CPU, 64 KiB): bindings with counters.
    pub const FWD_STATS_ENTRIES: u32 = 4096;
    /// Per-interface flags ([`super::ifflags`]), written by the agent.
    pub const IFACES: &str = "pd_ifaces_v1";
    pub const IFACES_ENTRIES: u32 = 1024;
    /// Until when the agent vouches for the fast path (boot-time ns).
    pub const FWD_LEASE: &str = "pd_fwd_lease_v1";
    /// On-link prefixes of downstream interfaces -> ifindex (strict SAV).
    pub const ONLINK: &str = "pd_onlink_v1";
    pub const ONLINK_ENTRIES: u32 = 4096;
    /// Per-CPU parser scratch: the programs' own, never pinned.
    pub const SCRATCH: &str = "PD_SCRATCH";
    /// The relay's rate limits (one [`super::RelayLimits`]), written by the
    /// agent at start; not pinned (they are the running agent's).
    pub const RELAY_LIMITS: &str = "pd_relay_limits_v1";
    /// Token buckets of the relay's rate limits, per interface and per
    /// client MAC (LRU: [`super::BucketKey`] -> [`super::Bucket`]); not pinned.
    pub const RELAY_BUCKETS: &str = "pd_relay_buckets_v1";
    pub const RELAY_BUCKETS_ENTRIES: u32 = 16384;
    /// The MAC each client address last sent a DHCPv6 message from, per
    /// interface (LRU: [`super::MacKey`] -> 6-byte MAC and 2 zero bytes),
    /// for the relay's Client Link-Layer Address option; not pinned.
    pub const RELAY_MACS: &str = "pd_relay_macs_v1";
    pub const RELAY_MACS_ENTRIES: u32 = 16384;
    /// Every map the agent pins.
    pub const PINNED: [&str; 9] = [
        EVENTS, COUNTERS, SEQ, CLIENTS, ROUTES, FWD_STATS, IFACES, FWD_LEASE, ONLINK,
    ];
}

/// Where the program saw the packet.
pub mod hook {
    /// XDP, ingress.
    pub const XDP_INGRESS: u8 = 1;
    /// TC (clsact/tcx), egress.
    pub const TC_EGRESS: u8 = 2;
}

/// Bits of [`PdEvent::flags`].
pub mod flags {
    /// `prefix`/`plen`/lifetimes are valid. Without it the event stands for
    /// a whole message that carried no usable prefix (a Reply to a Release,
    /// or a Reply whose IA_PD only holds a status).
    pub const HAS_PREFIX: u8 = 1 << 0;
    /// The packet carried an 802.1Q tag.
    pub const VLAN: u8 = 1 << 1;
    /// The message was carried in at least one relay layer.
    pub const RELAYED: u8 = 1 << 3;
    /// The message (or innermost message) carried Rapid Commit.
    pub const RAPID_COMMIT: u8 = 1 << 4;
    /// More than [`super::MAX_PREFIXES`] prefixes: some were not reported.
    pub const PREFIXES_DROPPED: u8 = 1 << 5;
}

/// One delegated prefix seen in one DHCPv6 message, as pushed into the
/// `PD_EVENTS` ring buffer. A message with `n` prefixes produces `n` events
/// sharing `seq`, with `index` 0..n and `count` n; a message with none
/// produces one event without [`flags::HAS_PREFIX`] and `count` 1.
///
/// Multi-byte integers are in host byte order; addresses are network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PdEvent {
    /// Per-CPU message sequence number: the CPU above [`SEQ_CPU_SHIFT`].
    pub seq: u64,
    /// When the kernel saw the message (`bpf_ktime_get_boot_ns`, CLOCK_BOOTTIME).
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Transaction id (24 bits).
    pub xid: u32,
    /// One of [`hook`].
    pub hook: u8,
    /// Innermost message type ([`msg`]).
    pub msg_type: u8,
    /// Relay layers around the innermost message.
    pub relay_depth: u8,
    /// Bits of [`flags`].
    pub flags: u8,
    pub index: u8,
    pub count: u8,
    pub prefix_len: u8,
    /// Outermost message type: RELAY_FORW/RELAY_REPL when relayed, else `msg_type`.
    pub outer_msg_type: u8,
    /// Top-level Status Code of the innermost message ([`status::ABSENT`] if none).
    pub status: u16,
    /// Status Code inside the IA_PD this prefix belongs to.
    pub ia_status: u16,
    /// 802.1Q VLAN id (when [`flags::VLAN`]).
    pub vlan: u16,
    /// True length of the client DUID (may exceed [`DUID_MAX`]); 0 = none.
    pub client_duid_len: u16,
    /// True length of the server DUID; 0 = none.
    pub server_duid_len: u16,
    pub _pad1: u16,
    pub iaid: u32,
    pub t1: u32,
    pub t2: u32,
    pub preferred: u32,
    pub valid: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Innermost relay layer's peer-address (the client or the lower relay).
    pub peer_addr: [u8; 16],
    /// Innermost relay layer's link-address.
    pub link_addr: [u8; 16],
    /// Outermost relay layer's peer-address: the node the relay that
    /// receives this Relay-Reply sends it on to.
    pub outer_peer_addr: [u8; 16],
    pub prefix: [u8; 16],
    pub client_duid: [u8; DUID_MAX],
    pub server_duid: [u8; SERVER_DUID_MAX],
    /// TC egress: the interface a forwarded packet came in on (the skb's
    /// `ingress_ifindex`); 0 when this host sent it.
    pub in_ifindex: u32,
}

impl PdEvent {
    pub const fn zeroed() -> Self {
        PdEvent {
            seq: 0,
            ts_ns: 0,
            ifindex: 0,
            xid: 0,
            hook: 0,
            msg_type: 0,
            relay_depth: 0,
            flags: 0,
            index: 0,
            count: 0,
            prefix_len: 0,
            outer_msg_type: 0,
            status: status::ABSENT,
            ia_status: status::ABSENT,
            vlan: 0,
            client_duid_len: 0,
            server_duid_len: 0,
            _pad1: 0,
            iaid: 0,
            t1: 0,
            t2: 0,
            preferred: 0,
            valid: 0,
            src: [0; 16],
            dst: [0; 16],
            dst_mac: [0; 6],
            src_mac: [0; 6],
            peer_addr: [0; 16],
            link_addr: [0; 16],
            outer_peer_addr: [0; 16],
            prefix: [0; 16],
            client_duid: [0; DUID_MAX],
            server_duid: [0; SERVER_DUID_MAX],
            in_ifindex: 0,
        }
    }
}

/// Indices of the per-CPU `PD_COUNTERS` array: one per outcome.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// IPv6/UDP packets to port 546 or 547.
    Seen = 0,
    /// DHCPv6 messages parsed to the end without a reject.
    Parsed,
    /// Events pushed into the ring buffer.
    Events,
    /// `bpf_ringbuf_output` failed (ring buffer full).
    RingbufFull,
    /// Messages of a type we do not report (Solicit, Advertise, ...).
    IgnoredType,
    // ---- reject reasons: the packet is passed on untouched ----
    /// Ethernet, 802.1Q, IPv6 or extension header cut short.
    TruncatedHeader,
    /// Too many IPv6 extension headers, or a fragment.
    ExtHeaders,
    /// UDP length disagrees with the IPv6 payload length.
    UdpLength,
    /// DHCPv6 payload shorter than its fixed header.
    ShortMessage,
    /// DHCPv6 payload longer than [`PAYLOAD_MAX`].
    TooLong,
    /// An option's length runs past the end of its container.
    OptionOverflow,
    /// Relay nesting deeper than [`MAX_RELAY_DEPTH`].
    RelayTooDeep,
    /// A relay message without a Relay Message option.
    RelayNoMessage,
    /// More TLVs than [`MAX_TLV_STEPS`].
    TooManyOptions,
    /// An option shorter than its fixed fields (IA_PD < 12, IAPREFIX < 25, ...).
    BadOptionLength,
    /// IA_PD with T1 > T2 > 0 (RFC 8415 §21.21): its prefixes are ignored.
    BadT1T2,
    /// IAPREFIX with prefix length 0 or > 128.
    BadPrefixLength,
    /// IAPREFIX with preferred > valid lifetime (RFC 8415 §21.22).
    BadLifetimes,
    /// More than [`MAX_PREFIXES`] prefixes in one message.
    TooManyPrefixes,
    /// Internal: a helper failed (load_bytes, map lookup).
    Internal,
    // ---- fast path (non-DHCP IPv6 to a delegated prefix) ----
    /// Forwarded in XDP (rewritten and redirected).
    FwdRedirected,
    /// Hop limit <= 1: left to the kernel (ICMPv6 Time Exceeded).
    FwdHopLimit,
    /// No neighbour entry for the next hop yet: left to the kernel.
    FwdNoNeigh,
    /// FIB lookup failed or said "not forwarded": left to the kernel.
    FwdFibOther,
    /// Extension headers, fragments or another protocol: left to the kernel.
    FwdNotHandled,
    // ---- source-address validation (RFC 8987 §3.1, BCP 38) ----
    /// Dropped: source inside a prefix delegated on another interface.
    SavDropped,
    /// Dropped (strict mode): source neither delegated nor on-link here.
    SavStrictDropped,
    // ---- fast path: delegated destinations left to the kernel, and why ----
    /// The namespace has netfilter hooks on the forwarding path (or they
    /// could not be listed): forwarding in XDP would go around them.
    FwdFirewall,
    /// The egress device cannot take an XDP redirect (no `ndo_xdp_xmit`
    /// in its xdp-features: a veth whose peer has neither an XDP program
    /// nor GRO, a bridge, a VLAN device, a tunnel), or is not managed.
    FwdNoXmit,
    /// The ingress link has no Ethernet header (ppp, tun, WireGuard).
    FwdLinkType,
    /// No agent has confirmed the fast path's flags recently (it stopped,
    /// crashed or hangs): nobody watches the firewall or the devices.
    FwdNoAgent,
    // ---- records ----
    /// `pd_clients_v1` was full: a client's message was not recorded (it
    /// still went into the ring buffer). The agent prunes records it has
    /// applied and stored; this counts records it had not reached yet.
    RecordsFull,
    // ---- relay (dropped in XDP) ----
    /// A client message over the per-interface rate limit.
    RelayIfaceRate,
    /// A client message over its MAC's rate limit.
    RelayClientRate,
}

pub const COUNTER_COUNT: u32 = Counter::RelayClientRate as u32 + 1;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Seen,
        Counter::Parsed,
        Counter::Events,
        Counter::RingbufFull,
        Counter::IgnoredType,
        Counter::TruncatedHeader,
        Counter::ExtHeaders,
        Counter::UdpLength,
        Counter::ShortMessage,
        Counter::TooLong,
        Counter::OptionOverflow,
        Counter::RelayTooDeep,
        Counter::RelayNoMessage,
        Counter::TooManyOptions,
        Counter::BadOptionLength,
        Counter::BadT1T2,
        Counter::BadPrefixLength,
        Counter::BadLifetimes,
        Counter::TooManyPrefixes,
        Counter::Internal,
        Counter::FwdRedirected,
        Counter::FwdHopLimit,
        Counter::FwdNoNeigh,
        Counter::FwdFibOther,
        Counter::FwdNotHandled,
        Counter::SavDropped,
        Counter::SavStrictDropped,
        Counter::FwdFirewall,
        Counter::FwdNoXmit,
        Counter::FwdLinkType,
        Counter::FwdNoAgent,
        Counter::RecordsFull,
        Counter::RelayIfaceRate,
        Counter::RelayClientRate,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Parsed => "parsed",
            Counter::Events => "events",
            Counter::RingbufFull => "ringbuf_full",
            Counter::IgnoredType => "ignored_type",
            Counter::TruncatedHeader => "truncated_header",
            Counter::ExtHeaders => "ext_headers",
            Counter::UdpLength => "udp_length",
            Counter::ShortMessage => "short_message",
            Counter::TooLong => "too_long",
            Counter::OptionOverflow => "option_overflow",
            Counter::RelayTooDeep => "relay_too_deep",
            Counter::RelayNoMessage => "relay_no_message",
            Counter::TooManyOptions => "too_many_options",
            Counter::BadOptionLength => "bad_option_length",
            Counter::BadT1T2 => "bad_t1_t2",
            Counter::BadPrefixLength => "bad_prefix_length",
            Counter::BadLifetimes => "bad_lifetimes",
            Counter::TooManyPrefixes => "too_many_prefixes",
            Counter::Internal => "internal",
            Counter::FwdRedirected => "fwd_redirected",
            Counter::FwdHopLimit => "fwd_hop_limit",
            Counter::FwdNoNeigh => "fwd_no_neigh",
            Counter::FwdFibOther => "fwd_fib_other",
            Counter::FwdNotHandled => "fwd_not_handled",
            Counter::SavDropped => "sav_dropped",
            Counter::SavStrictDropped => "sav_strict_dropped",
            Counter::FwdFirewall => "fwd_firewall",
            Counter::FwdNoXmit => "fwd_no_xmit",
            Counter::FwdLinkType => "fwd_link_type",
            Counter::FwdNoAgent => "fwd_no_agent",
            Counter::RecordsFull => "records_full",
            Counter::RelayIfaceRate => "relay_iface_rate",
            Counter::RelayClientRate => "relay_client_rate",
        }
    }
}

/// [`PdEvent::seq`] is `cpu << SEQ_CPU_SHIFT | counter`: 65536 CPUs, and a
/// per-CPU counter that would take years to wrap.
pub const SEQ_CPU_SHIFT: u32 = 48;

/// Prefixes kept per message in a [`ClientRecord`]; a message with more
/// is recorded with [`flags::PREFIXES_DROPPED`].
pub const RECORD_PREFIXES: usize = 4;

/// [`ClientKey::class`]: which of a client's latest messages a record holds.
pub mod class {
    /// Request, Renew, Rebind, Solicit (Rapid Commit), Release, Decline.
    pub const CLIENT: u8 = 0;
    /// Reply.
    pub const REPLY: u8 = 1;
}

/// Key of `pd_clients_v1`, the kernel's copy of each client's latest
/// snooped messages: where the message was seen, whether it is the
/// client's or the server's, and the client DUID (first [`DUID_MAX`] bytes,
/// zero-filled).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub ifindex: u32,
    pub hook: u8,
    pub class: u8,
    pub duid_len: u16,
    pub duid: [u8; DUID_MAX],
}

/// One delegated prefix of a [`ClientRecord`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPrefix {
    pub prefix: [u8; 16],
    pub iaid: u32,
    pub t1: u32,
    pub t2: u32,
    pub preferred: u32,
    pub valid: u32,
    pub ia_status: u16,
    pub prefix_len: u8,
    pub _pad: u8,
}

/// Value of `pd_clients_v1`: a whole message as the kernel last saw it.
/// `ev` holds the message's header fields (its prefix fields are unused);
/// `pfx[..nprefix]` its first [`RECORD_PREFIXES`] prefixes. The agent replays
/// these after losing ring buffer events, or after a restart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    pub ev: PdEvent,
    pub nprefix: u32,
    pub _pad: u32,
    pub pfx: [RecordPrefix; RECORD_PREFIXES],
}

/// Value of the pinned `pd_routes_v1` LPM trie: where a delegated prefix goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteValue {
    pub next_hop: [u8; 16],
    /// Valid-lifetime end in the agent's lease clock, CLOCK_BOOTTIME
    /// seconds (u64::MAX = infinite).
    pub expires_at: u64,
    /// Interface the prefix is delegated on.
    pub ifindex: u32,
    pub iaid: u32,
    /// Index into `pd_fwd_stats_v1` ([`NO_SLOT`]: not counted).
    pub slot: u32,
    pub _pad: u32,
}

/// [`RouteValue::slot`] of a binding without forwarding counters.
pub const NO_SLOT: u32 = u32::MAX;

/// Per-binding, per-CPU forwarding counters (`pd_fwd_stats_v1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdStats {
    pub packets: u64,
    pub bytes: u64,
}

/// Bits of the `pd_ifaces_v1` hash (ifindex -> flags).
pub mod ifflags {
    /// Source-address validation on this (downstream) interface.
    pub const SAV: u32 = 1 << 0;
    /// Strict mode: also drop sources neither delegated nor on-link here.
    pub const SAV_STRICT: u32 = 1 << 1;
    /// An upstream interface: a DHCPv6 message forwarded from it and
    /// leaving another is recorded (see `pd_clients_v1`).
    pub const UPSTREAM: u32 = 1 << 2;
    /// Frames on this link start with the IPv6 header (no link-layer
    /// header: ppp, tun, WireGuard, ipip, sit, ip6tnl).
    pub const L3: u32 = 1 << 3;
    /// The fast path may forward packets arriving here: the link is
    /// Ethernet and no netfilter hook is on the forwarding path (or the
    /// operator chose to bypass the firewall).
    pub const FWD_IN: u32 = 1 << 4;
    /// The fast path may redirect into this interface: it is Ethernet and
    /// its xdp-features say it takes redirected frames (`ndo_xdp_xmit`).
    pub const FWD_OUT: u32 = 1 << 5;
    /// pd-agent relays for this (downstream) interface: client messages to
    /// port 547 meet the rate limits and their MACs are recorded.
    pub const RELAY: u32 = 1 << 6;
}

/// The relay's rate limits (`pd_relay_limits_v1`): messages per second and
/// bucket depth, per downstream interface and per client MAC (0: none).
/// A Relay-Forw from a lower relay stands for many clients and meets only
/// the interface's limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayLimits {
    pub iface_rate: u32,
    pub iface_burst: u32,
    pub client_rate: u32,
    pub client_burst: u32,
}

/// Largest rate and burst the limits take (keeps the buckets' arithmetic
/// in 64 bits).
pub const RELAY_RATE_MAX: u32 = 1_000_000;

/// A token bucket's key: an interface's own (MAC all zero) or one client
/// MAC's on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketKey {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
}

/// A token bucket: tokens in billionths (one message costs 10^9), and the
/// time (`bpf_ktime_get_ns`) it was last filled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: u64,
    pub at_ns: u64,
}

/// `pd_relay_macs_v1`'s key: a client's source address on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacKey {
    pub ifindex: u32,
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::PdEvent {}
    unsafe impl aya::Pod for super::RouteValue {}
    unsafe impl aya::Pod for super::FwdStats {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::RelayLimits {}
    unsafe impl aya::Pod for super::MacKey {}
    unsafe impl aya::Pod for super::ClientRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_has_no_implicit_padding() {
        // Sum of field sizes equals the struct size: the kernel and the agent
        // cannot disagree on offsets.
        let fields = 8
            + 8
            + 4
            + 4
            + 8 // eight one-byte fields
            + 2 * 6
            + 4 * 5
            + 16 * 2
            + 6 * 2
            + 16 * 4
            + DUID_MAX
            + SERVER_DUID_MAX
            + 4;
        assert_eq!(core::mem::size_of::<PdEvent>(), fields);
        assert_eq!(core::mem::size_of::<RouteValue>(), 16 + 8 + 4 * 4);
        assert_eq!(core::mem::size_of::<FwdStats>(), 16);
        assert_eq!(core::mem::size_of::<ClientKey>(), 4 + 1 + 1 + 2 + DUID_MAX);
        assert_eq!(core::mem::size_of::<RecordPrefix>(), 16 + 4 * 5 + 2 + 1 + 1);
        assert_eq!(
            core::mem::size_of::<ClientRecord>(),
            core::mem::size_of::<PdEvent>()
                + 8
                + RECORD_PREFIXES * core::mem::size_of::<RecordPrefix>()
        );
    }

    #[test]
    fn counter_table_is_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
