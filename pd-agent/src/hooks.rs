//! Hooks: executables run on every binding change, in order, each with a
//! timeout, on their own task so a slow or failing hook never holds up
//! routing. A hook learns what changed from its environment:
//!
//! `PD_EVENT` (acquired, delegated, renewed, released, expired, declined,
//! replaced), `PD_KIND` (acquired, delegated), `PD_PREFIX` (address),
//! `PD_PREFIX_LEN`, `PD_NEXT_HOP`, `PD_IFACE`, `PD_VALID_LIFETIME`,
//! `PD_PREFERRED_LIFETIME`, `PD_CLIENT_DUID` (hex), `PD_IAID`.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{process::Command, sync::mpsc};
use tracing::{info, warn};

use crate::binding::{Action, Binding, RemoveReason};

/// One change, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    pub event: &'static str,
    pub binding: Binding,
}

impl HookEvent {
    pub fn from_action(a: &Action) -> HookEvent {
        match a {
            Action::Install(b) => HookEvent {
                event: b.kind.as_str(),
                binding: b.clone(),
            },
            Action::Refresh(b) => HookEvent {
                event: "renewed",
                binding: b.clone(),
            },
            Action::Remove(b, why) => HookEvent {
                event: match why {
                    RemoveReason::Expired | RemoveReason::Withdrawn => "expired",
                    RemoveReason::Released | RemoveReason::Deleted => "released",
                    RemoveReason::Declined => "declined",
                    RemoveReason::Replaced => "replaced",
                },
                binding: b.clone(),
            },
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        let b = &self.binding;
        vec![
            ("PD_EVENT", self.event.to_string()),
            ("PD_KIND", b.kind.as_str().to_string()),
            ("PD_PREFIX", b.prefix.network().to_string()),
            ("PD_PREFIX_LEN", b.prefix.prefix_len().to_string()),
            ("PD_NEXT_HOP", b.next_hop.to_string()),
            ("PD_IFACE", b.iface.clone()),
            ("PD_VALID_LIFETIME", b.valid_lifetime.to_string()),
            ("PD_PREFERRED_LIFETIME", b.preferred_lifetime.to_string()),
            ("PD_CLIENT_DUID", hex::encode(&b.client_duid)),
            ("PD_IAID", b.iaid.to_string()),
        ]
    }
}

#[derive(Debug, Default, Serialize)]
pub struct HookStats {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
}

/// Queue of hook events served by one task (so hooks run in order).
#[derive(Clone)]
pub struct Hooks {
    tx: Option<mpsc::UnboundedSender<HookEvent>>,
    pub stats: Arc<HookStats>,
}

impl Hooks {
    pub fn start(paths: Vec<PathBuf>, timeout: Duration) -> Hooks {
        let stats = Arc::new(HookStats::default());
        if paths.is_empty() {
            return Hooks { tx: None, stats };
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<HookEvent>();
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                for p in &paths {
                    run_one(p, &ev, timeout, &st).await;
                }
            }
        });
        Hooks {
            tx: Some(tx),
            stats,
        }
    }

    pub fn send(&self, ev: HookEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(ev);
        }
    }
}

