//! Configuration: `pd-agent run` flags (with environment fallbacks) and the
//! TOML file given by `--config`. The file is parsed into "wire" structs
//! with `deny_unknown_fields` (so a typo is an error naming the key and
//! line), then merged with the flags into the checked runtime
//! [`Config`]: a flag given on the command line (or in the
//! environment) overrides the file; the file overrides the defaults.
//!
//! ```toml
//! pin_dir = "/sys/fs/bpf/pd-agent"
//! state_dir = "/var/lib/pd-agent"
//! control = "/run/pd-agent/control.sock"
//! route_proto = 57
//! route_metric = 1024        # our routes' slot; another protocol's there wins
//! fast_path = "auto"       # or "off", "bypass-firewall"
//! sav = "on"                 # default for downstream interfaces
//! hooks = ["/etc/pd-agent/hooks/nft-set.sh"]
//! hook_timeout = 30
//! log_json = false
//! allow = ["2001:db8::/32"]  # delegations outside are ignored and logged
//! max_bindings_per_iface = 4096
//! unreachable_route = true   # acquired prefixes routed unreachable (RFC 7084 WPD-5)
//!
//! [[interface]]
//! name = "lan0"
//! role = "downstream"
//! sav = "strict"             # per-interface override
//!
//! [[interface]]
//! name = "wan0"
//! role = "upstream"
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::Ipv6Net;
use serde::Deserialize;

use crate::{
    control,
    datapath::FastPathMode,
    relay::{
        IfaceOptions, RelayConfig, Server, DEFAULT_CLIENT_RATE, DEFAULT_IFACE_RATE, SERVER_PORT,
    },
    route::{DEFAULT_METRIC, DEFAULT_PROTO},
};

/// The agent's settings, resolved from flags and the config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub downstream: Vec<String>,
    pub upstream: Vec<String>,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub control: PathBuf,
    pub proto: u8,
    /// Metric of our routes (their slot: prefix, table, metric).
    pub route_metric: u32,
    pub hooks: Vec<PathBuf>,
    pub hook_timeout: Duration,
    /// Forward delegated prefixes in XDP.
    pub fast_path: FastPathMode,
    /// Source-address validation for downstream interfaces without an override.
    pub sav: SavMode,
    /// Per-interface overrides.
    pub sav_iface: Vec<(String, SavMode)>,
    /// Delegations must lie inside one of these (empty: anything).
    pub allow: Vec<Ipv6Net>,
    /// Most bindings one interface may hold.
    pub max_bindings_per_iface: Option<usize>,
    /// On SIGTERM/SIGINT remove every route and map entry the agent added
    /// (and the bindings), instead of keeping them for a seamless restart.
    pub flush_on_exit: bool,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// A Reply must answer a client message seen with its xid and Client-ID.
    pub require_client_message: bool,
    /// Route each acquired prefix `unreachable` (RFC 7084 WPD-5).
    pub unreachable_route: bool,
    /// Ring buffer bytes (None: the object's default).
    pub ring_bytes: Option<u32>,
    /// Entries of the kernel's per-client records (None: the default).
    pub client_records: Option<u32>,
    /// Entries of the forwarding counters (None: the default).
    pub forwarding_counters: Option<u32>,
    /// The kernel programs log why they passed on a DHCPv6 packet or a
    /// packet the fast path did not forward (aya-log; off: compiled out
    /// at load).
    pub kernel_debug: bool,
    /// Relay DHCPv6 between the downstream interfaces and these servers.
    pub relay: Option<RelayConfig>,
}

/// Source-address validation on a downstream interface (RFC 8987 §3.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SavMode {
    /// No validation.
    Off,
    /// Drop sources inside a prefix delegated on another interface.
    On,
    /// Also drop sources neither delegated nor on-link on this interface.
    Strict,
}

impl Config {
    /// The source-address validation of downstream interface `name`: its
    /// own setting (the last given), else the default.
    pub fn sav_of(&self, name: &str) -> SavMode {
        self.sav_iface
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, m)| *m)
            .unwrap_or(self.sav)
    }
}

impl SavMode {
    pub(crate) fn flags(self) -> u32 {
        match self {
            SavMode::Off => 0,
            SavMode::On => pd_common::ifflags::SAV,
            SavMode::Strict => pd_common::ifflags::SAV | pd_common::ifflags::SAV_STRICT,
        }
    }
}

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/pd-agent";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pd-agent";
pub const DEFAULT_HOOK_TIMEOUT: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Downstream,
    Upstream,
}

