//! pd-agent: routes DHCPv6-delegated prefixes seen on the wire.
//!
//! Data path: kernel programs ([`ebpf`]) -> ring buffer records
//! ([`snoop`]) -> the binding table ([`binding`], pure logic) -> actions
//! carried out on kernel routes ([`route`]), the pinned map ([`maps`]) and
//! the state store ([`state`]). [`dhcp`] is the reference parser the kernel
//! programs are tested against.
pub mod agent;
pub mod binding;
pub mod control;
pub mod dhcp;
pub mod ebpf;
pub mod hooks;
pub mod maps;
pub mod route;
pub mod snoop;
pub mod state;