async fn run_one(path: &PathBuf, ev: &HookEvent, timeout: Duration, st: &HookStats) {
    st.runs.fetch_add(1, Ordering::Relaxed);
    let mut cmd = Command::new(path);
    for var in crate::systemd::ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(ev.env())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let prefix = ev.binding.prefix;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            st.failures.fetch_add(1, Ordering::Relaxed);
            warn!(hook = %path.display(), event = ev.event, %prefix, error = %crate::chain(&e), "hook could not start");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => {
            info!(hook = %path.display(), event = ev.event, %prefix, "hook ran")
        }
        Ok(Ok(s)) => {
            st.failures.fetch_add(1, Ordering::Relaxed);
            warn!(hook = %path.display(), event = ev.event, %prefix, status = %s, "hook failed");
        }
        Ok(Err(e)) => {
            st.failures.fetch_add(1, Ordering::Relaxed);
            warn!(hook = %path.display(), event = ev.event, %prefix, error = %crate::chain(&e), "hook failed");
        }
        Err(_) => {
            st.timeouts.fetch_add(1, Ordering::Relaxed);
            st.failures.fetch_add(1, Ordering::Relaxed);
            let _ = child.kill().await;
            warn!(hook = %path.display(), event = ev.event, %prefix, timeout_s = timeout.as_secs(), "hook timed out; killed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::Kind;

    fn binding(kind: Kind) -> Binding {
        Binding {
            prefix: "2001:db8:100::/56".parse().unwrap(),
            kind,
            iface: "lan0".into(),
            ifindex: 3,
            next_hop: "fe80::1".parse().unwrap(),
            client_duid: vec![0, 1, 0xab],
            iaid: 7,
            t1: 1,
            t2: 2,
            preferred_lifetime: 30,
            valid_lifetime: 60,
            expires_at: Some(100),
            updated_at: 40,
        }
    }

    #[test]
    fn events_are_named_as_documented() {
        let d = binding(Kind::Delegated);
        let a = binding(Kind::Acquired);
        let name = |x: Action| HookEvent::from_action(&x).event;
        assert_eq!(name(Action::Install(d.clone())), "delegated");
        assert_eq!(name(Action::Install(a.clone())), "acquired");
        assert_eq!(name(Action::Refresh(a)), "renewed");
        assert_eq!(
            name(Action::Remove(d.clone(), RemoveReason::Released)),
            "released"
        );
        assert_eq!(
            name(Action::Remove(d.clone(), RemoveReason::Expired)),
            "expired"
        );
        assert_eq!(
            name(Action::Remove(d.clone(), RemoveReason::Withdrawn)),
            "expired"
        );
        assert_eq!(
            name(Action::Remove(d.clone(), RemoveReason::Declined)),
            "declined"
        );
        assert_eq!(name(Action::Remove(d, RemoveReason::Replaced)), "replaced");
    }

    #[test]
    fn environment() {
        let env = HookEvent {
            event: "delegated",
            binding: binding(Kind::Delegated),
        }
        .env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("PD_PREFIX"), "2001:db8:100::");
        assert_eq!(get("PD_PREFIX_LEN"), "56");
        assert_eq!(get("PD_KIND"), "delegated");
        assert_eq!(get("PD_NEXT_HOP"), "fe80::1");
        assert_eq!(get("PD_IFACE"), "lan0");
        assert_eq!(get("PD_VALID_LIFETIME"), "60");
        assert_eq!(get("PD_PREFERRED_LIFETIME"), "30");
        assert_eq!(get("PD_CLIENT_DUID"), "0001ab");
        assert_eq!(get("PD_IAID"), "7");
    }

    #[tokio::test]
    async fn failing_and_hanging_hooks_are_counted_and_do_not_block() {
        let dir = std::env::temp_dir().join(format!("pd-hook-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fail = dir.join("fail.sh");
        let hang = dir.join("hang.sh");
        let ok = dir.join("ok.sh");
        let out = dir.join("out");
        std::fs::write(&fail, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::write(&hang, "#!/bin/sh\nsleep 30\n").unwrap();
        std::fs::write(
            &ok,
            format!(
                "#!/bin/sh\necho \"$PD_EVENT $PD_PREFIX/$PD_PREFIX_LEN\" >> {}\n",
                out.display()
            ),
        )
        .unwrap();
        for f in [&fail, &hang, &ok] {
            std::process::Command::new("chmod")
                .arg("+x")
                .arg(f)
                .status()
                .unwrap();
        }
        let hooks = Hooks::start(vec![fail, hang, ok], Duration::from_millis(300));
        let t = std::time::Instant::now();
        hooks.send(HookEvent {
            event: "delegated",
            binding: binding(Kind::Delegated),
        });
        hooks.send(HookEvent {
            event: "released",
            binding: binding(Kind::Delegated),
        });
        // send() returns at once: routing is never held up by hooks.
        assert!(t.elapsed() < Duration::from_millis(100));
        for _ in 0..100 {
            if hooks.stats.runs.load(Ordering::Relaxed) == 6
                && out.exists()
                && std::fs::read_to_string(&out).unwrap().lines().count() == 2
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "delegated 2001:db8:100::/56\nreleased 2001:db8:100::/56\n"
        );
        assert_eq!(hooks.stats.failures.load(Ordering::Relaxed), 4);
        assert_eq!(hooks.stats.timeouts.load(Ordering::Relaxed), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