/// One `[[interface]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInterface {
    pub name: String,
    pub role: Role,
    /// Source-address validation (downstream only).
    pub sav: Option<SavMode>,
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<FileInterface>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub control: Option<PathBuf>,
    pub route_proto: Option<u8>,
    pub route_metric: Option<u32>,
    pub fast_path: Option<FastPathMode>,
    pub sav: Option<SavMode>,
    #[serde(default)]
    pub hooks: Vec<PathBuf>,
    pub hook_timeout: Option<u64>,
    pub log_json: Option<bool>,
    #[serde(default)]
    pub allow: Vec<ipnet::Ipv6Net>,
    pub max_bindings_per_iface: Option<usize>,
    pub flush_on_exit: Option<bool>,
    pub metrics: Option<std::net::SocketAddr>,
    pub require_client_message: Option<bool>,
    pub unreachable_route: Option<bool>,
    pub ring_buffer_bytes: Option<u32>,
    pub client_records: Option<u32>,
    pub forwarding_counters: Option<u32>,
    pub kernel_debug: Option<bool>,
    /// Servers to relay to, `ADDR` or `ADDR%IFACE`.
    #[serde(default)]
    pub relay_to: Vec<FileServer>,
    pub relay: Option<FileRelay>,
}

/// A `relay_to` entry, checked as `--relay-to` is.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct FileServer(pub Server);

impl TryFrom<String> for FileServer {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(FileServer)
    }
}

/// The `[relay]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRelay {
    /// Downstream interfaces on which lower relays' Relay-Forw are relayed.
    #[serde(default)]
    pub trust: Vec<String>,
    pub port: Option<u16>,
    /// Client messages per second per downstream interface (0: no limit).
    pub iface_rate: Option<u32>,
    /// Client messages per second per client MAC (0: no limit).
    pub client_rate: Option<u32>,
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<FileRelayIface>,
}

/// A `[[relay.interface]]` table: options added on one downstream interface.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRelayIface {
    pub name: String,
    /// Remote-ID (RFC 4649) as `ENTERPRISE:ID`; ID is text, or hex after `0x`.
    pub remote_id: Option<String>,
    /// Subscriber-ID (RFC 4580): text, or hex after `0x`.
    pub subscriber_id: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// `pd-agent run` flags. Every field is optional so that "not given" can
