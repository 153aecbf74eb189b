//! Shared by the processor's integration tests, on top of `testkit`: a test's own topics,
//! application id, state dir and read-model schema; the generator to feed it; a processor in
//! this process or as a child process (to kill, freeze, stop and watch); readers that decode
//! and check what came out.
//!
//! Every test binary compiles this module and uses a part of it, so the rest is dead code
//! there: hence the allow. It is longer than the project's ~600 lines on purpose: it is the
//! one place for the processor-specific test helpers (generic ones live in `testkit`), and
//! splitting it by theme would give each test binary several modules to declare.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use clap::Parser;
use generator::publish::Publisher;
use plumbing::connection::ConnectionArgs;
use processor::app::Running;
use processor::cli::RunArgs;
use processor::runtime::format;
use processor::topology::inventory::{SkuRecord, keys};
use schemas::{
    Codec, Contract, InventoryUpdated, OrderConfirmed, OrderCreated, OrderLine, OrderRejected,
    Topics,
};
use sqlx::PgPool;
use testkit::child::{ChildProcess, Stderr};
use testkit::prometheus::Scrape;
use testkit::{Isolation, Record, TopicReader, pg_schema, ports, read_at_least, stack, unique};
use tokio_util::sync::CancellationToken;

/// The tests' sync interval: short, so that the read model converges quickly.
pub const SYNC_INTERVAL: &str = "200ms";

/// The unit of the tests' deadlines.
pub const MINUTE: Duration = Duration::from_secs(60);

/// Sends the in-process processor's logs (warnings, and its own `info`; `RUST_LOG` overrides)
/// to the test's captured output, which cargo prints only when the test fails: a fault test
/// that fails in CI says what the engine went through.
pub fn logs_on_failure() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,processor=info,rdkafka::client=off")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The `processor` binary the tests start: `STOCKFLOW_PROCESSOR_BIN` if set, else cargo's.
/// (Worktrees that share one target dir overwrite each other's `target/release/processor`; a
/// copy of this worktree's binary, named by that variable, keeps a run on its own build.)
pub fn processor_binary() -> PathBuf {
    std::env::var_os("STOCKFLOW_PROCESSOR_BIN")
        .filter(|bin| !bin.is_empty())
        .map_or_else(|| env!("CARGO_BIN_EXE_processor").into(), PathBuf::from)
}

/// One test's world: its topic prefix, application id, state directory and PostgreSQL schema.
pub struct World {
    pub name: String,
    pub connection: ConnectionArgs,
    pub topics: Topics,
    pub application_id: String,
    pub state: tempfile::TempDir,
    pub bootstrap: String,
    pub registry_url: String,
    pub database_url: String,
    /// The read model's schema (`stockflow_test_<name>`).
    pub database_schema: String,
    pub codec: Codec,
}

impl World {
    pub async fn new(name: &str) -> Self {
        let stack = stack().await;
        let name = unique(name);
        let prefix = format!("{name}-");
        let connection = ConnectionArgs::new(
            &stack.bootstrap_servers,
            &stack.schema_registry_url,
            &prefix,
        );
        let topics = connection.topics();
        let codec = Codec::new(&stack.schema_registry_url, &topics).expect("codec");
        Self {
            application_id: format!("{name}-app"),
            connection,
            topics,
            state: tempfile::tempdir().expect("a state dir"),
            bootstrap: stack.bootstrap_servers.clone(),
            registry_url: stack.schema_registry_url.clone(),
            database_url: stack.database_url.clone(),
            database_schema: pg_schema(&name),
            codec,
            name,
        }
    }

    /// `processor run` arguments for this world (metrics on a free port).
    pub fn run_args(&self, extra: &[&str]) -> RunArgs {
        self.run_args_in(self.state.path(), extra)
    }

