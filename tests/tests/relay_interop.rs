//! pd-agent as the only DHCPv6 relay between real servers and real clients
//! from Debian's packages: ISC dhcpd to dhclient, dhcpcd and WIDE dhcp6c,
//! and Kea to dhclient across a `kill -9` of the relay in the middle of an
//! exchange. Each test in fresh namespaces; run with `cargo xtask test
//! relay` (which runs tests/tests/relay.rs's too).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pd_tests::*;

/// The client link `n` is 2001:db8:n::/64 (the router is ::1 on it), and
/// its clients get /56s out of 2001:db8:n00::/48.
fn link_subnet(n: u8) -> String {
    format!("2001:db8:{n}::/64")
}

/// A /56 as its first four 16-bit groups, if `prefix` is one in 2001:db8::/32.
fn slash56(prefix: &str) -> Option<[u16; 4]> {
    let (addr, len) = prefix.split_once('/')?;
    let s = addr.parse::<std::net::Ipv6Addr>().ok()?.segments();
    (len == "56" && s[..2] == [0x2001, 0xdb8] && s[3] & 0xff == 0 && s[4..] == [0; 4])
        .then(|| [s[0], s[1], s[2], s[3]])
}

/// Whether `prefix` is out of dhcpd's pool for link `n`,
/// 2001:db8:n00:: to 2001:db8:nff:: (see [`dhcpd_conf`]).
fn in_dhcpd_pool(prefix: &str, n: u8) -> bool {
    slash56(prefix).is_some_and(|s| s[2] >> 8 == n as u16 && s[3] == 0)
}

/// Whether `prefix` is out of Kea's pool for link `n`, 2001:db8:n00::/48
/// (see [`kea_per_link`]).
fn in_kea_pool(prefix: &str, n: u8) -> bool {
    slash56(prefix).is_some_and(|s| s[2] == n as u16 * 0x100)
}

/// ISC dhcpd -6 config: an empty subnet for its own link (dhcpd serves
/// nothing unless its interface's subnet is declared) and one per client
/// link, chosen by the relay's link-address.
fn dhcpd_conf(links: &[u8]) -> String {
    let mut c = String::from(
        "default-lease-time 600;\npreferred-lifetime 450;\nsubnet6 2001:db8:feed::/64 { }\n",
    );
    for n in links {
        c += &format!(
            "subnet6 {} {{ prefix6 2001:db8:{n}00:: 2001:db8:{n}ff:: /56; }}\n",
            link_subnet(*n)
        );
    }
    c
}

/// Traffic from `up` reaches an address inside `prefix` on `client`:
/// three echo requests sent, three counted on arrival.
fn reaches(up: &Netns, client: &Netns, prefix: &str) -> Result<()> {
    let host = client.host_in(prefix)?;
    count_echoes(client, &host)?;
    ping_n(up, &host, 3);
    let n = echo_count(client)?;
    if n != 3 {
        bail!("{n} of 3 echo requests reached {host} in {prefix}");
    }
    Ok(())
}

/// What holds UDP port 547 in `ns` (`ss` lines, empty when nothing does).
fn port_547(ns: &Netns) -> Result<String> {
    Ok(ns
        .exec(&["ss", "-lunpH", "sport = :547"])?
        .trim()
        .to_string())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Dhclient,
    Dhcpcd,
    Dhcp6c,
}

/// A client host on its own router link `lan{n-1}` (2001:db8:n::/64).
struct Client {
    kind: Kind,
    link: u8,
    iface: String,
    ns: Netns,
    dir: TempDir,
    daemon: Daemon,
}

impl Client {
    /// The host and its link; the client program starts with [`Client::run`].
    fn host(router: &Netns, link: u8) -> Result<(Netns, String)> {
        let iface = format!("lan{}", link - 1);
        let ns = host_behind(router, &iface, &format!("c{link}"))?;
        router.add_addr(&format!("2001:db8:{link}::1/64"), &iface)?;
        Ok((ns, iface))
    }

    fn run(kind: Kind, link: u8, ns: Netns, iface: String) -> Result<Client> {
        let dir = TempDir::new(&format!("c{link}d"))?;
        let daemon = match kind {
            Kind::Dhclient => start_dhclient(&ns, &dir, "eth0")?,
            Kind::Dhcpcd => start_dhcpcd_private(&ns, &dir, "eth0")?,
            Kind::Dhcp6c => start_dhcp6c(&ns, &dir, "eth0")?,
        };
        Ok(Client {
            kind,
            link,
            iface,
            ns,
            dir,
            daemon,
        })
    }