/// fall back to the file, then to the default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file (flags override it).
    #[arg(long, env = "PD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Interface facing delegated clients (repeatable).
    #[arg(long, env = "PD_DOWNSTREAM", value_delimiter = ',')]
    pub downstream: Vec<String>,
    /// Interface facing the delegating server's side (repeatable).
    #[arg(long, env = "PD_UPSTREAM", value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// bpffs directory for pinned maps [default: /sys/fs/bpf/pd-agent].
    #[arg(long, env = "PD_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory of the binding store [default: /var/lib/pd-agent].
    #[arg(long, env = "PD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Control socket path [default: /run/pd-agent/control.sock].
    #[arg(long, env = "PD_CONTROL")]
    pub control: Option<PathBuf>,
    /// Route protocol number tagging our routes [default: 57] (see README: rt_protos.d).
    #[arg(long, env = "PD_ROUTE_PROTO", value_parser = clap::value_parser!(u8).range(5..=254))]
    pub route_proto: Option<u8>,
    /// Metric of our routes [default: 1024, the kernel's]. A route of another protocol at
    /// the same prefix and metric is left alone and ours withheld; at another metric both
    /// stay and the kernel prefers the lower.
    #[arg(long, env = "PD_ROUTE_METRIC", value_parser = clap::value_parser!(u32).range(1..))]
    pub route_metric: Option<u32>,
    /// Executable run on every binding change (repeatable, run in order).
    #[arg(long = "hook", env = "PD_HOOKS", value_delimiter = ',')]
    pub hooks: Vec<PathBuf>,
    /// Seconds a hook may run before it is killed [default: 30].
    #[arg(long, env = "PD_HOOK_TIMEOUT")]
    pub hook_timeout: Option<u64>,
    /// Forward traffic to delegated prefixes in XDP: `auto` where the kernel would forward it
    /// the same way and no netfilter hook (firewall, conntrack) is on the forwarding path;
    /// `off`; or `bypass-firewall`, which forwards even past the firewall [default: auto].
    #[arg(long, env = "PD_FAST_PATH", value_parser = FastPathMode::parse)]
    pub fast_path: Option<FastPathMode>,
    /// Source-address validation on downstream interfaces [default: on].
    #[arg(long, env = "PD_SAV", value_enum)]
    pub sav: Option<SavMode>,
    /// Per-interface source-address validation, IFACE=off|on|strict (repeatable).
    #[arg(long = "sav-iface", value_parser = parse_sav_iface)]
    pub sav_iface: Vec<(String, SavMode)>,
    /// Only delegations inside this prefix count (repeatable; default: any).
    #[arg(long = "allow", env = "PD_ALLOW", value_delimiter = ',')]
    pub allow: Vec<ipnet::Ipv6Net>,
    /// Most bindings one interface may hold (RFC 8987 asks for a limit).
    #[arg(long, env = "PD_MAX_BINDINGS_PER_IFACE")]
    pub max_bindings_per_iface: Option<usize>,
    /// On stop, remove every route and map entry the agent added (default: keep them).
    #[arg(long, env = "PD_FLUSH_ON_EXIT", value_parser = on_off, num_args = 0..=1, default_missing_value = "on")]
    pub flush_on_exit: Option<bool>,
    /// A Reply counts only if it answers a client message (Request, Renew, Rebind, Solicit with
    /// Rapid Commit) seen with the same transaction id and Client-ID within 60 s [default: on].
    #[arg(long, env = "PD_REQUIRE_CLIENT_MESSAGE", value_parser = on_off)]
    pub require_client_message: Option<bool>,
    /// Route each prefix this router acquires upstream `unreachable` at our
    /// protocol and metric (RFC 7084 WPD-5): a destination inside it that
    /// no more specific route (the LAN's /64, what this router delegates)
    /// claims gets ICMPv6 Destination Unreachable instead of going back
    /// upstream, where it would loop until its hop limit ran out. Off for
    /// an operator who installs their own [default: on].
    #[arg(long, env = "PD_UNREACHABLE_ROUTE", value_parser = on_off)]
    pub unreachable_route: Option<bool>,
    /// Log from the kernel programs why a DHCPv6 packet produced no event and
    /// why the fast path passed a packet to the kernel (for debugging; costs
    /// nothing when off) [default: off].
    #[arg(long, env = "PD_KERNEL_DEBUG", value_parser = on_off, num_args = 0..=1, default_missing_value = "on")]
    pub kernel_debug: Option<bool>,
    /// Ring buffer size in bytes: a power of two, at least the page size [default: 2 MiB].
    #[arg(long, env = "PD_RING_BUFFER_BYTES", value_parser = ring_bytes)]
    pub ring_buffer_bytes: Option<u32>,
    /// Most clients' latest messages the kernel keeps for resynchronising
    /// after lost events (about 0.6 KiB each, taken as clients come; the
    /// agent deletes those it has applied and stored) [default: 65536].
    #[arg(long, env = "PD_CLIENT_RECORDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub client_records: Option<u32>,
    /// Bindings with forwarding counters (16 bytes per CPU each, allocated
    /// at start); bindings past it forward uncounted [default: 4096].
    #[arg(long, env = "PD_FORWARDING_COUNTERS", value_parser = clap::value_parser!(u32).range(1..))]
    pub forwarding_counters: Option<u32>,
    /// Serve Prometheus metrics on ADDR:PORT (GET /metrics), e.g. [::1]:9431.
    #[arg(long, env = "PD_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Relay DHCPv6 from the downstream interfaces to this server, ADDR or ADDR%IFACE
    /// (repeatable; a multicast address such as ff05::1:3 without %IFACE goes out of
    /// every upstream interface). pd-agent then is the relay: see the README.
    #[arg(long = "relay-to", env = "PD_RELAY_TO", value_delimiter = ',')]
    pub relay_to: Vec<Server>,
    /// Downstream interface on which lower relays are trusted: their Relay-Forw messages
    /// are relayed, not dropped (repeatable).
    #[arg(long = "relay-trust", env = "PD_RELAY_TRUST", value_delimiter = ',')]
    pub relay_trust: Vec<String>,
    /// UDP port the relay sends to the servers from and hears their replies on [default:
    /// 547]; another port adds the Relay Source Port option (RFC 8357). Clients and lower
    /// relays always reach it on 547.
    #[arg(long, env = "PD_RELAY_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub relay_port: Option<u16>,
    /// Client messages per second each downstream interface relays; more are dropped in
    /// XDP and counted (`relay_iface_rate`); bursts of twice as many pass; 0: no limit
    /// [default: 1000].
    #[arg(long, env = "PD_RELAY_IFACE_RATE", value_parser = clap::value_parser!(u32).range(0..=pd_common::RELAY_RATE_MAX as i64))]
    pub relay_iface_rate: Option<u32>,
    /// Client messages per second one client (source MAC) may send through the relay;
    /// more are dropped in XDP and counted (`relay_client_rate`); 0: no limit [default: 20].
    #[arg(long, env = "PD_RELAY_CLIENT_RATE", value_parser = clap::value_parser!(u32).range(0..=pd_common::RELAY_RATE_MAX as i64))]
    pub relay_client_rate: Option<u32>,
    /// Log as JSON lines.
    #[arg(long, env = "PD_LOG_JSON", value_parser = on_off, num_args = 0..=1, default_missing_value = "on")]
    pub log_json: Option<bool>,
}

