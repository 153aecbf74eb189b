//! The engine: one consumer, the transactional producers, the tasks one stream thread owns,
//! and the loop that polls a record, hands it to its task's processor, and commits on
//! schedule. It moves bytes: what a record means is the topology's business.
//!
//! It runs on one blocking thread (librdkafka's rebalance callbacks run inside `poll`, and the
//! engine commits there before partitions move). The consumer's context holds the engine
//! behind a mutex so those callbacks can reach it; the loop never holds the lock while it
//! polls, so the lock is never contended.
//!
//! Layout: this module (the poll/commit loop and the commit steps); [`tasks`] (assignment,
//! revocation, opening and closing tasks); [`fetched`] (the records read and not processed
//! yet, and the order they are taken in); [`context`] (the [`TaskContext`] processors see);
//! [`outputs`] (sends, the outbox held while a commit is in progress, changelogs, dead
//! letters); [`idleness`] (when a source partition has nothing to hand out).
//!
//! [`TaskContext`]: super::topology::TaskContext

mod context;
mod fetched;
mod idleness;
mod outputs;
mod tasks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::guarantee::{Committed, GuaranteeError, ProcessingGuarantee, Transactor};
use super::live::{BEAT_EVERY, EngineStatus};
use super::queryable::LiveStores;
use super::restore::{RestoreError, Restorer};
use super::store::{Origin, SharedMemory, StoreError, Subscription, Writer};
use super::task::TaskId;
use super::topics::Partitions;
use super::topology::{ProcessError, Record, SourceId, Topology};
use crate::metrics::Metrics;
use context::EngineContext;
use fetched::{Fetched, FetchedRecord, MAX_BUFFERED, SourcePartition};
use outputs::Outputs;
use tasks::Tasks;

/// A time without polling (the engine busy, a commit or an abort blocked on the broker, a
/// rebalance callback inside the poll) after which an empty poll seen before it no longer says
/// the consumer has nothing: records may have arrived meanwhile (see `run_loop`).
const STALE_DRAIN: Duration = Duration::from_millis(50);

/// How long to wait before retrying after a transient failure (registry unreachable) that
/// left effects behind, which the transaction's rollback undoes.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// How long a partition whose record failed for a reason that may pass (before any effect)
/// first stays paused; each failure in a row doubles it, up to [`PAUSE_MAX`].
const PAUSE_FIRST: Duration = Duration::from_secs(1);
const PAUSE_MAX: Duration = Duration::from_secs(16);

/// How long the engine waits for the group's committed offsets, and for a seek, when it
/// starts its tasks again after a commit of unknown outcome.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(30);

/// Records processed between two servings of the producer's delivery reports.
const DELIVERY_POLL_EVERY: u32 = 64;

/// While a commit waits for the broker's acknowledgements, records processed between two
/// checks whether they have all arrived.
const DELIVERY_CHECK_EVERY: u32 = 8;

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
    /// Static group membership: the consumer's `group.instance.id`, if any.
    pub group_instance_id: Option<String>,
    /// The consumer group protocol (ARCHITECTURE.md, "Rebalancing").
    pub group_protocol: GroupProtocol,
    /// The RocksDB memory every store of the process shares.
    pub memory: SharedMemory,
    /// What runs: the topology, with a processor supplier per sub-topology.
    pub topology: Arc<Topology>,
    /// Its topics' partition counts.
    pub partitions: Arc<Partitions>,
    /// Who hears of what the stores apply (the read model), if anyone.
    pub subscription: Option<Subscription>,
    /// The consumer's `client.id` (librdkafka's default if `None`): `processor run` names
    /// the instance, the thread and where its status is served (see `crate::status`).
    pub client_id: Option<String>,
    /// Where the thread says what it is doing (tasks, restores, commits) for `GET /status`.
    pub status: EngineStatus,
    /// Where the thread publishes its running tasks' stores for interactive queries.
    pub queryable: LiveStores,
}

/// The consumer group protocol (`group.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GroupProtocol {
    /// The classic protocol with the eager `range` assignor: every rebalance stops every task
    /// of every member, and every assignment keeps co-partitioned topics together.
    #[default]
    Classic,
    /// KIP-848 with the broker's `range` assignor: a rebalance moves only what changes; a
    /// task runs once all of its source partitions are assigned.
    Consumer,
}

