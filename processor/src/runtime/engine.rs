//! The engine: one consumer, one producer, the tasks this instance owns, and the loop that
//! routes each record to its task, runs the topology's decision, and writes what it decided.
//!
//! It runs on one blocking thread (librdkafka's rebalance callbacks run inside `poll`, and the
//! engine commits there before partitions move). The consumer's context holds the engine
//! behind a mutex so those callbacks can reach it; the loop never holds the lock while it
//! polls, so the lock is never contended.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use schemas::{
    Codec, CodecError, Contract, InventoryAdjusted, OrderCreated, RejectionReason, now_millis,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::format;
use super::guarantee::{Committed, GuaranteeError, ProcessingGuarantee, Transactor};
use super::restore::{RestoreError, restore};
use super::store::{SharedMemory, Store, StoreError, Writer};
use super::task::{Source, SubTopology, TaskId, TaskState};
use super::topics::{Sink, TopologyTopics};
use crate::metrics::Metrics;
use crate::readmodel::{self, Changes};
use crate::topology::inventory::{self, keys};
use crate::topology::order::{self, OrderDecision, OrderRecord, Outcome};
use crate::topology::{Change, LineCommand, LineResult};

/// How long to wait before retrying after a transient failure (registry unreachable).
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// Records processed between two servings of the producer's delivery reports.
const DELIVERY_POLL_EVERY: u32 = 64;

/// While a commit waits for the broker's acknowledgements, records processed between two
/// checks whether they have all arrived.
const DELIVERY_CHECK_EVERY: u32 = 8;

/// Outputs held while a commit is in progress, at most: beyond, the engine waits for it.
const OUTBOX_LIMIT: usize = 100_000;

/// How long the consumer waits for records when no transaction is open.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// When the engine has read everything there is, it commits the open transaction once it is
/// this fraction of the commit interval old, instead of waiting for the whole interval: every
/// hop through a repartition topic waits for a commit, so this is most of an order's latency
/// under light load. Under full load the input is never drained and the interval governs.
/// (An eighth made no difference beyond the machine's noise in six alternated pairs of latency
/// runs, and every commit costs the broker a marker on each partition the transaction wrote;
/// see BENCHMARKS.md, session 8.)
const EARLY_COMMIT_DIVISOR: u32 = 4;

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub application_id: String,
    pub guarantee: ProcessingGuarantee,
    pub commit_interval: Duration,
    /// `<state.dir>/<application.id>`.
    pub state_dir: PathBuf,
    /// Bootstrap servers and pass-through librdkafka properties.
    pub client: ClientConfig,
    /// Stable per state directory and engine thread; names the transactional producers.
    pub instance_id: String,
    /// The RocksDB memory every store of the process shares.
    pub memory: SharedMemory,
}

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Guarantee(#[from] GuaranteeError),
    #[error("Kafka consumer: {0}")]
    Consumer(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("cannot encode an output: {0}")]
    Encode(CodecError),
    #[error("cannot start the engine's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start the store writer thread: {0}")]
    Writer(std::io::Error),
}

/// A step that could not finish now but may later (the registry is unreachable).
#[derive(Debug)]
enum Step {
    Retry(String),
    Fatal(EngineError),
}

impl<E: Into<EngineError>> From<E> for Step {
    fn from(e: E) -> Self {
        Step::Fatal(e.into())
    }
}

/// The record on the order-lines repartition topic: a command, and where to send its result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// The partition of the order's task (results go straight back to it).
    pub reply_partition: i32,
    pub command: LineCommand,
}

/// An output held while a commit is in progress, sent once it has finished (see
/// [`Transactor`]).
#[derive(Debug)]
struct Output {
    sink: Sink,
    partition: Option<i32>,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

/// A task with its store.
#[derive(Debug)]
struct Task {
    id: TaskId,
    state: TaskState,
    store: Store,
}

/// Everything the loop and the rebalance callbacks share.
pub struct Engine {
    config: EngineConfig,
    topics: TopologyTopics,
    tasks: BTreeMap<TaskId, Task>,
    tx: Transactor,
    /// Outputs of records processed while a commit is in progress.
    outbox: Vec<Output>,
    /// When the commit in progress (or the last one) started.
    commit_started: Instant,
    /// Applies the stores' committed layers to RocksDB.
    writer: Writer,
    codec: Arc<Codec>,
    runtime: tokio::runtime::Runtime,
    memory: SharedMemory,
    metrics: Metrics,
    /// `records_consumed` per (source, partition) and `records_produced` per sink, looked up
    /// once: the hot path only increments.
    consumed: HashMap<(Source, i32), IntCounter>,
    produced: [IntCounter; Sink::ALL.len()],
    ready: Arc<AtomicBool>,
    /// Committed changes for the PostgreSQL read model's sync.
    sync: SyncSender,
    /// An error raised inside a rebalance callback, for the loop to return.
    fatal: Option<EngineError>,
}

/// Where the engine hands committed changes to the read model's sync (which never blocks it).
pub type SyncSender = tokio::sync::mpsc::UnboundedSender<Changes>;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .field("tx", &self.tx)
            .finish()
    }
}

