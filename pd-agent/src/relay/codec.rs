//! The relay headers (RFC 9915 §9): read and written by hand.
//!
//! dhcproto is the project's DHCPv6 codec, but it cannot carry relay
//! traffic: `v6::RelayMessage` has no public constructor, option 9 always
//! decodes as another relay header (so a Relay-Reply holding a Reply
//! decodes into garbage), and encoding re-sorts options. A relay must pass
//! the message it relays on byte for byte, so this module reads and writes
//! only the 34-byte relay header and its options and treats the relayed
//! message as opaque bytes.
//!
//! ```text
//!  msg-type (1) | hop-count (1) | link-address (16) | peer-address (16) | options ...
//! ```

use std::net::Ipv6Addr;

pub const RELAY_FORW: u8 = 12;
pub const RELAY_REPL: u8 = 13;
/// RFC 9915 §7.6.
pub const HOP_COUNT_LIMIT: u8 = 8;
/// The relay header before its options.
pub const HEADER_LEN: usize = 34;

pub mod option {
    /// Relay Message: the relayed message.
    pub const RELAY_MSG: u16 = 9;
    pub const INTERFACE_ID: u16 = 18;
    /// RFC 4649.
    pub const REMOTE_ID: u16 = 37;
    /// RFC 4580.
    pub const SUBSCRIBER_ID: u16 = 38;
    /// RFC 6939.
    pub const CLIENT_LINKLAYER_ADDR: u16 = 79;
    /// RFC 8357.
    pub const RELAY_SOURCE_PORT: u16 = 135;
}

/// Why a message cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{0} bytes: shorter than a relay header")]
    Truncated(usize),
    #[error("message type {0} is not a relay message")]
    NotRelay(u8),
    #[error("option {code} at byte {at} runs past the end")]
    OptionOverrun { code: u16, at: usize },
    #[error("no Relay Message option")]
    NoRelayMessage,
    #[error("two Relay Message options")]
    TwoRelayMessages,
    #[error("the relayed message has {0} bytes: shorter than a message header")]
    ShortInner(usize),
}

/// A relay message read in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay<'a> {
    pub msg_type: u8,
    pub hop_count: u8,
    pub link_address: Ipv6Addr,
    pub peer_address: Ipv6Addr,
    /// Every option but the Relay Message, in wire order.
    pub options: Vec<(u16, &'a [u8])>,
    /// The relayed message, verbatim.
    pub message: &'a [u8],
}

impl<'a> Relay<'a> {
    /// Read a Relay-Forw or Relay-Reply: the options must fill the message
    /// exactly, and exactly one of them must be a Relay Message holding at
    /// least a message type and transaction id (or a relay header).
    pub fn parse(buf: &'a [u8]) -> Result<Self, CodecError> {
        if buf.len() < HEADER_LEN {
            return Err(CodecError::Truncated(buf.len()));
        }
        let msg_type = buf[0];
        if msg_type != RELAY_FORW && msg_type != RELAY_REPL {
            return Err(CodecError::NotRelay(msg_type));
        }
        let addr = |at: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&buf[at..at + 16]);
            Ipv6Addr::from(a)
        };
        let options = walk(&buf[HEADER_LEN..], HEADER_LEN)?;
        let mut message = None;
        let mut rest = Vec::with_capacity(options.len());
        for (code, data) in options {
            if code == option::RELAY_MSG {
                if message.replace(data).is_some() {
                    return Err(CodecError::TwoRelayMessages);
                }
            } else {
                rest.push((code, data));
            }
        }
        let message = message.ok_or(CodecError::NoRelayMessage)?;
        if message.len() < 4 {
            return Err(CodecError::ShortInner(message.len()));
        }
        Ok(Relay {
            msg_type,
            hop_count: buf[1],
            link_address: addr(2),
            peer_address: addr(18),
            options: rest,
            message,
        })
    }

    /// The first option `code`'s data.
    pub fn option(&self, code: u16) -> Option<&'a [u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| *d)
    }

    /// The relayed message's type.
    pub fn inner_type(&self) -> u8 {
        self.message[0]
    }
}