impl GroupProtocol {
    /// librdkafka properties that the consumer protocol refuses: the broker owns them.
    pub const CLASSIC_ONLY: [&str; 4] = [
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "partition.assignment.strategy",
        "group.protocol.type",
    ];

    /// Sets the protocol's properties on a consumer's config.
    fn configure(self, consumer: &mut ClientConfig) {
        match self {
            GroupProtocol::Classic => consumer.set("partition.assignment.strategy", "range"),
            GroupProtocol::Consumer => consumer
                .set("group.protocol", "consumer")
                .set("group.remote.assignor", "range"),
        };
    }
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
    #[error("task {task}: {source}")]
    Processor {
        task: TaskId,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot start the store writer thread: {0}")]
    Writer(std::io::Error),
}

/// Everything the loop and the rebalance callbacks share.
pub struct Engine {
    config: EngineConfig,
    tasks: Tasks,
    out: Outputs,
    /// When the commit in progress (or the last one) started.
    commit_started: Instant,
    /// Applies the stores' committed layers to RocksDB.
    writer: Writer,
    metrics: Metrics,
    /// `records_consumed` per (sub-topology, source, partition), looked up once: the hot path
    /// only increments.
    consumed: HashMap<(u8, SourceId, i32), IntCounter>,
    ready: Arc<AtomicBool>,
    /// An error raised inside a rebalance callback, for the loop to return.
    fatal: Option<EngineError>,
    /// The engine failed: what it holds uncommitted is dropped, never committed (the revoke
    /// callback of the consumer's close must not start a commit).
    failed: bool,
    /// When the consumer last had nothing to hand out (wall clock, milliseconds).
    drained_at: i64,
    /// What the consumer handed out and is not processed yet.
    fetched: Fetched,
    /// The paused partitions' failures in a row (see [`Engine::pause`]).
    retrying: HashMap<SourcePartition, u32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tasks", &self.tasks)
            .field("out", &self.out)
            .field("failed", &self.failed)
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            lock(&self.engine).on_assign(consumer, partitions);
        }
    }
}

