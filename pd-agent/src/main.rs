use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pd_agent::{
    agent::{self, Config, SavMode},
    binding::BindingView,
    control::{self, Request},
    route::DEFAULT_PROTO,
    state,
};

#[derive(Parser)]
#[command(name = "pd-agent", version, about = "Routes DHCPv6-delegated prefixes seen on the wire")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        /// Interface facing delegated clients (repeatable).
        #[arg(long, env = "PD_DOWNSTREAM", value_delimiter = ',')]
        downstream: Vec<String>,
        /// Interface facing the delegating server's side (repeatable).
        #[arg(long, env = "PD_UPSTREAM", value_delimiter = ',')]
        upstream: Vec<String>,
        /// bpffs directory for pinned maps.
        #[arg(long, env = "PD_PIN_DIR", default_value = "/sys/fs/bpf/pd-agent")]
        pin_dir: PathBuf,
        /// Directory of the binding store.
        #[arg(long, env = "PD_STATE_DIR", default_value = "/var/lib/pd-agent")]
        state_dir: PathBuf,
        /// Control socket path.
        #[arg(long, env = "PD_CONTROL", default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        /// Route protocol number tagging our routes (see README: rt_protos.d).
        #[arg(long, env = "PD_ROUTE_PROTO", default_value_t = DEFAULT_PROTO,
              value_parser = clap::value_parser!(u8).range(5..=254))]
        route_proto: u8,
        /// Executable run on every binding change (repeatable, run in order).
        #[arg(long = "hook", env = "PD_HOOKS", value_delimiter = ',')]
        hooks: Vec<PathBuf>,
        /// Seconds a hook may run before it is killed.
        #[arg(long, env = "PD_HOOK_TIMEOUT", default_value_t = 30)]
        hook_timeout: u64,
        /// Forward traffic to delegated prefixes in XDP (the kernel route stays the source of truth).
        #[arg(long, env = "PD_FAST_PATH", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
        fast_path: bool,
        /// Source-address validation on downstream interfaces.
        #[arg(long, env = "PD_SAV", value_enum, default_value = "on")]
        sav: SavMode,
        /// Per-interface source-address validation, IFACE=off|on|strict (repeatable).
        #[arg(long = "sav-iface", value_parser = parse_sav_iface)]
        sav_iface: Vec<(String, SavMode)>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// List bindings (from the running agent, else from the state directory).
    Bindings {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "PD_CONTROL", default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        #[arg(long, env = "PD_STATE_DIR", default_value = "/var/lib/pd-agent")]
        state_dir: PathBuf,
    },
    /// Kernel and agent counters from the running agent (JSON).
    Stats {
        #[arg(long, env = "PD_CONTROL", default_value = control::DEFAULT_PATH)]
        control: PathBuf,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("pd-agent: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            downstream,
            upstream,
            pin_dir,
            state_dir,
            control,
            route_proto,
            hooks,
            hook_timeout,
            fast_path,
            sav,
            sav_iface,
            log_json,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // Log lines are written by a thread of their own: one line per
            // binding change must not slow the event loop down.
            let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(std::io::stderr());
            let fmt = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            if log_json {
                fmt.json().init();
            } else {
                fmt.init();
            }
            let hook_timeout = std::time::Duration::from_secs(hook_timeout);
            agent::run(Config {
                downstream,
                upstream,
                pin_dir,
                state_dir,
                control,
                proto: route_proto,
                hooks,
                hook_timeout,
                fast_path,
                sav,
                sav_iface,
            })
            .await
        }
        Cmd::Bindings { json, control, state_dir } => {
            let list: Vec<BindingView> = match control::request(&control, &Request::Bindings).await {
                Ok(v) => serde_json::from_value(v).context("agent reply")?,
                Err(e) => {
                    eprintln!("pd-agent: no agent answers ({e}); showing the state store {}", state_dir.display());
                    state::load_dir(&state_dir)?
                        .into_iter()
                        .map(|binding| BindingView { binding, rx_packets: None, rx_bytes: None })
                        .collect()
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_table(&list);
            }
            Ok(())
        }
        Cmd::Stats { control } => {
            let v = control::request(&control, &Request::Stats).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {s}")),
    }
}

fn parse_sav_iface(s: &str) -> Result<(String, SavMode), String> {
    let (iface, mode) = s.split_once('=').ok_or_else(|| format!("expected IFACE=off|on|strict, got {s}"))?;
    let mode = <SavMode as clap::ValueEnum>::from_str(mode, true)?;
    Ok((iface.to_string(), mode))
}

fn print_table(list: &[BindingView]) {
    let now = agent::now();
    println!(
        "{:<28} {:<9} {:<10} {:<28} {:>10} {:>8} {:>10} {:>12}",
        "PREFIX", "KIND", "IFACE", "NEXT HOP", "IAID", "EXPIRES", "RX PKTS", "RX BYTES"
    );
    for v in list {
        let b = &v.binding;
        let exp = match b.expires_at {
            None => "never".to_string(),
            Some(t) => format!("{}s", t.saturating_sub(now)),
        };
        let kind = serde_json::to_value(b.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let n = |x: Option<u64>| x.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<28} {:<9} {:<10} {:<28} {:>10} {:>8} {:>10} {:>12}",
            b.prefix.to_string(),
            kind,
            b.iface,
            b.next_hop.to_string(),
            b.iaid,
            exp,
            n(v.rx_packets),
            n(v.rx_bytes)
        );
    }
}
