//! Where a test run's time goes: every tier (and each part of one: a test
//! file on the host, a test target in a VM) is a row of the timing table
//! the run ends with, then the one closing line CI reads.
//!
//! Some rows of one `cargo xtask test` here:
//!
//! ```text
//! | tier                          | tests | passed | failed | seconds |
//! |-------------------------------|------:|-------:|-------:|--------:|
//! | build                         |     0 |      0 |      0 |       9 |
//! | unit                          |   128 |    128 |      0 |      37 |
//! | host: routes.rs               |     8 |      8 |      0 |      45 |
//! | vm 6.1 amd64: boot and set-up |     0 |      0 |      0 |      49 |
//! | vm 6.1 amd64: kernel.rs       |     7 |      7 |      0 |     154 |
//! | total                         |   207 |    207 |      0 |     646 |
//!
//! xtask: 207 passed, 0 failed
//! ```

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// One row of the table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row {
    pub tier: String,
    pub passed: u64,
    pub failed: u64,
    pub secs: f64,
}

impl Row {
    /// Add one line of libtest's output ("test result: ok. 3 passed; ...").
    fn line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let num = |word: &str| {
            rest.split(';')
                .find_map(|p| {
                    p.trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ")
                        .strip_suffix(word)
                })
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        self.passed += num(" passed");
        self.failed += num(" failed");
    }
}

/// The marker a guest script writes after each test it runs:
/// `xtask-time PART TEST MILLISECONDS`.
pub const TIME_MARK: &str = "xtask-time";

/// The rows of one `cargo xtask test` command, in the order they ran.
pub struct Tally {
    /// Which command this is (`test`, `matrix`, ...): names the saved table.
    name: &'static str,
    rows: Vec<Row>,
    started: Instant,
}

