//! End-to-end benchmark of the processor against the real local stack, printing a table.
//!
//! Run it with `scripts/bench.sh` (which starts the stack), or, with the stack's environment
//! set, `cargo run --release --example e2e_bench -- [--orders N] [--latency-rate R]`.
//!
//! For each stream shape (single-line, multi-line) and guarantee (exactly_once_v2,
//! at_least_once) it pre-publishes N orders, starts a `processor` child process, and measures
//! how long deciding all of them takes (orders/s), the processor's CPU seconds and peak RSS.
//! The clock starts when the processor reports ready (partitions assigned, state restored;
//! the baseline: when it reads its first record), so the rate is the sustained one; the
//! start-up before that is reported in its own column.
//! In the same run it measures a raw pass-through baseline: an rdkafka consume-and-produce loop
//! with transactions and the same commit interval that does the same number of Kafka reads and
//! writes per order as the single-line topology (3 reads, 8 writes) with no state and no
//! decisions. It then measures order end-to-end latency (created_at to the outcome as a
//! read_committed consumer receives it) at a fixed rate, and the restore rate of a new
//! instance that rebuilds all state from the changelogs.
//!
//! For the PostgreSQL read model it reports, during each throughput run, the rows the sync
//! wrote per second and the largest sync lag sampled (`stockflow_sync_lag_seconds`); and it
//! times the sync's batched write alone (UNNEST, 5,000 rows per statement) against the same
//! upserts one row per statement, on the same rows.
//!
//! Layout:
//! - `main.rs`: the configuration ([`Config`]: flags, and the stack's endpoints) and the
//!   sequence of runs.
//! - `setup`: a run's names and topics, seeding, publishing, processor child processes.
//! - `throughput`: a processor deciding pre-published orders; the raw pass-through baseline.
//! - `latency`: order latency at a fixed rate, and its split into hops.
//! - `restore`: a new instance restoring a throughput run's state.
//! - `scaling`: 1, 2 and 3 instances, and a scale-out while orders flow (`--scaling`).
//! - `sync`: the read model's sync alone.
//! - `machine`: CPU and memory from /proc.
//! - `report`: the tables.

mod latency;
mod machine;
mod report;
mod restore;
mod scaling;
mod setup;
mod sync;
mod throughput;

use clap::Parser;
use testkit::stack;

use crate::latency::latency;
use crate::report::{print_latency, print_restore, print_sync, print_throughput};
use crate::restore::restore_rate;
use crate::sync::{sync_lag_at, sync_write};
use crate::throughput::{baseline, throughput};

/// The benchmark's configuration: its flags, and the stack's endpoints found at start.
#[derive(Debug, Clone, Parser)]
pub struct Config {
    /// Orders per throughput run.
    #[arg(long, default_value_t = 100_000)]
    pub orders: u64,
    /// Orders per second in the latency run.
    #[arg(long, default_value_t = 5_000)]
    pub latency_rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 15)]
    pub latency_seconds: u64,
    /// Only the baseline, the single-line exactly-once run and the latency run (for quick
    /// comparisons while tuning).
    #[arg(long)]
    pub quick: bool,
    /// Only the latency run (no baseline, throughput, restore or sync rows).
    #[arg(long)]
    pub latency_only: bool,
    /// In the latency run, also read the repartition topics and split each order's latency
    /// into its hops (the extra consumer costs the machine some CPU, so the headline figures
    /// are measured without it).
    #[arg(long)]
    pub latency_breakdown: bool,
    /// An extra argument for every processor the benchmark starts, e.g.
    /// `--processor-arg=-Xlinger.ms=20` (repeatable; for comparing settings in one run).
    #[arg(long = "processor-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub processor_args: Vec<String>,
    /// Start each throughput run's processor first and publish the orders once it is ready,
    /// with the clock running. For several engine threads: the local broker has no initial
    /// rebalance delay, so with pre-published orders the first thread decides many of them
    /// alone before the others join.
    #[arg(long)]
    pub publish_after_ready: bool,
    /// Only the scaling tables: orders/s and latency with 1, 2 and 3 instances, and a
    /// scale-out from 1 to 2 instances while orders flow (each group protocol).
    #[arg(long)]
    pub scaling: bool,
    /// Kafka's bootstrap servers (from the stack, not a flag).
    #[arg(skip)]
    pub bootstrap: String,
    /// The schema registry's URL (from the stack, not a flag).
    #[arg(skip)]
    pub registry: String,
    /// PostgreSQL's URL (from the stack, not a flag).
    #[arg(skip)]
    pub database_url: String,
}

