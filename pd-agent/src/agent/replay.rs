//! Messages from the kernel: the ring buffer, and, when messages were lost
//! or no agent ran, the kernel's per-client records (`pd_clients_v1`),
//! replayed in the order the kernel saw them.

use std::{collections::HashSet, time::Duration};

use aya::maps::{MapData, RingBuf};
use pd_common::{ClientKey, ClientRecord, Counter};
use tracing::{info, warn};

use super::Agent;
use crate::{
    binding::Refusal,
    clock::now,
    resync::{self, Seen},
    snoop::{self, Message},
};

/// Lost-event recovery, as shown by `stats`.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ResyncStats {
    /// Resynchronisations from `pd_clients_v1` (one at start, then one
    /// after each detected loss, at most once a second).
    runs: u64,
    /// Messages replayed from the kernel's records.
    replayed: u64,
    /// Replies from the ring buffer that answered no client message seen
    /// while messages were known lost: left for the replay, which applies
    /// their records after the client messages that came before them.
    deferred: u64,
    /// Messages known lost whose records had been superseded or evicted.
    given_up: u64,
    /// Ring buffer messages skipped because a replay had applied them.
    duplicates: u64,
    /// Records deleted from `pd_clients_v1` because the store covers them.
    pruned: u64,
}

/// How often the kernel's records the store covers are deleted
/// (`PD_AGENT_PRUNE_SECS` overrides it, for tests).
pub(super) const PRUNE: Duration = Duration::from_secs(60);

/// How long before the store's seen mark a record is kept: the second the
/// catch-up and the resync look back across CPUs, the client-message
/// window the catch-up replays, and a minute of slack
/// (`PD_AGENT_RECORD_KEEP_SECS` overrides it, for tests).
const RECORD_KEEP_SECS: u64 = 1 + crate::binding::CLIENT_MESSAGE_WINDOW_SECS + 60;

/// A duration in seconds from the environment, else `default`.
pub(super) fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Records older than this (kernel ns) may go, given the store's mark.
fn prune_cutoff(journaled_ns: u64, keep_secs: u64) -> u64 {
    journaled_ns.saturating_sub(keep_secs.saturating_mul(1_000_000_000))
}

/// When a message's time is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timing {
    /// Now (live ring buffer messages).
    Now,
    /// When the kernel stamped it (backlog, replays).
    Kernel,
}

/// Is `seq` at or below its CPU's counter in `snap`?
fn settled(snap: &[u64], seq: u64) -> bool {
    let (cpu, n) = resync::split(seq);
    snap.get(cpu as usize).is_some_and(|&hw| n <= hw)
}

/// A second of margin below the store's seen mark: across CPUs, the
/// kernel's stamps are not in ring order.
const MARGIN_NS: u64 = 1_000_000_000;

/// Is a record stamped `ts_ns` possibly one no agent applied, given the
/// store's seen mark `floor_ns` (0: none)?
fn after_mark(ts_ns: u64, floor_ns: u64) -> bool {
    ts_ns > floor_ns.saturating_sub(MARGIN_NS)
}

/// Does the catch-up at start replay a record of `class` stamped `ts_ns`?
/// Those after the mark; and client messages a Reply after the mark may
/// answer, up to the client-message window before it (harmless if an
/// earlier agent applied them).
fn replayed_at_start(class: u8, ts_ns: u64, floor_ns: u64) -> bool {
    let window = crate::binding::CLIENT_MESSAGE_WINDOW_SECS * 1_000_000_000;
    after_mark(ts_ns, floor_ns)
        || (class == pd_common::class::CLIENT
            && ts_ns > floor_ns.saturating_sub(MARGIN_NS).saturating_sub(window))
}

impl Agent {
    /// Everything the ring buffer holds now, as whole messages.
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Vec<Message> {
        let mut msgs = Vec::new();
        while let Some(item) = ring.next() {
            match snoop::decode(&item) {
                Ok(ev) => msgs.extend(self.asm.push(&ev)),
                Err(e) => {
                    self.decode_errors += 1;
                    warn!(error = %crate::chain(&e), "bad ring buffer record");
                }
            }
        }
        msgs
    }