    /// The prefix the client says it holds.
    fn prefix(&self) -> Option<String> {
        match self.kind {
            Kind::Dhclient => dhclient_prefix(&self.dir),
            Kind::Dhcpcd => self
                .daemon
                .log_text()
                .lines()
                .filter_map(|l| l.split("delegated prefix ").nth(1))
                .next_back()
                .map(|p| p.trim().to_string()),
            Kind::Dhcp6c => dhcp6c_prefix(&self.daemon.log_text()),
        }
    }

    /// Release the prefix the way each client does it: `dhclient -r`,
    /// `dhcpcd -k`, SIGTERM to dhcp6c.
    fn release(&mut self) -> Result<()> {
        match self.kind {
            Kind::Dhclient => {
                self.daemon.stop();
                dhclient_release(&self.ns, &self.dir, "eth0")
            }
            Kind::Dhcpcd => dhcpcd_release_private(&self.daemon, &self.dir, "eth0"),
            Kind::Dhcp6c => {
                self.daemon.stop();
                let log = self.daemon.log_text();
                if !log.contains("send release") {
                    bail!("dhcp6c sent no Release on SIGTERM:\n{log}");
                }
                Ok(())
            }
        }
    }
}

/// ISC dhcpd beyond the router, pd-agent the only relay on it, each client
/// program on a link of its own:
///
/// ```text
///  server(dhcpd) eth0 -- wan0 router(pd-agent --relay-to) lan0 -- eth0 c1 (dhclient)
///                                                         lan1 -- eth0 c2 (dhcpcd)
///                                                         lan2 -- eth0 c3 (dhcp6c)
/// ```
///
/// Each client gets a /56 out of its link's pool (dhcpd chose the subnet
/// by the link-address the relay put in, as its log says), the router
/// routes it via the client's link-local address, the server's side
/// reaches an address inside it, and each client's own way of releasing
/// removes its route and leaves the others.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn dhcpd_remote_relayed_by_pd_agent_to_each_client() -> Result<()> {
    each_client(Server::Dhcpd)
}

/// [`dhcpd_remote_relayed_by_pd_agent_to_each_client`] with Kea as the
/// server (which picks the subnet by the same link-address): the other
/// column of the interoperability matrix.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn kea_remote_relayed_by_pd_agent_to_each_client() -> Result<()> {
    each_client(Server::Kea)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Server {
    Dhcpd,
    Kea,
}

