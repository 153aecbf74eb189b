//! What the machine spent: its CPU busy share from /proc/stat, a process's CPU seconds and peak
//! RSS, and the local stack's broker and PostgreSQL CPU seconds.

use std::path::PathBuf;

/// The machine's (busy, total) CPU ticks so far, over all cores, from /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the machine's CPU that was busy since `before` (from [`machine_ticks`]).
pub fn busy_since(before: (u64, u64)) -> f64 {
    let after = machine_ticks();
    (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
}

/// CPU seconds (user + system) and peak RSS in MiB of a child, from /proc.
pub fn usage(pid: u32) -> (f64, f64) {
    let cpu = proc_stat(pid).map_or(0.0, |(own, _, _)| own);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kb / 1024.0)
}

/// CPU seconds used so far by the local stack's broker and PostgreSQL (every backend).
#[derive(Debug, Clone, Copy)]
pub struct StackCpu {
    pub broker: f64,
    pub postgres: f64,
}

impl StackCpu {
    /// Read from the pid files of `scripts/stack.sh` (under `$STOCKFLOW_HOME/stack`); None when
    /// they are not there (a stack in containers).
    pub fn now() -> Option<Self> {
        let stack = PathBuf::from(std::env::var_os("STOCKFLOW_HOME")?).join("stack");
        let pid_in = |file: PathBuf| -> Option<u32> {
            std::fs::read_to_string(file)
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        };
        let broker = pid_in(stack.join("kafka/kafka.pid"))?;
        let postmaster = pid_in(stack.join("postgres/data/postmaster.pid"))?;
        // The postmaster's own time, its exited backends' (reaped: counted as its children's
        // time) and the live backends'.
        let (own, reaped, _) = proc_stat(postmaster)?;
        let live: f64 = std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| match proc_stat(pid)? {
                (own, _, parent) if parent == postmaster => Some(own),
                _ => None,
            })
            .sum();
        Some(Self {
            broker: proc_stat(broker)?.0,
            postgres: own + reaped + live,
        })
    }

    pub fn since(&self, before: &Self) -> Self {
        Self {
            broker: self.broker - before.broker,
            postgres: self.postgres - before.postgres,
        }
    }
}

/// A process's CPU seconds from /proc/<pid>/stat: (its own, its reaped children's, its parent).
fn proc_stat(pid: u32) -> Option<(f64, f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may contain spaces) start with the state.
    let fields: Vec<&str> = stat.rsplit(") ").next()?.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<f64>().ok());
    let ticks_per_second = 100.0; // USER_HZ on Linux
    Some((
        (ticks(11)? + ticks(12)?) / ticks_per_second,
        (ticks(13)? + ticks(14)?) / ticks_per_second,
        fields.get(1)?.parse().ok()?,
    ))
}
