//! The relay's UDP sockets and its task: one socket on port 547 (all
//! addresses), joined to All_DHCP_Relay_Agents_and_Servers on every
//! downstream interface, told each datagram's arrival interface
//! (IPV6_PKTINFO) and choosing each reply's interface the same way; and,
//! with `--relay-port N`, a second one on port N that sends the
//! Relay-Forw messages and receives the servers' Relay-Replies (RFC 8357).
//! Clients always find the relay on 547.

use std::{
    io::{IoSlice, IoSliceMut},
    net::{Ipv6Addr, SocketAddrV6},
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn6,
};
use pd_common::MacKey;
use tokio::io::Interest;
use tracing::{debug, info, warn};

use crate::ebpf::RelayMacs;

use super::{
    is_global, Link, Links, Out, Received, Relay, RelayConfig, Role, SharedStats,
    ALL_RELAYS_AND_SERVERS,
};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(
        "cannot relay: UDP port {port} is already taken{owner} (a DHCPv6 relay or server \
         runs on this host: stop it, or run pd-agent without --relay-to)"
    )]
    PortTaken { port: u16, owner: String },
    #[error("--relay-to {server}: {iface} is not an --upstream or --downstream interface")]
    UnknownIface { server: String, iface: String },
    #[error("--relay-trust {0}: not a --downstream interface")]
    TrustNotDownstream(String),
    #[error("relay options for {0}: not a --downstream interface")]
    OptionsNotDownstream(String),
    #[error("the relay needs at least one --downstream interface")]
    NoDownstream,
    #[error("relay socket: {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RelayError {
    let what = what.into();
    move |source| RelayError::Io { what, source }
}

/// A started relay: its counters (it runs on a thread of its own).
pub struct Running {
    pub stats: SharedStats,
}

/// The relay with its sockets bound and joined, not relaying yet: the
/// agent binds before it loads the programs (so a taken port fails the
/// start early) and starts relaying once they are attached (so no Reply
/// it relays goes out unseen).
pub struct Bound {
    sock: std::net::UdpSocket,
    up: Option<std::net::UdpSocket>,
    relay: Relay,
    downstream: Vec<String>,
    upstream: Vec<String>,
}

/// Check the settings against the interfaces and bind the sockets.
pub fn bind(
    cfg: RelayConfig,
    downstream: &[String],
    upstream: &[String],
) -> Result<Bound, RelayError> {
    check(&cfg, downstream, upstream)?;
    let sock = bind_port(super::SERVER_PORT)?;
    let up = match cfg.port {
        super::SERVER_PORT => None,
        p => Some(bind_port(p)?),
    };
    let links = read_links(downstream, upstream).map_err(io("reading interface addresses"))?;
    Ok(Bound {
        sock,
        up,
        relay: Relay { cfg, links },
        downstream: downstream.to_vec(),
        upstream: upstream.to_vec(),
    })
}

impl Bound {
    /// Start relaying, on a thread of its own with its own event loop: a
    /// relayed message must not wait for the agent's work (journal
    /// flushes, route programming, hooks), which bench row 11 showed
    /// adding tens of milliseconds under load when both shared one.
    /// `macs`: the clients' MACs the XDP program records (for the Client
    /// Link-Layer Address option).
    pub fn spawn(self, macs: Option<RelayMacs>) -> Result<Running, RelayError> {
        info!(
            port = self.relay.cfg.port,
            servers = %self.relay.cfg.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "relaying DHCPv6"
        );
        let stats = SharedStats::default();
        let shared = stats.clone();
        let run = move || -> Result<(), RelayError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io("starting the relay's event loop"))?;
            rt.block_on(async move {
                let mut task = Task {
                    sock: tokio::net::UdpSocket::from_std(self.sock).map_err(io("registering"))?,
                    up: match self.up {
                        Some(u) => {
                            Some(tokio::net::UdpSocket::from_std(u).map_err(io("registering"))?)
                        }
                        None => None,
                    },
                    relay: self.relay,
                    downstream: self.downstream,
                    upstream: self.upstream,
                    joined: Default::default(),
                    read_at: Instant::now(),
                    stats: shared,
                    macs,
                };
                task.join_groups();
                task.run().await
            })
        };
        std::thread::Builder::new()
            .name("pd-relay".into())
            .spawn(move || {
                if let Err(e) = run() {
                    warn!("the relay stopped: {}", crate::chain(&e));
                }
            })
            .map_err(io("starting the relay's thread"))?;
        Ok(Running { stats })
    }
}

