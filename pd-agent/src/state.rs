//! The state store: a snapshot plus an append-only journal in
//! `--state-dir`.
//!
//! - `bindings.json`: every binding at the last compaction (written to a
//!   temporary file, fsynced, renamed, directory fsynced);
//! - `journal.jsonl`: one line per change since (`put` a binding, `del` a
//!   key), written once per batch *before* the routes of that batch change
//!   and fsynced right after them. A crash of the agent never leaves a
//!   route the store does not explain (the written lines are in the page
//!   cache, which outlives the process); a crash of the machine loses at
//!   most the batch whose routes were being written, and those routes die
//!   with the machine too.
//!
//! Why a journal and not an embedded database: the store is written on
//! every binding change and read only at start; an append of a few hundred
//! bytes plus one fsync per batch is the least work for that, replay is a
//! line-by-line parse, and the files stay readable with `jq`. Compaction
//! rewrites the snapshot when the journal outgrows it. A torn last line (a
//! crash mid-append) is ignored at load: its batch never reached the routes.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    binding::{Binding, BindingKey},
    clock::Anchor,
};

const SNAPSHOT: &str = "bindings.json";
const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "lock";
/// 2: times in lease-clock seconds with a clock reading, and journals
/// tied to their snapshot by a generation. A store of a newer version is
/// refused; going back to an older pd-agent is not supported.
const VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {0} is in use by another pd-agent")]
    Locked(PathBuf),
    #[error("state file {path} was written by a newer pd-agent (store version {version}); this one reads up to {VERSION}")]
    Newer { path: PathBuf, version: u32 },
    #[error("state file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    bindings: Vec<Binding>,
    #[serde(default)]
    seen: Option<SeenMark>,
    /// The clocks when written: the bindings' times are lease-clock
    /// seconds of that boot (see `clock`). Absent in stores of older
    /// versions, whose times are unix seconds.
    #[serde(default)]
    clock: Option<Anchor>,
    /// Which journal continues this snapshot: the one whose first line
    /// is `gen` with this number. A journal left by a crash between
    /// writing the snapshot and emptying the journal is ignored (its
    /// changes are in the snapshot, and its times may be another boot's).
    #[serde(default)]
    generation: Option<u64>,
}

/// How far the agent had got through the kernel's messages: the newest
/// kernel timestamp applied, in which boot. At start, the kernel's
/// per-client records newer than this are replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenMark {
    pub boot_id: String,
    pub ns: u64,
}

/// Everything the store holds.
#[derive(Debug, Default)]
pub struct Loaded {
    pub bindings: Vec<Binding>,
    pub seen: Option<SeenMark>,
    /// The latest reading of the clocks (None: times are unix seconds).
    pub clock: Option<Anchor>,
    /// The snapshot's generation (0: none written yet, or an older version's).
    pub generation: u64,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Put {
        binding: Binding,
    },
    Del {
        key: BindingKey,
    },
    Seen {
        mark: SeenMark,
    },
    /// A new reading of both clocks (the wall clock stepped, a while
    /// passed, or the agent stopped).
    Clock {
        clock: Anchor,
    },
    /// First line of a journal: the snapshot generation it continues.
    Gen {
        generation: u64,
    },
}