/// The engine's lock. A panic while it was held ends the engine thread (the caller reports
/// it and stops the process), so a poisoned lock is only ever seen by that thread's own
/// unwinding, and the data is still the engine's: it is taken as it is.
fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the engine until `shutdown`, then commits, leaves the group and closes the stores.
pub fn run_engine(
    config: EngineConfig,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    let transactional_id = format!("{}-{}", config.application_id, config.instance_id);
    let tx = Transactor::new(
        &config.client,
        config.guarantee,
        transactional_id,
        config.topology.changelogs(),
        config.status.clone(),
    )?;
    let writer_name = match std::thread::current().name() {
        Some(engine) => format!("{engine}-store"),
        None => "store-writer".to_owned(),
    };
    let writer =
        Writer::start(writer_name, config.subscription.clone()).map_err(EngineError::Writer)?;
    let out = Outputs::new(tx, &config.topology, &config.partitions, &metrics);
    let engine = Arc::new(Mutex::new(Engine {
        tasks: Tasks::default(),
        out,
        commit_started: Instant::now(),
        writer,
        metrics: metrics.clone(),
        consumed: HashMap::new(),
        ready,
        fatal: None,
        failed: false,
        drained_at: i64::MIN,
        fetched: Fetched::default(),
        retrying: HashMap::new(),
        config: config.clone(),
    }));
    let mut consumer_config = config.client.clone();
    if let Some(client_id) = &config.client_id {
        consumer_config.set("client.id", client_id);
    }
    if let Some(member) = &config.group_instance_id {
        consumer_config.set("group.instance.id", member);
    }
    config.group_protocol.configure(&mut consumer_config);
    let consumer: BaseConsumer<StreamsContext> = consumer_config
        .set("group.id", &config.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000")
        // A broker that comes back is reconnected to within a second, not librdkafka's 10 s.
        .set(
            "reconnect.backoff.max.ms",
            config
                .client
                .get("reconnect.backoff.max.ms")
                .unwrap_or("1000"),
        )
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
    consumer.subscribe(&config.topology.source_topics())?;
    tracing::info!(application_id = %config.application_id, guarantee = ?config.guarantee, "processing");

    let mut result = run_loop(&consumer, &engine, &shutdown);
    // Commit what is in hand, then leave the group (the revoke callback closes the tasks).
    if result.is_ok() {
        result = lock(&engine).commit(&consumer);
    }
    if let Err(error) = &result {
        tracing::error!(%error, "engine stopped");
        // Nothing uncommitted may be committed now: the revoke callback that closing the
        // consumer runs only closes the tasks.
        lock(&engine).failed = true;
    }
    consumer.unsubscribe();
    drop(consumer);
    let mut engine = lock(&engine);
    let engine = &mut *engine;
    engine.tasks.close_all(&engine.metrics);
    engine.publish_tasks();
    engine.ready.store(false, Ordering::Release);
    result
}

fn run_loop(
    consumer: &BaseConsumer<StreamsContext>,
    engine: &Mutex<Engine>,
    shutdown: &CancellationToken,
) -> Result<(), EngineError> {
    let mut unserved = 0;
    let mut turns: u32 = 0;
    let mut wait = IDLE_POLL;
    let mut polled_at = Instant::now();
    while !shutdown.is_cancelled() {
        let calling = Instant::now();
        let polled = consumer.poll(wait);
        let returned = Instant::now();
        // Idleness rests on the last empty poll (`drained_at`). After a stall it says nothing:
        // a commit that waited 15 s on the broker, or a revoke callback inside this poll, left
        // records written meanwhile unread, and a partition that looked idle before would move
        // its time past them (the soak's late restocks, RELIABILITY.md). Until a poll finds the
        // consumer empty again, no partition counts as idle.
        let stalled = calling - polled_at > STALE_DRAIN || returned - calling > wait + STALE_DRAIN;
        polled_at = returned;
        let mut engine = lock(engine);
        if let Some(error) = engine.fatal.take() {
            return Err(error);
        }
        let drained = polled.is_none();
        if stalled {
            engine.drained_at = i64::MIN;
        } else if drained {
            engine.drained_at = schemas::now_millis();
        }
        // The heartbeat /health reads (see `live`).
        turns = turns.wrapping_add(1);
        if drained || turns.is_multiple_of(BEAT_EVERY) {
            engine.config.status.beat();
        }
        match polled {
            Some(Ok(message)) => engine.fetch(&message),
            // A fatal consumer error (e.g. a static member fenced by the coordinator) leaves a
            // consumer that hands out nothing more: the engine stops rather than poll it forever.
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(EngineError::Consumer(error));
            }
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            None => {}
        }
        // Read ahead until every partition of the next record's topic has a record at hand,
        // or the consumer has nothing more, or the buffer is full (see `fetched`).
        engine.resume_due(consumer);
        if drained || engine.fetched.ready() || engine.fetched.len() >= MAX_BUFFERED {
            engine.process_next(consumer)?;
        }
        let idle = drained && !engine.fetched.has_runnable();
        engine.punctuate(consumer)?;
        unserved += 1;
        if engine.out.tx.is_committing() {
            // The records of the transaction being committed are on their way to the broker,
            // and the engine goes on processing meanwhile; the commit finishes as soon as they
            // are all acknowledged, or at once when there is nothing to process.
            if idle || engine.out.outbox_full() {
                engine.finish_commit(consumer)?;
            } else if unserved >= DELIVERY_CHECK_EVERY {
                unserved = 0;
                if engine.out.tx.delivered() {
                    engine.finish_commit(consumer)?;
                }
            }
        } else {
            // Delivery reports arrive in batches: serving them after every record only costs
            // clock reads and empty queue checks.
            if idle || unserved >= DELIVERY_POLL_EVERY {
                engine.out.tx.poll();
                unserved = 0;
            }
            let interval = engine.config.commit_interval;
            if engine.out.tx.due(interval)
                || (idle && engine.out.tx.due(interval / EARLY_COMMIT_DIVISOR))
            {
                engine.start_commit(consumer)?;
                engine.update_memory_metrics();
            }
        }
        // While a commit waits for acknowledgements, take whatever records are there without
        // waiting (none: the commit finishes); with a transaction open, wait no longer than
        // until an early commit is due.
        wait = if engine.out.tx.is_committing() || engine.fetched.has_runnable() {
            Duration::ZERO
        } else if engine.out.tx.is_open() {
            engine
                .out
                .tx
                .until_due(engine.config.commit_interval / EARLY_COMMIT_DIVISOR)
        } else {
            IDLE_POLL
        };
    }
    Ok(())
}