fn check(cfg: &RelayConfig, downstream: &[String], upstream: &[String]) -> Result<(), RelayError> {
    if downstream.is_empty() {
        return Err(RelayError::NoDownstream);
    }
    for s in &cfg.servers {
        if let Some(i) = &s.iface {
            if !upstream.contains(i) && !downstream.contains(i) {
                return Err(RelayError::UnknownIface {
                    server: s.to_string(),
                    iface: i.clone(),
                });
            }
        }
    }
    if let Some(t) = cfg.trust.iter().find(|t| !downstream.contains(t)) {
        return Err(RelayError::TrustNotDownstream(t.clone()));
    }
    if let Some(t) = cfg.options.keys().find(|t| !downstream.contains(t)) {
        return Err(RelayError::OptionsNotDownstream(t.clone()));
    }
    Ok(())
}

/// The socket on `[::]:port`, or an error naming who holds the port.
fn bind_port(port: u16) -> Result<std::net::UdpSocket, RelayError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("creating the UDP socket"))?;
    s.set_only_v6(true).map_err(io("IPV6_V6ONLY"))?;
    s.set_nonblocking(true).map_err(io("O_NONBLOCK"))?;
    // All_DHCP_Servers (ff05::1:3) lies beyond this link.
    s.set_multicast_hops_v6(32)
        .map_err(io("IPV6_MULTICAST_HOPS"))?;
    s.set_multicast_loop_v6(false)
        .map_err(io("IPV6_MULTICAST_LOOP"))?;
    setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(|e| RelayError::Io {
        what: "IPV6_RECVPKTINFO".into(),
        source: e.into(),
    })?;
    let addr = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
    match s.bind(&addr.into()) {
        Ok(()) => Ok(s.into()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(RelayError::PortTaken {
            port,
            owner: port_owner(port)
                .map(|o| format!(" by {o}"))
                .unwrap_or_default(),
        }),
        Err(e) => Err(io(format!("binding [::]:{port}"))(e)),
    }
}

/// Who holds UDP port `port` in this namespace: "NAME (pid N)", from
/// `/proc/net/udp6` and the processes' descriptors.
pub fn port_owner(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/udp6").ok()?;
    let want = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1)?.ends_with(&want)).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect();
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = proc.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| t.as_os_str() == w.as_str()) {
                    let comm =
                        std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                    return Some(format!("{} (pid {pid})", comm.trim()));
                }
            }
        }
    }
    (!inodes.is_empty()).then(|| "another socket".to_string())
}

/// The managed interfaces now: ifindex, role and global addresses.
pub fn read_links(downstream: &[String], upstream: &[String]) -> std::io::Result<Links> {
    let mut links = Links::new();
    for a in nix::ifaddrs::getifaddrs()? {
        let role = if downstream.contains(&a.interface_name) {
            Role::Downstream
        } else if upstream.contains(&a.interface_name) {
            Role::Upstream
        } else {
            continue;
        };
        let Ok(idx) = nix::net::if_::if_nametoindex(a.interface_name.as_str()) else {
            continue;
        };
        let link = links.entry(idx).or_insert_with(|| Link {
            name: a.interface_name.clone(),
            role,
            globals: Vec::new(),
        });
        if let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in6())
            .map(|s| s.ip())
        {
            if is_global(ip) && !link.globals.contains(&ip) {
                link.globals.push(ip);
            }
        }
    }
    Ok(links)
}

/// How often the interfaces and their addresses are read again (and at
/// once when a packet comes from an interface not known yet).
const REREAD: Duration = Duration::from_secs(1);

struct Task {
    /// Port 547: clients and lower relays; everything unless `up`.
    sock: tokio::net::UdpSocket,
    /// `--relay-port`: towards the servers.
    up: Option<tokio::net::UdpSocket>,
    relay: Relay,
    downstream: Vec<String>,
    upstream: Vec<String>,
    /// Downstream ifindexes joined to ff02::1:2.
    joined: std::collections::HashSet<u32>,
    read_at: Instant,
    stats: SharedStats,
    macs: Option<RelayMacs>,
}