fn each_client(server: Server) -> Result<()> {
    let (up, router) = upstream_and_router()?;
    let kinds = [(Kind::Dhclient, 1), (Kind::Dhcpcd, 2), (Kind::Dhcp6c, 3)];
    let mut hosts = Vec::new();
    for (kind, link) in kinds {
        hosts.push((kind, link, Client::host(&router, link)?));
    }
    let dir = TempDir::new("ix")?;
    let srv = match server {
        Server::Dhcpd => start_dhcpd(&up, &dir, "eth0", &dhcpd_conf(&[1, 2, 3]))?,
        Server::Kea => kea_per_link(&up, &dir, &[1, 2, 3])?,
    };
    let in_pool = |p: &str, n| match server {
        Server::Dhcpd => in_dhcpd_pool(p, n),
        Server::Kea => in_kea_pool(p, n),
    };
    let agent = Agent::start_opts(
        &router,
        &dir,
        AgentOpts {
            args: vec!["--relay-to".into(), SERVER.into()],
            ..AgentOpts::new(&["lan0", "lan1", "lan2"], &["wan0"])
        },
    )?;
    assert!(agent.log().contains("relaying DHCPv6"), "{}", agent.log());
    let mut clients = Vec::new();
    for (kind, link, (ns, iface)) in hosts {
        clients.push(Client::run(kind, link, ns, iface)?);
    }
    let logs = |c: &Client| {
        format!(
            "{:?}:\n{}\nagent:\n{}\n{server:?}:\n{}",
            c.kind,
            c.daemon.log_text(),
            agent.log(),
            srv.log_text()
        )
    };

    let mut prefixes = Vec::new();
    for c in &clients {
        let p = wait_for(Duration::from_secs(60), || c.prefix())
            .with_context(|| format!("no prefix\n{}", logs(c)))?;
        assert!(in_pool(&p, c.link), "{:?} got {p}\n{}", c.kind, logs(c));
        wait_route(&router, &p, &ll(&c.ns)?, &c.iface, || logs(c))?;
        reaches(&up, &c.ns, &p).with_context(|| format!("{:?}", c.kind))?;
        // dhcpd picked the subnet by the link-address pd-agent put in (Kea
        // logs no such line; the pool says it).
        let seen = format!(
            "Relay-forward message from 2001:db8:feed::1 port 547, link address 2001:db8:{}::1, peer address {}",
            c.link,
            ll(&c.ns)?
        );
        if server == Server::Dhcpd {
            assert!(srv.log_text().contains(&seen), "{seen}\n{}", logs(c));
        }
        prefixes.push(p);
    }

    let relay = &agent.stats()?["relay"];
    for c in &clients {
        let (u, d) = (&relay["up"][&c.iface], &relay["down"][&c.iface]);
        assert!(count(&u["solicit"]) >= 1, "{:?}: {relay}", c.kind);
        assert!(count(&d["reply"]) >= 1, "{:?}: {relay}", c.kind);
        // Kea answers a Solicit with Rapid Commit by a Reply at once.
        if server == Server::Dhcpd {
            assert!(count(&u["request"]) >= 1, "{:?}: {relay}", c.kind);
            assert!(count(&d["advertise"]) >= 1, "{:?}: {relay}", c.kind);
        }
    }
    assert!(
        relay["drops"].as_object().is_none_or(|d| d.is_empty()),
        "{relay}"
    );

    // Each client releases in turn: its route goes, the others' stay.
    for i in 0..clients.len() {
        let c = &mut clients[i];
        c.release()
            .with_context(|| format!("{:?} release", c.kind))?;
        let c = &clients[i];
        wait_no_route(&router, &prefixes[i], || logs(c))?;
        let up_rel = count(&agent.stats()?["relay"]["up"][&c.iface]["release"]);
        assert!(up_rel >= 1, "{:?}: no Release relayed", c.kind);
        let released = format!("releases prefix {}", prefixes[i]);
        assert!(
            server == Server::Kea || srv.log_text().contains(&released),
            "{released}\n{}",
            logs(c)
        );
        let routed: Vec<String> = our_routes(&router)?.into_iter().map(|r| r.0).collect();
        for p in &prefixes[i + 1..] {
            assert!(routed.contains(p), "{p} lost after {:?}'s release", c.kind);
        }
    }
    Ok(())
}

/// Kea's answers leaving its eth0 are dropped (and counted) while this
/// nftables table exists: the server seems slow, so the relay can be
/// killed between a relayed Solicit and its answer.
fn hold_server_answers(up: &Netns) -> Result<()> {
    let rules = "table inet pdhold {\n\
           counter held { }\n\
           chain out { type filter hook output priority 0; policy accept;\n\
             udp sport 547 counter name \"held\" drop\n\
           }\n\
         }\n";
    let f = std::env::temp_dir().join(unique("hold.nft"));
    std::fs::write(&f, rules)?;
    let r = up.exec(&["nft", "-f", &f.display().to_string()]);
    let _ = std::fs::remove_file(&f);
    r.map(drop)
}

fn held(up: &Netns) -> u64 {
    up.exec(&["nft", "-j", "list", "counter", "inet", "pdhold", "held"])
        .ok()
        .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
        .and_then(|v| {
            v["nftables"]
                .as_array()?
                .iter()
                .find_map(|o| o["counter"]["packets"].as_u64())
        })
        .unwrap_or(0)
}

/// Solicits dhclient has sent so far (its `-d` log).
fn solicits(dh: &Daemon) -> usize {
    dh.log_text().matches("XMT: Solicit").count()
}

