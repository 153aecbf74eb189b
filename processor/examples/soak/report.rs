//! The soak's report: the run, the orders and outcomes, every fault and how long the outcomes
//! took to resume after it, the faults by kind, the longest gap between outcomes, and each
//! invariant PASS or FAIL.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::Config;
use super::checks::{Check, Totals};
use super::faults::FaultKind;

/// One injected fault (times since the soak started).
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub at: Duration,
    pub healed_at: Duration,
    pub detail: String,
    /// How long after healing the outcomes flowed again; `None`: not within the deadline.
    pub recovered_after: Option<Duration>,
    /// Late records (`stockflow_late_records_total`, every process) counted from its
    /// injection until the next fault's: input records decided after their partition's time
    /// had passed them, which `processor audit` shows if they changed a decision.
    pub late_records: f64,
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7.1}s  {:<34} healed at {:>7.1}s, confirmations resumed {}  ({})",
            self.at.as_secs_f64(),
            self.kind.name(),
            self.healed_at.as_secs_f64(),
            self.recovered_after
                .map_or("NOT within 180 s".to_owned(), |d| {
                    format!("{:.1}s later", d.as_secs_f64())
                }),
            self.detail
        )
    }
}

/// A processor that exited on its own and was started again.
#[derive(Debug, Clone)]
pub struct Exit {
    pub instance: &'static str,
    /// Which start of the instance it was.
    pub start: u32,
    pub status: String,
    pub seen_at: Duration,
}

/// Everything the soak measured.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub seed: u64,
    pub config: Config,
    pub started_at_ms: i64,
    pub elapsed: Duration,
    pub generator: Result<generator::app::RunSummary, String>,
    /// Expected distinct orders (valid + invalid).
    pub expected: usize,
    /// How long after the generator finished every order had an outcome; `None`: not within
    /// the deadline.
    pub drained: Option<Duration>,
    /// Every outcome's timestamp (when its producer wrote it), sorted.
    pub outcome_times: Vec<i64>,
    /// When each outcome reached a read_committed reader (its transaction committed), sorted.
    pub arrival_times: Vec<i64>,
    pub faults: Vec<FaultRecord>,
    pub exits: Vec<Exit>,
    pub checks: Vec<Check>,
    pub totals: Totals,
    /// The processors' counters, summed over every process (as scraped last before it ended).
    pub counters: Vec<(&'static str, f64)>,
    /// Each instance's exit on SIGTERM at the end.
    pub stopped: Vec<(String, String)>,
    pub log_dir: PathBuf,
}

impl Report {
    /// Every check, including the run's own: the generator delivered everything, every fault
    /// was followed by outcomes, every order was decided, both instances stopped cleanly.
    pub fn all_checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        checks.push(match &self.generator {
            Ok(s) => Check {
                name: "the generator's every record acknowledged",
                passed: s.delivered.failed == 0,
                detail: format!(
                    "{} acknowledged, {} failed",
                    s.delivered.acknowledged, s.delivered.failed
                ),
            },
            Err(e) => Check {
                name: "the generator's every record acknowledged",
                passed: false,
                detail: format!("the generator failed: {e}"),
            },
        });
        let stuck: Vec<&FaultRecord> = self
            .faults
            .iter()
            .filter(|f| f.recovered_after.is_none())
            .collect();
        checks.push(Check {
            name: "confirmations resume within 180 s of every fault's end",
            passed: stuck.is_empty(),
            detail: if stuck.is_empty() {
                format!("{} faults", self.faults.len())
            } else {
                format!("not after: {}", names(&stuck))
            },
        });
        checks.push(Check {
            name: "every order decided within 5 minutes of the generator's end",
            passed: self.drained.is_some(),
            detail: self.drained.map_or("not within 5 minutes".to_owned(), |d| {
                format!("{:.1}s after the generator finished", d.as_secs_f64())
            }),
        });
        checks.extend(self.checks.iter().cloned());
        let unclean: Vec<String> = self
            .stopped
            .iter()
            .filter(|(_, status)| status != "exit status: 0")
            .map(|(name, status)| format!("{name}: {status}"))
            .collect();
        checks.push(Check {
            name: "both instances stop cleanly on SIGTERM at the end",
            passed: unclean.is_empty(),
            detail: if unclean.is_empty() {
                "exit status 0".to_owned()
            } else {
                unclean.join(", ")
            },
        });
        checks
    }

    pub fn passed(&self) -> bool {
        self.all_checks().iter().all(|c| c.passed)
    }

    /// The longest gap between two consecutive `times`: its length and where it starts and
    /// ends (seconds since the soak started).
    fn longest_gap(&self, times: &[i64]) -> Option<(f64, f64, f64)> {
        let since = |ms: i64| (ms - self.started_at_ms) as f64 / 1000.0;
        times
            .windows(2)
            .max_by_key(|w| w[1] - w[0])
            .map(|w| ((w[1] - w[0]) as f64 / 1000.0, since(w[0]), since(w[1])))
    }

    /// The faults under way (injected, or healed with the outcomes not yet resumed) between
    /// `from` and `to` (seconds since the start).
    fn during(&self, from: f64, to: f64) -> Vec<&FaultRecord> {
        self.faults
            .iter()
            .filter(|fault| {
                let end = fault.healed_at + fault.recovered_after.unwrap_or_default();
                fault.at.as_secs_f64() <= to && end.as_secs_f64() >= from
            })
            .collect()
    }
}

