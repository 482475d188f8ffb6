//! Kernel debug logging (`--kernel-debug`): the records the programs write
//! with aya-log when a packet was passed on without an event (a DHCPv6
//! reject) or left to the kernel by the fast path, logged with the reason's
//! name and the interface's.
//!
//! The programs send numbers only (`pd_common::log::FORMAT`): the counter
//! and the interface index. Names are resolved here, so the kernel side
//! stays one small log call, pruned at load when logging is off.

use pd_common::Counter;

/// Writes the kernel's log records to the agent's log (target `kernel`).
pub struct KernelLog;

/// A record's reason and interface, from its message (`why N ifindex M`).
pub fn parse(msg: &str) -> Option<(Counter, u32)> {
    let mut w = msg.split_ascii_whitespace();
    let (Some("why"), Some(c), Some("ifindex"), Some(i), None) =
        (w.next(), w.next(), w.next(), w.next(), w.next())
    else {
        return None;
    };
    let c = Counter::ALL.get(c.parse::<usize>().ok()?).copied()?;
    Some((c, i.parse().ok()?))
}

/// What happened to a packet counted under `c`.
fn what(c: Counter) -> &'static str {
    use Counter::*;
    match c {
        SavDropped | SavStrictDropped => "source-address validation dropped a packet",
        FwdRedirected => "the fast path forwarded a packet",
        FwdHopLimit | FwdNoNeigh | FwdFibOther | FwdNotHandled | FwdFirewall | FwdNoXmit
        | FwdLinkType | FwdNoAgent => "the fast path left a packet to the kernel",
        RelayIfaceRate | RelayClientRate => {
            "a client's DHCPv6 message was dropped over the relay's rate limit"
        }
        RingbufFull => "a DHCPv6 message was not delivered to the agent (ring buffer full)",
        RecordsFull => {
            "a DHCPv6 message was delivered but not recorded for replay (records map full)"
        }
        BadT1T2 | BadPrefixLength | BadLifetimes | TooManyPrefixes => {
            "a DHCPv6 message's prefix was ignored"
        }
        _ => "a DHCPv6 packet was passed on without an event",
    }
}

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let msg = record.args().to_string();
        match parse(&msg) {
            Some((c, ifindex)) => {
                let iface = crate::route::if_name(ifindex).unwrap_or_else(|| "?".into());
                tracing::info!(target: "kernel", reason = c.name(), ifindex, %iface, "{}", what(c));
            }
            None => tracing::info!(target: "kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_their_reason() {
        let msg = pd_common::log::FORMAT
            .replacen("{}", &(Counter::BadLifetimes as u32).to_string(), 1)
            .replacen("{}", "7", 1);
        assert_eq!(parse(&msg), Some((Counter::BadLifetimes, 7)));
        assert_eq!(parse("why 9999 ifindex 7"), None);
        assert_eq!(parse("why 3 ifindex"), None);
        assert_eq!(parse("something else"), None);
    }
}