    /// Apply messages from the ring buffer or replayed from the kernel's
    /// records. Messages this agent already applied are skipped, except
    /// during the catch-up at start (`settled`: the kernel's counters read
    /// before draining), whose caller removed duplicates itself.
    ///
    /// While messages are known lost, a Reply from the ring buffer that
    /// answers no client message seen is not refused: its client message
    /// may be among the lost. It is marked unseen again, so the replay
    /// applies its record in the kernel's order, after that client message.
    pub(super) async fn ingest(
        &mut self,
        msgs: Vec<Message>,
        timing: Timing,
        settled_upto: Option<&[u64]>,
    ) -> usize {
        let mut fresh = Vec::with_capacity(msgs.len());
        for m in msgs {
            // A record holding only some of a message's prefixes does not
            // settle it: the whole message may still come from the ring.
            let partial = m.from_record && m.flags & pd_common::flags::PREFIXES_DROPPED != 0;
            let new = if settled_upto.is_some_and(|snap| settled(snap, m.seq)) {
                true
            } else if partial {
                self.tracker.is_new(m.seq)
            } else {
                self.tracker.observe(m.seq) == Seen::New
            };
            if new {
                fresh.push(m);
            } else {
                self.resync.duplicates += 1;
            }
        }
        if fresh.is_empty() {
            return 0;
        }
        if fresh.iter().any(|m| self.needs_addresses(m)) {
            self.refresh_addresses().await;
        }
        let defer = settled_upto.is_none() && self.lost_events();
        let at = now();
        let mut actions = Vec::new();
        for m in &fresh {
            tracing::debug!(?m, "message");
            let t = match timing {
                Timing::Now => at,
                Timing::Kernel => crate::clock::of_kernel(m.ts_ns),
            };
            self.seen_ns = self.seen_ns.max(m.ts_ns);
            let out = self
                .table
                .handle(m, &self.ifaces, t, defer && !m.from_record);
            if out.deferred {
                self.tracker.unobserve(m.seq);
                self.resync.deferred += 1;
                continue;
            }
            self.log_refusals(m, &out.refusals);
            actions.extend(out.actions);
        }
        self.apply(actions).await;
        fresh.len()
    }

    fn log_refusals(&self, m: &Message, refusals: &[Refusal]) {
        for r in refusals {
            let iface = self.ifaces.name(m.ifindex);
            warn!(prefix = %r.prefix, iface = iface.map(String::as_str).unwrap_or("?"), next_hop = %m.dst, reason = r.reason, "delegation ignored");
        }
    }

    /// The records in `pd_clients_v1` that `keep` accepts, in the order
    /// the kernel saw them (one per message).
    pub(super) fn records(&self, keep: impl Fn(&ClientKey, &ClientRecord) -> bool) -> Vec<Message> {
        let mut recs: Vec<ClientRecord> = self
            .client_records()
            .filter(|(k, r)| keep(k, r))
            .map(|(_, r)| r)
            .collect();
        recs.sort_by_key(|r| (r.ev.ts_ns, r.ev.seq));
        let mut seen = HashSet::new();
        recs.iter()
            .filter(|r| seen.insert(r.ev.seq))
            .map(Message::from_record)
            .collect()
    }

    /// Start-up: apply what the kernel saw while no agent ran, before
    /// anything is judged expired or stale. The ring buffer's backlog and
    /// the records it could not hold are merged and applied in the order
    /// the kernel saw them; client messages of the last minute are
    /// replayed too (harmless if applied before), so that Replies in the
    /// backlog find the Request an earlier agent had seen.
    pub(super) async fn catch_up(&mut self, ring: &mut RingBuf<MapData>) {
        // Every message up to these counters is in the backlog, in a
        // record, or superseded; later ones come through the ring buffer.
        let snap = self.seq_snapshot();
        let full = self.counters.get(Counter::RingbufFull);
        let backlog = self.drain(ring);
        let n = backlog.len();
        let have: HashSet<u64> = backlog.iter().map(|m| m.seq).collect();
        let recs = self.records(|k, r| {
            settled(&snap, r.ev.seq)
                && !have.contains(&r.ev.seq)
                && replayed_at_start(k.class, r.ev.ts_ns, self.floor_ns)
        });
        let replayed = recs.len();
        let mut all = backlog;
        all.extend(recs);
        all.sort_by_key(|m| (m.ts_ns, m.seq));
        let applied = self.ingest(all, Timing::Kernel, Some(&snap)).await;
        for (cpu, hw) in snap.iter().enumerate() {
            self.tracker.seed(cpu as u16, *hw);
        }
        self.ringbuf_full_seen = full;
        self.resync.replayed += replayed as u64;
        info!(
            backlog = n,
            replayed, applied, "caught up with what the kernel saw while no agent ran"
        );
    }

