//! The control socket: a Unix stream socket (mode 0600) speaking one JSON
//! request line and one JSON reply per connection.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
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
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).await.map_err(io)?;
    let mut buf = String::new();
    BufReader::new(s).read_line(&mut buf).await.map_err(io)?;
    serde_json::from_str(&buf).map_err(|source| ControlError::Reply {
        path: path.into(),
        source,
    })
}