impl Task {
    async fn run(&mut self) -> Result<(), RelayError> {
        let mut buf = vec![0u8; 65_536];
        let mut up_buf = vec![0u8; 65_536];
        // The interfaces are read again every second whether packets come
        // or not: a recreated downstream interface must be joined to
        // ff02::1:2 before its clients' Solicits can arrive at all.
        let mut tick = tokio::time::interval(REREAD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        type Got = std::io::Result<Option<(usize, SocketAddrV6, u32)>>;
        enum Ev {
            Rx(Got),
            Up(Got),
            Tick,
        }
        loop {
            let fd = self.sock.as_raw_fd();
            let up = async {
                match &self.up {
                    Some(u) => {
                        let fd = u.as_raw_fd();
                        u.async_io(Interest::READABLE, || receive(fd, &mut up_buf))
                            .await
                    }
                    None => std::future::pending().await,
                }
            };
            let ev = tokio::select! {
                r = self.sock.async_io(Interest::READABLE, || receive(fd, &mut buf)) => Ev::Rx(r),
                r = up => Ev::Up(r),
                _ = tick.tick() => Ev::Tick,
            };
            let (got, buf) = match ev {
                Ev::Rx(r) => (r, &buf),
                Ev::Up(r) => (r, &up_buf),
                Ev::Tick => {
                    if self.read_at.elapsed() >= REREAD {
                        self.reread();
                    }
                    continue;
                }
            };
            let (len, src, ifindex) = match got {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    warn!("relay: receiving: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if !self.relay.links.contains_key(&ifindex) {
                self.reread();
            }
            // Only a client's message needs its MAC (option 79): no map
            // lookup for what the servers send.
            let downstream = self
                .relay
                .links
                .get(&ifindex)
                .is_some_and(|l| l.role == Role::Downstream);
            let mac = downstream
                .then(|| self.mac_of(ifindex, *src.ip()))
                .flatten();
            let rx = Received {
                payload: &buf[..len],
                src,
                ifindex,
                mac,
            };
            match self.relay.decide(rx) {
                Ok(outs) => {
                    for o in outs {
                        self.send(&o).await;
                    }
                }
                Err(why) => {
                    debug!(
                        reason = why.name(),
                        %src,
                        iface = self.relay.links.get(&ifindex).map(|l| l.name.as_str()).unwrap_or("?"),
                        "relay: dropped"
                    );
                    self.lock().dropped(why);
                }
            }
        }
    }

    /// The MAC the XDP program saw `addr` send from on `ifindex`.
    fn mac_of(&self, ifindex: u32, addr: Ipv6Addr) -> Option<[u8; 6]> {
        let key = MacKey {
            ifindex,
            addr: addr.octets(),
        };
        let m = self.macs.as_ref()?.get(&key, 0).ok()?;
        Some([m[0], m[1], m[2], m[3], m[4], m[5]])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, super::RelayStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, o: &Out) {
        let sock = match (&self.up, o.dir) {
            (Some(up), super::Dir::Up) => up,
            _ => &self.sock,
        };
        let fd = sock.as_raw_fd();
        let r = sock.async_io(Interest::WRITABLE, || transmit(fd, o)).await;
        let mut st = self.lock();
        match r {
            Ok(()) => st.relayed(o.dir, &o.iface, o.msg_type),
            Err(e) => {
                st.send_errors += 1;
                if st.send_errors.is_power_of_two() {
                    warn!(to = %o.to, iface = %o.iface, "relay: sending failed: {e} ({} so far)", st.send_errors);
                }
            }
        }
    }

    fn reread(&mut self) {
        self.read_at = Instant::now();
        match read_links(&self.downstream, &self.upstream) {
            Ok(l) => self.relay.links = l,
            Err(e) => warn!("relay: reading interface addresses: {e}"),
        }
        self.join_groups();
    }

    /// Join ff02::1:2 on downstream interfaces not joined yet (a
    /// recreated interface has a new index).
    fn join_groups(&mut self) {
        let sock = socket2::SockRef::from(&self.sock);
        for (idx, l) in &self.relay.links {
            if l.role == Role::Downstream && !self.joined.contains(idx) {
                match sock.join_multicast_v6(&ALL_RELAYS_AND_SERVERS, *idx) {
                    Ok(()) => {
                        self.joined.insert(*idx);
                    }
                    Err(e) => warn!(iface = %l.name, "relay: joining ff02::1:2: {e}"),
                }
            }
        }
        let live = &self.relay.links;
        self.joined.retain(|i| live.contains_key(i));
    }
}

/// One datagram: its length, source and arrival interface (`None` when it
/// carried no packet info or was cut short).
fn receive(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<(usize, SocketAddrV6, u32)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_TRUNC)?;
    let len = msg.bytes;
    let Some(src) = msg.address else {
        return Ok(None);
    };
    let mut ifindex = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv6PacketInfo(pi) = c {
            ifindex = Some(pi.ipi6_ifindex);
        }
    }
    if len > iov[0].len() {
        return Ok(None);
    }
    Ok(ifindex.map(|i| (len, SocketAddrV6::from(src), i)))
}

/// Send `o` out of its interface (IPV6_PKTINFO), from the relay's port.
fn transmit(fd: RawFd, o: &Out) -> std::io::Result<()> {
    let pi = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr { s6_addr: [0; 16] },
        ipi6_ifindex: o.ifindex,
    };
    let cmsgs: &[ControlMessage] = if o.ifindex != 0 {
        &[ControlMessage::Ipv6PacketInfo(&pi)]
    } else {
        &[]
    };
    let to = SockaddrIn6::from(o.to);
    sendmsg(
        fd,
        &[IoSlice::new(&o.payload)],
        cmsgs,
        MsgFlags::empty(),
        Some(&to),
    )?;
    Ok(())
}
