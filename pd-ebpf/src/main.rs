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
//! Kernels before 5.17 have no `bpf_loop`, and before 5.18 no
//! `bpf_xdp_load_bytes`: there the agent loads `pd_xdp_compat` and
//! `pd_tc_egress_compat`, the same code with the walk a bounded loop over
//! the global function [`parse::pd_tlv_step`] (checked once, like the
//! callback) and XDP's copy a `bpf_probe_read_kernel` from the linear
//! frame. Two probe programs, which call the helpers and nothing else,
//! tell the agent which kernel it is on.
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
    helpers::{
        bpf_loop, bpf_skb_load_bytes, bpf_xdp_load_bytes, generated::bpf_probe_read_kernel,
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use pd_common::{hook, ifflags};

use crate::{
    fastpath::fast_path,
    maps::{iface_flags, on, BARE_LINKS, FAST_PATH, RELAY, SAV},
    parse::Scratch,
    snoop::{snoop, Snooped},
};

/// TC: let the next program / the default action decide (tcx `TCX_NEXT`).
const TC_ACT_UNSPEC: i32 = -1;

#[xdp]
pub fn pd_xdp(ctx: XdpContext) -> u32 {
    xdp_body::<false>(&ctx)
}

/// [`pd_xdp`] for kernels without `bpf_loop` (5.17) or
/// `bpf_xdp_load_bytes` (5.18), which the agent loads instead there.
#[xdp]
pub fn pd_xdp_compat(ctx: XdpContext) -> u32 {
    xdp_body::<true>(&ctx)
}

#[inline(always)]
fn xdp_body<const COMPAT: bool>(ctx: &XdpContext) -> u32 {
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
    let load = |s: &mut Scratch, off: u32, len: u32| unsafe {
        let dst = s.buf.as_mut_ptr() as *mut c_void;
        if COMPAT {
            // Before 5.18 an XDP frame is one linear buffer: read it as
            // kernel memory, within the frame's bounds.
            let src = data + off as usize;
            src + len as usize <= end && bpf_probe_read_kernel(dst, len, src as *const c_void) == 0
        } else {
            bpf_xdp_load_bytes(md as *mut xdp_md, off, dst, len) == 0
        }
    };
    match snoop::<COMPAT>(data, end, ifindex, 0, hook::XDP_INGRESS, bare, guard, load) {
        Snooped::Pass => xdp_action::XDP_PASS,
        Snooped::Drop => xdp_action::XDP_DROP,
        Snooped::No => fast_path(ctx, ifindex, ifl),
    }
}

/// Loads only on kernels with `bpf_loop` (5.17): the agent's probe.
#[xdp]
pub fn pd_probe_loop(_ctx: XdpContext) -> u32 {
    unsafe { bpf_loop(1, probe_cb as *mut c_void, core::ptr::null_mut(), 0) };
    xdp_action::XDP_PASS
}

unsafe extern "C" fn probe_cb(_index: u64, _ctx: *mut c_void) -> i64 {
    1
}

/// Loads only on kernels with `bpf_xdp_load_bytes` (5.18): the agent's probe.
#[xdp]
pub fn pd_probe_xdp_load_bytes(ctx: XdpContext) -> u32 {
    let mut b = [0u8; 1];
    unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, b.as_mut_ptr() as *mut c_void, 1) };
    xdp_action::XDP_PASS
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
    tc_body::<false>(&ctx)
}

/// [`pd_tc_egress`] for kernels without `bpf_loop` (5.17).
#[classifier]
pub fn pd_tc_egress_compat(ctx: TcContext) -> i32 {
    tc_body::<true>(&ctx)
}

#[inline(always)]
fn tc_body<const COMPAT: bool>(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let ifindex = unsafe { (*skb).ifindex };
    // Non-zero for a forwarded packet: a Reply a downstream host sent
    // through this router is not one this host's server or relay sent.
    let in_ifindex = unsafe { (*skb).ingress_ifindex };
    let bare = on(&BARE_LINKS) && iface_flags(ifindex) & ifflags::L3 != 0;
    let _ = snoop::<COMPAT>(ctx.data(), ctx.data_end(), ifindex, in_ifindex, hook::TC_EGRESS, bare, |_, _, _| false, |s, off, len| unsafe {
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
