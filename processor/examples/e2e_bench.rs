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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use plumbing::admin::{TopicSpec, ensure_topics};
use plumbing::connection::ConnectionArgs;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::{Codec, OrderConfirmed, OrderRejected, now_millis};
use testkit::{stack, unique};
use tokio_util::sync::CancellationToken;

const PARTITIONS: &str = "4";

/// `--processor-arg`s: extra arguments for every processor the benchmark starts.
static PROCESSOR_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

#[derive(Debug, Parser)]
struct Args {
    /// Orders per throughput run.
    #[arg(long, default_value_t = 100_000)]
    orders: u64,
    /// Orders per second in the latency run.
    #[arg(long, default_value_t = 5_000)]
    latency_rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
    /// Only the baseline, the single-line exactly-once run and the latency run (for quick
    /// comparisons while tuning).
    #[arg(long)]
    quick: bool,
    /// Only the latency run (no baseline, throughput, restore or sync rows).
    #[arg(long)]
    latency_only: bool,
    /// In the latency run, also read the repartition topics and split each order's latency
    /// into its hops (the extra consumer costs the machine some CPU, so the headline figures
    /// are measured without it).
    #[arg(long)]
    latency_breakdown: bool,
    /// An extra argument for every processor the benchmark starts, e.g.
    /// `--processor-arg=-Xlinger.ms=20` (repeatable; for comparing settings in one run).
    #[arg(long = "processor-arg", value_name = "ARG", allow_hyphen_values = true)]
    processor_args: Vec<String>,
    /// Start each throughput run's processor first and publish the orders once it is ready,
    /// with the clock running. For several engine threads: the local broker has no initial
    /// rebalance delay, so with pre-published orders the first thread decides many of them
    /// alone before the others join.
    #[arg(long)]
    publish_after_ready: bool,
}

/// `--publish-after-ready`.
static PUBLISH_AFTER_READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

struct Row {
    name: String,
    orders: u64,
    /// Orders decided during `seconds` (all of them unless decided before the processor was
    /// ready): the rate's numerator.
    measured: u64,
    /// From the moment it could start (the processor reports ready: partitions assigned, state
    /// restored; the baseline reads its first record) to the last decision.
    seconds: f64,
    /// From the process start (the baseline's thread start) to that moment.
    startup: f64,
    /// The share of the whole machine's CPU (every process, both cores) busy during `seconds`.
    machine_busy: f64,
    /// Seconds spent committing (flushing, offsets, commit; the processor's stores too).
    commit_seconds: f64,
    /// Time spent processing records (decode to outputs), summed over engine threads.
    process_seconds: f64,
    cpu: f64,
    rss_mb: f64,
    /// CPU seconds of the local stack's broker and PostgreSQL during `seconds` (None when the
    /// stack is not the local one of `scripts/stack.sh`).
    stack_cpu: Option<StackCpu>,
    /// Rows the read-model sync wrote per second, from the processor's start until the read
    /// model held every decision.
    sync_rows_per_second: f64,
    /// The largest `stockflow_sync_lag_seconds` sampled during the run.
    sync_max_lag: f64,
    /// How long after the last decision the read model held it (the sync's lag at the end).
    sync_catch_up: f64,
}

fn connection(prefix: &str, bootstrap: &str, registry: &str) -> ConnectionArgs {
    generator::cli::Cli::try_parse_from([
        "generator",
        "--bootstrap-servers",
        bootstrap,
        "--schema-registry-url",
        registry,
        "--topic-prefix",
        prefix,
        "schemas",
        "list",
    ])
    .expect("connection arguments")
    .connection
}