pub fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {s}")),
    }
}

pub fn parse_sav_iface(s: &str) -> Result<(String, SavMode), String> {
    let (iface, mode) = s
        .split_once('=')
        .ok_or_else(|| format!("expected IFACE=off|on|strict, got {s}"))?;
    let mode = <SavMode as clap::ValueEnum>::from_str(mode, true)?;
    Ok((iface.to_string(), mode))
}

/// The resolved settings plus the logging choice (not part of the agent).
#[derive(Debug)]
pub struct Resolved {
    pub config: Config,
    pub log_json: bool,
}

/// Flags over file over defaults, then checked.
pub fn resolve(args: RunArgs, file: Option<FileConfig>) -> Result<Resolved, ConfigError> {
    let mut file = file.unwrap_or_default();
    let mut args = args;
    let (downstream, upstream, sav_iface) = interfaces(&mut args, &mut file)?;
    let relay = relay(&mut args, &mut file)?;
    let route_proto = args
        .route_proto
        .or(file.route_proto)
        .unwrap_or(DEFAULT_PROTO);
    if !(5..=254).contains(&route_proto) {
        return Err(ConfigError::Invalid(format!(
            "route_proto {route_proto}: use 5-254 (0-4 belong to the kernel)"
        )));
    }
    let hooks = if args.hooks.is_empty() {
        file.hooks
    } else {
        args.hooks
    };
    Ok(Resolved {
        config: Config {
            downstream,
            upstream,
            pin_dir: args
                .pin_dir
                .or(file.pin_dir)
                .unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            control: args
                .control
                .or(file.control)
                .unwrap_or_else(|| control::DEFAULT_PATH.into()),
            proto: route_proto,
            route_metric: match args.route_metric.or(file.route_metric) {
                Some(0) => {
                    return Err(ConfigError::Invalid(
                        "route_metric must be at least 1 (0 means the kernel's default, 1024)"
                            .into(),
                    ))
                }
                m => m.unwrap_or(DEFAULT_METRIC),
            },
            hooks,
            hook_timeout: Duration::from_secs(
                args.hook_timeout
                    .or(file.hook_timeout)
                    .unwrap_or(DEFAULT_HOOK_TIMEOUT),
            ),
            fast_path: args
                .fast_path
                .or(file.fast_path)
                .unwrap_or(FastPathMode::Auto),
            sav: args.sav.or(file.sav).unwrap_or(SavMode::On),
            sav_iface,
            allow: if args.allow.is_empty() {
                file.allow
            } else {
                args.allow
            },
            max_bindings_per_iface: args.max_bindings_per_iface.or(file.max_bindings_per_iface),
            flush_on_exit: args.flush_on_exit.or(file.flush_on_exit).unwrap_or(false),
            metrics: args.metrics.or(file.metrics),
            kernel_debug: args.kernel_debug.or(file.kernel_debug).unwrap_or(false),
            require_client_message: args
                .require_client_message
                .or(file.require_client_message)
                .unwrap_or(true),
            unreachable_route: args
                .unreachable_route
                .or(file.unreachable_route)
                .unwrap_or(true),
            ring_bytes: match args.ring_buffer_bytes.or(file.ring_buffer_bytes) {
                Some(n) => Some(ring_bytes(&n.to_string()).map_err(ConfigError::Invalid)?),
                None => None,
            },
            client_records: at_least_one(
                "client_records",
                args.client_records.or(file.client_records),
            )?,
            forwarding_counters: at_least_one(
                "forwarding_counters",
                args.forwarding_counters.or(file.forwarding_counters),
            )?,
            relay,
        },
        log_json: args.log_json.or(file.log_json).unwrap_or(false),
    })
}