#[tokio::main]
async fn main() {
    let mut config = Config::parse();
    let stack = stack().await;
    config.bootstrap = stack.bootstrap_servers.clone();
    config.registry = stack.schema_registry_url.clone();
    config.database_url = stack.database_url.clone();
    run(&config).await;
}

/// The scaling tables (`--scaling`).
async fn scaling(config: &Config) {
    println!(
        "Stockflow scaling benchmark: {} single-line orders per run, 4 partitions (8 tasks), 1000 SKUs, exactly_once_v2, latency at {} orders/s for {} s",
        config.orders, config.latency_rate, config.latency_seconds
    );
    let mut rows = Vec::new();
    for instances in 1..=3 {
        rows.push(scaling::scale_row(config, instances, config.latency_rate).await);
    }
    let mut outs = Vec::new();
    for extra in [&[][..], &["--group-protocol", "consumer"][..]] {
        outs.push(scaling::scale_out(config, config.latency_rate, 60, extra).await);
    }
    scaling::print_scaling(&rows, &outs);
}

/// Every run the configuration asks for, and their tables.
async fn run(config: &Config) {
    if config.scaling {
        return scaling(config).await;
    }
    let n = config.orders;
    println!(
        "Stockflow end-to-end benchmark: {n} orders per run, 4 partitions, 1000 SKUs, one processor instance"
    );
    if !config.processor_args.is_empty() {
        println!("Processor arguments: {}", config.processor_args.join(" "));
    }
    if config.publish_after_ready {
        println!("Orders published once each processor is ready, with the clock running.");
    }

    // The throughput runs come first: they also warm the broker up for the latency run.
    let mut base = None;
    let mut rows = Vec::new();
    let mut restore_source = None;
    let runs = [
        ("single-line, exactly_once_v2", 1, "exactly_once_v2"),
        ("single-line, at_least_once", 1, "at_least_once"),
        ("multi-line (1-5), exactly_once_v2", 5, "exactly_once_v2"),
        ("multi-line (1-5), at_least_once", 5, "at_least_once"),
    ];
    let runs = match (config.latency_only, config.quick) {
        (true, _) => &runs[..0],
        (false, true) => &runs[..1],
        (false, false) => &runs[..],
    };
    if !config.latency_only {
        base = Some(baseline(config).await);
    }
    for &(name, lines, guarantee) in runs {
        let (row, run) = throughput(config, name, lines, guarantee).await;
        if restore_source.is_none() {
            restore_source = Some(run);
        }
        rows.push(row);
    }
    let latency = latency(config).await;
    if let Some(base) = &base {
        print_throughput(base, &rows);
    }
    print_latency(config, &latency);
    if config.quick || config.latency_only {
        return;
    }
    let (restored, restore_seconds, restoring_seconds) = match &restore_source {
        Some(run) => restore_rate(config, run).await,
        None => (0.0, 0.0, 0.0),
    };
    let sync = sync_write(&config.database_url, n).await;
    let (sync_max_lag, sync_rows_per_second) = sync_lag_at(&config.database_url, 20_000, 15).await;
    print_restore(restored, restore_seconds, restoring_seconds);
    print_sync(&sync, sync_max_lag, sync_rows_per_second);
}