fn names(faults: &[&FaultRecord]) -> String {
    faults
        .iter()
        .map(|f| format!("{} at {:.0}s", f.kind.name(), f.at.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "# Soak report: {}", self.name)?;
        writeln!(
            f,
            "run: {} orders/s for {} with restocks every {}, {} SKUs of {} units, 2 instances, \
             6 partitions; a fault every {} ({} kinds); seed {}; {:.0}s in all",
            c.rate,
            humantime::format_duration(c.duration),
            c.restock_every,
            c.skus,
            c.stock,
            humantime::format_duration(c.fault_every),
            if c.faults.is_empty() {
                FaultKind::all().len()
            } else {
                c.faults.len()
            },
            self.seed,
            self.elapsed.as_secs_f64()
        )?;
        match &self.generator {
            Ok(s) => writeln!(f, "orders: {s}")?,
            Err(e) => writeln!(f, "orders: the generator failed: {e}")?,
        }
        let t = &self.totals;
        let mut reasons: Vec<_> = t.rejected_by_reason.iter().collect();
        reasons.sort();
        writeln!(
            f,
            "outcomes: {} (confirmed {}, rejected {}: {}); {} orders expected; {} inventory \
             updates; {} dead letters",
            t.confirmed + t.rejected,
            t.confirmed,
            t.rejected,
            reasons
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.expected,
            t.inventory_updates,
            t.dead_letters
        )?;
        writeln!(
            f,
            "processor counters (every process, as scraped last): {}",
            self.counters
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for (what, times) in [
            ("by outcome timestamp", &self.outcome_times),
            ("by arrival at a read_committed reader", &self.arrival_times),
        ] {
            match self.longest_gap(times) {
                Some((gap, from, to)) => {
                    let during = self.during(from, to);
                    writeln!(
                        f,
                        "longest outcome gap ({what}): {gap:.1}s, from {from:.1}s to {to:.1}s{}",
                        if during.is_empty() {
                            String::new()
                        } else {
                            format!(" (faults: {})", names(&during))
                        }
                    )?;
                }
                None => writeln!(f, "longest outcome gap ({what}): fewer than two outcomes")?,
            }
        }
        writeln!(f, "\nfaults injected: {}", self.faults.len())?;
        let mut by_kind: BTreeMap<String, Vec<&FaultRecord>> = BTreeMap::new();
        for fault in &self.faults {
            by_kind.entry(fault.kind.name()).or_default().push(fault);
        }
        writeln!(
            f,
            "  {:<34} {:>5} {:>22} {:>13}",
            "kind", "count", "resumed after (max)", "late records"
        )?;
        for (kind, faults) in &by_kind {
            let max = faults
                .iter()
                .map(|f| f.recovered_after.map_or(f64::INFINITY, |d| d.as_secs_f64()))
                .fold(0.0, f64::max);
            let late: f64 = faults.iter().map(|f| f.late_records).sum();
            writeln!(
                f,
                "  {kind:<34} {:>5} {:>21.1}s {late:>13}",
                faults.len(),
                max
            )?;
        }
        writeln!(f, "\nfault log (seconds since the start):")?;
        for fault in &self.faults {
            writeln!(f, "  {fault}; late records {}", fault.late_records)?;
        }
        if self.exits.is_empty() {
            writeln!(f, "\nno instance exited on its own")?;
        } else {
            writeln!(f, "\ninstances that exited on their own (started again):")?;
            for exit in &self.exits {
                writeln!(
                    f,
                    "  {:>7.1}s  instance {} (start {}): {}",
                    exit.seen_at.as_secs_f64(),
                    exit.instance,
                    exit.start,
                    exit.status
                )?;
            }
        }

        writeln!(f, "\ninvariants:")?;
        for check in self.all_checks() {
            writeln!(
                f,
                "  {}  {}\n      {}",
                if check.passed { "PASS" } else { "FAIL" },
                check.name,
                check.detail
            )?;
        }
        writeln!(
            f,
            "\nresult: {}; processor logs in {}",
            if self.passed() {
                "PASS"
            } else {
                "FAIL (a violation above)"
            },
            self.log_dir.display()
        )
    }
}