pub struct Store {
    dir: PathBuf,
    journal: File,
    /// The snapshot's generation (the next compaction writes one more).
    generation: u64,
    /// Lines in the journal since the last compaction.
    records: usize,
    /// Holds the directory's flock for as long as the store is open.
    _lock: File,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.into(),
        source,
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // One agent per state directory: a second one would interleave
        // its writes with the first's.
        let lp = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(io_err(&lp))?;
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(StateError::Locked(dir.into()));
        }
        let jp = dir.join(JOURNAL);
        // A line torn by a crash mid-write is dropped, so that what is
        // appended next starts on a line of its own.
        if let Ok(f) = OpenOptions::new().read(true).write(true).open(&jp) {
            if let Some(keep) = torn_tail(&f).map_err(io_err(&jp))? {
                f.set_len(keep).map_err(io_err(&jp))?;
                f.sync_all().map_err(io_err(&jp))?;
            }
        }
        let records = match File::open(&jp) {
            Ok(f) => BufReader::new(f).lines().count(),
            Err(_) => 0,
        };
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jp)
            .map_err(io_err(&jp))?;
        Ok(Store {
            dir: dir.into(),
            journal,
            generation: 0,
            records,
            _lock: lock,
        })
    }

    /// Bindings as of the last change written (call before compacting:
    /// the next snapshot's generation follows the loaded one).
    pub fn load(&mut self) -> Result<Loaded, StateError> {
        let l = load_all(&self.dir)?;
        self.generation = l.generation;
        Ok(l)
    }

    /// Append `changes` (no fsync yet): call before acting on them, then
    /// [`Store::sync`] after.
    pub fn append(&mut self, changes: &[Change]) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        let jp = self.dir.join(JOURNAL);
        let mut buf = Vec::with_capacity(changes.len() * 400);
        for c in changes {
            serde_json::to_writer(&mut buf, c).map_err(|e| io_err(&jp)(e.into()))?;
            buf.push(b'\n');
        }
        self.journal.write_all(&buf).map_err(io_err(&jp))?;
        self.records += changes.len();
        Ok(())
    }

    /// Make what was appended durable.
    pub fn sync(&mut self) -> Result<(), StateError> {
        let jp = self.dir.join(JOURNAL);
        self.journal.sync_data().map_err(io_err(&jp))
    }

    /// Compact when the journal has grown past the live set (and a floor).
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.records > 4096 && self.records > 2 * live
    }

    /// Write `bindings` as the new snapshot and empty the journal.
    pub fn compact<'a>(
        &mut self,
        bindings: impl Iterator<Item = &'a Binding>,
        seen: Option<SeenMark>,
        clock: Anchor,
    ) -> Result<(), StateError> {
        let path = self.dir.join(SNAPSHOT);
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let generation = self.generation + 1;
        let snap = Snapshot {
            version: VERSION,
            bindings: bindings.cloned().collect(),
            seen,
            clock: Some(clock),
            generation: Some(generation),
        };
        let io = io_err(&path);
        let mut f = std::io::BufWriter::new(File::create(&tmp).map_err(&io)?);
        serde_json::to_writer(&mut f, &snap).map_err(|e| io(e.into()))?;
        f.write_all(b"\n").map_err(&io)?;
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(&io)?;
        fs::rename(&tmp, &path).map_err(&io)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(&io)?;
        // The snapshot now holds everything: start a fresh journal, tied
        // to it by its generation.
        let jp = self.dir.join(JOURNAL);
        self.journal = File::create(&jp).map_err(io_err(&jp))?;
        let mut head =
            serde_json::to_vec(&Change::Gen { generation }).map_err(|e| io_err(&jp)(e.into()))?;
        head.push(b'\n');
        self.journal.write_all(&head).map_err(io_err(&jp))?;
        self.journal.sync_all().map_err(io_err(&jp))?;
        self.generation = generation;
        self.journal = OpenOptions::new()
            .append(true)
            .open(&jp)
            .map_err(io_err(&jp))?;
        self.records = 0;
        Ok(())
    }
}

/// Bindings stored in `dir` (snapshot, then the journal replayed).
/// Where to cut a journal whose last line is torn (no final newline):
/// after its last newline. Reads only the tail.
fn torn_tail(f: &File) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    f.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(None);
    }
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(start + i as u64 + 1));
        }
        end = start;
    }
    Ok(Some(0))
}

/// Bindings stored in `dir`, their times in wall-clock time (unix seconds)
/// as the store's latest clock reading converts them: for showing.
pub fn load_dir(dir: &Path) -> Result<Vec<Binding>, StateError> {
    let l = load_all(dir)?;
    Ok(match l.clock {
        None => l.bindings,
        Some(a) => l
            .bindings
            .into_iter()
            .map(|mut b| {
                b.expires_at = b.expires_at.map(|t| a.to_unix(t));
                b.updated_at = a.to_unix(b.updated_at);
                b
            })
            .collect(),
    })
}