impl Tally {
    pub fn new(name: &'static str) -> Tally {
        Tally {
            name,
            rows: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Time `f` as a row of its own with no tests (a build, a package).
    pub fn step<T>(&mut self, tier: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        self.rows.push(Row {
            tier: tier.to_string(),
            secs: t.elapsed().as_secs_f64(),
            ..Default::default()
        });
        r
    }

    /// Add a finished run's output as the row `tier`.
    pub fn scan(&mut self, tier: &str, text: &str, secs: f64) {
        let mut row = Row {
            tier: tier.to_string(),
            secs,
            ..Default::default()
        };
        for l in text.lines() {
            row.line(l);
        }
        self.rows.push(row);
    }

    /// Add a guest's log as rows `tier: PART`, one per test target it
    /// timed ([`TIME_MARK`] lines), and `tier: boot and set-up` for the
    /// rest of `secs`, the whole VM's time. A log without marks (the VM
    /// died first) is one row.
    pub fn scan_guest(&mut self, tier: &str, log: &str, secs: f64) {
        let parts = guest_rows(tier, log);
        if parts.is_empty() {
            self.scan(tier, log, secs);
            return;
        }
        let inside: f64 = parts.iter().map(|r| r.secs).sum();
        self.rows.push(Row {
            tier: format!("{tier}: boot and set-up"),
            secs: (secs - inside).max(0.0),
            ..Default::default()
        });
        self.rows.extend(parts);
    }

    /// Run `cmd`, echoing its standard output, as the row `tier`.
    pub fn run(&mut self, tier: &str, cmd: &mut Command) -> Result<()> {
        let t = Instant::now();
        let mut row = Row {
            tier: tier.to_string(),
            ..Default::default()
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {cmd:?}"))?;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line?;
            println!("{line}");
            row.line(&line);
        }
        let st = child.wait()?;
        row.secs = t.elapsed().as_secs_f64();
        self.rows.push(row);
        if !st.success() {
            bail!("{tier}: {cmd:?} failed: {st}");
        }
        Ok(())
    }

    pub fn failed(&self) -> u64 {
        self.rows.iter().map(|r| r.failed).sum()
    }

    /// The table, then the closing line; also saved to
    /// target/test-times/NAME.md for `.ci/run` to print again at its end.
    pub fn print(&self) {
        let table = self.table();
        println!("\n{table}");
        let dir = crate::root_dir().join("target/test-times");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(self.saved(), &table);
        println!(
            "\nxtask: {} passed, {} failed",
            self.rows.iter().map(|r| r.passed).sum::<u64>(),
            self.failed()
        );
    }

    fn saved(&self) -> PathBuf {
        crate::root_dir()
            .join("target/test-times")
            .join(format!("{}.md", self.name))
    }

    pub fn table(&self) -> String {
        let total = Row {
            tier: "total".into(),
            passed: self.rows.iter().map(|r| r.passed).sum(),
            failed: self.failed(),
            secs: self.started.elapsed().as_secs_f64(),
        };
        let width = self
            .rows
            .iter()
            .map(|r| r.tier.len())
            .max()
            .unwrap_or(0)
            .max(24);
        let mut s = format!(
            "xtask: where the time went (cargo xtask {})\n\
             | {:width$} | tests | passed | failed | seconds |\n\
             |{}|------:|-------:|-------:|--------:|\n",
            self.name,
            "tier",
            "-".repeat(width + 2),
        );
        for r in self.rows.iter().chain([&total]) {
            s.push_str(&format!(
                "| {:width$} | {:5} | {:6} | {:6} | {:7.0} |\n",
                r.tier,
                r.passed + r.failed,
                r.passed,
                r.failed,
                r.secs
            ));
        }
        s
    }
}

/// The rows of a guest's log: per test target, its tests' counts and the
/// time of its [`TIME_MARK`] lines.
fn guest_rows(tier: &str, log: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    // Counts come before their test's mark: hold them until it names the
    // part.
    let mut pending = Row::default();
    for l in log.lines() {
        if let Some(rest) = l.strip_prefix(TIME_MARK) {
            let mut it = rest.split_whitespace();
            let (Some(part), Some(_test), Some(ms)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let name = format!("{tier}: {part}");
            let i = match rows.iter().position(|r| r.tier == name) {
                Some(i) => i,
                None => {
                    rows.push(Row {
                        tier: name,
                        ..Default::default()
                    });
                    rows.len() - 1
                }
            };
            let r = &mut rows[i];
            r.passed += pending.passed;
            r.failed += pending.failed;
            r.secs += ms.parse::<f64>().unwrap_or(0.0) / 1000.0;
            pending = Row::default();
        } else {
            pending.line(l);
        }
    }
    rows
}

/// The guest's shell function that runs one test target test by test,
/// each followed by its [`TIME_MARK`] line: `run PART EXE ARGS...`, where
/// ARGS are libtest's filters (`--skip NAME`, `--exact NAME...`). Sets
/// `rc=1` on a failure; a target whose filters match nothing prints
/// `xtask-none PART`, which the caller counts as a failure.
pub fn guest_runner(log: &str) -> String {
    format!(
        r#"run() {{
  part=$1; exe=$2; shift 2
  tests=$("$exe" --ignored --list "$@" 2>/dev/null | sed -n 's/: test$//p')
  [ -n "$tests" ] || {{ echo "xtask-none $part" >> {log}; rc=1; }}
  for t in $tests; do
    s=$(date +%s%N)
    "$exe" --ignored --exact --test-threads=1 --nocapture "$t" >> {log} 2>&1 || rc=1
    echo "{TIME_MARK} $part $t $(( ($(date +%s%N) - s) / 1000000 ))" >> {log}
  done
}}
"#
    )
}

/// What a guest's log does not show as run (whether it passed, the exit
/// status says): each test named after `--exact` in `filters`, and each
/// part whose filters matched no test (the runner's `xtask-none` line: a
/// filter that matches nothing would pass with 0 tests, and `--exact`
/// with a renamed test lists the others only).
pub fn not_run<'a>(log: &str, filters: impl IntoIterator<Item = &'a [&'a str]>) -> Vec<String> {
    let mut missing: Vec<String> = filters
        .into_iter()
        .flat_map(|args| args.iter().skip_while(|a| **a != "--exact").skip(1))
        .filter(|name| !log.contains(&format!("test {name} ... ")))
        .map(|name| name.to_string())
        .collect();
    missing.extend(
        log.lines()
            .filter_map(|l| l.strip_prefix("xtask-none "))
            .map(|part| format!("{part} (no test matched)")),
    );
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_log_becomes_one_row_per_part() {
        let log = "6.1.0-57-amd64\n\
            running 1 test\ntest a ... ok\n\
            test result: ok. 1 passed; 0 failed; 5 ignored; 0 measured\n\
            xtask-time kernel.rs a 2500\n\
            test result: FAILED. 0 passed; 1 failed; 0 ignored\n\
            xtask-time kernel.rs b 1500\n\
            test result: ok. 1 passed; 0 failed; 0 ignored\n\
            xtask-time vm.rs c 10000\n";
        let rows = guest_rows("vm 6.1", log);
        assert_eq!(
            rows,
            [
                Row {
                    tier: "vm 6.1: kernel.rs".into(),
                    passed: 1,
                    failed: 1,
                    secs: 4.0
                },
                Row {
                    tier: "vm 6.1: vm.rs".into(),
                    passed: 1,
                    failed: 0,
                    secs: 10.0
                }
            ]
        );
        let mut t = Tally::new("unit-test");
        t.scan_guest("vm 6.1", log, 20.0);
        assert_eq!(t.rows[0].tier, "vm 6.1: boot and set-up");
        assert_eq!(t.rows[0].secs, 6.0);
        assert_eq!(t.failed(), 1);
        let table = t.table();
        assert!(table.contains("| vm 6.1: vm.rs"), "{table}");
        assert!(
            table.lines().last().unwrap().starts_with("| total"),
            "{table}"
        );
    }

    #[test]
    fn a_guest_that_died_before_any_test_is_one_row() {
        let mut t = Tally::new("unit-test");
        t.scan_guest("vm 5.10", "Kernel panic\n", 12.0);
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].tier, "vm 5.10");
    }

    #[test]
    fn result_lines_are_counted() {
        let mut r = Row::default();
        r.line("test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 1.2s");
        r.line("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured");
        r.line("test something ... ok");
        assert_eq!((r.passed, r.failed), (13, 2));
    }
}
