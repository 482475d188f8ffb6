//! The control socket: a Unix stream socket (mode 0600) speaking one JSON
//! request line and one JSON reply per connection.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{
    agent::Agent,
    binding::{Action, BindingView, Kind},
    datapath::{self, FastPathMode},
    route::Target,
};

pub const DEFAULT_PATH: &str = "/run/pd-agent/control.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Bindings,
    Stats,
    /// The bindings of one prefix.
    Show {
        prefix: ipnet::Ipv6Net,
    },
    /// Remove a prefix's bindings and routes on purpose (RFC 8987 §3.3).
    Delete {
        prefix: ipnet::Ipv6Net,
    },
    /// The Prometheus exposition text (as a JSON string).
    Metrics,
}

pub type Reply = serde_json::Value;
pub type Call = (Request, oneshot::Sender<Reply>);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: bad reply")]
    Reply {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Bind the socket and serve requests by forwarding them to the agent loop.
pub fn serve(path: &Path, calls: mpsc::Sender<Call>) -> Result<(), ControlError> {
    let io = |source| ControlError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, calls).await {
                    tracing::debug!(error = %crate::chain(&e), "control connection");
                }
            });
        }
    });
    Ok(())
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if calls.send((req, tx)).await.is_err() {
                return Ok(());
            }
            rx.await
                .unwrap_or(serde_json::json!({"error": "agent stopped"}))
        }
        Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await
}

/// Ask a running agent.
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    let io = |source| ControlError::Io {
        path: path.into(),
        source,
    };
    let mut s = UnixStream::connect(path).await.map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(e.into()))?;
    line.push(b'\n');
    s.write_all(&line).await.map_err(io)?;
    let mut buf = String::new();
    BufReader::new(s).read_line(&mut buf).await.map_err(io)?;
    serde_json::from_str(&buf).map_err(|source| ControlError::Reply {
        path: path.into(),
        source,
    })
}

/// The operator's views of the running agent.
impl Agent {
    /// Bindings as shown to operators (with forwarding counters), all or
    /// those of one prefix.
    pub(crate) fn views(&self, prefix: Option<Ipv6Net>) -> Vec<BindingView> {
        // Lease-clock times shown in wall-clock time as of now.
        let here = crate::clock::Anchor::now(&self.boot_id);
        self.table
            .iter()
            .filter(|b| prefix.is_none_or(|p| b.prefix == p))
            .map(|b| {
                let c = (b.kind == Kind::Delegated)
                    .then(|| self.map.counters(b.prefix))
                    .flatten();
                // What the kernel really holds: failed, conflict, missing,
                // else installed.
                let target = self.target_of(b);
                let status = target.map(|_| match self.retries.get(&b.prefix) {
                    Some(r) => format!(
                        "failed: {}, attempt {}, next in {}s",
                        r.error,
                        r.attempts,
                        r.at.saturating_duration_since(std::time::Instant::now())
                            .as_secs()
                    ),
                    None => self
                        .keeper
                        .status(b.prefix)
                        .unwrap_or_else(|| "installed".to_string()),
                });
                let mut binding = b.clone();
                binding.expires_at = b.expires_at.map(|t| here.to_unix(t));
                binding.updated_at = here.to_unix(b.updated_at);
                BindingView {
                    binding,
                    expires_in: b.expires_at.map(|t| t.saturating_sub(here.boot)),
                    rx_packets: c.map(|c| c.0),
                    rx_bytes: c.map(|c| c.1),
                    status,
                    route: (target == Some(Target::Unreachable)).then(|| "unreachable".to_string()),
                }
            })
            .collect()
    }

