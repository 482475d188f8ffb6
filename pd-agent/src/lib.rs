//! pd-agent: routes DHCPv6-delegated prefixes seen on the wire.
//!
//! Data path: kernel programs ([`ebpf`]) -> ring buffer records
//! ([`snoop`]) -> the binding table ([`binding`], pure logic) -> actions
//! carried out on kernel routes ([`route`]), the pinned map ([`maps`]) and
//! the state store ([`state`]). [`dhcp`] is the reference parser the kernel
//! programs are tested against.
pub mod agent;
pub mod binding;
pub mod clock;
pub mod config;
pub mod control;
pub mod datapath;
pub mod dhcp;
pub mod ebpf;
pub mod hooks;
pub mod keeper;
pub mod klog;
pub mod link;
pub mod maps;
pub mod metrics;
pub mod netfilter;
pub mod netlink;
pub mod relay;
pub mod resync;
pub mod route;
pub mod snoop;
pub mod state;
pub mod systemd;
pub mod xdp_features;

/// An error and its causes on one line (`a: b: c`), for log fields.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
