use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pd_agent::{
    agent,
    binding::BindingView,
    config::{self, FileConfig, Resolved, RunArgs},
    control::{self, Request},
    state,
};

#[derive(Parser)]
#[command(
    name = "pd-agent",
    version,
    about = "Routes DHCPv6-delegated prefixes seen on the wire"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run(Box<RunArgs>),
    /// List bindings (from the running agent, else from the state directory).
    Bindings {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "PD_CONTROL", default_value = control::DEFAULT_PATH)]
        control: PathBuf,
        #[arg(long, env = "PD_STATE_DIR", default_value = "/var/lib/pd-agent")]
        state_dir: PathBuf,
    },
    /// The bindings of one prefix (JSON).
    Show {
        prefix: ipnet::Ipv6Net,
        #[arg(long, env = "PD_CONTROL", default_value = control::DEFAULT_PATH)]
        control: PathBuf,
    },
    /// Remove a prefix's bindings, routes and map entries on purpose.
    Delete {
        prefix: ipnet::Ipv6Net,
        #[arg(long, env = "PD_CONTROL", default_value = control::DEFAULT_PATH)]
        control: PathBuf,
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
        Cmd::Run(args) => {
            let file = match &args.config {
                Some(p) => Some(FileConfig::load(p)?),
                None => None,
            };
            let Resolved { config, log_json } = config::resolve(*args, file)?;
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // Log lines are written by a thread of their own: one line per
            // binding change must not slow the event loop down. The
            // queue is bounded small (the default preallocates 4 MiB for
            // 128k lines); past it the loop waits for the writer.
            let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .buffered_lines_limit(4096)
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
            Ok(agent::run(config).await?)
        }
        Cmd::Bindings {
            json,
            control,
            state_dir,
        } => {
            let list: Vec<BindingView> = match control::request(&control, &Request::Bindings).await
            {
                Ok(v) => serde_json::from_value(v).context("agent reply")?,
                Err(e) => {
                    eprintln!(
                        "pd-agent: no agent answers ({e}); showing the state store {}",
                        state_dir.display()
                    );
                    state::load_dir(&state_dir)?
                        .into_iter()
                        .map(|binding| BindingView {
                            expires_in: binding
                                .expires_at
                                .map(|t| t.saturating_sub(pd_agent::clock::unix_now())),
                            binding,
                            rx_packets: None,
                            rx_bytes: None,
                            status: None,
                            route: None,
                        })
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
        Cmd::Show { prefix, control } => {
            reply(control::request(&control, &Request::Show { prefix }).await?)
        }
        Cmd::Delete { prefix, control } => {
            reply(control::request(&control, &Request::Delete { prefix }).await?)
        }
        Cmd::Stats { control } => {
            let v = control::request(&control, &Request::Stats).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}

/// Print an agent's reply; an `{"error": ...}` reply exits non-zero.
fn reply(v: serde_json::Value) -> Result<()> {
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{e}");
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn print_table(list: &[BindingView]) {
    println!(
        "{:<28} {:<9} {:<10} {:<28} {:>10} {:>8} {:>10} {:>12} {:<11}",
        "PREFIX", "KIND", "IFACE", "NEXT HOP", "IAID", "EXPIRES", "RX PKTS", "RX BYTES", "ROUTE"
    );
    for v in list {
        let b = &v.binding;
        let exp = match v.expires_in {
            None => "never".to_string(),
            Some(t) => format!("{t}s"),
        };
        let kind = serde_json::to_value(b.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let n = |x: Option<u64>| x.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        // "via" the next hop, "unreachable", or none (turned off, or
        // the state store's view).
        let route = v
            .route
            .as_deref()
            .or(v.status.as_ref().map(|_| "via"))
            .unwrap_or("-");
        println!(
            "{:<28} {:<9} {:<10} {:<28} {:>10} {:>8} {:>10} {:>12} {:<11}",
            b.prefix.to_string(),
            kind,
            b.iface,
            b.next_hop.to_string(),
            b.iaid,
            exp,
            n(v.rx_packets),
            n(v.rx_bytes),
            route
        );
    }
}
