//! What every run sets up: its own topics (a unique prefix), the seeded catalog, the orders,
//! and `processor` child processes started with the benchmark's configuration.

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;
use plumbing::connection::ConnectionArgs;
use testkit::child::{ChildProcess, Stderr, workspace_binary};
use testkit::{pg_schema, ports, unique};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// Partitions of every topic a run creates.
pub const PARTITIONS: &str = "4";

/// The metric counting decided orders.
pub const DECIDED: &str = "stockflow_order_outcomes_total";

/// One run's names: its topic prefix and application id.
#[derive(Debug, Clone)]
pub struct RunNames {
    pub prefix: String,
    pub app: String,
}

impl RunNames {
    /// A topic prefix (and application id) no other run uses, from `kind` (`bench`, ...),
    /// under the reserved `stockflow-test-` (what `scripts/stack.sh prune` deletes).
    pub fn new(kind: &str) -> Self {
        let prefix = format!("{}-", unique(kind));
        let app = format!("{prefix}app");
        Self { prefix, app }
    }

    /// The connection flags of this run's topics.
    pub fn connection(&self, config: &Config) -> ConnectionArgs {
        ConnectionArgs::new(&config.bootstrap, &config.registry, &self.prefix)
    }
}

/// A `processor` child process and where its metrics are.
#[derive(Debug)]
pub struct Processor {
    pub process: ChildProcess,
    pub metrics: SocketAddr,
}

/// Starts a processor for `run` on `state` with `guarantee` and the configuration's extra
/// processor arguments; with `log`, at level info into that file (else warnings to stderr).
pub fn start_processor(
    config: &Config,
    run: &RunNames,
    state: &Path,
    guarantee: &str,
    log: Option<&Path>,
) -> Processor {
    let metrics = ports::free_addr();
    let state = state.to_string_lossy();
    let metrics_addr = metrics.to_string();
    let schema = bench_schema(&run.app);
    let mut args: Vec<&str> = vec![
        "--bootstrap-servers",
        &config.bootstrap,
        "--schema-registry-url",
        &config.registry,
        "--topic-prefix",
        &run.prefix,
        "run",
        "--application-id",
        &run.app,
        "--state-dir",
        &state,
        "--metrics-addr",
        &metrics_addr,
        "--partitions",
        PARTITIONS,
        "--processing-guarantee",
        guarantee,
        "--database-url",
        &config.database_url,
        "--database-schema",
        &schema,
    ];
    args.extend(config.processor_args.iter().map(String::as_str));
    let process = ChildProcess::spawn(
        &workspace_binary("processor"),
        &args,
        &[
            ("RUST_LOG", if log.is_some() { "info" } else { "warn" }),
            ("NO_COLOR", "1"),
        ],
        log.map_or(Stderr::Inherit, Stderr::File),
    );
    Processor { process, metrics }
}

/// The read-model schema of a benchmark application (`stockflow_test_` + its unique name,
/// which `scripts/stack.sh prune` drops).
pub fn bench_schema(app: &str) -> String {
    pg_schema(app)
}

/// Publishes `count` orders of 1..=`lines_max` lines over 1,000 SKUs at `rate` per second
/// (0: as fast as the broker takes them), the stream seeded with `seed`.
pub async fn publish(
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

/// Seeds 1,000 SKUs with stock enough for every run.
pub async fn seed(connection: &ConnectionArgs) {
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

/// Tasks of a run: two sub-topologies on [`PARTITIONS`] partitions.
pub const TASKS: f64 = 8.0;

/// Starts `count` processors for `run`, each on a state dir of its own (returned with it), and
/// waits until the group has settled: every one ready and owning tasks, each task owned once.
pub async fn start_instances(
    config: &Config,
    run: &RunNames,
    count: usize,
    guarantee: &str,
) -> Vec<(Processor, tempfile::TempDir)> {
    let instances: Vec<_> = (0..count)
        .map(|_| {
            let state = tempfile::tempdir().expect("state dir");
            (
                start_processor(config, run, state.path(), guarantee, None),
                state,
            )
        })
        .collect();
    let started = std::time::Instant::now();
    loop {
        let processors: Vec<&Processor> = instances.iter().map(|(p, _)| p).collect();
        if settled(&processors).await {
            return instances;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "{count} instances did not settle in 2 minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether every processor is ready and owns tasks, and together they own each task once.
pub async fn settled(processors: &[&Processor]) -> bool {
    let mut tasks = 0.0;
    for processor in processors {
        if !testkit::prometheus::is_ready(processor.metrics).await {
            return false;
        }
        let page = testkit::prometheus::scrape(processor.metrics)
            .await
            .unwrap_or_default();
        let mine = page.sum("stockflow_assigned_tasks");
        if mine <= 0.0 {
            return false;
        }
        tasks += mine;
    }
    tasks == TASKS
}
