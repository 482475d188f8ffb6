//! Snooping, shared by both programs: locate a DHCPv6 message, copy it
//! into the per-CPU scratch buffer, walk it, report it. Snooping never
//! drops or changes a packet.

use pd_common::{
    flags,
    wire::{ETH_HLEN, IPV6_HLEN, MSG_HLEN},
    Counter, PdEvent, PAYLOAD_MAX,
};

use crate::{
    emit::emit,
    headers::{locate, Located},
    maps::{count, note, PD_SCRATCH},
    parse::{walk, Scratch, MASK},
};

/// What became of a packet.
#[derive(PartialEq, Eq)]
pub(crate) enum Snooped {
    /// Not DHCPv6: the fast path's.
    No,
    /// DHCPv6 (or a mangled candidate), snooped: it passes untouched.
    Pass,
    /// A client message the relay's rate limits dropped (`guard`).
    Drop,
}

/// If the packet is DHCPv6 (or a mangled candidate), snoop it: it then
/// passes untouched, unless `guard` (the relay's rate limits, XDP only)
/// says to drop it, before it is parsed. `load` copies payload bytes into
/// the scratch buffer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn snoop<const COMPAT: bool>(
    data: usize,
    end: usize,
    ifindex: u32,
    in_ifindex: u32,
    hook_id: u8,
    bare: bool,
    guard: impl FnOnce(u16, usize, usize) -> bool,
    load: impl FnOnce(&mut Scratch, u32, u32) -> bool,
) -> Snooped {
    let loc = match locate(data, end, bare) {
        Ok(Some(l)) => l,
        Ok(None) => return Snooped::No,
        Err(c) => {
            note(c, ifindex);
            return Snooped::Pass;
        }
    };
    // The guard gets the fields by value: a reference would keep `loc` in
    // memory for LLVM even where the verifier prunes the guard.
    if guard(loc.dport, loc.l3, loc.payload) {
        return Snooped::Drop;
    }
    dhcp::<COMPAT>(data, end, loc, ifindex, in_ifindex, hook_id, load);
    Snooped::Pass
}

/// Parse one DHCPv6 message found by [`locate`] and emit its events.
#[inline(always)]
fn dhcp<const COMPAT: bool>(
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
        return note(Counter::ShortMessage, ifindex);
    }
    if loc.len > PAYLOAD_MAX {
        return note(Counter::TooLong, ifindex);
    }
    let len = loc.len;
    s.ev = PdEvent::zeroed();
    // Launder the length through memory so LLVM cannot fold the mask
    // away: the verifier must see the range [1, PAYLOAD_MAX] on the very
    // register passed to the helper. For 4..=PAYLOAD_MAX this is identity.
    let len = unsafe { core::ptr::read_volatile(&(len as u32)) };
    let len = ((len - 1) & MASK as u32) + 1;
    if !load(s, loc.payload as u32, len) {
        return note(Counter::TruncatedHeader, ifindex);
    }
    if !packet_fields(s, data, end, &loc) {
        return;
    }
    s.ev.ifindex = ifindex;
    s.ev.in_ifindex = in_ifindex;
    s.ev.hook = hook_id;
    s.start(len);
    if let Some(s) = walk::<COMPAT>() {
        emit(s);
    }
}

/// The event's fields from the packet's headers: addresses and MACs at
/// fixed offsets from checked pointers, and the VLAN tag. False if the
/// IPv6 header is not all there (never, after [`locate`]).
#[inline(always)]
fn packet_fields(s: &mut Scratch, data: usize, end: usize, loc: &Located) -> bool {
    let ip = data + loc.l3;
    if ip + IPV6_HLEN > end {
        return false;
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
    // Stored on both paths (0 without a tag): written only under the flag,
    // LLVM may leave the untagged path's value undefined and spill that
    // register, which the verifier refuses (seen with kernel logging on).
    s.ev.vlan = loc.vlan;
    if loc.has_vlan {
        s.ev.flags |= flags::VLAN;
    }
    true
}
