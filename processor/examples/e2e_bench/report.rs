//! The Markdown tables the benchmark prints (`scripts/bench.sh` users copy them into
//! BENCHMARKS.md, so their columns stay as they are).

use crate::Config;
use crate::latency::Latency;
use crate::machine::StackCpu;
use crate::throughput::Row;

/// A stack CPU figure for the table, or `-` when it could not be read.
fn stack_column(cpu: Option<StackCpu>, figure: impl Fn(&StackCpu) -> f64) -> String {
    cpu.map_or_else(|| "-".to_owned(), |c| format!("{:.1}", figure(&c)))
}

/// The throughput table: the baseline, then the processor rows.
pub fn print_throughput(base: &Row, rows: &[Row]) {
    let base_rate = base.orders as f64 / base.seconds;
    println!();
    println!(
        "| run | orders | start-up s | seconds | orders/s | vs baseline | machine CPU busy | commit s | process s | CPU s | broker CPU s | PostgreSQL CPU s | peak RSS MiB | sync rows/s | max sync lag | read model complete after |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.1} | {:.1} | {:.0} | 1.00 | {:.0}% | {:.1} | - | {:.1} | {} | {} | {:.0} (bench process) | - | - | - |",
        base.name,
        base.orders,
        base.startup,
        base.seconds,
        base_rate,
        base.machine_busy * 100.0,
        base.commit_seconds,
        base.cpu,
        stack_column(base.stack_cpu, |s| s.broker),
        stack_column(base.stack_cpu, |s| s.postgres),
        base.rss_mb
    );
    for row in rows {
        let rate = row.measured as f64 / row.seconds;
        let orders = if row.measured == row.orders {
            row.orders.to_string()
        } else {
            format!("{} (of {})", row.measured, row.orders)
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.2} | {:.0}% | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {:.1} s | +{:.1} s |",
            row.name,
            orders,
            row.startup,
            row.seconds,
            rate,
            rate / base_rate,
            row.machine_busy * 100.0,
            row.commit_seconds,
            row.process_seconds,
            row.cpu,
            stack_column(row.stack_cpu, |s| s.broker),
            stack_column(row.stack_cpu, |s| s.postgres),
            row.rss_mb,
            row.sync_rows_per_second,
            row.sync_max_lag,
            row.sync_catch_up
        );
    }
}

/// The latency table, and with `--latency-breakdown` the hops table.
pub fn print_latency(config: &Config, latency: &Latency) {
    println!();
    println!(
        "| order end-to-end latency (created_at -> outcome received, read_committed) | value |"
    );
    println!("|---|---:|");
    println!(
        "| rate | {} orders/s for {} s ({} outcomes) |",
        config.latency_rate, config.latency_seconds, latency.samples
    );
    println!("| p50 | {:.0} ms |", latency.p50);
    println!("| p99 | {:.0} ms |", latency.p99);
    println!("| p99.9 | {:.0} ms |", latency.p999);
    if latency.hops.is_empty() {
        return;
    }
    println!();
    println!("| hop (ms) | p50 | p99 | mean of the slowest 1% of orders |");
    println!("|---|---:|---:|---:|");
    for (name, p50, p99, tail) in &latency.hops {
        println!("| {name} | {p50:.0} | {p99:.0} | {tail:.0} |");
    }
}

/// The restore table: records restored, and their rate with and without the start-up.
pub fn print_restore(restored: f64, restore_seconds: f64, restoring_seconds: f64) {
    println!();
    println!("| restore from the changelogs (new instance, empty state dir) | value |");
    println!("|---|---:|");
    println!("| records restored | {restored:.0} |");
    println!("| start to ready | {restore_seconds:.1} s |");
    println!(
        "| records/s (including start-up) | {:.0} |",
        restored / restore_seconds.max(1e-9)
    );
    println!("| time in restore (sum over tasks) | {restoring_seconds:.2} s |");
    println!(
        "| records/s restoring | {:.0} |",
        restored / restoring_seconds.max(1e-9)
    );
}

/// The read model's tables: the sync's write alone, and the sync loop at a fixed rate.
pub fn print_sync(sync: &[(u64, f64); 3], sync_max_lag: f64, sync_rows_per_second: f64) {
    println!();
    println!("| read-model sync write alone (one transaction) | rows | seconds | rows/s |");
    println!("|---|---:|---:|---:|");
    for ((rows, seconds), name) in sync.iter().zip([
        "batched upsert (UNNEST, 5,000 rows per statement), new rows",
        "the same rows again (all refused by the offset guard)",
        "baseline: the same upserts one row per statement (a tenth of the orders)",
    ]) {
        println!(
            "| {name} | {rows} | {seconds:.2} | {:.0} |",
            *rows as f64 / seconds.max(1e-9)
        );
    }
    println!();
    println!(
        "| read-model sync loop fed 20,000 decided orders/s for 15 s (sync interval 1 s) | value |"
    );
    println!("|---|---:|");
    println!("| rows written per second | {sync_rows_per_second:.0} |");
    println!("| largest sync lag sampled | {sync_max_lag:.2} s |");
}