/// The managed interfaces (downstream, upstream) and the per-interface
/// source validation, from the flags or else the file's `[[interface]]`
/// tables: each interface listed once, at least one, `sav` on downstream
/// ones only.
#[allow(clippy::type_complexity)]
fn interfaces(
    args: &mut RunArgs,
    file: &mut FileConfig,
) -> Result<(Vec<String>, Vec<String>, Vec<(String, SavMode)>), ConfigError> {
    let role = |r: Role| -> Vec<String> {
        file.interfaces
            .iter()
            .filter(|i| i.role == r)
            .map(|i| i.name.clone())
            .collect()
    };
    // Interface lists from the flags replace the file's as a whole.
    let (downstream, upstream) = if args.downstream.is_empty() && args.upstream.is_empty() {
        (role(Role::Downstream), role(Role::Upstream))
    } else {
        (
            std::mem::take(&mut args.downstream),
            std::mem::take(&mut args.upstream),
        )
    };
    if let Some(i) = file
        .interfaces
        .iter()
        .find(|i| i.sav.is_some() && i.role == Role::Upstream)
    {
        return Err(ConfigError::Invalid(format!(
            "interface {}: sav applies to downstream interfaces only",
            i.name
        )));
    }
    let mut sav_iface: Vec<(String, SavMode)> = file
        .interfaces
        .iter()
        .filter_map(|i| i.sav.map(|s| (i.name.clone(), s)))
        .collect();
    sav_iface.append(&mut args.sav_iface);
    let mut seen = std::collections::HashSet::new();
    if let Some(n) = downstream
        .iter()
        .chain(&upstream)
        .find(|n| !seen.insert(*n))
    {
        return Err(ConfigError::Invalid(format!(
            "interface {n} is listed twice (or as both downstream and upstream)"
        )));
    }
    if downstream.is_empty() && upstream.is_empty() {
        return Err(ConfigError::Invalid(
            "no interface: give --downstream/--upstream or [[interface]] tables".into(),
        ));
    }
    if let Some((n, _)) = sav_iface.iter().find(|(n, _)| !downstream.contains(n)) {
        return Err(ConfigError::Invalid(format!(
            "sav for {n}: not a downstream interface"
        )));
    }
    Ok((downstream, upstream, sav_iface))
}

/// The relay's settings, from `--relay-*` or the file's `relay_to` and
/// `[relay]`; none without a server to relay to.
fn relay(args: &mut RunArgs, file: &mut FileConfig) -> Result<Option<RelayConfig>, ConfigError> {
    let servers = if args.relay_to.is_empty() {
        file.relay_to.drain(..).map(|s| s.0).collect()
    } else {
        std::mem::take(&mut args.relay_to)
    };
    let table = file.relay.take().unwrap_or_default();
    if servers.is_empty() {
        if !args.relay_trust.is_empty()
            || args.relay_port.is_some()
            || args.relay_iface_rate.is_some()
            || args.relay_client_rate.is_some()
            || file_relay_set(&table)
        {
            return Err(ConfigError::Invalid(
                "relay settings without a server: give --relay-to (or relay_to)".into(),
            ));
        }
        return Ok(None);
    }
    let mut options = std::collections::BTreeMap::new();
    for i in table.interfaces {
        let o = IfaceOptions {
            remote_id: i
                .remote_id
                .map(|r| remote_id(&r).map_err(|e| bad_option(&i.name, "remote_id", e)))
                .transpose()?,
            subscriber_id: i
                .subscriber_id
                .map(|r| bytes(&r).map_err(|e| bad_option(&i.name, "subscriber_id", e)))
                .transpose()?,
        };
        if options.insert(i.name.clone(), o).is_some() {
            return Err(ConfigError::Invalid(format!(
                "[[relay.interface]] {} is listed twice",
                i.name
            )));
        }
    }
    Ok(Some(RelayConfig {
        servers,
        trust: if args.relay_trust.is_empty() {
            table.trust
        } else {
            std::mem::take(&mut args.relay_trust)
        },
        port: args.relay_port.or(table.port).unwrap_or(SERVER_PORT),
        options,
        iface_rate: rate(
            "iface_rate",
            args.relay_iface_rate.or(table.iface_rate),
            DEFAULT_IFACE_RATE,
        )?,
        client_rate: rate(
            "client_rate",
            args.relay_client_rate.or(table.client_rate),
            DEFAULT_CLIENT_RATE,
        )?,
    }))
}