impl Engine {
    /// Copies a record the consumer handed out into [`Fetched`], if its task runs.
    fn fetch(&mut self, message: &BorrowedMessage<'_>) {
        let Some((sub, source)) = self.config.topology.source(message.topic()) else {
            return;
        };
        let partition = message.partition();
        let Some(task) = self.tasks.running(TaskId { sub, partition }) else {
            return; // revoked while the record was in flight
        };
        let offset = message.offset();
        let state = &mut task.sources[usize::from(source.0)];
        state.last_record = schemas::now_millis();
        state.idle_since = None;
        if state.catching_up.is_some_and(|end| offset + 1 >= end) {
            state.catching_up = None;
        }
        let record = FetchedRecord {
            offset,
            timestamp: message.timestamp().to_millis().unwrap_or(0),
            key: message.key().map(Box::from),
            value: message.payload().map(Box::from),
        };
        self.fetched.push((sub, source, partition), record);
    }

    /// Hands the next buffered record to its task's processor; a transient failure rolls the
    /// transaction back and waits before the records are read again.
    fn process_next(&mut self, consumer: &BaseConsumer<StreamsContext>) -> Result<(), EngineError> {
        let Some(((sub, source, partition), fetched)) = self.fetched.pop() else {
            return Ok(());
        };
        let topic = self.config.topology.subs[usize::from(sub)].sources[usize::from(source.0)]
            .name
            .as_str();
        let id = TaskId { sub, partition };
        let Some(task) = self.tasks.running(id) else {
            return Ok(()); // suspended: its records are read again by its next owner
        };
        let started = Instant::now();
        if !self.out.tx.is_committing() {
            self.out.tx.begin()?;
        }
        let record = Record {
            source,
            topic,
            partition,
            offset: fetched.offset,
            timestamp: fetched.timestamp,
            key: fetched.key.as_deref(),
            value: fetched.value.as_deref(),
        };
        task.stream_time = task.stream_time.max(record.timestamp);
        let (processor, view) = task.split();
        let mut ctx = EngineContext::new(view, &mut self.out, Some(&record));
        let processed = processor.process(&mut ctx, &record);
        let effects = ctx.effects();
        if ctx.scheduled() {
            self.tasks.reschedule();
        }
        match processed {
            Ok(()) => {
                if !self.retrying.is_empty() {
                    self.retrying.remove(&(sub, source, partition));
                }
                self.out.tx.consumed(topic, record.partition, record.offset);
                let metrics = &self.metrics;
                self.consumed
                    .entry((sub, source, record.partition))
                    .or_insert_with(|| {
                        metrics
                            .records_consumed
                            .with_label_values(&[topic, &record.partition.to_string()])
                    })
                    .inc();
                self.metrics
                    .processing_latency
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(ProcessError::Retry(reason)) if !effects => {
                self.pause(consumer, (sub, source, partition), fetched, &reason);
                Ok(())
            }
            Err(ProcessError::Retry(reason)) => {
                tracing::warn!(%reason, "transient failure: rolling back and retrying");
                self.out.tx.consumed(topic, record.partition, record.offset);
                self.roll_back(consumer, &reason)?;
                std::thread::sleep(RETRY_BACKOFF);
                Ok(())
            }
            Err(ProcessError::Fatal(source)) => Err(EngineError::Processor { task: id, source }),
        }
    }

    /// Pauses `partition` after its record `fetched` failed for a reason that may pass, before
    /// any effect: the record goes back to the head of the partition's queue, the consumer
    /// stops fetching the partition, and the other partitions go on. The pause doubles with
    /// each failure in a row ([`PAUSE_FIRST`] to [`PAUSE_MAX`]); one line is logged per pause.
    fn pause(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        partition: SourcePartition,
        fetched: FetchedRecord,
        reason: &str,
    ) {
        let attempt = {
            let failures = self.retrying.entry(partition).or_default();
            *failures += 1;
            *failures
        };
        let pause = PAUSE_FIRST
            .saturating_mul(1 << (attempt - 1).min(8))
            .min(PAUSE_MAX);
        let offset = fetched.offset;
        self.fetched
            .unread(partition, fetched, Instant::now() + pause);
        let topic = self.topic_of(partition);
        tracing::warn!(
            reason,
            topic,
            partition = partition.2,
            offset,
            attempt,
            "cannot process a record for now: its partition is paused for {pause:?}, the others go on"
        );
        self.set_paused(consumer, &[partition], true);
        self.metrics.processing_retries.inc();
    }

    /// Resumes the paused partitions whose pause is over.
    fn resume_due(&mut self, consumer: &BaseConsumer<StreamsContext>) {
        let resumed = self.fetched.resume_due(Instant::now());
        if !resumed.is_empty() {
            self.set_paused(consumer, &resumed, false);
        }
    }

    /// Pauses or resumes fetching `partitions` in the consumer, and updates the gauge.
    fn set_paused(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        partitions: &[SourcePartition],
        paused: bool,
    ) {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(self.topic_of(partition), partition.2);
        }
        let result = if paused {
            consumer.pause(&list)
        } else {
            consumer.resume(&list)
        };
        if let Err(error) = result {
            // Not fetching a paused partition only saves memory; fetching a partition that
            // should be resumed is what matters, and a revoked one needs nothing.
            tracing::debug!(%error, paused, "cannot pause or resume partitions");
        }
        self.metrics
            .paused_partitions
            .set(self.fetched.paused().count() as i64);
    }

