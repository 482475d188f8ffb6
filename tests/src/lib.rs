//! Helpers for pd-agent's root tests: network namespaces and veth pairs
//! that clean up on drop (even when a test panics), daemons started inside
//! them and stopped on drop, and the real DHCP servers and clients.
//!
//! Every DHCP client runs with its own empty `/etc/netns/NS/resolv.conf` and
//! with its resolver hooks off, so the host's resolver is never touched.
//!
//! - [`netns`]: namespaces, veth pairs, the router topology, echo counting.
//! - [`daemon`]: starting processes with their output in a log, stopping
//!   them on drop; polling; scratch directories.
//! - [`agent`]: the pd-agent under test and what it shows from outside.
//! - [`servers`]: Kea and ISC dhcpd. [`clients`]: dhclient and dhcpcd.
//! - [`delegation`]: agent, Kea and dhclient together, up to a routed prefix.
//! - [`corpus`], [`wire`]: DHCPv6 packets, and sending them by hand.
//! - [`lab`], [`matrix`]: the seed scenario and the fast path's link matrix.
//!
//! Everything but `corpus`, `lab`, `matrix` and `wire` is re-exported at
//! the crate root.

pub mod agent;
pub mod clients;
pub mod daemon;
pub mod delegation;
pub mod netns;
pub mod servers;

pub use agent::*;
pub use clients::*;
pub use daemon::*;
pub use delegation::*;
pub use netns::*;
pub use servers::*;

pub mod corpus;
pub mod lab;
pub mod matrix;
pub mod wire;

/// How many of `n` repetitions a correctness loop runs here: all on real
/// hardware, a part inside an emulated VM, where each BPF_PROG_TEST_RUN
/// costs tens of times more: `PD_TEST_EMULATED=D`, set by the VM tiers,
/// runs the first n/D (D is 4 under amd64 emulation, 16 under arm64's,
/// where the mutants run 20 times slower still). The VM checks that the
/// programs behave on its kernel and JIT; the host runs every
/// repetition, and the benchmarks measure speed.
pub fn repetitions(n: usize) -> usize {
    let d = std::env::var("PD_TEST_EMULATED")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    n / d
}

/// A wait for something the machine's speed decides (an agent verifying
/// its programs and becoming ready): `d` on real hardware, three times
/// that inside an emulated VM (`PD_TEST_EMULATED`), where the guest may
/// also share the host's cores with another.
pub fn patience(d: std::time::Duration) -> std::time::Duration {
    if std::env::var_os("PD_TEST_EMULATED").is_some() {
        d * 3
    } else {
        d
    }
}
