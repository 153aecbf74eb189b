//! The run's world: its names and topics (under the reserved test prefix, so that
//! `scripts/stack.sh prune` deletes them), the seeded catalog, the generator, and the two
//! processor instances, which talk to the broker through the fault proxy and are started
//! again on their state when they have been killed or have exited.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use plumbing::connection::ConnectionArgs;
use schemas::{Codec, Topics};
use testkit::child::{ChildProcess, Stderr, workspace_binary};
use testkit::proxy::PROXY_ADDRESS;
use testkit::{Stack, pg_schema, ports, stack, unique};
use tokio_util::sync::CancellationToken;

use super::Config;
use super::report::Exit;

/// Partitions of every topic.
pub const PARTITIONS: i32 = 6;
/// The instances' names.
pub const INSTANCES: [&str; 2] = ["a", "b"];
/// How long an instance may take to report ready.
const READY_DEADLINE: Duration = Duration::from_secs(180);

/// The processors' counters the report sums over every process: (name in the report, metric,
/// and the `outcome` label for transactions).
pub const COUNTERS: [(&str, &str, Option<&str>); 6] = [
    ("late records", "stockflow_late_records_total", None),
    (
        "transactions committed",
        "stockflow_transactions_total",
        Some("committed"),
    ),
    (
        "transactions aborted",
        "stockflow_transactions_total",
        Some("aborted"),
    ),
    (
        "transactions indefinite",
        "stockflow_transactions_total",
        Some("indefinite"),
    ),
    ("rebalances", "stockflow_rebalances_total", None),
    (
        "processing retries",
        "stockflow_processing_retries_total",
        None,
    ),
];

/// One run's names, topics, services and processor instances.
#[derive(Debug)]
pub struct World {
    /// The run's name (`stockflow-test-soak-...`), its topic prefix without the final `-`.
    pub name: String,
    pub config: Config,
    /// The seed of the order stream.
    pub seed: u64,
    pub stack: &'static Stack,
    /// The run's topics, reached directly (not through the proxy).
    pub connection: ConnectionArgs,
    pub topics: Topics,
    /// Shared with the checks' reader threads.
    pub codec: Arc<Codec>,
    pub application_id: String,
    pub database_schema: String,
    pub log_dir: PathBuf,
    /// The instances, in [`INSTANCES`] order.
    pub instances: Vec<Instance>,
    /// The [`COUNTERS`] of every process (instance, start) as scraped last.
    pub counters: BTreeMap<(&'static str, u32), BTreeMap<&'static str, f64>>,
    _state: tempfile::TempDir,
}

/// A processor instance: its state directory survives its processes.
#[derive(Debug)]
pub struct Instance {
    pub name: &'static str,
    pub state: PathBuf,
    /// The running process; `None` between a kill and the start that follows.
    pub process: Option<ChildProcess>,
    pub metrics: SocketAddr,
    /// How many processes have run on this state so far.
    pub starts: u32,
}

impl World {
    pub async fn new(config: &Config, seed: u64) -> Self {
        let stack = stack().await;
        assert!(
            stack.is_local(),
            "the soak stops and starts the broker, the registry and PostgreSQL, and needs the \
             broker's proxied listener: run it against the local stack (scripts/stack.sh)"
        );
        let name = unique("soak");
        let connection = ConnectionArgs::new(
            &stack.bootstrap_servers,
            &stack.schema_registry_url,
            &format!("{name}-"),
        );
        let topics = connection.topics();
        let codec = Arc::new(Codec::new(&stack.schema_registry_url, &topics).expect("a codec"));
        let state = tempfile::tempdir().expect("a state directory");
        let log_dir = config
            .log_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(&name));
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        let instances = INSTANCES
            .iter()
            .map(|name| Instance {
                name,
                state: state.path().join(name),
                process: None,
                metrics: ports::free_addr(),
                starts: 0,
            })
            .collect();
        Self {
            application_id: format!("{name}-app"),
            database_schema: pg_schema(&name),
            config: config.clone(),
            seed,
            stack,
            connection,
            topics,
            codec,
            log_dir,
            instances,
            counters: BTreeMap::new(),
            _state: state,
            name,
        }
    }