/// Kea beyond the router, pd-agent the relay. The agent is killed with
/// SIGKILL in the middle of two clients' exchanges and started again with
/// the same pin and state directories:
///
/// ```text
///  server(Kea) eth0 -- wan0 router(pd-agent --relay-to) lan0 -- eth0 c1 (dhclient, Solicit relayed, answer lost)
///                                                       lan1 -- eth0 c2 (dhclient started while no relay runs)
/// ```
///
/// The first client's Solicit was relayed and Kea answered, but the answer
/// is held back until the relay is dead; the second client starts after
/// the kill. While no agent runs, port 547 is free and both clients'
/// retransmissions go unanswered. The restarted agent binds 547 again,
/// relays the retransmitted Solicits, and both clients get their prefixes,
/// routed via them and reachable from the server's side.
#[test]
#[ignore = "needs root; run with cargo xtask test"]
fn relay_kill9_mid_exchange_then_clients_retransmit() -> Result<()> {
    let (up, router) = upstream_and_router()?;
    let c1 = host_behind(&router, "lan0", "c1")?;
    let c2 = host_behind(&router, "lan1", "c2")?;
    router.add_addr("2001:db8:1::1/64", "lan0")?;
    router.add_addr("2001:db8:2::1/64", "lan1")?;
    let dir = TempDir::new("k9")?;
    let kea = kea_per_link(&up, &dir, &[1, 2])?;
    let opts = || AgentOpts {
        args: vec!["--relay-to".into(), SERVER.into()],
        ..AgentOpts::new(&["lan0", "lan1"], &["wan0"])
    };
    let agent = Agent::start_opts(&router, &dir, opts())?;
    assert!(port_547(&router)?.contains("pd-agent"), "547 not bound");
    hold_server_answers(&up)?;

    // Client 1's first Solicit is relayed and answered; the answer held.
    let (cd1, cd2) = (TempDir::new("k9c1")?, TempDir::new("k9c2")?);
    let dh1 = start_dhclient(&c1, &cd1, "eth0")?;
    wait_for(Duration::from_secs(20), || {
        let st = agent.stats().ok()?;
        (count(&st["relay"]["up"]["lan0"]["solicit"]) >= 1 && held(&up) >= 1).then_some(())
    })
    .with_context(|| {
        format!(
            "no Solicit relayed and answered: {:?}\n{}",
            agent.stats(),
            agent.log()
        )
    })?;
    let first_log = agent.log();
    let sent_before = solicits(&dh1);
    let pin_dir = agent.kill9_keeping_pins();
    assert_eq!(port_547(&router)?, "", "port 547 still bound after kill -9");

    // Client 2 starts with no relay running; both retransmit into nothing.
    let dh2 = start_dhclient(&c2, &cd2, "eth0")?;
    wait_for(Duration::from_secs(30), || {
        (solicits(&dh1) > sent_before && solicits(&dh2) >= 1).then_some(())
    })
    .with_context(|| {
        format!(
            "no Solicits while the relay was dead:\n{}\n{}",
            dh1.log_text(),
            dh2.log_text()
        )
    })?;
    up.exec(&["nft", "delete", "table", "inet", "pdhold"])?;
    assert_eq!(dhclient_prefix(&cd1), None, "a prefix without a relay");
    assert_eq!(dhclient_prefix(&cd2), None, "a prefix without a relay");

    let agent = Agent::start_opts(
        &router,
        &dir,
        AgentOpts {
            pin_dir: Some(pin_dir),
            ..opts()
        },
    )
    .with_context(|| format!("restart; first run's log:\n{first_log}"))?;
    let log = agent.log();
    assert!(log.contains("pinned link reused"), "{log}");
    assert!(log.contains("relaying DHCPv6"), "{log}");
    assert!(port_547(&router)?.contains("pd-agent"), "547 not rebound");

    let logs = || format!("agent:\n{}\nkea:\n{}", agent.log(), kea.log_text());
    for (n, c, cd, dh) in [(1, &c1, &cd1, &dh1), (2, &c2, &cd2, &dh2)] {
        let p = wait_delegated(&agent, cd, dh).with_context(logs)?;
        assert!(in_kea_pool(&p, n), "client {n} got {p}");
        wait_route(&router, &p, &ll(c)?, &format!("lan{}", n - 1), logs)?;
        reaches(&up, c, &p).with_context(|| format!("client {n}"))?;
    }
    // The restarted relay carried the whole exchanges.
    let relay = &agent.stats()?["relay"];
    for iface in ["lan0", "lan1"] {
        assert!(count(&relay["up"][iface]["solicit"]) >= 1, "{relay}");
        assert!(count(&relay["up"][iface]["request"]) >= 1, "{relay}");
        assert!(count(&relay["down"][iface]["reply"]) >= 1, "{relay}");
    }
    assert!(
        relay["drops"].as_object().is_none_or(|d| d.is_empty()),
        "{relay}"
    );
    Ok(())
}