/// The options of `buf` (which starts `base` bytes into the message, for
/// errors), each checked to lie inside it.
pub fn walk(buf: &[u8], base: usize) -> Result<Vec<(u16, &[u8])>, CodecError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        if buf.len() - at < 4 {
            return Err(CodecError::OptionOverrun {
                code: if buf.len() - at >= 2 {
                    u16::from_be_bytes([buf[at], buf[at + 1]])
                } else {
                    0
                },
                at: base + at,
            });
        }
        let code = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let start = at + 4;
        if buf.len() - start < len {
            return Err(CodecError::OptionOverrun {
                code,
                at: base + at,
            });
        }
        out.push((code, &buf[start..start + len]));
        at = start + len;
    }
    Ok(out)
}

/// Check a client's message (anything but a relay message) before it is
/// relayed: a message type and transaction id, then options that fill the
/// rest exactly. A message of a type this relay does not know is relayed
/// as it is (RFC 9915 §19), once its header is there.
pub fn check_client_message(buf: &[u8]) -> Result<(), CodecError> {
    if buf.len() < 4 {
        return Err(CodecError::Truncated(buf.len()));
    }
    if known_client_type(buf[0]) {
        walk(&buf[4..], 4)?;
    }
    Ok(())
}

/// Message types a client sends whose options follow a 4-byte header
/// (Solicit, Request, Confirm, Renew, Rebind, Release, Decline,
/// Information-request).
fn known_client_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 4 | 5 | 6 | 8 | 9 | 11)
}