/// The consumer's context: rebalance callbacks and statistics.
pub struct StreamsContext {
    engine: Arc<Mutex<Engine>>,
    metrics: Metrics,
}

impl std::fmt::Debug for StreamsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamsContext").finish_non_exhaustive()
    }
}

impl ClientContext for StreamsContext {
    /// Consumer lag per input partition, from librdkafka's statistics. Offsets are committed
    /// through the producer's transactions, so librdkafka's own `consumer_lag` (measured from
    /// the consumer's commits) is unknown: the lag is the last stable offset (what a
    /// read_committed consumer can reach) minus the next offset the engine will read.
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.app_offset >= 0 && p.ls_offset >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set((p.ls_offset - p.app_offset).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for StreamsContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            lock(&self.engine).on_revoke(consumer, partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            lock(&self.engine).on_assign(partitions);
        }
    }
}

/// Hands committed changes to the read model's sync. The sync only stops after the engine (it
/// ends when the engine drops its sender), so a closed channel is a broken invariant: say so
/// and go on, since stream processing must not depend on the read model.
fn hand_to_sync(sync: &SyncSender, changes: Changes) {
    if sync.send(changes).is_err() {
        tracing::error!("invariant broken: the read-model sync stopped before the engine");
    }
}

/// The producer record of an output.
fn record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    key: &'a [u8],
    payload: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
) -> BaseRecord<'a, [u8], [u8]> {
    let mut record = BaseRecord::to(topic).key(key);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    record
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine
        .lock()
        .expect("invariant: the engine lock is never poisoned (a panic stops the process)")
}

/// Runs the engine until `shutdown`, then commits, leaves the group and closes the stores.
pub fn run_engine(
    config: EngineConfig,
    topics: TopologyTopics,
    codec: Arc<Codec>,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    sync: SyncSender,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    // The codec's registry calls (cached after the first of each schema) run on a small
    // runtime of the engine's own, so the engine never depends on its caller's runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EngineError::Runtime)?;
    let changelogs = SubTopology::ALL
        .iter()
        .map(|s| topics.changelog(*s).to_owned())
        .collect();
    let transactional_id = format!("{}-{}", config.application_id, config.instance_id);
    let tx = Transactor::new(
        &config.client,
        config.guarantee,
        transactional_id,
        changelogs,
    )?;
    let writer_name = match std::thread::current().name() {
        Some(engine) => format!("{engine}-store"),
        None => "store-writer".to_owned(),
    };
    let writer = Writer::start(writer_name).map_err(EngineError::Writer)?;
    let produced = Sink::ALL.map(|sink| {
        metrics
            .records_produced
            .with_label_values(&[topics.sink(sink)])
    });
    let engine = Arc::new(Mutex::new(Engine {
        memory: config.memory.clone(),
        consumed: HashMap::new(),
        produced,
        tasks: BTreeMap::new(),
        topics: topics.clone(),
        tx,
        outbox: Vec::new(),
        commit_started: Instant::now(),
        writer,
        codec,
        runtime,
        metrics: metrics.clone(),
        ready,
        sync,
        fatal: None,
        config: config.clone(),
    }));
    let consumer: BaseConsumer<StreamsContext> = config
        .client
        .clone()
        .set("group.id", &config.application_id)
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000")
        // Fetches wait at most 20 ms for data, not Kafka's 500: librdkafka keeps one fetch in
        // flight per broker, so a long wait on idle partitions would hold up the first fetch
        // after a rewind or a new assignment. (The wait was shortened because a commit marker
        // seemed not to answer a waiting read_committed fetch; on Kafka 4.1 it does: at 2
        // orders/s each hop took as long with 500 ms. BENCHMARKS.md, session 9.)
        .set(
            "fetch.wait.max.ms",
            config.client.get("fetch.wait.max.ms").unwrap_or("20"),
        )
        .create_with_context(StreamsContext {
            engine: engine.clone(),
            metrics,
        })?;
    consumer.subscribe(&topics.sources())?;
    tracing::info!(application_id = %config.application_id, guarantee = ?config.guarantee, "processing");

    let result = run_loop(&consumer, &engine, &shutdown);
    if let Err(error) = &result {
        tracing::error!(%error, "engine stopped");
    }
    // Commit what is in hand, then leave the group (the revoke callback closes the tasks).
    if result.is_ok() {
        let mut engine = lock(&engine);
        engine.commit(&consumer)?;
    }
    consumer.unsubscribe();
    drop(consumer);
    let mut engine = lock(&engine);
    engine.close_all();
    result
}

