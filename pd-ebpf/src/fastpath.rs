//! What XDP does with IPv6 packets that are not DHCPv6: source-address
//! validation on downstream interfaces (the only place a packet is ever
//! dropped), then forwarding to delegated prefixes where that is exactly
//! what the kernel would do. Anything else goes to the kernel, counted by
//! reason.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_ktime_get_boot_ns, bpf_redirect},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use pd_common::{
    ifflags,
    wire::{ETH_HLEN, ETH_P_IPV6, IPPROTO_UDP, IPV6_HLEN},
    Counter, NO_SLOT,
};

use crate::maps::{count, iface_flags, note, on, FAST_PATH, PD_FWD_LEASE, PD_FWD_STATS, PD_ONLINK, PD_ROUTES, SAV};

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
                note(Counter::SavDropped, ifindex);
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
                    note(Counter::SavStrictDropped, ifindex);
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
pub(crate) fn fast_path(ctx: &XdpContext, ifindex: u32, ifl: u32) -> u32 {
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
        if data + ETH_HLEN + IPV6_HLEN > end || u16::from_be(unsafe { *((data + 12) as *const u16) }) != ETH_P_IPV6 {
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
        note(Counter::FwdLinkType, ifindex);
        return xdp_action::XDP_PASS;
    }
    if ifl & ifflags::FWD_IN == 0 {
        note(Counter::FwdFirewall, ifindex);
        return xdp_action::XDP_PASS;
    }
    let lease = PD_FWD_LEASE.get(0).copied().unwrap_or(0);
    if unsafe { bpf_ktime_get_boot_ns() } >= lease {
        note(Counter::FwdNoAgent, ifindex);
        return xdp_action::XDP_PASS;
    }
    let slot = route.slot;
    // The binding's own interface first: where it takes no redirects (a
    // plain veth, a bridge) the FIB lookup would be wasted. The FIB's
    // choice of egress is checked again below.
    if iface_flags(route.ifindex) & ifflags::FWD_OUT == 0 {
        note(Counter::FwdNoXmit, ifindex);
        return xdp_action::XDP_PASS;
    }
    forward(ctx, data, end, ip, ifindex, slot)
}

/// Forward the packet (`data..end`, its IPv6 header at `ip`, already
/// bounds-checked) where the kernel's FIB would: rewrite its MACs and hop
/// limit, count it on the binding's `slot`, and redirect it. Protocols
/// other than TCP, UDP and ICMPv6 (extension headers, fragments), an
/// expiring hop limit and unresolved next hops are left to the kernel.
#[inline(always)]
fn forward(ctx: &XdpContext, data: usize, end: usize, ip: usize, ifindex: u32, slot: u32) -> u32 {
    let nh = unsafe { *((ip + 6) as *const u8) };
    if nh != IPPROTO_TCP && nh != IPPROTO_UDP && nh != IPPROTO_ICMPV6 {
        note(Counter::FwdNotHandled, ifindex);
        return xdp_action::XDP_PASS;
    }
    let hop_limit = unsafe { *((ip + 7) as *const u8) };
    if hop_limit <= 1 {
        note(Counter::FwdHopLimit, ifindex);
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
        note(if rc == BPF_FIB_LKUP_RET_NO_NEIGH { Counter::FwdNoNeigh } else { Counter::FwdFibOther }, ifindex);
        return xdp_action::XDP_PASS;
    }
    // A redirect into a device that cannot take it is dropped after XDP
    // returns; the kernel would have delivered the packet.
    if iface_flags(p.ifindex) & ifflags::FWD_OUT == 0 {
        note(Counter::FwdNoXmit, ifindex);
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