/// A relay rate limit, at most [`pd_common::RELAY_RATE_MAX`].
fn rate(key: &str, v: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    match v.unwrap_or(default) {
        n if n > pd_common::RELAY_RATE_MAX => Err(ConfigError::Invalid(format!(
            "[relay] {key} {n}: at most {} (0: no limit)",
            pd_common::RELAY_RATE_MAX
        ))),
        n => Ok(n),
    }
}

fn file_relay_set(t: &FileRelay) -> bool {
    !t.trust.is_empty()
        || t.port.is_some()
        || t.iface_rate.is_some()
        || t.client_rate.is_some()
        || !t.interfaces.is_empty()
}

fn bad_option(iface: &str, key: &str, e: String) -> ConfigError {
    ConfigError::Invalid(format!("[[relay.interface]] {iface}: {key}: {e}"))
}

/// Text, or hex after `0x`; not empty.
fn bytes(s: &str) -> Result<Vec<u8>, String> {
    let b = match s.strip_prefix("0x") {
        Some(h) => hex::decode(h).map_err(|e| format!("{s:?}: {e}"))?,
        None => s.as_bytes().to_vec(),
    };
    if b.is_empty() || b.len() > 255 {
        return Err(format!("{s:?}: must hold 1 to 255 bytes"));
    }
    Ok(b)
}

/// `ENTERPRISE:ID` (RFC 4649: a 4-byte enterprise number, then the id).
fn remote_id(s: &str) -> Result<Vec<u8>, String> {
    let (ent, id) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected ENTERPRISE:ID"))?;
    let ent: u32 = ent
        .parse()
        .map_err(|e| format!("{s:?}: enterprise number: {e}"))?;
    let mut out = ent.to_be_bytes().to_vec();
    out.extend(bytes(id)?);
    Ok(out)
}

/// A size setting that must be at least 1 when given.
fn at_least_one(key: &str, v: Option<u32>) -> Result<Option<u32>, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::Invalid(format!("{key} must be at least 1"))),
        v => Ok(v),
    }
}