    /// Seeds the sample products and the synthetic SKUs.
    pub async fn seed_catalog(&self) {
        let partitions = PARTITIONS.to_string();
        let skus = self.config.skus.to_string();
        let stock = self.config.stock.to_string();
        let cli = generator::cli::Cli::try_parse_from([
            "generator",
            "seed",
            "--partitions",
            &partitions,
            "--synthetic-skus",
            &skus,
            "--synthetic-stock",
            &stock,
        ])
        .expect("seed arguments");
        let generator::cli::Command::Seed(args) = cli.command else {
            unreachable!("parsed as seed")
        };
        generator::app::seed(&self.connection, &args)
            .await
            .expect("the catalog is seeded");
    }

    /// `generator run` for the configured duration, in this process (it talks to the broker
    /// directly, not through the proxy).
    pub fn spawn_generator(
        &self,
    ) -> tokio::task::JoinHandle<anyhow::Result<generator::app::RunSummary>> {
        let config = &self.config;
        let argv: Vec<String> = [
            "generator",
            "run",
            "--partitions",
            &PARTITIONS.to_string(),
            "--synthetic-skus",
            &config.skus.to_string(),
            "--rate",
            &config.rate.to_string(),
            "--duration",
            &humantime::format_duration(config.duration).to_string(),
            "--restock-every",
            &config.restock_every,
            "--lines-max",
            "3",
            "--duplicate-rate",
            "0.01",
            "--invalid-rate",
            "0.01",
            "--seed",
            &self.seed.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cli = generator::cli::Cli::try_parse_from(argv).expect("run arguments");
        let generator::cli::Command::Run(args) = cli.command else {
            unreachable!("parsed as run")
        };
        // After a broker outage the generator's producer, like the processors' clients, backs
        // off between reconnects up to librdkafka's 10 s: the orders it buffered meanwhile then
        // reach the broker seconds after the processors caught up and counted the partitions
        // idle, late by the input's own doing (RELIABILITY.md). A shop's producers that want
        // their records ordered by time reconnect as fast.
        let mut connection = self.connection.clone();
        connection
            .kafka_properties
            .push(("reconnect.backoff.max.ms".into(), "1000".into()));
        tokio::spawn(async move {
            generator::app::run_orders(&connection, &args, CancellationToken::new()).await
        })
    }

    /// Starts both instances and waits until both are ready.
    pub async fn start_instances(&mut self) {
        for i in 0..self.instances.len() {
            self.start(i);
        }
        for i in 0..self.instances.len() {
            self.wait_ready(i).await;
        }
    }

    /// Starts instance `i` on its state directory, through the fault proxy.
    pub fn start(&mut self, i: usize) {
        let args = self.run_args(&self.instances[i]);
        let instance = &mut self.instances[i];
        instance.starts += 1;
        let log = self
            .log_dir
            .join(format!("{}-{}.log", instance.name, instance.starts));
        instance.process = Some(ChildProcess::spawn(
            &processor_binary(),
            &args,
            &[("RUST_LOG", "warn,processor=info")],
            Stderr::File(&log),
        ));
    }

    /// Waits until instance `i` reports ready; panics if it exits first or takes too long.
    pub async fn wait_ready(&mut self, i: usize) {
        let started = Instant::now();
        let instance = &mut self.instances[i];
        while !testkit::prometheus::is_ready(instance.metrics).await {
            let process = instance.process.as_mut().expect("a started instance");
            if let Some(status) = process.exit_status() {
                panic!(
                    "instance {} exited ({status}) before it was ready",
                    instance.name
                );
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "instance {} was not ready in {READY_DEADLINE:?}",
                instance.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts again every instance whose process has exited on its own (a supervisor would),
    /// and says which (the time is seconds since `started`).
    pub fn restart_exited(&mut self, started: Instant) -> Vec<Exit> {
        let mut exits = Vec::new();
        for i in 0..self.instances.len() {
            let instance = &mut self.instances[i];
            let Some(status) = instance.process.as_mut().and_then(|p| p.exit_status()) else {
                continue;
            };
            exits.push(Exit {
                instance: instance.name,
                start: instance.starts,
                status: status.to_string(),
                seen_at: started.elapsed(),
            });
            eprintln!(
                "soak: instance {} exited on its own ({status}); starting it again",
                instance.name
            );
            self.start(i);
        }
        exits
    }

    /// Scrapes the [`COUNTERS`] of every running instance that answers within 2 s (a frozen
    /// one does not), so that the report has them up to here even if it is killed next.
    pub async fn scrape_counters(&mut self) {
        for instance in &self.instances {
            if instance.process.is_none() {
                continue;
            }
            let scrape = tokio::time::timeout(
                Duration::from_secs(2),
                testkit::prometheus::scrape(instance.metrics),
            )
            .await;
            let Ok(Some(page)) = scrape else { continue };
            let values = COUNTERS
                .iter()
                .map(|(name, metric, outcome)| {
                    let value = match outcome {
                        Some(outcome) => page.sum_where(metric, "outcome", outcome),
                        None => page.sum(metric),
                    };
                    (*name, value)
                })
                .collect();
            self.counters
                .insert((instance.name, instance.starts), values);
        }
    }

    /// Every counter summed over every process.
    pub fn counter_totals(&self) -> Vec<(&'static str, f64)> {
        COUNTERS
            .iter()
            .map(|(name, _, _)| {
                let total = self.counters.values().filter_map(|c| c.get(name)).sum();
                (*name, total)
            })
            .collect()
    }

    /// `stockflow_late_records_total` summed over every process, as scraped last.
    pub fn late_records(&self) -> f64 {
        self.counters
            .values()
            .filter_map(|c| c.get("late records"))
            .sum()
    }

    /// SIGTERM to every instance: whether each exits 0 within a minute, or how it ended.
    pub async fn stop_instances(&mut self) -> Vec<(String, String)> {
        let mut stopped = Vec::new();
        for instance in &mut self.instances {
            let Some(mut process) = instance.process.take() else {
                continue;
            };
            process.signal("TERM");
            let status = process.wait_exit(Duration::from_secs(60)).await;
            stopped.push((
                instance.name.to_owned(),
                status.map_or("still running after 60 s".to_owned(), |s| s.to_string()),
            ));
        }
        stopped
    }

    /// The flags of a `processor run` of `instance` (connection flags first).
    fn run_args(&self, instance: &Instance) -> Vec<String> {
        let stack = self.stack;
        [
            "--bootstrap-servers",
            PROXY_ADDRESS,
            "--schema-registry-url",
            &stack.schema_registry_url,
            "--topic-prefix",
            &format!("{}-", self.name),
            "run",
            "--application-id",
            &self.application_id,
            "--state-dir",
            &instance.state.to_string_lossy(),
            "--metrics-addr",
            &instance.metrics.to_string(),
            "--partitions",
            &PARTITIONS.to_string(),
            "--cache-mb",
            "64",
            "--database-url",
            &stack.database_url,
            "--database-schema",
            &self.database_schema,
            // Event-time decisions (the default) with a second of idle wait, as
            // tests/serial_equivalence.rs: two instances, the generator and the broker share
            // two cores, and a restock can reach its consumer well after its timestamp.
            "--max-task-idle-ms",
            "1000",
            // A frozen or killed instance is noticed after 6 s instead of 45 s.
            "-X",
            "session.timeout.ms=6000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The global flags of a `processor` command on this run's topics (direct, no proxy).
    pub fn connection_flags(&self) -> Vec<String> {
        vec![
            "--bootstrap-servers".to_owned(),
            self.stack.bootstrap_servers.clone(),
            "--schema-registry-url".to_owned(),
            self.stack.schema_registry_url.clone(),
            "--topic-prefix".to_owned(),
            format!("{}-", self.name),
        ]
    }
}

/// The `processor` binary: `STOCKFLOW_PROCESSOR_BIN` if set, else the one built beside this
/// executable (`target/release/processor`).
pub fn processor_binary() -> PathBuf {
    std::env::var_os("STOCKFLOW_PROCESSOR_BIN")
        .filter(|bin| !bin.is_empty())
        .map_or_else(|| workspace_binary("processor"), PathBuf::from)
}

impl Instance {
    /// Its process, if it runs.
    pub fn process(&self) -> Option<&ChildProcess> {
        self.process.as_ref()
    }
}