fn run_loop(
    consumer: &BaseConsumer<StreamsContext>,
    engine: &Mutex<Engine>,
    shutdown: &CancellationToken,
) -> Result<(), EngineError> {
    let mut unserved = 0;
    let mut wait = IDLE_POLL;
    while !shutdown.is_cancelled() {
        let polled = consumer.poll(wait);
        let mut engine = lock(engine);
        if let Some(error) = engine.fatal.take() {
            return Err(error);
        }
        let idle = polled.is_none();
        match polled {
            Some(Ok(message)) => engine.process(consumer, &message)?,
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            None => {}
        }
        unserved += 1;
        if engine.tx.is_committing() {
            // The records of the transaction being committed are on their way to the broker,
            // and the engine goes on processing meanwhile; the commit finishes as soon as they
            // are all acknowledged, or at once when there is nothing to process.
            if idle || engine.outbox.len() >= OUTBOX_LIMIT {
                engine.finish_commit(consumer)?;
            } else if unserved >= DELIVERY_CHECK_EVERY {
                unserved = 0;
                if engine.tx.delivered() {
                    engine.finish_commit(consumer)?;
                }
            }
        } else {
            // Delivery reports arrive in batches: serving them after every record only costs
            // clock reads and empty queue checks.
            if idle || unserved >= DELIVERY_POLL_EVERY {
                engine.tx.poll();
                unserved = 0;
            }
            let interval = engine.config.commit_interval;
            if engine.tx.due(interval) || (idle && engine.tx.due(interval / EARLY_COMMIT_DIVISOR)) {
                engine.start_commit()?;
                engine.update_memory_metrics();
            }
        }
        // While a commit waits for acknowledgements, take whatever records are there without
        // waiting (none: the commit finishes); with a transaction open, wait no longer than
        // until an early commit is due.
        wait = if engine.tx.is_committing() {
            Duration::ZERO
        } else if engine.tx.is_open() {
            engine
                .tx
                .until_due(engine.config.commit_interval / EARLY_COMMIT_DIVISOR)
        } else {
            IDLE_POLL
        };
    }
    Ok(())
}