pub fn load_all(dir: &Path) -> Result<Loaded, StateError> {
    let sp = dir.join(SNAPSHOT);
    let (mut map, mut seen, mut clock, generation): (
        std::collections::BTreeMap<BindingKey, Binding>,
        _,
        _,
        _,
    ) = match fs::read(&sp) {
        Ok(bytes) => {
            let snap =
                serde_json::from_slice::<Snapshot>(&bytes).map_err(|source| StateError::Parse {
                    path: sp.clone(),
                    source,
                })?;
            if snap.version > VERSION {
                return Err(StateError::Newer {
                    path: sp,
                    version: snap.version,
                });
            }
            (
                snap.bindings.into_iter().map(|b| (b.key(), b)).collect(),
                snap.seen,
                snap.clock,
                snap.generation,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(source) => return Err(StateError::Io { path: sp, source }),
    };
    let jp = dir.join(JOURNAL);
    if let Ok(f) = File::open(&jp) {
        let lines: Vec<String> = BufReader::new(f)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(io_err(&jp))?;
        let n = lines.len();
        // A snapshot with a generation is continued only by the journal
        // that starts with it; any other is a leftover of a compaction cut
        // short, already in the snapshot.
        let continues = match generation {
            None => true,
            Some(g) => lines.first().is_some_and(|l| {
                matches!(serde_json::from_str::<Change>(l), Ok(Change::Gen { generation }) if generation == g)
            }),
        };
        let lines = if continues { lines } else { Vec::new() };
        for (i, line) in lines.into_iter().enumerate() {
            match serde_json::from_str::<Change>(&line) {
                Ok(Change::Put { binding }) => {
                    map.insert(binding.key(), binding);
                }
                Ok(Change::Del { key }) => {
                    map.remove(&key);
                }
                Ok(Change::Seen { mark }) => seen = Some(mark),
                Ok(Change::Clock { clock: c }) => clock = Some(c),
                Ok(Change::Gen { .. }) => {}
                // A torn last line: its batch never reached the routes.
                Err(_) if i + 1 == n => break,
                Err(source) => return Err(StateError::Parse { path: jp, source }),
            }
        }
    }
    Ok(Loaded {
        bindings: map.into_values().collect(),
        seen,
        clock,
        generation: generation.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::Kind;

    fn b(p: &str, valid: u32) -> Binding {
        Binding {
            prefix: p.parse().unwrap(),
            kind: Kind::Delegated,
            iface: "lan0".into(),
            ifindex: 3,
            next_hop: "fe80::1".parse().unwrap(),
            client_duid: vec![1, 2],
            iaid: 1,
            t1: 0,
            t2: 0,
            preferred_lifetime: valid,
            valid_lifetime: valid,
            expires_at: Some(1000),
            updated_at: 1,
        }
    }

    fn tmp() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "pd-state-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn journal_replays_puts_and_dels() {
        let d = tmp();
        let mut s = Store::open(&d).unwrap();
        s.append(&[
            Change::Put {
                binding: b("2001:db8:1::/56", 10),
            },
            Change::Put {
                binding: b("2001:db8:2::/56", 10),
            },
        ])
        .unwrap();
        s.append(&[
            Change::Put {
                binding: b("2001:db8:1::/56", 99),
            },
            Change::Del {
                key: b("2001:db8:2::/56", 0).key(),
            },
        ])
        .unwrap();
        let got = load_dir(&d).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].valid_lifetime, 99);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_keeps_state_and_empties_journal() {
        let d = tmp();
        let mut s = Store::open(&d).unwrap();
        let live = [b("2001:db8:1::/56", 10), b("2001:db8:3::/56", 10)];
        s.append(&[
            Change::Put {
                binding: live[0].clone(),
            },
            Change::Put {
                binding: live[1].clone(),
            },
        ])
        .unwrap();
        s.compact(live.iter(), None, crate::clock::Anchor::now("b"))
            .unwrap();
        // Only the line tying the journal to the new snapshot.
        assert_eq!(
            fs::read_to_string(d.join(JOURNAL)).unwrap(),
            "{\"op\":\"gen\",\"generation\":1}\n"
        );
        s.append(&[Change::Del { key: live[0].key() }]).unwrap();
        let got = load_dir(&d).unwrap();
        assert_eq!(
            got.iter().map(|b| b.prefix.to_string()).collect::<Vec<_>>(),
            ["2001:db8:3::/56"]
        );
        // Reopening counts the journal's lines (the generation and the del).
        drop(s);
        assert_eq!(Store::open(&d).unwrap().records, 2);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn seen_mark_survives_journal_and_compaction() {
        let d = tmp();
        let mut s = Store::open(&d).unwrap();
        let m = |ns| SeenMark {
            boot_id: "b".into(),
            ns,
        };
        s.append(&[
            Change::Seen { mark: m(5) },
            Change::Put {
                binding: b("2001:db8:1::/56", 10),
            },
        ])
        .unwrap();
        s.append(&[Change::Seen { mark: m(9) }]).unwrap();
        assert_eq!(load_all(&d).unwrap().seen, Some(m(9)));
        s.compact(
            load_all(&d).unwrap().bindings.iter(),
            Some(m(9)),
            crate::clock::Anchor::now("b"),
        )
        .unwrap();
        let l = load_all(&d).unwrap();
        assert_eq!((l.seen, l.bindings.len()), (Some(m(9)), 1));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn latest_clock_reading_wins_and_views_convert_by_it() {
        let d = tmp();
        let mut s = Store::open(&d).unwrap();
        let at = |boot, unix| crate::clock::Anchor {
            boot_id: "b".into(),
            boot,
            unix,
        };
        let mut x = b("2001:db8:1::/56", 10);
        x.expires_at = Some(500);
        s.compact([x].iter(), None, at(100, 1_000_100)).unwrap();
        assert_eq!(load_all(&d).unwrap().clock, Some(at(100, 1_000_100)));
        // The wall clock stepped an hour forward.
        s.append(&[Change::Clock {
            clock: at(200, 1_003_800),
        }])
        .unwrap();
        let l = load_all(&d).unwrap();
        assert_eq!(l.clock, Some(at(200, 1_003_800)));
        // Stored in lease-clock time; shown in wall-clock time.
        assert_eq!(l.bindings[0].expires_at, Some(500));
        assert_eq!(load_dir(&d).unwrap()[0].expires_at, Some(1_004_100));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_journal_left_by_a_cut_compaction_is_ignored() {
        let d = tmp();
        let mut s = Store::open(&d).unwrap();
        let clock = || crate::clock::Anchor::now("b");
        s.append(&[Change::Put {
            binding: b("2001:db8:1::/56", 10),
        }])
        .unwrap();
        s.compact(load_all(&d).unwrap().bindings.iter(), None, clock())
            .unwrap();
        s.append(&[Change::Put {
            binding: b("2001:db8:2::/56", 10),
        }])
        .unwrap();
        assert_eq!(load_all(&d).unwrap().bindings.len(), 2);
        // The next compaction is cut short after the snapshot's rename: the
        // old journal (generation 1, its lines in the snapshot, or of
        // another boot) lies on top of a snapshot of generation 2.
        let old = fs::read(d.join(JOURNAL)).unwrap();
        let mut x = b("2001:db8:3::/56", 10);
        x.expires_at = Some(7);
        let all: Vec<Binding> = vec![x];
        s.compact(all.iter(), None, clock()).unwrap();
        fs::write(d.join(JOURNAL), old).unwrap();
        let l = load_all(&d).unwrap();
        assert_eq!(l.generation, 2);
        assert_eq!(l.bindings, all, "the stale journal is not replayed");
        // An older version's store (no generation) keeps its journal.
        let snap = fs::read_to_string(d.join(SNAPSHOT)).unwrap();
        let legacy = snap.replace(r#","generation":2"#, "");
        assert_ne!(snap, legacy);
        fs::write(d.join(SNAPSHOT), legacy).unwrap();
        assert_eq!(load_all(&d).unwrap().bindings.len(), 2);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_newer_store_is_refused() {
        let d = tmp();
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(SNAPSHOT), r#"{"version":99,"bindings":[]}"#).unwrap();
        let e = load_all(&d).unwrap_err().to_string();
        assert!(e.contains("newer pd-agent"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_last_line_is_cut_before_appending() {
        let d = tmp();
        let mut s = Store::open(&d).unwrap();
        s.append(&[Change::Put {
            binding: b("2001:db8:1::/56", 10),
        }])
        .unwrap();
        drop(s);
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join(JOURNAL))
            .unwrap();
        f.write_all(br#"{"op":"put","binding":{"pre"#).unwrap();
        drop(f);
        let mut s = Store::open(&d).unwrap();
        s.append(&[Change::Put {
            binding: b("2001:db8:2::/56", 10),
        }])
        .unwrap();
        assert_eq!(load_dir(&d).unwrap().len(), 2);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let d = tmp();
        let s = Store::open(&d).unwrap();
        assert!(matches!(Store::open(&d), Err(StateError::Locked(_))));
        drop(s);
        assert!(Store::open(&d).is_ok());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_last_line_is_ignored_but_garbage_elsewhere_is_an_error() {
        let d = tmp();
        let mut s = Store::open(&d).unwrap();
        s.append(&[Change::Put {
            binding: b("2001:db8:1::/56", 10),
        }])
        .unwrap();
        let jp = d.join(JOURNAL);
        let mut f = OpenOptions::new().append(true).open(&jp).unwrap();
        f.write_all(b"{\"op\":\"put\",\"binding\":{\"pre").unwrap();
        assert_eq!(load_dir(&d).unwrap().len(), 1);
        f.write_all(b"\n{\"op\":\"del\"}\n").unwrap();
        assert!(matches!(load_dir(&d), Err(StateError::Parse { .. })));
        fs::remove_dir_all(&d).unwrap();
    }
}