    fn topic_of(&self, (sub, source, _): SourcePartition) -> &str {
        self.config.topology.subs[usize::from(sub)].sources[usize::from(source.0)]
            .name
            .as_str()
    }

    /// Runs the punctuations that are due.
    fn punctuate(&mut self, consumer: &BaseConsumer<StreamsContext>) -> Result<(), EngineError> {
        let now = Instant::now();
        if !self.tasks.punctuation_due(now) {
            return Ok(());
        }
        for id in self.tasks.punctuations(now) {
            let Some(task) = self.tasks.running(id) else {
                continue;
            };
            let (drained_at, topology) = (self.drained_at, &self.config.topology);
            let fetched = &self.fetched;
            let buffered = |source: SourceId| fetched.holds((id.sub, source, id.partition));
            let now = schemas::now_millis();
            idleness::update(task, drained_at, now, buffered, topology, consumer);
            let (processor, view) = task.split();
            let mut ctx = EngineContext::new(view, &mut self.out, None);
            match processor.punctuate(&mut ctx, schemas::now_millis()) {
                Ok(()) => {}
                Err(ProcessError::Retry(reason)) => {
                    self.roll_back(consumer, &reason)?;
                    std::thread::sleep(RETRY_BACKOFF);
                    return Ok(());
                }
                Err(ProcessError::Fatal(source)) => {
                    return Err(EngineError::Processor { task: id, source });
                }
            }
        }
        Ok(())
    }

    // ---- committing ----

    /// Commits everything processed so far and waits for it (on revoke and shutdown).
    fn commit(&mut self, consumer: &BaseConsumer<StreamsContext>) -> Result<(), EngineError> {
        if self.out.tx.is_committing() {
            self.finish_commit(consumer)?;
        }
        self.start_commit(consumer)?;
        self.finish_commit(consumer)
    }

    /// Starts a commit: the stores' pending writes become their committing layers and go to
    /// the changelogs, and what was consumed so far is what the commit covers. The engine
    /// goes on processing until [`Engine::finish_commit`].
    fn start_commit(&mut self, consumer: &BaseConsumer<StreamsContext>) -> Result<(), EngineError> {
        self.commit_started = Instant::now();
        self.tasks.freeze();
        if let Err(error) = self.out.send_changelogs(&self.tasks) {
            return self.or_roll_back(consumer, Err(error));
        }
        self.out.tx.start_commit();
        Ok(())
    }

