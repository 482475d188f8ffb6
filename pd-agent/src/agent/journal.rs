//! What the agent writes to its state store besides bindings: the seen
//! mark (how far the kernel's messages were applied) and clock readings
//! (to carry lifetimes across a reboot).

use std::time::Duration;

use tracing::{info, warn};

use super::Agent;
use crate::{
    binding::Action,
    state::{Change, SeenMark},
};

/// How old the store's latest clock reading may get before a new one is
/// written (what a reboot may count short, with no wall clock to go by).
const CLOCK_READING: Duration = Duration::from_secs(600);

impl Agent {
    /// Journal the bindings `actions` change, with the seen mark and a
    /// clock reading when due; compact the store when it has grown.
    pub(super) fn record(&mut self, actions: &[Action]) {
        let mut changes: Vec<Change> = actions
            .iter()
            .map(|a| match a {
                Action::Install(b) | Action::Refresh(b) => Change::Put { binding: b.clone() },
                Action::Remove(b, _) => Change::Del { key: b.key() },
            })
            .collect();
        // The mark says "everything before this was applied": not while
        // messages are known lost (deferred Replies included). The counter
        // behind lost_events() is read only when there is a mark to write.
        let reading = self.clock_due(false);
        changes.extend(reading.clone().map(|clock| Change::Clock { clock }));
        let mut marked = false;
        if self.seen_ns > self.journaled_ns && !self.lost_events() {
            if let Some(mark) = self.seen_mark() {
                changes.push(Change::Seen { mark });
                marked = true;
            }
        }
        match self.store.append(&changes) {
            Ok(()) => {
                if marked {
                    self.journaled_ns = self.seen_ns;
                }
                if let Some(r) = reading {
                    self.clock = r;
                }
            }
            Err(e) => warn!(error = %crate::chain(&e), "writing the state journal"),
        }
        if self.store.needs_compaction(self.table.len()) {
            let mark = (self.journaled_ns > 0).then(|| SeenMark {
                boot_id: self.boot_id.clone(),
                ns: self.journaled_ns,
            });
            self.clock = crate::clock::Anchor::now(&self.boot_id);
            if let Err(e) = self
                .store
                .compact(self.table.iter(), mark, self.clock.clone())
            {
                warn!(error = %crate::chain(&e), "compacting the state store");
            }
        }
    }

    /// A new clock reading to write, if one is due: the wall clock
    /// stepped since the last one, the last is [`CLOCK_READING`] old, or
    /// `always` (stopping). After a reboot the time since is measured from
    /// the latest reading, so it should be recent and one the wall clock
    /// still agrees with. The caller records it once written.
    pub(super) fn clock_due(&self, always: bool) -> Option<crate::clock::Anchor> {
        let here = crate::clock::Anchor::now(&self.boot_id);
        let stepped = here.stepped_since(&self.clock);
        if stepped {
            info!(
                step_secs = here.offset() - self.clock.offset(),
                "the wall clock stepped; lifetimes run on the boot clock and are unaffected"
            );
        }
        (always || stepped || here.boot >= self.clock.boot + CLOCK_READING.as_secs())
            .then_some(here)
    }

    /// Write a clock reading now if one is due (checked each minute, with
    /// every batch, and when stopping).
    pub(super) fn note_clock(&mut self, always: bool) {
        if let Some(r) = self.clock_due(always) {
            let line = Change::Clock { clock: r.clone() };
            match self.store.append(&[line]).and_then(|()| self.store.sync()) {
                Ok(()) => self.clock = r,
                Err(e) => warn!(error = %crate::chain(&e), "writing the state journal"),
            }
        }
    }

    pub(super) fn seen_mark(&self) -> Option<SeenMark> {
        (self.seen_ns > 0 && !self.boot_id.is_empty()).then(|| SeenMark {
            boot_id: self.boot_id.clone(),
            ns: self.seen_ns,
        })
    }
}