impl Engine {
    /// Routes one record to its task and processes it; a transient failure rolls the
    /// transaction back and waits before the records are read again.
    fn process(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), EngineError> {
        let topic = message.topic(); // checked as UTF-8 on every call: once per record
        let Some(source) = self.topics.source(topic) else {
            return Ok(());
        };
        let id = TaskId {
            sub: source.sub_topology(),
            partition: message.partition(),
        };
        if !self
            .tasks
            .get(&id)
            .is_some_and(|t| t.state == TaskState::Running)
        {
            return Ok(()); // revoked while the record was in flight
        }
        let started = Instant::now();
        if !self.tx.is_committing() {
            self.tx.begin()?;
        }
        let step = match source {
            Source::Orders => self.on_order(id, message),
            Source::LineResults => self.on_line_result(id, message),
            Source::Adjustments => self.on_adjustment(id, message),
            Source::LineCommands => self.on_line_command(id, message),
        };
        match step {
            Ok(()) => {
                self.tx
                    .consumed(topic, message.partition(), message.offset());
                let metrics = &self.metrics;
                self.consumed
                    .entry((source, message.partition()))
                    .or_insert_with(|| {
                        metrics
                            .records_consumed
                            .with_label_values(&[topic, &message.partition().to_string()])
                    })
                    .inc();
                self.metrics
                    .processing_latency
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(Step::Retry(reason)) => {
                tracing::warn!(%reason, "transient failure: rolling back and retrying");
                self.tx
                    .consumed(topic, message.partition(), message.offset());
                self.roll_back(consumer, &reason)?;
                std::thread::sleep(RETRY_BACKOFF);
                Ok(())
            }
            Err(Step::Fatal(error)) => Err(error),
        }
    }

    fn task(&mut self, id: TaskId) -> &mut Task {
        self.tasks
            .get_mut(&id)
            .expect("invariant: process() checked the task is owned")
    }

    fn decode<C: Contract>(
        &self,
        message: &BorrowedMessage<'_>,
    ) -> Result<Result<C, CodecError>, Step> {
        let bytes = message.payload().unwrap_or_default();
        match self.runtime.block_on(self.codec.decode::<C>(bytes)) {
            Ok(value) => Ok(Ok(value)),
            Err(e) if e.is_retriable() => Err(Step::Retry(e.to_string())),
            Err(e) => Ok(Err(e)),
        }
    }

    // ---- sub-topology A: orders ----

    fn on_order(&mut self, id: TaskId, message: &BorrowedMessage<'_>) -> Result<(), Step> {
        let order: OrderCreated = match self.decode(message)? {
            Ok(order) => order,
            Err(error) => return self.dead_letter(message, "undecodable", &error.to_string()),
        };
        let order_id = order.order_id.clone();
        let existing: Option<OrderRecord> = self.task(id).store.get_value(&order_id)?;
        let decision = order::on_order_created(existing.as_ref(), order, now_millis());
        self.apply_order(id, &order_id, decision)
    }

    fn on_line_result(&mut self, id: TaskId, message: &BorrowedMessage<'_>) -> Result<(), Step> {
        let result: LineResult = match format::decode(message.payload().unwrap_or_default()) {
            Ok(result) => result,
            Err(error) => return self.dead_letter(message, "undecodable", &error.to_string()),
        };
        let order_id = result.order_id.clone();
        let existing: Option<OrderRecord> = self.task(id).store.get_value(&order_id)?;
        let decision = order::on_line_result(existing, result, now_millis());
        self.apply_order(id, &order_id, decision)
    }

    fn apply_order(
        &mut self,
        id: TaskId,
        order_id: &str,
        decision: OrderDecision,
    ) -> Result<(), Step> {
        if decision.duplicate {
            self.metrics.duplicate_orders.inc();
        }
        if let Some(record) = &decision.record {
            self.write(
                id,
                order_id.as_bytes().to_vec(),
                Some(Store::encode(record)),
            );
        }
        for command in decision.commands {
            let sku = command.sku().to_owned();
            let envelope = CommandEnvelope {
                reply_partition: id.partition,
                command,
            };
            let payload = format::encode(&envelope);
            self.send(Sink::OrderLines, None, sku.as_bytes(), Some(&payload), None)?;
        }
        match decision.outcome {
            Some(Outcome::Confirmed(confirmed)) => {
                self.emit(&confirmed, confirmed.created_at, Sink::OrdersConfirmed)?;
                self.metrics
                    .order_outcomes
                    .with_label_values(&["confirmed", "none"])
                    .inc();
            }
            Some(Outcome::Rejected(rejected)) => {
                self.emit(&rejected, rejected.created_at, Sink::OrdersRejected)?;
                let reason = match rejected.reason {
                    RejectionReason::InsufficientStock => "insufficient_stock",
                    RejectionReason::UnknownSku => "unknown_sku",
                    RejectionReason::InvalidOrder => "invalid_order",
                };
                self.metrics
                    .order_outcomes
                    .with_label_values(&["rejected", reason])
                    .inc();
            }
            None => {}
        }
        Ok(())
    }

    /// Produces an order's outcome and observes its end-to-end latency.
    fn emit<C: Contract>(&mut self, event: &C, created_at: i64, sink: Sink) -> Result<(), Step> {
        let payload = self.encode(event)?;
        self.send(sink, None, event.key().as_bytes(), Some(&payload), None)?;
        let latency_ms = (now_millis() - created_at).max(0);
        self.metrics
            .order_e2e_latency
            .observe(latency_ms as f64 / 1000.0);
        Ok(())
    }

    fn encode<C: Contract>(&self, event: &C) -> Result<Vec<u8>, Step> {
        match self.runtime.block_on(self.codec.encode(event)) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.is_retriable() => Err(Step::Retry(e.to_string())),
            Err(e) => Err(Step::Fatal(EngineError::Encode(e))),
        }
    }

