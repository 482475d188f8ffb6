//! Prometheus metrics (`--metrics ADDR:PORT`, `GET /metrics`), encoded by
//! the `prometheus-client` crate in the OpenMetrics text format.
//!
//! Counters the agent owns (binding events, route-operation latency) are
//! updated as things happen; values that live elsewhere (kernel counters,
//! the binding table, hook and forwarding counters) are copied in when a
//! scrape asks, by the event loop that owns them.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::{
    binding::Kind,
    control::{Call, Request},
    datapath::FastPathMode,
};

type Labels = Vec<(String, String)>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub bindings: Family<Labels, Gauge>,
    pub events: Family<Labels, Counter>,
    pub kernel: Family<Labels, Counter>,
    pub agent: Family<Labels, Counter>,
    pub ringbuf_drops: Counter,
    pub route_op_seconds: Histogram,
    pub route_ops: Counter,
    pub route_errors: Counter,
    pub routes_restored: Counter,
    pub route_conflicts: Gauge,
    pub hook_runs: Counter,
    pub hook_failures: Counter,
    pub forwarded_packets: Family<Labels, Counter>,
    pub forwarded_bytes: Family<Labels, Counter>,
    pub fast_path_forwarding: Family<Labels, Gauge>,
    pub fast_path_redirect_target: Family<Labels, Gauge>,
    pub relayed: Family<Labels, Counter>,
    pub relay_drops: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("pd");
        let mut m = Metrics {
            registry: Arc::default(),
            bindings: Family::default(),
            events: Family::default(),
            kernel: Family::default(),
            agent: Family::default(),
            ringbuf_drops: Counter::default(),
            // 10 us .. ~1.3 s
            route_op_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 18),
            ),
            route_ops: Counter::default(),
            route_errors: Counter::default(),
            routes_restored: Counter::default(),
            route_conflicts: Gauge::default(),
            hook_runs: Counter::default(),
            hook_failures: Counter::default(),
            forwarded_packets: Family::default(),
            forwarded_bytes: Family::default(),
            fast_path_forwarding: Family::default(),
            fast_path_redirect_target: Family::default(),
            relayed: Family::default(),
            relay_drops: Family::default(),
        };
        r.register(
            "bindings",
            "Bindings by interface and kind",
            m.bindings.clone(),
        );
        r.register(
            "binding_events",
            "Binding changes by event",
            m.events.clone(),
        );
        r.register(
            "kernel_packets",
            "Kernel program outcomes by reason (seen, parsed, rejects, forwarding)",
            m.kernel.clone(),
        );
        r.register(
            "agent_messages",
            "DHCPv6 messages the binding table saw, by what became of them",
            m.agent.clone(),
        );
        r.register(
            "ringbuf_drops",
            "Events lost because the ring buffer was full",
            m.ringbuf_drops.clone(),
        );
        r.register(
            "route_op_seconds",
            "Latency of one netlink route operation",
            m.route_op_seconds.clone(),
        );
        r.register("route_ops", "Netlink route operations", m.route_ops.clone());
        r.register(
            "route_errors",
            "Failed netlink route operations",
            m.route_errors.clone(),
        );
        r.register(
            "routes_restored",
            "Routes of ours put back after someone else removed or replaced them",
            m.routes_restored.clone(),
        );
        r.register(
            "route_conflicts",
            "Delegated prefixes for which another protocol also has a route",
            m.route_conflicts.clone(),
        );
        r.register("hook_runs", "Hook executions", m.hook_runs.clone());
        r.register(
            "hook_failures",
            "Hooks that failed or timed out",
            m.hook_failures.clone(),
        );
        r.register(
            "forwarded_packets",
            "Packets forwarded by the XDP fast path, by interface",
            m.forwarded_packets.clone(),
        );
        r.register(
            "forwarded_bytes",
            "Bytes forwarded by the XDP fast path, by interface",
            m.forwarded_bytes.clone(),
        );
        r.register(
            "fast_path_forwarding",
            "1 while the XDP fast path may forward delegated traffic; 0 while the kernel forwards it all \
             (labels: mode, and reason: firewall, hooks_unknown, off)",
            m.fast_path_forwarding.clone(),
        );
        r.register(
            "fast_path_redirect_target",
            "1 for a downstream interface the fast path may redirect into (its xdp-features take redirects)",
            m.fast_path_redirect_target.clone(),
        );
        r.register(
            "relayed_messages",
            "DHCPv6 messages relayed (labels: direction up or down, iface, type)",
            m.relayed.clone(),
        );
        r.register(
            "relay_drops",
            "Packets the relay dropped, by reason",
            m.relay_drops.clone(),
        );
        m.registry = Arc::new(r);
        m
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }

    pub fn observe_route_op(&self, d: Duration) {
        self.route_op_seconds.observe(d.as_secs_f64());
        self.route_ops.inc();
    }

    /// Set a counter to a value kept elsewhere (monotonic at the source).
    pub fn set(c: &Counter, v: u64) {
        c.inner().store(v, Ordering::Relaxed);
    }

    pub fn label(k: &str, v: &str) -> Labels {
        vec![(k.to_string(), v.to_string())]
    }
}

