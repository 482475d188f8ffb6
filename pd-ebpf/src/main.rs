//! pd-agent's kernel programs.
//!
//! `pd_xdp` (XDP, ingress) and `pd_tc_egress` (TC, egress) share one parser:
//! each finds the UDP payload of an IPv6 packet to port 546/547 with direct
//! packet access ([`headers`]), copies the payload into a per-CPU scratch
//! buffer with `bpf_{xdp,skb}_load_bytes`, and walks the DHCPv6 TLVs there
//! in a `bpf_loop` callback ([`parse`]), which the verifier checks once
//! rather than once per iteration. Every delegated prefix becomes a
//! `PdEvent` in `pd_events_v1` ([`emit`]).
//!
//! Snooping never drops or changes a packet. Non-DHCP IPv6 packets then
//! meet the XDP fast path ([`fastpath`]): source-address validation on
//! downstream interfaces (the only place a packet is ever dropped), and,
//! for a destination inside a delegated prefix (`pd_routes_v1`),
//! forwarding with `bpf_fib_lookup` + MAC rewrite + redirect, but only
//! from an Ethernet link with no netfilter hook on the forwarding path into
//! a device that takes redirects (the agent's `pd_ifaces_v1` flags).
//! Anything unusual goes to the kernel untouched, counted by reason, and
//! the kernel's FIB decides the egress either way, so the fast path never
//! changes where a packet goes. Links without a link-layer header (ppp,
//! tun) are parsed from their IPv6 header.
//!
//! The maps and load-time switches the agent finds by name are in [`maps`].
#![no_std]
#![no_main]

mod emit;
mod fastpath;
mod headers;
mod maps;
mod parse;
mod relay;
mod snoop;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use pd_common::{hook, ifflags};

use crate::{
    fastpath::fast_path,
    maps::{iface_flags, on, BARE_LINKS, FAST_PATH, RELAY, SAV},
    snoop::{snoop, Snooped},
};

/// TC: let the next program / the default action decide (tcx `TCX_NEXT`).
const TC_ACT_UNSPEC: i32 = -1;

#[xdp]
pub fn pd_xdp(ctx: XdpContext) -> u32 {
    let md = ctx.ctx;
    let ifindex = ctx.ingress_ifindex() as u32;
    // One flag lookup serves the link type, source validation and the fast
    // path; with none of them loaded there is nothing to look up.
    let ifl = if on(&BARE_LINKS) || on(&SAV) || on(&FAST_PATH) || on(&RELAY) {
        iface_flags(ifindex)
    } else {
        0
    };
    let bare = ifl & ifflags::L3 != 0;
    let (data, end) = (ctx.data(), ctx.data_end());
    let guard = |dport, l3, payload| {
        on(&RELAY) && ifl & ifflags::RELAY != 0 && relay::guard(data, end, dport, l3, payload, ifindex)
    };
    match snoop(data, end, ifindex, 0, hook::XDP_INGRESS, bare, guard, |s, off, len| unsafe {
        bpf_xdp_load_bytes(md as *mut xdp_md, off, s.buf.as_mut_ptr() as *mut c_void, len) == 0
    }) {
        Snooped::Pass => xdp_action::XDP_PASS,
        Snooped::Drop => xdp_action::XDP_DROP,
        Snooped::No => fast_path(&ctx, ifindex, ifl),
    }
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
    let _ = snoop(ctx.data(), ctx.data_end(), ifindex, in_ifindex, hook::TC_EGRESS, bare, |_, _, _| false, |s, off, len| unsafe {
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