    /// Answer an operator's request (`delete` changes the table).
    pub(crate) async fn answer(&mut self, req: Request) -> Reply {
        match req {
            Request::Show { prefix } => {
                let views = self.views(Some(prefix.trunc()));
                if views.is_empty() {
                    serde_json::json!({"error": format!("no binding for {prefix}")})
                } else {
                    serde_json::to_value(views).unwrap_or_default()
                }
            }
            Request::Delete { prefix } => {
                let actions = self.table.delete_prefix(prefix.trunc());
                let deleted: Vec<String> = actions
                    .iter()
                    .map(|a| match a {
                        Action::Install(b) | Action::Refresh(b) | Action::Remove(b, _) => {
                            b.prefix.to_string()
                        }
                    })
                    .collect();
                self.apply(actions).await;
                if deleted.is_empty() {
                    serde_json::json!({"error": format!("no binding for {prefix}")})
                } else {
                    serde_json::json!({"deleted": deleted})
                }
            }
            Request::Metrics => serde_json::Value::String(self.scrape()),
            Request::Bindings => serde_json::to_value(self.views(None)).unwrap_or_default(),

            Request::Stats => {
                let kernel: serde_json::Map<String, serde_json::Value> = self
                    .counters
                    .read()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                serde_json::json!({
                    "kernel": kernel,
                    "agent": self.table.stats,
                    "bindings": self.table.len(),
                    "route_ops": self.metrics.route_ops.get(),
                    "route_errors": self.route_errors,
                    "hooks": &*self.hooks.stats,
                    "decode_errors": self.decode_errors,
                    // Messages given up because some of their ring buffer
                    // records never came (the replay may still apply them).
                    "incomplete_messages": self.asm.incomplete,
                    "resync": &self.resync,
                    "routes": {
                        "metric": self.routes.metric(),
                        "restored": self.keeper.stats.restored,
                        "conflicts": self.keeper.conflicts(),
                        "conflicts_seen": self.keeper.stats.conflicts_seen,
                        "missing": self.keeper.missing(),
                        "failing": self.retries.len(),
                        "scans": self.keeper.stats.scans,
                        "overruns": self.keeper.stats.overruns,
                    },
                    "ipv6_forwarding": crate::route::ipv6_forwarding(),
                    "programs": {
                        "xdp": self.progs.xdp_name(),
                        "tc": self.progs.tc_name(),
                        "fallbacks": self.progs.fallbacks.describe(),
                        "tcx": !self.progs.fallbacks.no_tcx,
                    },
                    "fast_path": self.fast_path_view(),
                    "relay": self.relay.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                })
            }
        }
    }

    /// The fast path as `stats` shows it.
    pub(crate) fn fast_path_view(&self) -> serde_json::Value {
        let st = &self.datapath.state;
        let mut ifs = serde_json::Map::new();
        for (idx, name) in self.managed() {
            let Some(kind) = self.link_kinds.get(&idx).copied() else {
                ifs.insert(
                    name,
                    serde_json::json!({"ifindex": idx, "link": "unsupported", "redirect_target": false}),
                );
                continue;
            };
            let target = if st.mode == FastPathMode::Off {
                Err("--fast-path off".to_string())
            } else {
                st.redirect_target(idx, kind)
            };
            let mut v = serde_json::json!({
                "ifindex": idx,
                "link": kind,
                "role": if self.ifaces.downstream.contains_key(&idx) { "downstream" } else { "upstream" },
                "redirect_target": target.is_ok(),
                "flags": self.written_flags.get(&idx).copied().unwrap_or(0),
            });
            if let Err(why) = target {
                v["why_not"] = why.into();
            }
            if let Some(f) = st.features.as_ref().and_then(|f| f.get(&idx)) {
                v["xdp_features"] = crate::xdp_features::describe(*f).into();
            }
            ifs.insert(name, v);
        }
        let fwd = st.forwarding();
        let mut v = serde_json::json!({
            "mode": st.mode.as_str(),
            "forwarding": fwd.is_ok(),
            "xdp_features_reported": st.features.is_some(),
            "interfaces": ifs,
        });
        if let Err(why) = fwd {
            v["reason"] = why.into();
        }
        if let datapath::Firewall::Hooks(h) = &st.firewall {
            v["netfilter_hooks"] = h.clone().into();
        }
        if let Some(how) = self.datapath.firewall_method() {
            v["netfilter_probe"] = how.into();
        }
        v
    }
}