/// A ring buffer size the kernel accepts: a power-of-2 multiple of the page size.
fn ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|e| format!("ring buffer size {s:?}: {e}"))?;
    let page = crate::ebpf::page_size();
    if n < page || !n.is_power_of_two() {
        return Err(format!(
            "ring buffer size {n}: must be a power of two and at least the page size ({page})"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/config")
    }

    #[test]
    fn shipped_samples_load_and_resolve() {
        let mut n = 0;
        for e in std::fs::read_dir(samples()).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".toml") || name.starts_with("bad-") {
                continue;
            }
            let f = FileConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
            resolve(RunArgs::default(), Some(f)).unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
        assert!(n >= 2, "found {n} good samples");
    }

    #[test]
    fn router_sample_resolves_as_documented() {
        let f = FileConfig::load(&samples().join("pd-agent.toml")).unwrap();
        let r = resolve(RunArgs::default(), Some(f)).unwrap().config;
        assert_eq!(r.downstream, ["lan0", "lan1"]);
        assert_eq!(r.upstream, ["wan0"]);
        assert_eq!(r.sav_iface, [("lan1".to_string(), SavMode::Strict)]);
        assert_eq!(r.proto, 57);
        assert_eq!(r.hooks, [PathBuf::from("/etc/pd-agent/hooks/nft-set.sh")]);
        assert_eq!(r.hook_timeout, Duration::from_secs(20));
        assert_eq!(r.fast_path, FastPathMode::Auto);
        assert_eq!(
            r.allow,
            ["2001:db8::/32".parse::<ipnet::Ipv6Net>().unwrap()]
        );
        assert_eq!(r.max_bindings_per_iface, Some(4096));
        assert_eq!(r.metrics, Some("[::1]:9431".parse().unwrap()));
    }

    #[test]
    fn flags_override_the_file() {
        let f = FileConfig::load(&samples().join("pd-agent.toml")).unwrap();
        let args = RunArgs {
            downstream: vec!["lan9".into()],
            route_proto: Some(120),
            fast_path: Some(FastPathMode::Off),
            hooks: vec!["/bin/true".into()],
            ..Default::default()
        };
        let r = resolve(args, Some(f)).unwrap_err();
        // lan1's sav override from the file no longer names a downstream interface.
        assert!(r.to_string().contains("sav for lan1"), "{r}");
        let f =
            FileConfig::parse("[[interface]]\nname = \"lan0\"\nrole = \"downstream\"\n").unwrap();
        let args = RunArgs {
            route_proto: Some(120),
            fast_path: Some(FastPathMode::BypassFirewall),
            ..Default::default()
        };
        let r = resolve(args, Some(f)).unwrap().config;
        assert_eq!(
            (r.proto, r.fast_path, r.downstream.clone()),
            (120, FastPathMode::BypassFirewall, vec!["lan0".to_string()])
        );
    }

    #[test]
    fn unreachable_route_is_on_unless_turned_off() {
        let lan = "[[interface]]\nname = \"lan0\"\nrole = \"downstream\"\n";
        let on = |file: &str, flag: Option<bool>| {
            let args = RunArgs {
                unreachable_route: flag,
                ..Default::default()
            };
            let f = FileConfig::parse(&format!("{file}{lan}")).unwrap();
            resolve(args, Some(f)).unwrap().config.unreachable_route
        };
        assert!(on("", None));
        assert!(!on("unreachable_route = false\n", None));
        assert!(on("unreachable_route = false\n", Some(true)));
        assert!(!on("", Some(false)));
    }

    #[test]
    fn relay_sample_resolves_and_flags_override_it() {
        let f = || FileConfig::load(&samples().join("relay.toml")).unwrap();
        let r = resolve(RunArgs::default(), Some(f())).unwrap().config;
        let relay = r.relay.unwrap();
        assert_eq!(
            relay.servers,
            ["2001:db8:feed::2".parse::<Server>().unwrap()]
        );
        assert_eq!(relay.trust, ["lan1"]);
        assert_eq!(relay.port, 547);
        let lan0 = &relay.options["lan0"];
        let mut rid = 32473u32.to_be_bytes().to_vec();
        rid.extend(b"lan0-port1");
        assert_eq!(lan0.remote_id.as_deref(), Some(&rid[..]));
        assert_eq!(lan0.subscriber_id.as_deref(), Some(&b"customer-17"[..]));
        let args = RunArgs {
            relay_to: vec!["ff05::1:3".parse().unwrap()],
            relay_trust: vec!["lan0".into()],
            relay_port: Some(10547),
            ..Default::default()
        };
        let relay = resolve(args, Some(f())).unwrap().config.relay.unwrap();
        assert_eq!(
            (relay.servers[0].addr, relay.trust, relay.port),
            (
                "ff05::1:3".parse().unwrap(),
                vec!["lan0".to_string()],
                10547
            )
        );
        // No relay without a server; relay settings alone are an error.
        let plain = FileConfig::parse("[[interface]]\nname = \"lan0\"\nrole = \"downstream\"\n");
        assert!(resolve(RunArgs::default(), plain.clone().ok())
            .unwrap()
            .config
            .relay
            .is_none());
        let e = resolve(
            RunArgs {
                relay_trust: vec!["lan0".into()],
                ..Default::default()
            },
            plain.ok(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("without a server"), "{e}");
        assert_eq!(remote_id("9:0x0a0b").unwrap(), [0, 0, 0, 9, 10, 11]);
        assert!(bytes("").is_err() && bytes("0xzz").is_err());
    }

    /// Every `bad-*.toml` sample fails with an error naming its key and line,
    /// as written in its first line (`# error: ...`).
    #[test]
    fn bad_samples_name_the_key_and_line() {
        let mut n = 0;
        for e in std::fs::read_dir(samples()).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("bad-") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let want: Vec<&str> = text
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("# error:")
                .split('|')
                .map(str::trim)
                .collect();
            let err = match FileConfig::load(&p) {
                Err(e) => crate::chain(&e),
                Ok(f) => match resolve(RunArgs::default(), Some(f)) {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("{name} was accepted"),
                },
            };
            for w in want {
                assert!(err.contains(w), "{name}: error {err:?} lacks {w:?}");
            }
            n += 1;
        }
        assert!(n >= 4, "found {n} bad samples");
    }
}