    // ---- sub-topology B: inventory ----

    fn on_line_command(&mut self, id: TaskId, message: &BorrowedMessage<'_>) -> Result<(), Step> {
        let envelope: CommandEnvelope = match format::decode(message.payload().unwrap_or_default())
        {
            Ok(envelope) => envelope,
            Err(error) => return self.dead_letter(message, "undecodable", &error.to_string()),
        };
        let (order_id, line) = match &envelope.command {
            LineCommand::Reserve { order_id, line, .. }
            | LineCommand::Release { order_id, line, .. } => (order_id.clone(), *line),
        };
        let sku = envelope.command.sku().to_owned();
        let store = &self.task(id).store;
        let sku_record = store.get_value::<inventory::SkuRecord>(&keys::sku(&sku))?;
        let reservation =
            store.get_value::<inventory::Reservation>(&keys::reservation(&order_id, line))?;
        let decision = inventory::on_command(
            sku_record.as_ref(),
            reservation.as_ref(),
            envelope.command,
            now_millis(),
        );
        if let Some(result) = &decision.result {
            let payload = format::encode(result);
            self.send(
                Sink::LineResults,
                Some(envelope.reply_partition),
                order_id.as_bytes(),
                Some(&payload),
                None,
            )?;
        }
        let reservation_key = keys::reservation(&order_id, line);
        self.apply_inventory(id, message, &sku, Some(&reservation_key), None, decision)
    }

    fn on_adjustment(&mut self, id: TaskId, message: &BorrowedMessage<'_>) -> Result<(), Step> {
        let adjustment: InventoryAdjusted = match self.decode(message)? {
            Ok(adjustment) => adjustment,
            Err(error) => return self.dead_letter(message, "undecodable", &error.to_string()),
        };
        let sku = adjustment.sku.clone();
        let applied_key = keys::adjustment(&adjustment.adjustment_id);
        let store = &self.task(id).store;
        let sku_record = store.get_value::<inventory::SkuRecord>(&keys::sku(&sku))?;
        let already_applied = store.get(applied_key.as_bytes())?.is_some();
        let decision = inventory::on_adjustment(
            sku_record.as_ref(),
            already_applied,
            adjustment,
            now_millis(),
        );
        self.apply_inventory(id, message, &sku, None, Some(&applied_key), decision)
    }

    fn apply_inventory(
        &mut self,
        id: TaskId,
        message: &BorrowedMessage<'_>,
        sku: &str,
        reservation_key: Option<&str>,
        applied_key: Option<&str>,
        decision: inventory::InventoryDecision,
    ) -> Result<(), Step> {
        if let Some(reason) = &decision.dead_letter {
            return self.dead_letter(message, "invalid", reason);
        }
        self.apply_change(id, &keys::sku(sku), decision.sku);
        if let Some(key) = reservation_key {
            self.apply_change(id, key, decision.reservation);
        }
        if let (Some(key), Some(applied)) = (applied_key, &decision.applied) {
            self.write(id, key.as_bytes().to_vec(), Some(Store::encode(applied)));
        }
        if let Some(update) = &decision.update {
            let payload = self.encode(update)?;
            self.send(
                Sink::InventoryUpdated,
                None,
                sku.as_bytes(),
                Some(&payload),
                None,
            )?;
        }
        Ok(())
    }

    fn apply_change<T: Serialize>(&mut self, id: TaskId, key: &str, change: Change<T>) {
        match change {
            Change::Keep => {}
            Change::Put(value) => {
                self.write(id, key.as_bytes().to_vec(), Some(Store::encode(&value)))
            }
            Change::Delete => self.write(id, key.as_bytes().to_vec(), None),
        }
    }

    // ---- writing ----

    /// A store write: pending in the store until the commit, which writes the last value of
    /// each key to the changelog.
    fn write(&mut self, id: TaskId, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.task(id).store.write(key, value);
    }

    /// Sends each task's committing store writes to its changelog, in the open transaction:
    /// one record per key however often it changed since the last commit (a SKU's record
    /// changes with every order for it), as Kafka Streams' record cache does.
    fn send_changelogs(&mut self) -> Result<(), EngineError> {
        for task in self.tasks.values() {
            let sink = Sink::Changelog(task.id.sub);
            let topic = self.topics.sink(sink);
            let mut sent = 0;
            for (key, value) in task.store.committing() {
                let partition = Some(task.id.partition);
                self.tx.send(record(topic, partition, key, value, None))?;
                sent += 1;
            }
            self.produced[sink.index()].inc_by(sent);
        }
        Ok(())
    }