fn processor_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("processor")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A processor's /metrics page (empty if it does not answer).
async fn scrape(addr: SocketAddr) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of metric `name`'s samples in a scraped page, over the label sets that contain the
/// value `label` if given, else over all of them.
fn sample(page: &str, name: &str, label: Option<&str>) -> f64 {
    let needle = label.map(|l| format!("\"{l}\""));
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| needle.as_ref().is_none_or(|n| l.contains(n.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The machine's (busy, total) CPU ticks so far, over all cores, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
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
fn busy_since(before: (u64, u64)) -> f64 {
    let after = machine_ticks();
    (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
}

/// CPU seconds (user + system) and peak RSS in MiB of a child, from /proc.
fn usage(pid: u32) -> (f64, f64) {
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
struct StackCpu {
    broker: f64,
    postgres: f64,
}

impl StackCpu {
    /// Read from the pid files of `scripts/stack.sh` (under `$STOCKFLOW_HOME/stack`); None when
    /// they are not there (a stack in containers).
    fn now() -> Option<Self> {
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

    fn since(&self, before: &Self) -> Self {
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

struct Processor {
    child: Child,
    metrics: SocketAddr,
}

fn start_processor(prefix: &str, app: &str, state: &Path, guarantee: &str) -> Processor {
    start_processor_logged(prefix, app, state, guarantee, None)
}

fn start_processor_logged(
    prefix: &str,
    app: &str,
    state: &Path,
    guarantee: &str,
    log: Option<&Path>,
) -> Processor {
    let stack_env = |k: &str| std::env::var(k).expect("the stack's environment");
    let metrics = free_addr();
    let child = Command::new(processor_binary())
        .args([
            "--bootstrap-servers",
            &stack_env("KAFKA_BOOTSTRAP_SERVERS"),
            "--schema-registry-url",
            &stack_env("SCHEMA_REGISTRY_URL"),
            "--topic-prefix",
            prefix,
            "run",
            "--application-id",
            app,
            "--state-dir",
            &state.to_string_lossy(),
            "--metrics-addr",
            &metrics.to_string(),
            "--partitions",
            PARTITIONS,
            "--processing-guarantee",
            guarantee,
            "--database-schema",
            &bench_schema(app),
        ])
        .args(PROCESSOR_ARGS.get().into_iter().flatten())
        .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        })
        .spawn()
        .expect("the processor starts");
    Processor { child, metrics }
}

/// The read-model schema of a benchmark application (`bench_` + its unique name).
fn bench_schema(app: &str) -> String {
    let name: String = app
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let keep = name.len().min(57);
    format!("bench_{}", &name[name.len() - keep..])
}

const DECIDED: &str = "stockflow_order_outcomes_total";

async fn publish(
    connection: &ConnectionArgs,
    count: u64,
    lines_max: u32,
    rate: u64,
    seed: u64,
) -> generator::app::RunSummary {
    let (count, lines, rate, seed) = (
        count.to_string(),
        lines_max.to_string(),
        rate.to_string(),
        seed.to_string(),
    );
    let cli = generator::cli::Cli::try_parse_from([
        "generator",
        "run",
        "--partitions",
        PARTITIONS,
        "--count",
        &count,
        "--rate",
        &rate,
        "--seed",
        &seed,
        "--synthetic-skus",
        "1000",
        "--lines-max",
        &lines,
    ])
    .expect("run arguments");
    let generator::cli::Command::Run(args) = cli.command else {
        unreachable!("parsed as run")
    };
    generator::app::run_orders(connection, &args, CancellationToken::new())
        .await
        .expect("publishes")
}

async fn seed(connection: &ConnectionArgs) {
    let cli = generator::cli::Cli::try_parse_from([
        "generator",
        "seed",
        "--partitions",
        PARTITIONS,
        "--synthetic-skus",
        "1000",
        "--synthetic-stock",
        "1000000000",
    ])
    .expect("seed arguments");
    let generator::cli::Command::Seed(args) = cli.command else {
        unreachable!("parsed as seed")
    };
    generator::app::seed(connection, &args)
        .await
        .expect("seeds");
}

/// Pre-publishes the orders, then times one processor deciding them all.
async fn throughput(
    name: &str,
    lines_max: u32,
    guarantee: &str,
    orders: u64,
    bootstrap: &str,
    registry: &str,
) -> (Row, String, String) {
    let prefix = format!("{}-", unique("bench"));
    let app = format!("{prefix}app");
    let connection = connection(&prefix, bootstrap, registry);
    seed(&connection).await;
    let publish_after_ready = PUBLISH_AFTER_READY.get().copied().unwrap_or(false);
    let summary = if publish_after_ready {
        None
    } else {
        Some(publish(&connection, orders, lines_max, 0, 42).await)
    };
    let state = tempfile::tempdir().expect("state dir");
    let launched = Instant::now();
    let mut processor = start_processor(&prefix, &app, state.path(), guarantee);
    while !is_ready(processor.metrics).await {
        assert!(
            launched.elapsed() < Duration::from_secs(120),
            "{name}: not ready in 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let startup = launched.elapsed().as_secs_f64();
    let started = Instant::now();
    let ticks = machine_ticks();
    let stack_before = StackCpu::now();
    // With several engine threads, the first may decide pre-published orders before the last
    // has joined the group and restored (the local broker has no initial rebalance delay):
    // only what is decided once all are ready counts.
    let decided_before = sample(&scrape(processor.metrics).await, DECIDED, None);
    // Published now, the orders are all decided within the clock, and the publishing
    // competes with the processor for the CPU meanwhile.
    let summary = match summary {
        Some(summary) => summary,
        None => publish(&connection, orders, lines_max, 0, 42).await,
    };
    let target = (summary.valid + summary.invalid) as f64;
    let mut sync_max_lag: f64 = 0.0;
    loop {
        let page = scrape(processor.metrics).await;
        sync_max_lag = sync_max_lag.max(sample(&page, "stockflow_sync_lag_seconds", None));
        if sample(&page, DECIDED, None) >= target {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{name}: not done in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Time spent committing (Kafka and stores) and processing, from the processor's own
    // histograms: the rest of an engine's time is spent polling and waiting for records.
    let page = scrape(processor.metrics).await;
    let commit_seconds = sample(&page, "stockflow_commit_latency_seconds_sum", None);
    let process_seconds = sample(&page, "stockflow_processing_latency_seconds_sum", None);
    let machine_busy = busy_since(ticks);
    let stack_cpu = stack_before.zip(StackCpu::now()).map(|(b, a)| a.since(&b));
    let (cpu, rss_mb) = usage(processor.child.id());
    // The read model holds every decision once the sync has nothing waiting and has written
    // the decided orders (one row each in `orders`).
    let sync_rows = loop {
        let page = scrape(processor.metrics).await;
        let orders = sample(&page, "stockflow_sync_rows_total", Some("orders"));
        let waiting = sample(&page, "stockflow_sync_lag_rows", None);
        if orders >= target && waiting == 0.0 {
            break sample(&page, "stockflow_sync_rows_total", None);
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{name}: the read model never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sync_seconds = started.elapsed().as_secs_f64();
    let _ = processor.child.kill();
    let _ = processor.child.wait();
    (
        Row {
            name: name.to_owned(),
            orders,
            measured: orders - decided_before as u64,
            seconds,
            startup,
            machine_busy,
            commit_seconds,
            process_seconds,
            cpu,
            rss_mb,
            stack_cpu,
            sync_rows_per_second: sync_rows / sync_seconds,
            sync_max_lag,
            sync_catch_up: sync_seconds - seconds,
        },
        prefix,
        app,
    )
}

/// Committed changes as the engine hands them to the sync: orders `first..first + n` (1-3
/// lines each, decided) of an orders task, or skus `first..first + n` of an inventory task.
fn bench_changes(
    store: &'static str,
    first: u64,
    n: u64,
    offset: i64,
) -> processor::runtime::store::Applied {
    use processor::runtime::store::Store;
    use processor::runtime::task::TaskId;
    use processor::topology::ORDERS_STORE;
    use processor::topology::inventory::{SkuRecord, keys};
    use processor::topology::order::{OrderRecord, OrderStatus};
    use schemas::OrderLine;

    let entries = (first..first + n)
        .map(|i| match store {
            ORDERS_STORE => (
                format!("bench-order-{i:08}").into_bytes(),
                Store::encode(&OrderRecord {
                    customer_id: format!("customer-{}", i % 5000),
                    currency: "EUR".into(),
                    created_at: now_millis(),
                    lines: (0..1 + i % 3)
                        .map(|l| OrderLine {
                            sku: format!("SKU-{:06}", (i + l) % 1000),
                            quantity: 1 + (l as i32),
                            unit_price_cents: 1999,
                        })
                        .collect(),
                    total_cents: 1999,
                    status: OrderStatus::Confirmed,
                    decided_at: Some(now_millis()),
                }),
            ),
            _ => (
                keys::sku(&format!("SKU-{:06}", i % 1000)).into_bytes(),
                Store::encode(&SkuRecord {
                    available: 100,
                    reserved: 5,
                    product_name: Some(format!("Product {i}")),
                    unit_price_cents: Some(1999),
                    updated_at: now_millis(),
                }),
            ),
        })
        .collect();
    let sub = if store == ORDERS_STORE { 0 } else { 1 };
    processor::runtime::store::Applied {
        task: TaskId { sub, partition: 0 },
        store,
        changelog_offset: offset,
        entries,
        committed_at: Instant::now(),
    }
}

/// The sync's write alone: `orders` orders of 1-3 lines and 1,000 skus, upserted by the
/// read model's batched write into a fresh schema; then the same rows again (every one refused
/// by the offset guard); and, as the baseline, the same upserts one row per statement for a
/// tenth of the orders. Returns (rows, seconds) for each.
async fn sync_write(database_url: &str, orders: u64) -> [(u64, f64); 3] {
    use processor::readmodel::Pending;
    use processor::readmodel::postgres::{CHUNK, Written, connect, write_in_chunks};
    use processor::topology::{INVENTORY_STORE, ORDERS_STORE};

    let batch = |n: u64, offset: i64| {
        let mut pending = Pending::default();
        pending.add(bench_changes(ORDERS_STORE, 0, n, offset));
        pending.add(bench_changes(INVENTORY_STORE, 0, 1000, offset));
        pending
    };
    let rows = |w: Written| w.inventory + w.orders + w.order_lines;

    let schema = bench_schema(&unique("sync-write"));
    let pool = connect(database_url, &schema)
        .await
        .expect("the read model");
    let pending = batch(orders, 10);
    let started = Instant::now();
    let written = write_in_chunks(&pool, &pending, CHUNK)
        .await
        .expect("writes");
    let batched = (rows(written), started.elapsed().as_secs_f64());
    let started = Instant::now();
    write_in_chunks(&pool, &pending, CHUNK)
        .await
        .expect("writes");
    let guarded = (batched.0, started.elapsed().as_secs_f64());

    let schema = bench_schema(&unique("sync-write-one-by-one"));
    let pool = connect(database_url, &schema)
        .await
        .expect("the read model");
    let pending = batch(orders / 10, 10);
    let started = Instant::now();
    let written = write_in_chunks(&pool, &pending, 1).await.expect("writes");
    let one_by_one = (rows(written), started.elapsed().as_secs_f64());
    [batched, guarded, one_by_one]
}

/// The sync loop itself at `rate` decided orders/s (1-3 lines each, every 100 ms a commit's
/// worth, plus the skus they touched) for `seconds`, with a 1 s sync interval: the largest
/// `stockflow_sync_lag_seconds` sampled, and the rows written per second.
async fn sync_lag_at(database_url: &str, rate: u64, seconds: u64) -> (f64, f64) {
    use processor::readmodel::postgres::{connect, run_sync};
    use processor::topology::{INVENTORY_STORE, ORDERS_STORE};

    let schema = bench_schema(&unique("sync-lag"));
    let pool = connect(database_url, &schema)
        .await
        .expect("the read model");
    let metrics = processor::metrics::Metrics::new(prometheus::Registry::new());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let sync = tokio::spawn(run_sync(
        pool,
        receiver,
        Duration::from_secs(1),
        metrics.clone(),
    ));
    let per_commit = rate / 10;
    let started = Instant::now();
    let mut max_lag: f64 = 0.0;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    for commit in 0..seconds * 10 {
        ticker.tick().await;
        let offset = commit as i64 * 10 + 10;
        let first = commit * per_commit;
        sender
            .send(bench_changes(ORDERS_STORE, first, per_commit, offset))
            .expect("the sync runs");
        sender
            .send(bench_changes(
                INVENTORY_STORE,
                first,
                per_commit.min(1000),
                offset,
            ))
            .expect("the sync runs");
        max_lag = max_lag.max(metrics.sync_lag_seconds.get());
    }
    while metrics.sync_lag_rows.get() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        max_lag = max_lag.max(metrics.sync_lag_seconds.get());
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(sender);
    sync.await.expect("the sync ends");
    let rows: u64 = ["inventory", "orders", "order_lines"]
        .iter()
        .map(|t| metrics.sync_rows.with_label_values(&[t]).get())
        .sum();
    (max_lag, rows as f64 / elapsed)
}

/// The raw pass-through baseline: 3 reads and 8 writes per order, transactional, no state.
async fn baseline(orders: u64, bootstrap: &str, registry: &str) -> Row {
    let prefix = format!("{}-", unique("baseline"));
    let connection = connection(&prefix, bootstrap, registry);
    publish(&connection, orders, 1, 0, 42).await;
    let topics = connection.topics();
    let (hop1, hop2, sink) = (
        format!("{prefix}hop1"),
        format!("{prefix}hop2"),
        format!("{prefix}sink"),
    );
    let config = connection.client_config();
    ensure_topics(
        &config,
        &[
            TopicSpec::new(&hop1, 4),
            TopicSpec::new(&hop2, 4),
            TopicSpec::new(&sink, 4),
        ],
    )
    .await
    .expect("baseline topics");
    let (input, hop1_t, hop2_t, sink_t) = (
        topics.orders.clone(),
        hop1.clone(),
        hop2.clone(),
        sink.clone(),
    );
    let launched = Instant::now();
    let cpu_before = usage(std::process::id()).0;
    let handle = std::thread::spawn(move || {
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", format!("{input}-baseline"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            .create()
            .expect("consumer");
        let producer: BaseProducer = config
            .clone()
            .set("transactional.id", format!("{input}-baseline"))
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init transactions");
        consumer
            .subscribe(&[&input, &hop1_t, &hop2_t])
            .expect("subscribe");
        let mut finished = 0u64;
        let mut in_txn = false;
        let mut positions: HashMap<(String, i32), i64> = HashMap::new();
        let mut last_commit = Instant::now();
        let mut committing = Duration::ZERO;
        let mut first_record = None;
        let send = |topic: &str, key: &[u8], payload: &[u8]| {
            let mut record = BaseRecord::to(topic).key(key).payload(payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
        };
        while finished < orders {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                first_record
                    .get_or_insert_with(|| (Instant::now(), machine_ticks(), StackCpu::now()));
                if !in_txn {
                    producer.begin_transaction().expect("begin");
                    in_txn = true;
                }
                let (key, payload) = (m.key().unwrap_or_default(), m.payload().unwrap_or_default());
                let topic = m.topic();
                if topic == input {
                    send(&hop1_t, key, payload);
                    send(&sink_t, key, payload);
                } else if topic == hop1_t {
                    send(&hop2_t, key, payload);
                    for _ in 0..3 {
                        send(&sink_t, key, payload);
                    }
                } else {
                    send(&sink_t, key, payload);
                    send(&sink_t, key, payload);
                    finished += 1;
                }
                positions.insert((topic.to_owned(), m.partition()), m.offset() + 1);
            }
            producer.poll(Duration::ZERO);
            if in_txn && last_commit.elapsed() >= Duration::from_millis(100) {
                let commit_started = Instant::now();
                while producer.in_flight_count() > 0 {
                    producer.poll(Duration::from_millis(1));
                }
                let mut tpl = TopicPartitionList::new();
                for ((t, p), o) in &positions {
                    tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                        .expect("offset");
                }
                let group = consumer.group_metadata().expect("group metadata");
                producer
                    .send_offsets_to_transaction(&tpl, &group, Duration::from_secs(30))
                    .expect("offsets");
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .expect("commit");
                in_txn = false;
                last_commit = Instant::now();
                committing += last_commit - commit_started;
            }
        }
        let (started, ticks, stack) = first_record.expect("records were read");
        (started, ticks, stack, committing.as_secs_f64())
    });
    let (started, ticks, stack_before, commit_seconds) = handle.join().expect("baseline loop");
    let seconds = started.elapsed().as_secs_f64();
    let machine_busy = busy_since(ticks);
    let stack_cpu = stack_before.zip(StackCpu::now()).map(|(b, a)| a.since(&b));
    let startup = (started - launched).as_secs_f64();
    let (cpu_after, rss_mb) = usage(std::process::id());
    Row {
        name: "raw pass-through baseline (3 reads, 8 writes / order)".into(),
        orders,
        measured: orders,
        seconds,
        startup,
        machine_busy,
        commit_seconds,
        process_seconds: 0.0,
        cpu: cpu_after - cpu_before,
        rss_mb,
        stack_cpu,
        sync_rows_per_second: 0.0,
        sync_max_lag: 0.0,
        sync_catch_up: 0.0,
    }
}

async fn is_ready(addr: SocketAddr) -> bool {
    reqwest::get(format!("http://{addr}/ready"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// What the latency run measured.
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    samples: usize,
    /// With `--latency-breakdown`: per hop, its name, p50, p99 and mean over the slowest 1% of
    /// orders.
    hops: Vec<(&'static str, f64, f64, f64)>,
}

/// The hops of a single-line order, for `--latency-breakdown`. Each is read from the Kafka
/// timestamp (CreateTime, set when the record was handed to the producer) of the record that
/// ends it, so each hop includes the previous step's commit, the fetch and the processing.
const HOPS: [&str; 4] = [
    "created_at -> reserve command produced (task A)",
    "-> line result produced (task B)",
    "-> outcome produced (task A)",
    "-> outcome received (read_committed)",
];

/// The value at quantile `p` of sorted `values`.
fn quantile(values: &[f64], p: f64) -> f64 {
    values
        .get(((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Order end-to-end latency at a fixed rate: created_at to receipt by a read_committed consumer.
async fn latency(
    rate: u64,
    seconds: u64,
    breakdown: bool,
    bootstrap: &str,
    registry: &str,
) -> Latency {
    let prefix = format!("{}-", unique("latency"));
    let app = format!("{prefix}app");
    let connection = connection(&prefix, bootstrap, registry);
    seed(&connection).await;
    let state = tempfile::tempdir().expect("state dir");
    let processor = start_processor(&prefix, &app, state.path(), "exactly_once_v2");
    let topics = connection.topics();
    let codec = Codec::new(registry, &topics).expect("codec");
    // Wait until the processor is ready (its output topics exist) before the clock starts.
    let ready = Instant::now();
    while !is_ready(processor.metrics).await {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "processor not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Partitions assigned by hand: no group join delays the first outcomes.
    let consumer: StreamConsumer = connection
        .client_config()
        .set("group.id", format!("{prefix}latency"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let (internal, wiring) = processor::topology::describe_wired(&app, &topics);
    let commands_topic = internal.sink(wiring.line_commands).to_owned();
    let results_topic = internal.sink(wiring.line_results).to_owned();
    let mut assigned = vec![&topics.orders_confirmed, &topics.orders_rejected];
    if breakdown {
        assigned.extend([&commands_topic, &results_topic]);
    }
    let mut assignment = TopicPartitionList::new();
    for topic in assigned {
        for partition in 0..PARTITIONS.parse::<i32>().expect("a number") {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    // Orders of the first seconds warm caches and connections up; they are not counted.
    let warm_until = now_millis() + 2_000;
    let expected = rate * seconds;
    let publisher = {
        let connection = connection.clone();
        tokio::spawn(async move { publish(&connection, expected, 1, rate, 7).await })
    };
    // Per counted order: created_at, the outcome's timestamp, its receipt, and its id.
    let mut outcomes = Vec::with_capacity(expected as usize);
    // With `breakdown`: when each order's reserve command and line result were produced.
    let mut commands: HashMap<String, i64> = HashMap::new();
    let mut results: HashMap<Vec<u8>, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    let mut warmup = 0u64;
    while (outcomes.len() as u64) + warmup < expected && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        let received = now_millis();
        let produced = m.timestamp().to_millis().unwrap_or_default();
        let payload = m.payload().unwrap_or_default();
        let outcome = if m.topic() == topics.orders_confirmed {
            codec
                .decode::<OrderConfirmed>(payload)
                .await
                .map(|c| (c.created_at, c.order_id))
        } else if m.topic() == topics.orders_rejected {
            codec
                .decode::<OrderRejected>(payload)
                .await
                .map(|r| (r.created_at, r.order_id))
        } else if m.topic() == commands_topic {
            if let Ok(envelope) =
                processor::runtime::format::decode::<processor::topology::CommandEnvelope>(payload)
            {
                let (processor::topology::LineCommand::Reserve { order_id, .. }
                | processor::topology::LineCommand::Release { order_id, .. }) = envelope.command;
                commands.entry(order_id).or_insert(produced);
            }
            continue;
        } else {
            results
                .entry(m.key().unwrap_or_default().to_vec())
                .or_insert(produced);
            continue;
        };
        match outcome {
            Ok((created_at, order_id)) if created_at >= warm_until => {
                outcomes.push((created_at, produced, received, order_id))
            }
            Ok(_) => warmup += 1,
            Err(_) => {}
        }
    }
    publisher.await.expect("publisher");
    let mut processor = processor;
    let _ = processor.child.kill();
    let _ = processor.child.wait();
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .map(|(created, _, received, _)| (received - created) as f64)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let hops = if breakdown {
        hop_breakdown(&outcomes, &commands, &results)
    } else {
        Vec::new()
    };
    Latency {
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        p999: quantile(&latencies, 0.999),
        samples: latencies.len(),
        hops,
    }
}

/// Splits each order's latency into [`HOPS`]: their p50 and p99, and their mean over the
/// slowest 1% of orders (what the tail is made of). Orders whose command or result was not
/// seen are left out.
fn hop_breakdown(
    outcomes: &[(i64, i64, i64, String)],
    commands: &HashMap<String, i64>,
    results: &HashMap<Vec<u8>, i64>,
) -> Vec<(&'static str, f64, f64, f64)> {
    let mut orders: Vec<[f64; 4]> = outcomes
        .iter()
        .filter_map(|(created, produced, received, id)| {
            let command = *commands.get(id)?;
            let result = *results.get(id.as_bytes())?;
            Some([
                (command - created) as f64,
                (result - command) as f64,
                (produced - result) as f64,
                (received - produced) as f64,
            ])
        })
        .collect();
    orders.sort_by(|a, b| a.iter().sum::<f64>().total_cmp(&b.iter().sum()));
    let tail = &orders[orders.len() - orders.len().div_ceil(100)..];
    HOPS.iter()
        .enumerate()
        .map(|(i, &name)| {
            let mut hop: Vec<f64> = orders.iter().map(|o| o[i]).collect();
            hop.sort_by(f64::total_cmp);
            let tail_mean = tail.iter().map(|o| o[i]).sum::<f64>() / tail.len().max(1) as f64;
            (name, quantile(&hop, 0.5), quantile(&hop, 0.99), tail_mean)
        })
        .collect()
}

/// A new instance with an empty state dir restores everything from the changelogs.
async fn restore_rate(prefix: &str, app: &str) -> (f64, f64, f64) {
    let state = tempfile::tempdir().expect("state dir");
    let log = state.path().join("processor.log");
    let started = Instant::now();
    let mut processor =
        start_processor_logged(prefix, app, state.path(), "exactly_once_v2", Some(&log));
    while !is_ready(processor.metrics).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let restored = sample(
        &scrape(processor.metrics).await,
        "stockflow_restored_records_total",
        None,
    );
    let _ = processor.child.kill();
    let _ = processor.child.wait();
    // Time spent restoring alone: the sum of the tasks' `elapsed_ms` in "task running" lines.
    let restoring_ms: f64 = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("task running"))
        .filter_map(|l| {
            l.split("elapsed_ms")
                .nth(1)?
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    (restored, seconds, restoring_ms / 1000.0)
}

/// A stack CPU figure for the table, or `-` when it could not be read.
fn stack_column(cpu: Option<StackCpu>, figure: impl Fn(&StackCpu) -> f64) -> String {
    cpu.map_or_else(|| "-".to_owned(), |c| format!("{:.1}", figure(&c)))
}

/// The throughput table: the baseline, then the processor rows.
fn print_throughput(base: &Row, rows: &[Row]) {
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
fn print_latency(args: &Args, latency: &Latency) {
    println!();
    println!(
        "| order end-to-end latency (created_at -> outcome received, read_committed) | value |"
    );
    println!("|---|---:|");
    println!(
        "| rate | {} orders/s for {} s ({} outcomes) |",
        args.latency_rate, args.latency_seconds, latency.samples
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

#[tokio::main]
async fn main() {
    let args = Args::parse();
    PUBLISH_AFTER_READY
        .set(args.publish_after_ready)
        .expect("set once");
    PROCESSOR_ARGS
        .set(args.processor_args.clone())
        .expect("set once");
    let stack = stack().await;
    let (bootstrap, registry) = (
        stack.bootstrap_servers.clone(),
        stack.schema_registry_url.clone(),
    );
    let n = args.orders;
    println!(
        "Stockflow end-to-end benchmark: {n} orders per run, 4 partitions, 1000 SKUs, one processor instance"
    );
    if !args.processor_args.is_empty() {
        println!("Processor arguments: {}", args.processor_args.join(" "));
    }
    if args.publish_after_ready {
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
    let runs = match (args.latency_only, args.quick) {
        (true, _) => &runs[..0],
        (false, true) => &runs[..1],
        (false, false) => &runs[..],
    };
    if !args.latency_only {
        base = Some(baseline(n, &bootstrap, &registry).await);
    }
    for &(name, lines, guarantee) in runs {
        let (row, prefix, app) = throughput(name, lines, guarantee, n, &bootstrap, &registry).await;
        if restore_source.is_none() {
            restore_source = Some((prefix, app));
        }
        rows.push(row);
    }
    let latency = latency(
        args.latency_rate,
        args.latency_seconds,
        args.latency_breakdown,
        &bootstrap,
        &registry,
    )
    .await;
    if let Some(base) = &base {
        print_throughput(base, &rows);
    }
    print_latency(&args, &latency);
    if args.quick || args.latency_only {
        return;
    }
    let (restored, restore_seconds, restoring_seconds) = match &restore_source {
        Some((prefix, app)) => restore_rate(prefix, app).await,
        None => (0.0, 0.0, 0.0),
    };
    let sync = sync_write(&stack.database_url, n).await;
    let (sync_max_lag, sync_rows_per_second) = sync_lag_at(&stack.database_url, 20_000, 15).await;

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