    pub fn run_args_in(&self, state_dir: &std::path::Path, extra: &[&str]) -> RunArgs {
        let mut argv = vec!["processor".to_owned()];
        argv.extend(self.run_flags(state_dir, "127.0.0.1:0", extra));
        match processor::cli::Cli::try_parse_from(argv)
            .expect("valid run arguments")
            .command
        {
            processor::cli::Command::Run(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// `run` and its flags for this world, then `extra`.
    fn run_flags(&self, state_dir: &std::path::Path, metrics: &str, extra: &[&str]) -> Vec<String> {
        [
            "run",
            "--application-id",
            &self.application_id,
            "--state-dir",
            &state_dir.to_string_lossy(),
            "--metrics-addr",
            metrics,
            "--partitions",
            "4",
            "--cache-mb",
            "32",
            "--database-url",
            &self.database_url,
            "--database-schema",
            &self.database_schema,
            "--sync-interval",
            SYNC_INTERVAL,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts a processor in this process.
    pub async fn start(&self, extra: &[&str]) -> (Running, CancellationToken) {
        let token = CancellationToken::new();
        let running = processor::app::start(&self.connection, &self.run_args(extra), token.clone())
            .await
            .expect("the processor starts");
        (running, token)
    }

    /// The command line of a processor child process for this world.
    pub fn child_args(
        &self,
        state_dir: &std::path::Path,
        metrics: SocketAddr,
        extra: &[&str],
    ) -> Vec<String> {
        let mut args = self.connection_flags();
        args.extend(self.run_flags(state_dir, &metrics.to_string(), extra));
        args
    }

    /// Starts the [`processor_binary`] as a child process `name` on `state_dir`, its metrics on
    /// a free port, with `extra` run flags (after `-X session.timeout.ms=6000`: a dead or
    /// stopped instance is noticed after 6 s instead of 45 s; not under `--group-protocol
    /// consumer`, where the broker sets the session timeout). Its standard error is kept (see
    /// [`ChildProcess::log_lines`]) and echoed after `[name] `.
    pub fn spawn_processor(
        &self,
        name: &str,
        state_dir: &std::path::Path,
        extra: &[&str],
    ) -> ProcessorChild {
        let metrics = ports::free_addr();
        // Under the consumer group protocol the session timeout is the broker's.
        let classic = !extra
            .windows(2)
            .any(|w| w == ["--group-protocol", "consumer"]);
        let mut flags = if classic {
            vec!["-X", "session.timeout.ms=6000"]
        } else {
            Vec::new()
        };
        flags.extend_from_slice(extra);
        let process = ChildProcess::spawn(
            &processor_binary(),
            &self.child_args(state_dir, metrics, &flags),
            &[("RUST_LOG", "warn,processor=info")],
            Stderr::Capture(name),
        );
        ProcessorChild {
            name: name.to_owned(),
            process,
            metrics,
        }
    }

    /// The global flags of a `processor` binary for this world (before its subcommand).
    /// Runs `processor reset` for this world's application on `state_dir`, with `extra` flags.
    pub fn reset_processor(&self, state_dir: &std::path::Path, extra: &[&str]) -> Output {
        let state = state_dir.to_string_lossy().into_owned();
        std::process::Command::new(processor_binary())
            .args(self.connection_flags())
            .args([
                "reset",
                "--application-id",
                &self.application_id,
                "--state-dir",
                &state,
                "--database-url",
                &self.database_url,
                "--database-schema",
                &self.database_schema,
            ])
            .args(extra)
            .output()
            .expect("the processor binary runs")
    }

    pub fn connection_flags(&self) -> Vec<String> {
        [
            "--bootstrap-servers",
            &self.bootstrap,
            "--schema-registry-url",
            &self.registry_url,
            "--topic-prefix",
            &format!("{}-", self.name),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Seeds the sample catalog plus `synthetic` SKUs with `stock` each, on 4 partitions.
    pub async fn seed(&self, synthetic: u32, stock: i64) {
        let cli = generator::cli::Cli::try_parse_from([
            "generator",
            "seed",
            "--partitions",
            "4",
            "--synthetic-skus",
            &synthetic.to_string(),
            "--synthetic-stock",
            &stock.to_string(),
        ])
        .expect("seed arguments");
        let generator::cli::Command::Seed(args) = cli.command else {
            unreachable!("parsed as seed")
        };
        generator::app::seed(&self.connection, &args)
            .await
            .expect("seeds");
    }

    /// Publishes `orders` as they are.
    pub async fn send_orders(&self, orders: &[OrderCreated]) {
        let mut publisher = Publisher::connect(&self.connection, 4)
            .await
            .expect("publisher");
        for order in orders {
            publisher
                .send(&self.topics.orders, order)
                .await
                .expect("sends");
        }
        publisher.finish().await.expect("delivered");
    }

    /// Publishes raw bytes to a topic (for garbage), partitioned by key as the project's
    /// producers and Java clients partition.
    pub async fn send_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        self.send_value(topic, key, Some(payload)).await;
    }

    /// Publishes a record with `key` and `value`, or no value at all (a tombstone).
    pub async fn send_value(&self, topic: &str, key: &str, value: Option<&[u8]>) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = self
            .connection
            .client_config()
            .set("partitioner", plumbing::admin::PARTITIONER)
            .create()
            .expect("a producer");
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("raw record delivered");
    }

    /// Publishes `count` generated orders (seed 42 unless given in `extra`).
    pub async fn run_generator(&self, count: u64, extra: &[&str]) -> generator::app::RunSummary {
        let count = count.to_string();
        let mut argv = vec!["generator", "run", "--partitions", "4", "--count", &count];
        if !extra.contains(&"--rate") {
            argv.extend(["--rate", "0"]);
        }
        argv.extend_from_slice(extra);
        let cli = generator::cli::Cli::try_parse_from(argv).expect("run arguments");
        let generator::cli::Command::Run(args) = cli.command else {
            unreachable!("parsed as run")
        };
        generator::app::run_orders(&self.connection, &args, CancellationToken::new())
            .await
            .expect("runs")
    }

    /// `generator run` with `args` in the background (the test goes on while orders flow).
    pub fn spawn_generator(
        &self,
        args: &[&str],
    ) -> tokio::task::JoinHandle<generator::app::RunSummary> {
        let mut argv = vec!["generator", "run", "--partitions", "4"];
        argv.extend_from_slice(args);
        let cli = generator::cli::Cli::try_parse_from(argv).expect("run arguments");
        let generator::cli::Command::Run(run) = cli.command else {
            unreachable!("parsed as run")
        };
        let connection = self.connection.clone();
        tokio::spawn(async move {
            generator::app::run_orders(&connection, &run, CancellationToken::new())
                .await
                .expect("runs")
        })
    }

    /// Every record of `topic`, decoded, once at least `expected` are there: read up to the
    /// high watermarks, fetched again while fewer have been read. Panics after `deadline`,
    /// saying what it found.
    pub async fn read<C: Contract>(
        &self,
        topic: &str,
        isolation: Isolation,
        expected: usize,
        deadline: Duration,
    ) -> Vec<C> {
        let records = read_at_least(&self.bootstrap, &[topic], isolation, expected, deadline).await;
        self.decode_all(&records).await
    }

    async fn decode_all<C: Contract>(&self, records: &[Record]) -> Vec<C> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            out.push(
                self.codec
                    .decode(record.payload.as_deref().expect("a payload"))
                    .await
                    .expect("decodes"),
            );
        }
        out
    }

    /// [`World::read`] without decoding, read_committed.
    pub async fn read_raw(&self, topic: &str, expected: usize, deadline: Duration) -> Vec<Record> {
        read_at_least(
            &self.bootstrap,
            &[topic],
            Isolation::ReadCommitted,
            expected,
            deadline,
        )
        .await
    }

    /// Every outcome (read_committed), once at least `expected` of them are in: up to the
    /// high watermarks of the outcome topics, so extras already written are there too.
    pub async fn outcomes(&self, expected: usize, deadline: Duration) -> Outcomes {
        self.outcomes_with(Isolation::ReadCommitted, expected, deadline)
            .await
    }

    pub async fn outcomes_with(
        &self,
        isolation: Isolation,
        expected: usize,
        deadline: Duration,
    ) -> Outcomes {
        let topics = [
            self.topics.orders_confirmed.as_str(),
            self.topics.orders_rejected.as_str(),
        ];
        let records = read_at_least(&self.bootstrap, &topics, isolation, expected, deadline).await;
        let mut outcomes = Outcomes {
            confirmed: Vec::new(),
            rejected: Vec::new(),
        };
        for record in &records {
            match self.decode_outcome(record).await {
                Outcome::Confirmed(c) => outcomes.confirmed.push(c),
                Outcome::Rejected(r) => outcomes.rejected.push(r),
            }
        }
        outcomes
    }

    /// An outcome record, decoded by its topic.
    async fn decode_outcome(&self, record: &Record) -> Outcome {
        let payload = record.payload.as_deref().expect("a payload");
        if record.topic == self.topics.orders_confirmed {
            Outcome::Confirmed(self.codec.decode(payload).await.expect("decodes"))
        } else {
            Outcome::Rejected(self.codec.decode(payload).await.expect("decodes"))
        }
    }

    /// Every record of `topics` up to the end they have now (the last stable offset under
    /// read_committed: a transaction still open is not waited for). Panics after `deadline`.
    pub async fn read_to_end(
        &self,
        topics: &[&str],
        isolation: Isolation,
        deadline: Duration,
    ) -> Vec<Record> {
        TopicReader::new(&self.bootstrap, topics, isolation)
            .read_to_end(deadline)
            .await
    }

    /// Every outcome record (both outcome topics) up to their ends, with where it is.
    pub async fn outcomes_at(&self, isolation: Isolation) -> Vec<OutcomeAt> {
        let topics = [
            self.topics.orders_confirmed.as_str(),
            self.topics.orders_rejected.as_str(),
        ];
        let records = self.read_to_end(&topics, isolation, 2 * MINUTE).await;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let (order_id, confirmed, decided_at) = match self.decode_outcome(&record).await {
                Outcome::Confirmed(c) => (c.order_id, true, c.confirmed_at),
                Outcome::Rejected(r) => (r.order_id, false, r.rejected_at),
            };
            out.push(OutcomeAt {
                order_id,
                confirmed,
                decided_at,
                topic: record.topic,
                partition: record.partition,
                offset: record.offset,
            });
        }
        out
    }

    /// Every InventoryUpdated up to the end of its topic (read_committed).
    pub async fn inventory_updates(&self) -> Vec<InventoryUpdated> {
        let topics = [self.topics.inventory_updated.as_str()];
        let records = self
            .read_to_end(&topics, Isolation::ReadCommitted, 2 * MINUTE)
            .await;
        self.decode_all(&records).await
    }

    /// Records in the application's changelogs that a read_committed reader sees (what a
    /// restore from scratch replays).
    pub async fn committed_changelog_records(&self) -> usize {
        let changelogs =
            processor::topology::describe(&self.application_id, &self.topics).changelogs();
        let changelogs: Vec<&str> = changelogs.iter().map(String::as_str).collect();
        self.read_to_end(&changelogs, Isolation::ReadCommitted, 2 * MINUTE)
            .await
            .len()
    }

    /// The application group's committed offset on every partition of `topic` (absent: none
    /// committed).
    pub fn committed_offsets(&self, topic: &str) -> std::collections::BTreeMap<i32, i64> {
        testkit::kafka::committed_offsets(&self.bootstrap, &self.application_id, topic)
    }

    /// Waits until `expected` outcomes have been counted by a processor's metrics.
    pub async fn wait_for_outcomes(
        &self,
        metrics: &processor::metrics::Metrics,
        expected: u64,
        deadline: Duration,
    ) {
        let started = Instant::now();
        loop {
            let decided = metrics.orders_decided();
            if decided >= expected {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "{decided} of {expected} orders decided in {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl World {
    /// Waits for a generator from [`World::spawn_generator`] to finish, then checks
    /// [`World::check_invariants`] over the orders it sent, against `synthetic` skus seeded
    /// with `stock` each (see [`World::seed`]) and no adjustments.
    pub async fn check_generated(
        &self,
        generator: tokio::task::JoinHandle<generator::app::RunSummary>,
        synthetic: u32,
        stock: i64,
    ) -> Outcomes {
        let summary = generator.await.expect("the generator finished");
        let distinct = (summary.valid + summary.invalid) as usize;
        self.check_invariants(distinct, &initial_stock(synthetic, stock), &HashMap::new())
            .await
    }

    /// The invariants of a run of `orders` distinct orders: every order has exactly one outcome
    /// under read_committed (read_uncommitted may see aborted extras); no stock ever went
    /// negative; and for every sku, initial + adjustments - confirmed quantities = final stock
    /// (waiting up to a minute for that: the releases of the last rejected orders are applied
    /// after their outcomes are out).
    pub async fn check_invariants(
        &self,
        orders: usize,
        initial: &HashMap<String, i64>,
        adjusted: &HashMap<String, i64>,
    ) -> Outcomes {
        let outcomes = self.outcomes(orders, 5 * MINUTE).await;
        let per_order = outcomes.per_order();
        assert_eq!(per_order.len(), orders, "every order has an outcome");
        let repeated: Vec<_> = per_order.iter().filter(|(_, n)| **n != 1).take(5).collect();
        assert!(
            repeated.is_empty(),
            "no order has two outcomes under read_committed: {repeated:?}"
        );
        let uncommitted = self
            .outcomes_with(Isolation::ReadUncommitted, orders, MINUTE)
            .await;
        let seen_uncommitted: usize = uncommitted.per_order().values().sum();
        eprintln!(
            "outcomes: {orders} under read_committed, {seen_uncommitted} under read_uncommitted"
        );
        assert!(seen_uncommitted >= orders);

        let mut confirmed: HashMap<&str, i64> = HashMap::new();
        for c in &outcomes.confirmed {
            for line in &c.lines {
                *confirmed.entry(line.sku.as_str()).or_default() += i64::from(line.quantity);
            }
        }
        // The updates so far, then the ones that follow, until the stock adds up.
        let mut reader = TopicReader::new(
            &self.bootstrap,
            &[self.topics.inventory_updated.as_str()],
            Isolation::ReadCommitted,
        );
        let mut updates: Vec<InventoryUpdated> = Vec::new();
        let started = Instant::now();
        loop {
            let records = reader.read_to_end(MINUTE).await;
            updates.extend(self.decode_all::<InventoryUpdated>(&records).await);
            let negative: Vec<_> = updates
                .iter()
                .filter(|u| u.available_after < 0)
                .take(5)
                .collect();
            assert!(
                negative.is_empty(),
                "stock never goes negative: {negative:?}"
            );
            let stock = final_stock(&updates);
            let wrong: Vec<String> = initial
                .iter()
                .filter_map(|(sku, start)| {
                    let expected = start + adjusted.get(sku).copied().unwrap_or(0)
                        - confirmed.get(sku.as_str()).copied().unwrap_or(0);
                    let last = stock.get(sku).copied().unwrap_or(*start);
                    (last != expected)
                        .then(|| format!("{sku}: {last} in stock, {expected} expected"))
                })
                .collect();
            if wrong.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < MINUTE,
                "initial + adjustments - confirmed = final stock, after {MINUTE:?} of {} updates: {:?}",
                updates.len(),
                &wrong[..wrong.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        outcomes
    }

    /// A pool on this world's read model (search_path = its schema).
    pub async fn pg(&self) -> PgPool {
        testkit::postgres::pool(&self.database_url, &self.database_schema).await
    }

    /// The processor's inventory state: the last committed value of every sku key in the
    /// inventory store's changelog (sku -> (available, reserved)).
    pub async fn processor_inventory(&self) -> HashMap<String, (i64, i64)> {
        let topology = processor::topology::describe(&self.application_id, &self.topics);
        let changelog = topology
            .changelog(processor::topology::INVENTORY_STORE)
            .expect("the inventory store has a changelog");
        let records = read_at_least(
            &self.bootstrap,
            &[changelog],
            Isolation::ReadCommitted,
            1,
            MINUTE,
        )
        .await;
        let mut stock = HashMap::new();
        for record in records {
            // Event-time mode keeps binary keys beside the skus (its merge buffer).
            let key = record.key.expect("changelog keys");
            let Some(sku) = key.strip_prefix(keys::SKU_PREFIX.as_bytes()) else {
                continue;
            };
            let sku = String::from_utf8(sku.to_vec()).expect("UTF-8 sku");
            let value: SkuRecord =
                format::decode(&record.payload.expect("sku records are never deleted"))
                    .expect("a sku record");
            stock.insert(sku, (value.available, value.reserved));
        }
        stock
    }

    /// Waits until the read model shows the processor's state: every inventory row equals
    /// the store, and every decided order has its row with its status and reason (and no
    /// other order is there). Panics with the first differences after `deadline`.
    pub async fn check_read_model(&self, outcomes: &Outcomes, deadline: Duration) {
        let inventory = self.processor_inventory().await;
        let mut orders: HashMap<String, (String, Option<String>)> = HashMap::new();
        for c in &outcomes.confirmed {
            orders.insert(c.order_id.clone(), ("CONFIRMED".into(), None));
        }
        for r in &outcomes.rejected {
            let reason = processor::readmodel::reason_name(r.reason).to_owned();
            orders.insert(r.order_id.clone(), ("REJECTED".into(), Some(reason)));
        }
        let pool = self.pg().await;
        let started = Instant::now();
        loop {
            let rows: Vec<(String, i64, i64)> =
                sqlx::query_as("SELECT sku, available, reserved FROM inventory")
                    .fetch_all(&pool)
                    .await
                    .expect("inventory rows");
            let in_pg: HashMap<String, (i64, i64)> =
                rows.into_iter().map(|(s, a, r)| (s, (a, r))).collect();
            let order_rows: Vec<(String, String, Option<String>)> =
                sqlx::query_as("SELECT order_id, status, reason FROM orders")
                    .fetch_all(&pool)
                    .await
                    .expect("order rows");
            let orders_in_pg: HashMap<String, (String, Option<String>)> = order_rows
                .into_iter()
                .map(|(id, status, reason)| (id, (status, reason)))
                .collect();
            let mut differences: Vec<String> = Vec::new();
            for (sku, state) in &inventory {
                if in_pg.get(sku) != Some(state) {
                    differences.push(format!(
                        "inventory {sku}: processor {state:?}, PostgreSQL {:?}",
                        in_pg.get(sku)
                    ));
                }
            }
            for (id, expected) in &orders {
                if orders_in_pg.get(id) != Some(expected) {
                    differences.push(format!(
                        "order {id}: outcome {expected:?}, PostgreSQL {:?}",
                        orders_in_pg.get(id)
                    ));
                }
            }
            let extra = orders_in_pg.len().saturating_sub(orders.len());
            if extra > 0 {
                differences.push(format!("{extra} orders in PostgreSQL have no outcome"));
            }
            if in_pg.len() != inventory.len() {
                differences.push(format!(
                    "{} inventory rows in PostgreSQL, {} skus in the processor",
                    in_pg.len(),
                    inventory.len()
                ));
            }
            if differences.is_empty() {
                eprintln!(
                    "read model: {} skus and {} orders match the processor ({:?} after the check began)",
                    inventory.len(),
                    orders.len(),
                    started.elapsed()
                );
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "the read model still differs after {deadline:?} ({} differences): {:?}",
                differences.len(),
                &differences[..differences.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A `processor` child process of a test, and where its metrics are. It derefs to its
/// [`ChildProcess`] for signals, exit statuses and log lines.
pub struct ProcessorChild {
    pub name: String,
    pub process: ChildProcess,
    pub metrics: SocketAddr,
}

impl Deref for ProcessorChild {
    type Target = ChildProcess;

    fn deref(&self) -> &ChildProcess {
        &self.process
    }
}

impl DerefMut for ProcessorChild {
    fn deref_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

impl ProcessorChild {
    /// Waits until it reports ready (partitions assigned, state restored); panics if it exits
    /// first or is not ready after `deadline`.
    pub async fn wait_ready(&mut self, deadline: Duration) {
        let started = Instant::now();
        while !testkit::prometheus::is_ready(self.metrics).await {
            if let Some(status) = self.process.exit_status() {
                panic!("{} exited ({status}) before it was ready", self.name);
            }
            assert!(
                started.elapsed() < deadline,
                "{} was not ready in {deadline:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Its `/metrics` page; `None` if it does not answer.
    pub async fn scrape(&self) -> Option<Scrape> {
        testkit::prometheus::scrape(self.metrics).await
    }

    /// Metric `name` summed over its label sets; `None` if it does not answer or has no such
    /// metric.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.scrape().await?.get(name)
    }

    /// Waits until metric `name` is `value` (a gauge such as the assigned tasks).
    pub async fn wait_metric(&self, name: &str, value: f64, deadline: Duration) {
        testkit::prometheus::wait_value(self.metrics, name, value, deadline).await;
    }

    /// Changelog records it restored since it started.
    pub async fn restored_records(&self) -> f64 {
        self.metric("stockflow_restored_records_total")
            .await
            .expect("the restore metric")
    }

    /// `stockflow_records_consumed_total` per (topic, partition).
    pub async fn consumed(&self) -> HashMap<(String, i32), i64> {
        let page = self.scrape().await.expect("the metrics answer");
        page.of("stockflow_records_consumed_total")
            .map(|sample| {
                let topic = sample.label("topic").expect("a topic label").to_owned();
                let partition = sample
                    .label("partition")
                    .and_then(|p| p.parse().ok())
                    .expect("a partition label");
                ((topic, partition), sample.value as i64)
            })
            .collect()
    }

    /// Waits until the rebalance that shares the work with `other` has settled: each of the
    /// `tasks` tasks owned once, and both owning some. Panics after two minutes.
    pub async fn wait_shared_with(&self, other: &ProcessorChild, tasks: f64) {
        let started = Instant::now();
        loop {
            let mine = self.metric("stockflow_assigned_tasks").await.unwrap_or(0.0);
            let theirs = other
                .metric("stockflow_assigned_tasks")
                .await
                .unwrap_or(0.0);
            if mine > 0.0 && theirs > 0.0 && mine + theirs == tasks {
                return;
            }
            assert!(
                started.elapsed() < 2 * MINUTE,
                "both instances own tasks: {} {mine}, {} {theirs}",
                self.name,
                other.name
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGKILL: no chance to commit, flush or leave the group. Waits until it is gone.
    pub fn kill(self) {
        self.process.kill();
    }
}

/// Watches the read model's source offsets while a test runs: every `period` it reads each
/// row's (and each task's) source offset and records any that went down since the last look.
pub struct OffsetWatch {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl OffsetWatch {
    pub fn start(pool: PgPool, period: Duration) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let mut seen: HashMap<String, i64> = HashMap::new();
            let mut regressions = Vec::new();
            let mut looks = 0u64;
            while !token.is_cancelled() {
                let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
                    "SELECT 'inventory/' || sku, source_offset FROM inventory
                     UNION ALL SELECT 'orders/' || order_id, source_offset FROM orders
                     UNION ALL SELECT 'task/' || task, source_offset FROM sync_progress",
                )
                .fetch_all(&pool)
                .await;
                // The tables appear when the processor first starts; until then, look again.
                if let Ok(rows) = rows {
                    looks += 1;
                    for (key, offset) in rows {
                        let previous = seen.insert(key.clone(), offset);
                        if let Some(previous) = previous.filter(|p| *p > offset) {
                            regressions.push(format!("{key}: {previous} -> {offset}"));
                        }
                    }
                }
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(period) => {}
                }
            }
            (looks, regressions)
        });
        Self { stop, handle }
    }

    /// Stops watching: how many looks it took, and every regression it saw.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.cancel();
        self.handle.await.expect("the watch ran")
    }
}

/// An outcome record, decoded.
enum Outcome {
    Confirmed(OrderConfirmed),
    Rejected(OrderRejected),
}

/// An outcome record: which order, confirmed or not, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutcomeAt {
    pub order_id: String,
    pub confirmed: bool,
    /// When it was decided (`confirmed_at` or `rejected_at`: the processor's wall clock).
    pub decided_at: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// How many outcome records each order id got.
pub fn per_order(outcomes: &[OutcomeAt]) -> HashMap<String, usize> {
    count(outcomes.iter().map(|o| &o.order_id))
}

/// How many times each id occurs.
fn count<'a>(ids: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}

/// The outcomes read back.
pub struct Outcomes {
    pub confirmed: Vec<OrderConfirmed>,
    pub rejected: Vec<OrderRejected>,
}

impl Outcomes {
    /// How many outcomes each order id got.
    pub fn per_order(&self) -> HashMap<String, usize> {
        count(
            self.confirmed
                .iter()
                .map(|c| &c.order_id)
                .chain(self.rejected.iter().map(|r| &r.order_id)),
        )
    }

    pub fn confirmed(&self, id: &str) -> Option<&OrderConfirmed> {
        self.confirmed.iter().find(|c| c.order_id == id)
    }

    pub fn rejected(&self, id: &str) -> Option<&OrderRejected> {
        self.rejected.iter().find(|r| r.order_id == id)
    }
}

pub fn order(id: &str, lines: &[(&str, i32)]) -> OrderCreated {
    OrderCreated {
        order_id: id.to_owned(),
        customer_id: "customer-1".to_owned(),
        created_at: schemas::now_millis(),
        currency: "EUR".to_owned(),
        lines: lines
            .iter()
            .map(|&(sku, quantity)| OrderLine {
                sku: sku.to_owned(),
                quantity,
                unit_price_cents: 100,
            })
            .collect(),
    }
}

/// Every sku's stock as `generator seed` with `synthetic` SKUs of `stock` each leaves it.
pub fn initial_stock(synthetic: u32, stock: i64) -> HashMap<String, i64> {
    generator::catalog::catalog(synthetic, stock)
        .into_iter()
        .map(|p| (p.sku, p.initial_stock))
        .collect()
}

/// The last InventoryUpdated per sku (the topic is keyed by sku, so per-sku order holds).
pub fn final_stock(updates: &[InventoryUpdated]) -> HashMap<String, i64> {
    let mut stock = HashMap::new();
    for update in updates {
        stock.insert(update.sku.clone(), update.available_after);
    }
    stock
}

/// A Confluent-framed record of `schema` (registered as `id`): magic 0, the id, the body.
pub fn framed(schema: &apache_avro::Schema, id: u32, value: apache_avro::types::Value) -> Vec<u8> {
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .expect("a writer")
        .write_value_to_vec(value)
        .expect("the value matches the schema");
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}