/// Write a Relay-Forw or Relay-Reply: the header, `options` in the order
/// given, then the Relay Message holding `message` verbatim.
pub fn write(
    msg_type: u8,
    hop_count: u8,
    link_address: Ipv6Addr,
    peer_address: Ipv6Addr,
    options: &[(u16, &[u8])],
    message: &[u8],
) -> Vec<u8> {
    let len =
        HEADER_LEN + options.iter().map(|(_, d)| 4 + d.len()).sum::<usize>() + 4 + message.len();
    let mut out = Vec::with_capacity(len);
    out.push(msg_type);
    out.push(hop_count);
    out.extend_from_slice(&link_address.octets());
    out.extend_from_slice(&peer_address.octets());
    for (code, data) in options
        .iter()
        .copied()
        .chain(std::iter::once((option::RELAY_MSG, message)))
    {
        out.extend_from_slice(&code.to_be_bytes());
        // Callers keep every option under 64 KiB: the message came in one
        // UDP datagram.
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOLICIT: &[u8] = &[1, 0xab, 0xcd, 0xef, 0, 8, 0, 2, 0, 0];

    fn forw() -> Vec<u8> {
        write(
            RELAY_FORW,
            0,
            "2001:db8:1::1".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            &[(option::INTERFACE_ID, b"lan0")],
            SOLICIT,
        )
    }

    #[test]
    fn written_relay_reads_back_and_keeps_the_message() {
        let buf = forw();
        let r = Relay::parse(&buf).unwrap();
        assert_eq!(r.msg_type, RELAY_FORW);
        assert_eq!(r.hop_count, 0);
        assert_eq!(r.link_address, "2001:db8:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(r.peer_address, "fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(r.option(option::INTERFACE_ID), Some(&b"lan0"[..]));
        assert_eq!(r.message, SOLICIT);
        assert_eq!(r.inner_type(), 1);
        // Options keep their order, and the Relay Message comes last.
        assert_eq!(&buf[HEADER_LEN..HEADER_LEN + 2], &[0, 18]);
        assert_eq!(buf.len(), HEADER_LEN + 8 + 4 + SOLICIT.len());
    }

    #[test]
    fn nested_relays_read_layer_by_layer() {
        let inner = forw();
        let outer = write(
            RELAY_FORW,
            1,
            Ipv6Addr::UNSPECIFIED,
            "2001:db8:1::1".parse().unwrap(),
            &[],
            &inner,
        );
        let r = Relay::parse(&outer).unwrap();
        assert_eq!(r.hop_count, 1);
        assert_eq!(r.inner_type(), RELAY_FORW);
        let r2 = Relay::parse(r.message).unwrap();
        assert_eq!(r2.message, SOLICIT);
    }

    /// Every truncation of a good message is refused, never read past its end.
    #[test]
    fn every_truncation_is_refused() {
        let buf = forw();
        for n in 0..buf.len() {
            assert!(Relay::parse(&buf[..n]).is_err(), "{n} bytes accepted");
        }
    }

    #[test]
    fn inconsistent_messages_are_refused_by_name() {
        let mut buf = forw();
        // An option length running past the end.
        buf[HEADER_LEN + 3] = 200;
        assert_eq!(
            Relay::parse(&buf),
            Err(CodecError::OptionOverrun {
                code: 18,
                at: HEADER_LEN
            })
        );
        let none = write(
            RELAY_REPL,
            0,
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::UNSPECIFIED,
            &[],
            &[],
        );
        // An empty Relay Message.
        assert_eq!(Relay::parse(&none), Err(CodecError::ShortInner(0)));
        let mut no_msg = none.clone();
        no_msg.truncate(HEADER_LEN);
        assert_eq!(Relay::parse(&no_msg), Err(CodecError::NoRelayMessage));
        let mut two = forw();
        two.extend_from_slice(&[0, 9, 0, 4, 1, 2, 3, 4]);
        assert_eq!(Relay::parse(&two), Err(CodecError::TwoRelayMessages));
        let mut solicit = forw();
        solicit[0] = 1;
        assert_eq!(Relay::parse(&solicit), Err(CodecError::NotRelay(1)));
        // Three stray bytes after the last option.
        let mut stray = forw();
        stray.extend_from_slice(&[0, 1, 0]);
        assert!(matches!(
            Relay::parse(&stray),
            Err(CodecError::OptionOverrun { .. })
        ));
    }

    #[test]
    fn client_messages_are_checked_by_type() {
        assert!(check_client_message(SOLICIT).is_ok());
        assert!(check_client_message(&SOLICIT[..3]).is_err());
        assert!(check_client_message(&SOLICIT[..7]).is_err());
        // A type this relay does not know goes on with any body.
        assert!(check_client_message(&[200, 0, 0, 1, 0xff]).is_ok());
    }

    /// The UDP payloads of a little-endian Ethernet pcap's IPv6 frames
    /// (the fixtures carry no extension headers or VLAN tags).
    fn udp_payloads(d: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut off = 24;
        while off + 16 <= d.len() {
            let incl = u32::from_le_bytes(d[off + 8..off + 12].try_into().unwrap()) as usize;
            off += 16;
            let f = &d[off..off + incl];
            if f.len() > 62 && f[12..14] == [0x86, 0xdd] && f[20] == 17 {
                out.push(f[62..].to_vec());
            }
            off += incl;
        }
        out
    }

    /// Every Relay-Forw and Relay-Reply of the captured exchanges (Kea,
    /// dhcpd, chained dhcrelay) reads, and writing its header back gives
    /// the same bytes.
    #[test]
    fn captured_relay_messages_round_trip() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pcap");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "pcap") {
                continue;
            }
            for payload in udp_payloads(&std::fs::read(&p).unwrap()) {
                if payload
                    .first()
                    .is_none_or(|t| *t != RELAY_FORW && *t != RELAY_REPL)
                {
                    continue;
                }
                let r = Relay::parse(&payload).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let again = write(
                    r.msg_type,
                    r.hop_count,
                    r.link_address,
                    r.peer_address,
                    &r.options,
                    r.message,
                );
                // Captured relays may place the Relay Message anywhere; ours
                // goes last, so compare what was read.
                assert_eq!(Relay::parse(&again).unwrap().message, r.message);
                n += 1;
            }
        }
        assert!(n >= 4, "only {n} relay messages in {}", dir.display());
    }
}