    /// Waits for the commit in progress, then applies the stores' committing layers (or
    /// rolls everything back), and sends the outputs held meanwhile in the next transaction.
    fn finish_commit(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
    ) -> Result<(), EngineError> {
        match self.out.tx.finish_commit(consumer)? {
            Committed::Nothing => {}
            Committed::Done { changelog_offsets } => {
                let committed_at = Instant::now();
                let in_kafka = committed_at - self.commit_started;
                let topology = &self.config.topology;
                for task in self.tasks.iter_mut() {
                    let specs = &topology.subs[usize::from(task.id.sub)].stores;
                    for (store, spec) in task.stores.iter_mut().zip(specs) {
                        let offset = changelog_offsets.get(&spec.changelog, task.id.partition);
                        if !store.is_committing() && offset.is_none() {
                            continue;
                        }
                        let origin = Origin {
                            task: task.id,
                            store: spec.name,
                            committed_at,
                        };
                        store.commit(offset, &self.writer, origin)?;
                    }
                }
                self.metrics
                    .transactions
                    .with_label_values(&["committed"])
                    .inc();
                self.config.status.committed(schemas::now_millis());
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
            Committed::Indefinite(reason) => self.restart_from_broker(consumer, &reason)?,
        }
        let sent = self.out.send_outbox();
        self.or_roll_back(consumer, sent)
    }

    /// Rolls back when `sent` failed because the transaction must be aborted; any other
    /// failure stops the engine.
    fn or_roll_back(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        sent: Result<(), GuaranteeError>,
    ) -> Result<(), EngineError> {
        match sent {
            Err(GuaranteeError::Abortable(error)) => self.roll_back(consumer, &error.to_string()),
            other => Ok(other?),
        }
    }

    /// Aborts the transaction (commit in progress or not), drops every uncommitted store write
    /// and held output, and rewinds the consumed partitions to the last finished commit.
    fn roll_back(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        reason: &str,
    ) -> Result<(), EngineError> {
        tracing::warn!(reason, "rolling back the transaction");
        let rewind = self.out.tx.abort()?;
        self.tasks.roll_back();
        self.out.clear_outbox();
        let rewound: Vec<_> = rewind
            .iter()
            .map(|(topic, partition, first)| (topic.clone(), *partition, Some(*first)))
            .collect();
        let topology = &self.config.topology;
        let rewound_partitions: Vec<_> = rewind
            .iter()
            .filter_map(|(topic, partition, _)| {
                let (sub, source) = topology.source(topic)?;
                Some((sub, source, *partition))
            })
            .collect();
        let unpaused = self.fetched.retain(|p| !rewound_partitions.contains(&p));
        self.set_paused(consumer, &unpaused, false);
        Transactor::rewind(consumer, rewind);
        // Read again, the rewound records are no partition's idle time.
        self.catch_up(consumer, rewound);
        // What a processor keeps in memory is derived from its stores, which just lost their
        // uncommitted writes: every running task gets a new processor, as after a restart.
        let ids: Vec<TaskId> = self.tasks.iter().map(|t| t.id).collect();
        for id in ids {
            self.restart_processor(id)?;
        }
        self.metrics
            .transactions
            .with_label_values(&["aborted"])
            .inc();
        Ok(())
    }

    /// After a commit whose outcome is unknown ([`Committed::Indefinite`]): everything the
    /// engine holds is dropped, and every task starts again from what the broker has, as if a
    /// rebalance had given the engine its own tasks back: its stores from RocksDB plus their
    /// changelogs' tails (which hold the commit's writes if it happened), its partitions from
    /// the group's committed offsets (which include the commit's if it happened; a
    /// read_committed consumer's offset fetch waits for a transaction still being settled).
    fn restart_from_broker(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        reason: &str,
    ) -> Result<(), EngineError> {
        tracing::warn!(
            reason,
            "the commit's outcome is unknown: every task starts again from what the broker committed"
        );
        self.out.tx.abort()?; // the producer is new: this only resets the transaction's state
        self.tasks.roll_back();
        self.out.clear_outbox();
        let ids: Vec<TaskId> = self.tasks.iter().map(|t| t.id).collect();
        self.tasks.suspend(&ids);
        self.tasks.close(&ids, &self.metrics);
        let unpaused = self.fetched.retain(|_| false);
        self.retrying.clear();
        self.set_paused(consumer, &unpaused, false);
        self.publish_tasks();
        let resumed = self.rewind(consumer, &consumer.assignment()?)?;
        self.open_tasks(ids)?;
        self.catch_up(consumer, resumed);
        self.metrics
            .transactions
            .with_label_values(&["indefinite"])
            .inc();
        Ok(())
    }

    /// Moves the consumer back to the group's committed offsets of `partitions` (their
    /// beginning where nothing is committed: auto.offset.reset is earliest), and returns them
    /// as [`Engine::catch_up`] takes them.
    fn rewind(
        &self,
        consumer: &BaseConsumer<StreamsContext>,
        partitions: &TopicPartitionList,
    ) -> Result<Vec<(String, i32, Option<i64>)>, EngineError> {
        let committed = consumer.committed_offsets(partitions.clone(), COMMITTED_TIMEOUT)?;
        let mut rewound = Vec::new();
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let from = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            consumer.seek(
                topic,
                partition,
                from.map_or(Offset::Beginning, Offset::Offset),
                COMMITTED_TIMEOUT,
            )?;
            rewound.push((topic.to_owned(), partition, from));
        }
        Ok(rewound)
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
        let revoked = self.tasks.ids_of(&self.config.topology, partitions);
        // Under the consumer protocol a revoked task's other partitions may stay assigned:
        // they are paused until the task is whole again (see `on_assign`).
        let assignment = consumer.assignment().unwrap_or_default();
        let mut rest = TopicPartitionList::new();
        for &id in &revoked {
            for (topic, partition) in Tasks::partitions_of(&self.config.topology, id) {
                if assignment.find_partition(topic, partition).is_some()
                    && partitions.find_partition(topic, partition).is_none()
                {
                    rest.add_partition(topic, partition);
                }
            }
        }
        self.tasks.suspend(&revoked);
        if self.failed {
            // The engine is stopping after a failure: its uncommitted work is dropped (the
            // partitions' next owner reads it again from the committed offsets).
            self.tasks.roll_back();
            self.out.clear_outbox();
        } else if consumer.assignment_lost() {
            // The group went on without this member (its session ended, say while the broker
            // was down): the partitions may have another owner already, so nothing may be
            // committed for them. The transaction is aborted (waiting for the coordinator if
            // need be) and the next owner, perhaps this engine again, reads from the offsets
            // committed last.
            tracing::warn!("the group's assignment was lost: dropping the uncommitted work");
            if let Err(error) = self.out.tx.abort() {
                self.failed = true;
                self.fatal.get_or_insert(error.into());
            }
            self.tasks.roll_back();
            self.out.clear_outbox();
        } else if let Err(error) = self.commit(consumer) {
            self.failed = true;
            self.fatal.get_or_insert(error);
        }
        self.tasks.close(&revoked, &self.metrics);
        let tasks = &self.tasks;
        let unpaused = self
            .fetched
            .retain(|(sub, _, partition)| tasks.contains(TaskId { sub, partition }));
        self.retrying.retain(|p, _| {
            tasks.contains(TaskId {
                sub: p.0,
                partition: p.2,
            })
        });
        self.set_paused(consumer, &unpaused, false);
        if rest.count() > 0 {
            tracing::info!(partitions = ?rest.elements().iter().map(|e| format!("{}-{}", e.topic(), e.partition())).collect::<Vec<_>>(), "paused until their tasks are whole again");
            self.pause_whole(consumer, &rest, true);
        }
        self.publish_tasks();
    }

