//! One delegation end to end: an agent and Kea on a router, dhclient on a
//! client, waiting until the prefix is both leased and routed.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    dhclient_prefix, start_dhclient, start_kea_subnet, wait_for, Agent, AgentOpts, Daemon,
    KeaSubnet, Netns, TempDir,
};

/// Wait until the dhclient whose lease file is in `cdir` holds a prefix
/// and `agent` has put it in its map; the prefix.
pub fn wait_delegated(agent: &Agent, cdir: &TempDir, dhclient: &Daemon) -> Result<String> {
    let prefix = wait_for(Duration::from_secs(60), || dhclient_prefix(cdir))
        .with_context(|| format!("dhclient got no prefix: {}", dhclient.log_text()))?;
    wait_for(Duration::from_secs(10), || {
        agent.map_prefixes().ok()?.contains(&prefix).then_some(())
    })
    .with_context(|| format!("{prefix} not routed: {}", agent.log()))?;
    Ok(prefix)
}

/// A prefix Kea on a router delegated (a /56 of a /48 pool) to dhclient on
/// a client, routed by the router's agent, with the first address of it on
/// the client's loopback (`host`).
pub struct Delegated {
    pub agent: Agent,
    pub kea: Daemon,
    pub dhclient: Daemon,
    pub cdir: TempDir,
    pub dir: TempDir,
    pub prefix: String,
    pub host: String,
}

/// Start an agent on `router` with `opts`, Kea there on `lan` (on-link
/// `subnet`, /56s out of `pool`/48) and dhclient on `client`'s `client_if`;
/// wait for the delegation.
pub fn delegate(
    router: &Netns,
    lan: &str,
    subnet: &str,
    pool: &str,
    client: &Netns,
    client_if: &str,
    opts: AgentOpts,
) -> Result<Delegated> {
    let dir = TempDir::new("dlg")?;
    let agent = Agent::start_opts(router, &dir, opts)?;
    let kea = start_kea_subnet(
        router,
        &dir,
        KeaSubnet {
            iface: lan,
            subnet,
            pool,
            pool_len: 48,
            plen: 56,
            relayed: false,
        },
        600,
    )?;
    let cdir = TempDir::new("dlgc")?;
    let dhclient = start_dhclient(client, &cdir, client_if)?;
    let prefix = wait_delegated(&agent, &cdir, &dhclient)?;
    let host = client.host_in(&prefix)?;
    Ok(Delegated {
        agent,
        kea,
        dhclient,
        cdir,
        dir,
        prefix,
        host,
    })
}
