//! Netlink beyond rtnetlink: a blocking request/dump socket and multicast
//! listeners, over `netlink-sys` sockets and `netlink-packet-core`'s
//! buffers. The data path needs two families rtnetlink does not speak:
//! generic netlink's `netdev` (xdp-features, [`crate::xdp_features`]) and
//! nfnetlink's hook subsystem (the netfilter hooks `nft list hooks` shows,
//! [`crate::netfilter`]).
//!
//! Replies are returned as raw payloads (what follows the 16-byte netlink
//! header); the callers decode their own attributes with [`attrs`].

use std::{io, time::Duration};

use rtnetlink::packet_core::{
    NetlinkBuffer, NlaBuffer, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_MULTIPART, NLM_F_REQUEST,
};
use rtnetlink::sys::{Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink socket (protocol {protocol})")]
    Socket {
        protocol: isize,
        #[source]
        source: io::Error,
    },
    #[error("netlink request: {0}")]
    Io(#[source] io::Error),
    /// The kernel answered with an error (a positive errno).
    #[error("the kernel answered: {}", io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    #[error("netlink: no answer within {0:?}")]
    Timeout(Duration),
    #[error("netlink: malformed reply")]
    Malformed,
    /// The kernel interrupted a dump every time (what it listed changed
    /// meanwhile): a partial list is not an answer.
    #[error("netlink: dump interrupted {0} times in a row")]
    Interrupted(usize),
}

impl NlError {
    /// The kernel's errno, when it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Errno(e) => Some(*e),
            _ => None,
        }
    }
}

/// How long a request waits for its answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Dumps that the kernel says were interrupted by a change are retried.
const DUMP_TRIES: usize = 4;

/// One socket for requests and dumps, answered in order.
pub struct NlSocket {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl NlSocket {
    pub fn open(protocol: isize) -> Result<Self, NlError> {
        let err = |source| NlError::Socket { protocol, source };
        let mut sock = Socket::new(protocol).map_err(err)?;
        sock.bind_auto().map_err(err)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        set_timeout(&sock, TIMEOUT).map_err(err)?;
        Ok(NlSocket {
            sock,
            seq: 0,
            // Dump parts are at most 32 KiB; a bigger buffer never truncates.
            rx: vec![0; 64 << 10],
        })
    }

    /// Ask the kernel to check requests strictly (`NETLINK_GET_STRICT_CHK`,
    /// Linux 4.20+): a dump's header and attributes then filter it.
    pub fn strict(self) -> Result<Self, NlError> {
        self.sock
            .set_netlink_get_strict_chk(true)
            .map_err(|source| NlError::Socket {
                protocol: 0,
                source,
            })?;
        Ok(self)
    }

    /// Send one request (`flags` gets NLM_F_REQUEST) and collect the
    /// payloads of its answers: one message, or every part of a dump
    /// (NLM_F_DUMP), which is tried again if the kernel interrupted it.
    pub fn call(&mut self, ty: u16, flags: u16, payload: &[u8]) -> Result<Vec<Vec<u8>>, NlError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.call_once(ty, flags, payload)? {
                (msgs, false) => return Ok(msgs),
                (_, true) if tries >= DUMP_TRIES => return Err(NlError::Interrupted(tries)),
                _ => {}
            }
        }
    }

    /// The answers, and whether a dump was interrupted.
    fn call_once(
        &mut self,
        ty: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<(Vec<Vec<u8>>, bool), NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = 16 + payload.len();
        let mut req = Vec::with_capacity(len);
        req.extend((len as u32).to_ne_bytes());
        req.extend(ty.to_ne_bytes());
        req.extend((flags | NLM_F_REQUEST).to_ne_bytes());
        req.extend(seq.to_ne_bytes());
        req.extend(0u32.to_ne_bytes());
        req.extend_from_slice(payload);
        self.sock.send(&req, 0).map_err(NlError::Io)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match self.sock.recv(&mut &mut self.rx[..], 0) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NlError::Timeout(TIMEOUT))
                }
                Err(e) => return Err(NlError::Io(e)),
            };
            for msg in messages(&self.rx[..n]) {
                let msg = msg?;
                if msg.sequence_number() != seq {
                    continue; // a late answer to an earlier, timed-out request
                }
                interrupted |= msg.flags() & NLM_F_DUMP_INTR != 0;
                match msg.message_type() {
                    // Both carry an errno: a dump's callback reports its
                    // failure in NLMSG_DONE, a request's in NLMSG_ERROR
                    // (0: an ack).
                    ty @ (NLMSG_DONE | NLMSG_ERROR) => {
                        let code = match msg
                            .payload()
                            .get(0..4)
                            .and_then(|c| <[u8; 4]>::try_from(c).ok())
                        {
                            Some(c) => i32::from_ne_bytes(c),
                            None if ty == NLMSG_DONE => 0,
                            None => return Err(NlError::Malformed),
                        };
                        if code < 0 {
                            return Err(NlError::Errno(code.wrapping_neg()));
                        }
                        return Ok((out, interrupted));
                    }
                    _ => {
                        out.push(msg.payload().to_vec());
                        // A dump ends with NLMSG_DONE (not every family
                        // marks its parts NLM_F_MULTI); a request, with its
                        // one answer.
                        if !dump && msg.flags() & NLM_F_MULTIPART == 0 {
                            return Ok((out, interrupted));
                        }
                    }
                }
            }
        }
    }
}