/// Serve `GET /metrics` on `addr`; each scrape asks the event loop.
pub async fn serve(addr: SocketAddr, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) =
                    if req.starts_with("GET /metrics ") || req.starts_with("GET / ") {
                        let (tx, rx) = oneshot::channel();
                        let _ = calls.send((Request::Metrics, tx)).await;
                        match rx.await {
                            Ok(serde_json::Value::String(text)) => ("200 OK", text),
                            _ => (
                                "503 Service Unavailable",
                                "agent not answering\n".to_string(),
                            ),
                        }
                    } else {
                        ("404 Not Found", "try /metrics\n".to_string())
                    };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(())
}

impl crate::agent::Agent {
    /// Copy the values that live elsewhere into the registry, encode it.
    pub(crate) fn scrape(&self) -> String {
        let m = &self.metrics;
        m.bindings.clear();
        m.forwarded_packets.clear();
        m.forwarded_bytes.clear();
        let mut fwd: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for b in self.table.iter() {
            m.bindings
                .get_or_create(&vec![
                    ("iface".into(), b.iface.clone()),
                    ("kind".into(), b.kind.as_str().into()),
                ])
                .inc();
            if b.kind == Kind::Delegated {
                let e = fwd.entry(b.iface.as_str()).or_default();
                if let Some((p, by)) = self.map.counters(b.prefix) {
                    e.0 += p;
                    e.1 += by;
                }
            }
        }
        for (iface, (p, by)) in fwd {
            Metrics::set(
                &m.forwarded_packets
                    .get_or_create(&Metrics::label("iface", iface)),
                p,
            );
            Metrics::set(
                &m.forwarded_bytes
                    .get_or_create(&Metrics::label("iface", iface)),
                by,
            );
        }
        let st = &self.datapath.state;
        m.fast_path_forwarding.clear();
        m.fast_path_forwarding
            .get_or_create(&vec![
                ("mode".into(), st.mode.as_str().into()),
                ("reason".into(), st.forwarding_reason().into()),
            ])
            .set(st.forwarding().is_ok() as i64);
        m.fast_path_redirect_target.clear();
        for (idx, name) in self.managed() {
            if let (Some(kind), true) = (
                self.link_kinds.get(&idx),
                self.ifaces.downstream.contains_key(&idx),
            ) {
                let yes = st.mode != FastPathMode::Off && st.redirect_target(idx, *kind).is_ok();
                m.fast_path_redirect_target
                    .get_or_create(&Metrics::label("iface", &name))
                    .set(yes as i64);
            }
        }
        for (name, v) in self.counters.read() {
            Metrics::set(&m.kernel.get_or_create(&Metrics::label("outcome", name)), v);
            if name == pd_common::Counter::RingbufFull.name() {
                Metrics::set(&m.ringbuf_drops, v);
            }
        }
        if let Ok(serde_json::Value::Object(st)) = serde_json::to_value(&self.table.stats) {
            for (k, v) in st {
                Metrics::set(
                    &m.agent.get_or_create(&Metrics::label("outcome", &k)),
                    v.as_u64().unwrap_or(0),
                );
            }
        }
        if let Some(relay) = &self.relay {
            let st = relay.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (dir, by_iface) in [("up", &st.up), ("down", &st.down)] {
                for (iface, by_type) in by_iface {
                    for (t, n) in by_type {
                        Metrics::set(
                            &m.relayed.get_or_create(&vec![
                                ("direction".into(), dir.into()),
                                ("iface".into(), iface.clone()),
                                ("type".into(), (*t).into()),
                            ]),
                            *n,
                        );
                    }
                }
            }
            for (why, n) in &st.drops {
                Metrics::set(
                    &m.relay_drops.get_or_create(&Metrics::label("reason", why)),
                    *n,
                );
            }
        }
        Metrics::set(&m.route_errors, self.route_errors);
        Metrics::set(&m.routes_restored, self.keeper.stats.restored);
        m.route_conflicts.set(self.keeper.conflicts() as i64);
        Metrics::set(
            &m.hook_runs,
            self.hooks
                .stats
                .runs
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        Metrics::set(
            &m.hook_failures,
            self.hooks
                .stats
                .failures
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        m.encode()
    }
}