    /// Every record in `pd_clients_v1`, until a read fails (logged). A
    /// hash map changing under iteration may restart it: bounded.
    pub(super) fn client_records(&self) -> impl Iterator<Item = (ClientKey, ClientRecord)> + '_ {
        self.clients
            .iter()
            .take(2 * self.client_records as usize + 16)
            .map_while(|item| {
                item.map_err(
                    |e| warn!(error = %crate::chain(&e), "reading {}", pd_common::maps::CLIENTS),
                )
                .ok()
            })
    }

    /// Delete the kernel's records that no replay can want any more: older
    /// than the stored seen mark by [`RECORD_KEEP_SECS`]. The map then
    /// holds about the last few minutes' clients, not every client since
    /// boot.
    pub(super) fn prune_records(&mut self) {
        let keep = env_secs("PD_AGENT_RECORD_KEEP_SECS", RECORD_KEEP_SECS);
        let cutoff = prune_cutoff(self.journaled_ns, keep);
        if cutoff == 0 {
            return;
        }
        let stale: Vec<ClientKey> = self
            .client_records()
            .filter(|(_, r)| r.ev.ts_ns < cutoff)
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            match self.clients.remove(k) {
                Ok(()) => self.resync.pruned += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    warn!(error = %crate::chain(&e), "pruning {}", pd_common::maps::CLIENTS);
                    break;
                }
            }
        }
    }

    /// The kernel's per-CPU message counters right now.
    fn seq_snapshot(&self) -> Vec<u64> {
        match self.seq.get(&0, 0) {
            Ok(v) => v.iter().copied().collect(),
            Err(e) => {
                warn!(error = %crate::chain(&e), "reading {}", pd_common::maps::SEQ);
                Vec::new()
            }
        }
    }

    /// Messages were lost since the last look.
    pub(super) fn lost_events(&self) -> bool {
        self.tracker.missing() > 0
            || self.counters.get(Counter::RingbufFull) > self.ringbuf_full_seen
    }

    /// Replay, in the order the kernel saw them, the records in
    /// `pd_clients_v1` of messages this agent has not applied (and no
    /// earlier agent had, per the store's seen mark).
    pub(super) async fn resync(&mut self, ring: &mut RingBuf<MapData>) {
        let t = std::time::Instant::now();
        // Only messages up to these counters are judged: later ones may
        // still be in the ring buffer (and a loss among them shows later).
        let snap = self.seq_snapshot();
        let full = self.counters.get(Counter::RingbufFull);
        let msgs = self.drain(ring);
        self.ingest(msgs, Timing::Now, None).await;
        let missing = self.tracker.missing();
        let msgs = self.records(|_, r| {
            settled(&snap, r.ev.seq)
                && after_mark(r.ev.ts_ns, self.floor_ns)
                && self.tracker.is_new(r.ev.seq)
        });
        let replayed = self.ingest(msgs, Timing::Kernel, None).await;
        let given_up = self.tracker.forget_missing(&snap);
        let actions = self.table.expire(now());
        self.apply(actions).await;
        self.ringbuf_full_seen = full;
        self.resync.runs += 1;
        self.resync.replayed += replayed as u64;
        self.resync.given_up += given_up;
        if replayed > 0 || missing > 0 {
            info!(
                replayed,
                missing,
                given_up,
                ms = t.elapsed().as_millis() as u64,
                ring_buffer_full = full,
                "resynchronised from {}",
                pd_common::maps::CLIENTS
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catch_up_replays_what_may_not_have_been_applied() {
        const S: u64 = 1_000_000_000;
        let (client, reply) = (pd_common::class::CLIENT, pd_common::class::REPLY);
        let mark = 1_000 * S;
        // After the mark less a second: replayed, of either class.
        assert!(replayed_at_start(reply, mark - S + 1, mark));
        assert!(!replayed_at_start(reply, mark - S, mark));
        // Client messages up to the window before that, for the Replies.
        let window = crate::binding::CLIENT_MESSAGE_WINDOW_SECS * S;
        assert!(replayed_at_start(client, mark - S - window + 1, mark));
        assert!(!replayed_at_start(client, mark - S - window, mark));
        // No mark (another boot, or none stored): everything.
        assert!(replayed_at_start(reply, 1, 0) && replayed_at_start(client, 1, 0));
        // The resync looks back the same second.
        assert!(after_mark(mark - S + 1, mark) && !after_mark(mark - S, mark));
    }

    /// Whether a message is settled by the kernel's per-CPU counters.
    #[test]
    fn settled_compares_per_cpu() {
        let snap = [10, 3];
        let seq = |cpu: u64, n: u64| (cpu << pd_common::SEQ_CPU_SHIFT) | n;
        assert!(settled(&snap, seq(0, 10)) && !settled(&snap, seq(0, 11)));
        assert!(settled(&snap, seq(1, 3)) && !settled(&snap, seq(1, 4)));
        // A CPU the snapshot does not know: not settled.
        assert!(!settled(&snap, seq(2, 1)));
    }

    #[test]
    fn pruning_keeps_what_a_replay_looks_back_to() {
        const S: u64 = 1_000_000_000;
        let mark = 10_000 * S;
        // The catch-up replays records after the mark less a second, and
        // client messages up to the client-message window before that.
        let oldest_wanted = mark - S - crate::binding::CLIENT_MESSAGE_WINDOW_SECS * S;
        assert!(prune_cutoff(mark, RECORD_KEEP_SECS) < oldest_wanted);
        // Nothing stored yet, or a mark younger than the keep time: none.
        assert_eq!(prune_cutoff(0, RECORD_KEEP_SECS), 0);
        assert_eq!(prune_cutoff(5 * S, 10), 0);
    }
}