fn set_timeout(sock: &Socket, t: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Append one attribute (type-length-value, padded to 4 bytes).
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend((len as u16).to_ne_bytes());
    buf.extend(kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + ((4 - len % 4) % 4), 0);
}

/// The attributes in `b`: (type without the nested/byte-order flags,
/// value). Stops at the first malformed one.
pub fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let rest = b.get(off..)?;
        let nla = NlaBuffer::new_checked(rest).ok()?;
        let len = nla.length() as usize;
        if len < 4 {
            return None;
        }
        off += (len + 3) & !3;
        Some((nla.kind(), &rest[4..len]))
    })
}

/// A NUL-terminated string attribute.
pub fn attr_str(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// The netlink messages of one datagram, in order; a malformed one is
/// reported and ends the walk.
pub fn messages(b: &[u8]) -> impl Iterator<Item = Result<NetlinkBuffer<&[u8]>, NlError>> {
    let mut off = 0;
    let mut bad = false;
    std::iter::from_fn(move || {
        if bad || off + 16 > b.len() {
            return None;
        }
        match NetlinkBuffer::new_checked(&b[off..]) {
            Ok(m) if m.length() as usize >= 16 => {
                off += (m.length() as usize + 3) & !3;
                Some(Ok(m))
            }
            _ => {
                bad = true;
                Some(Err(NlError::Malformed))
            }
        }
    })
}

/// What a multicast subscription heard.
pub enum Heard<'a> {
    /// One message: its type and payload.
    Message(u16, &'a [u8]),
    /// The socket overran (ENOBUFS): messages were lost.
    Overrun,
    /// Nothing more is queued for now.
    RoundEnd,
}

/// Subscribe to multicast `groups` of `protocol` (receive buffer `rcvbuf`
/// when given) and call `on` with each message, each overrun and the end of
/// each round of reading, on a task of its own, until `on` returns false.
/// An overrun is reported once and what is still queued is read on; a
/// second error in a row ends the round (no spinning on a broken socket).
pub fn subscribe(
    protocol: isize,
    groups: &[u32],
    rcvbuf: Option<usize>,
    mut on: impl FnMut(Heard<'_>) -> bool + Send + 'static,
) -> Result<(), NlError> {
    let err = |source| NlError::Socket { protocol, source };
    let mut sock = Socket::new(protocol).map_err(err)?;
    sock.bind_auto().map_err(err)?;
    for g in groups {
        sock.add_membership(*g).map_err(err)?;
    }
    if let Some(n) = rcvbuf {
        let _ = sock.set_rx_buf_sz(n);
    }
    sock.set_non_blocking(true).map_err(err)?;
    // SAFETY: the socket owns its fd, which stays open for as long as the
    // AsyncFd (and with it the socket) lives.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(sock) }
        .map_err(|e| err(std::io::Error::from(e)))?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            let mut errored = false;
            loop {
                match guard.get_inner().recv(&mut &mut buf[..], 0) {
                    Ok(n) => {
                        errored = false;
                        for m in messages(&buf[..n]) {
                            let Ok(m) = m else { break };
                            if !on(Heard::Message(m.message_type(), m.payload())) {
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) if errored => break,
                    Err(_) => {
                        errored = true;
                        if !on(Heard::Overrun) {
                            return;
                        }
                    }
                }
            }
            guard.clear_ready();
            if !on(Heard::RoundEnd) {
                return;
            }
        }
    });
    Ok(())
}

/// Listen to multicast `groups` of `protocol`. Each time messages arrive
/// (or the socket overran, so some were lost), one tick is sent; ticks
/// that are not taken yet merge into one. The receiver re-reads what it
/// needs: the messages themselves are not decoded.
pub fn listen(protocol: isize, groups: &[u32]) -> Result<tokio::sync::mpsc::Receiver<()>, NlError> {
    use tokio::sync::mpsc::error::TrySendError;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut got = false;
    subscribe(protocol, groups, None, move |h| match h {
        Heard::RoundEnd => {
            !(std::mem::take(&mut got) && matches!(tx.try_send(()), Err(TrySendError::Closed(_))))
        }
        _ => {
            got = true;
            true
        }
    })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut b = Vec::new();
        put_attr(&mut b, 2, b"netdev\0");
        put_attr(&mut b, 1 | 0x8000, &7u32.to_ne_bytes());
        assert_eq!(b.len(), 12 + 8);
        let got: Vec<(u16, Vec<u8>)> = attrs(&b).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            got,
            vec![(2, b"netdev\0".to_vec()), (1, 7u32.to_ne_bytes().to_vec())]
        );
        assert_eq!(attr_str(&got[0].1), "netdev");
    }

    #[test]
    fn malformed_attributes_end_the_walk() {
        // A length that runs past the end, then a length below the header.
        assert_eq!(attrs(&[40, 0, 1, 0, 0, 0]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[]).count(), 0);
    }
}