    /// Sends an output, or holds it while a commit is in progress.
    fn send(
        &mut self,
        sink: Sink,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), Step> {
        self.produced[sink.index()].inc();
        if self.tx.is_committing() {
            self.outbox.push(Output {
                sink,
                partition,
                key: key.to_vec(),
                payload: payload.map(<[u8]>::to_vec),
                headers,
            });
            return Ok(());
        }
        let topic = self.topics.sink(sink);
        self.tx
            .send(record(topic, partition, key, payload, headers))?;
        Ok(())
    }

    /// Opens the next transaction for what was processed while the last commit was in
    /// progress, and sends its held outputs.
    fn send_outbox(&mut self) -> Result<(), EngineError> {
        if !self.tx.is_open() {
            return Ok(()); // nothing was consumed meanwhile
        }
        self.tx.begin()?;
        let mut outbox = std::mem::take(&mut self.outbox);
        for output in outbox.drain(..) {
            let topic = self.topics.sink(output.sink);
            let payload = output.payload.as_deref();
            let held = record(
                topic,
                output.partition,
                &output.key,
                payload,
                output.headers,
            );
            self.tx.send(held)?;
        }
        self.outbox = outbox; // keeps its capacity
        Ok(())
    }

    /// Sends the record's original bytes to the dead-letter topic, with headers naming the
    /// error and where the record came from.
    fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        kind: &str,
        error: &str,
    ) -> Result<(), Step> {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            kind,
            error,
            "dead-lettered"
        );
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "stockflow.error",
                value: Some(error),
            })
            .insert(Header {
                key: "stockflow.error.kind",
                value: Some(kind),
            })
            .insert(Header {
                key: "stockflow.source.topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "stockflow.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "stockflow.source.offset",
                value: Some(offset.as_str()),
            });
        self.send(
            Sink::Dlq,
            None,
            message.key().unwrap_or_default(),
            message.payload(),
            Some(headers),
        )?;
        self.metrics
            .dlq_records
            .with_label_values(&[message.topic()])
            .inc();
        Ok(())
    }

    // ---- committing ----

    /// Commits everything processed so far and waits for it (on revoke and shutdown).
    fn commit(&mut self, consumer: &BaseConsumer<StreamsContext>) -> Result<(), EngineError> {
        if self.tx.is_committing() {
            self.finish_commit(consumer)?;
        }
        self.start_commit()?;
        self.finish_commit(consumer)
    }

    /// Starts a commit: the stores' pending writes become their committing layers and go to
    /// the changelogs, and what was consumed so far is what the commit covers. The engine
    /// goes on processing until [`Engine::finish_commit`].
    fn start_commit(&mut self) -> Result<(), EngineError> {
        self.commit_started = Instant::now();
        for task in self.tasks.values_mut() {
            task.store.freeze();
        }
        self.send_changelogs()?;
        self.tx.start_commit();
        Ok(())
    }

    /// Waits for the commit in progress, then applies the stores' committing layers (or
    /// rolls everything back), and sends the outputs held meanwhile in the next transaction.
    fn finish_commit(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
    ) -> Result<(), EngineError> {
        match self.tx.finish_commit(consumer)? {
            Committed::Nothing => {}
            Committed::Done { changelog_offsets } => {
                let committed_at = Instant::now();
                let in_kafka = committed_at - self.commit_started;
                for task in self.tasks.values_mut() {
                    let changelog = self.topics.changelog(task.id.sub);
                    let offset = changelog_offsets.get(changelog, task.id.partition);
                    if !task.store.is_committing() && offset.is_none() {
                        continue;
                    }
                    // The read model gets the rows once RocksDB holds them.
                    let (sync, id) = (self.sync.clone(), task.id);
                    let hand_over = move |entries| {
                        if let Some(changelog_offset) = offset {
                            let changes = Changes {
                                task: id,
                                changelog_offset,
                                entries,
                                committed_at,
                            };
                            hand_to_sync(&sync, changes);
                        }
                    };
                    let shown = readmodel::prefix(task.id.sub);
                    task.store.commit(offset, shown, &self.writer, hand_over)?;
                }
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                let took = self.commit_started.elapsed();
                self.metrics.commit_latency.observe(took.as_secs_f64());
                if took > self.config.commit_interval {
                    tracing::debug!(
                        kafka_ms = in_kafka.as_millis() as u64,
                        stores_ms = (took - in_kafka).as_millis() as u64,
                        "slow commit: longer than the commit interval"
                    );
                }
            }
            Committed::Aborted(reason) => self.roll_back(consumer, &reason)?,
        }
        self.send_outbox()
    }

    /// Aborts the transaction (commit in progress or not), drops every uncommitted store write
    /// and held output, and rewinds the consumed partitions to the last finished commit.
    fn roll_back(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        reason: &str,
    ) -> Result<(), EngineError> {
        tracing::warn!(reason, "rolling back the transaction");
        self.tx.abort()?;
        for task in self.tasks.values_mut() {
            task.store.rollback();
        }
        self.outbox.clear();
        self.tx.rewind(consumer);
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        Ok(())
    }

    // ---- rebalancing ----

    fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        partitions: &TopicPartitionList,
    ) {
        self.metrics
            .rebalances
            .with_label_values(&["revoked"])
            .inc();
        if let Err(error) = self.commit(consumer) {
            self.fatal.get_or_insert(error);
            return;
        }
        let revoked = self.task_ids(partitions);
        for id in revoked {
            if let Some(mut task) = self.tasks.remove(&id) {
                self.metrics.assigned_tasks.dec();
                task.state = task.state.advance(TaskState::Closed);
                if let Err(error) = task.store.flush() {
                    tracing::warn!(task = %id, %error, "flush on close failed");
                }
                tracing::info!(task = %id, "task closed");
            }
        }
    }

    /// The tasks that `partitions` belong to, each once.
    fn task_ids(&self, partitions: &TopicPartitionList) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = partitions
            .elements()
            .iter()
            .filter_map(|e| {
                let source = self.topics.source(e.topic())?;
                Some(TaskId {
                    sub: source.sub_topology(),
                    partition: e.partition(),
                })
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn on_assign(&mut self, partitions: &TopicPartitionList) {
        self.metrics
            .rebalances
            .with_label_values(&["assigned"])
            .inc();
        self.ready.store(false, Ordering::Release);
        for id in self.task_ids(partitions) {
            if self.tasks.contains_key(&id) {
                continue;
            }
            match self.open_task(id) {
                Ok(task) => {
                    self.tasks.insert(id, task);
                    self.metrics.assigned_tasks.inc();
                }
                Err(error) => {
                    self.fatal.get_or_insert(error);
                    return;
                }
            }
        }
        self.ready.store(true, Ordering::Release);
    }

    fn open_task(&self, id: TaskId) -> Result<Task, EngineError> {
        let mut state = TaskState::Assigned;
        let store = Store::open(&self.config.state_dir.join(id.to_string()), &self.memory)?;
        state = state.advance(TaskState::Restoring);
        let changelog = self.topics.changelog(id.sub);
        let started = Instant::now();
        let (store, restored) = restore(
            &self.config.client,
            changelog,
            id.partition,
            store,
            &self.metrics,
        )?;
        state = state.advance(TaskState::Running);
        let restoring = started.elapsed();
        // The read model gets everything the task owns, so what a crash kept from the last
        // sync is written now (rows it already has are left alone by the offset guard).
        if let Some(changelog_offset) = store.changelog_offset() {
            let entries = store.committed_entries(readmodel::prefix(id.sub));
            hand_to_sync(
                &self.sync,
                Changes {
                    task: id,
                    changelog_offset,
                    entries,
                    committed_at: Instant::now(),
                },
            );
        }
        tracing::info!(
            task = %id,
            restored = restored.records,
            wiped = restored.wiped,
            changelog_offset = ?store.changelog_offset(),
            elapsed_ms = restoring.as_millis() as u64,
            "task running"
        );
        Ok(Task { id, state, store })
    }

    fn close_all(&mut self) {
        for (id, task) in std::mem::take(&mut self.tasks) {
            self.metrics.assigned_tasks.dec();
            if let Err(error) = task.store.flush() {
                tracing::warn!(task = %id, %error, "flush on close failed");
            }
        }
    }

    fn update_memory_metrics(&self) {
        self.metrics
            .rocksdb_block_cache_usage
            .set(self.memory.block_cache_usage() as i64);
        self.metrics
            .rocksdb_memtable_usage
            .set(self.memory.memtable_usage() as i64);
    }
}