    /// Pauses or resumes fetching `partitions`, whose tasks are not whole (see `on_assign`).
    fn pause_whole(
        &self,
        consumer: &BaseConsumer<StreamsContext>,
        partitions: &TopicPartitionList,
        paused: bool,
    ) {
        let result = if paused {
            consumer.pause(partitions)
        } else {
            consumer.resume(partitions)
        };
        if let Err(error) = result {
            tracing::warn!(%error, paused, "cannot pause or resume the partitions of a task that is not whole");
        }
    }

    fn on_assign(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        partitions: &TopicPartitionList,
    ) {
        self.metrics
            .rebalances
            .with_label_values(&["assigned"])
            .inc();
        if self.failed {
            return;
        }
        self.ready.store(false, Ordering::Release);
        if let Err(error) = self.assign(consumer, partitions) {
            self.failed = true;
            self.fatal.get_or_insert(error);
            return;
        }
        self.ready.store(true, Ordering::Release);
    }

    /// Opens the tasks that `partitions` make whole. The classic protocol assigns whole tasks
    /// at once; the consumer protocol (KIP-848) may assign a task's partitions in different
    /// rebalances, and a task runs only whole: the partitions of a task that is not whole are
    /// paused, and once it is, those assigned before are rewound to the committed offsets
    /// (their records were dropped while it waited) and resumed.
    fn assign(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        partitions: &TopicPartitionList,
    ) -> Result<(), EngineError> {
        let topology = self.config.topology.clone();
        let assignment = consumer.assignment()?;
        let (whole, waiting): (Vec<TaskId>, Vec<TaskId>) = self
            .tasks
            .ids_of(&topology, partitions)
            .into_iter()
            .partition(|&id| Tasks::is_whole(&topology, id, &assignment));
        let mut paused = TopicPartitionList::new();
        for &id in &waiting {
            for (topic, partition) in Tasks::partitions_of(&topology, id) {
                if partitions.find_partition(topic, partition).is_some() {
                    paused.add_partition(topic, partition);
                }
            }
        }
        if paused.count() > 0 {
            tracing::info!(tasks = ?waiting.iter().map(ToString::to_string).collect::<Vec<_>>(), "tasks wait for the rest of their source partitions");
            self.pause_whole(consumer, &paused, true);
        }
        let mut earlier = TopicPartitionList::new();
        for &id in whole.iter().filter(|&&id| !self.tasks.contains(id)) {
            for (topic, partition) in Tasks::partitions_of(&topology, id) {
                if partitions.find_partition(topic, partition).is_none() {
                    earlier.add_partition(topic, partition);
                }
            }
        }
        self.open_tasks(whole)?;
        // Asked once every task is open: what was written while their stores were restored
        // is to be read before any of them counts as idle.
        let mut assigned: Vec<_> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), None))
            .collect();
        if earlier.count() > 0 {
            assigned.extend(self.rewind(consumer, &earlier)?);
            self.pause_whole(consumer, &earlier, false);
        }
        self.catch_up(consumer, assigned);
        Ok(())
    }

    /// Notes where the consumer must get to in each of `partitions` (topic, partition, the
    /// offset it reads from if not its committed one) before the partition can count as idle,
    /// and starts their idle time now.
    fn catch_up(
        &mut self,
        consumer: &BaseConsumer<StreamsContext>,
        partitions: Vec<(String, i32, Option<i64>)>,
    ) {
        let ends = idleness::ends_to_reach(consumer, &partitions);
        let now = schemas::now_millis();
        let topology = &self.config.topology;
        for ((topic, partition, _), end) in partitions.iter().zip(ends) {
            if let Some(state) = self.tasks.source_state(topology, topic, *partition) {
                state.catching_up = end;
                state.last_record = state.last_record.max(now);
                state.idle_since = None;
            }
        }
    }

    /// Opens the tasks `ids` not open yet, one after another (restoring their stores), and
    /// starts their processors. The restore clients are made once for them all. Two new
    /// clients per store took most of a task's opening: a median of 233 ms with nothing to
    /// restore, 2 to 2.7 s for 8 tasks; made once, 8 tasks took 60 to 410 ms (broker bounce
    /// test, session 17). Clients kept from one assignment to the next were slow after a
    /// broker restart (525 ms for some tasks).
    fn open_tasks(&mut self, ids: Vec<TaskId>) -> Result<(), EngineError> {
        let ids: Vec<TaskId> = ids
            .into_iter()
            .filter(|&id| !self.tasks.contains(id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let restorer = Restorer::new(&self.config.client)?;
        for id in ids {
            let opened = tasks::open(&self.config, &restorer, id, &self.metrics);
            let opened = opened.and_then(|task| {
                self.tasks.insert(task, &self.metrics);
                self.init_processor(id)
            });
            self.publish_tasks();
            opened?;
        }
        Ok(())
    }

    /// Gives running task `id` a new processor and initializes it.
    fn restart_processor(&mut self, id: TaskId) -> Result<(), EngineError> {
        let Some(task) = self.tasks.running(id) else {
            return Ok(());
        };
        task.processor = self.config.topology.processor(id);
        task.punctuation = None;
        self.init_processor(id)
    }

    /// Calls the `init` of running task `id`'s processor.
    fn init_processor(&mut self, id: TaskId) -> Result<(), EngineError> {
        let Some(task) = self.tasks.running(id) else {
            return Ok(());
        };
        let (processor, view) = task.split();
        let mut ctx = EngineContext::new(view, &mut self.out, None);
        let initialized = processor.init(&mut ctx);
        self.tasks.reschedule();
        initialized.map_err(|e| EngineError::Processor {
            task: id,
            source: match e {
                ProcessError::Fatal(source) => source,
                retry @ ProcessError::Retry(_) => Box::new(retry),
            },
        })
    }

    /// Tells [`EngineStatus`] which tasks the thread owns now, in which state.
    fn publish_tasks(&self) {
        self.config
            .status
            .set_tasks(self.tasks.iter().map(|t| (t.id, t.state)));
    }

    fn update_memory_metrics(&self) {
        let memory = &self.config.memory;
        self.metrics
            .rocksdb_block_cache_usage
            .set(memory.block_cache_usage() as i64);
        self.metrics
            .rocksdb_memtable_usage
            .set(memory.memtable_usage() as i64);
    }
}
