//! The delivery guarantee, in one place.
//!
//! **exactly_once_v2** (the default). Two transactional producers per engine thread, used in
//! turn, one transaction each (see [`Transactor::new`]); their `transactional.id`s are
//! `<application.id>-<instance id>` (with `-<n>` for thread n > 0) and the same with `-alt`,
//! stable across restarts of the same state directory, so a restarted instance fences its
//! predecessor and aborts whatever that one left open. Every record consumed since the last
//! commit is processed inside one transaction that holds all its outputs (external topics,
//! repartition topics, the dead-letter topic), its store writes (the last value of each key,
//! sent as changelog records when it commits), and, through `send_offsets_to_transaction` with the
//! consumer's group metadata, the input offsets. Every `commit.interval.ms` the transaction
//! commits; only then are the stores' writes applied to RocksDB, in one `WriteBatch` per store
//! together with the changelog offset they reach. While the broker acknowledges a committing
//! transaction's records, the engine processes the next records: it holds their outputs in
//! memory and their store writes in a new layer, and sends the outputs in the next
//! transaction once this one has committed (an abort drops both). So:
//! - a crash before the commit leaves nothing visible to `read_committed` readers and nothing
//!   in RocksDB: the records are consumed again from the committed offsets;
//! - a crash after the commit but before RocksDB is written leaves RocksDB behind its
//!   changelog: the restore on restart replays exactly that tail;
//! - when the commit fails with an abortable error (a rebalance moved the group's generation,
//!   a delivery failed, a timeout), the transaction is aborted, the pending writes are dropped,
//!   and every partition is rewound to the first offset of the aborted transaction;
//! - a fatal error (fenced, or a transaction left in an unknown state by a timeout) rebuilds
//!   the producer and rolls back; three rebuilds in a row without a commit stop the engine
//!   (below).
//!
//! **What each error class does** (exactly-once):
//! - *Abortable* (a delivery failed or timed out, a commit refused because the group's
//!   generation moved, a send refused because the transaction is in an abortable state): the
//!   transaction is aborted, the stores drop their pending writes, the partitions are rewound
//!   to the last commit, and processing goes on ([`GuaranteeError::Abortable`] for sends).
//! - *Retriable timeouts* (the broker is down or restarting): a commit is retried three times
//!   (librdkafka's "retry call to resume"). An abort that does not finish within
//!   [`ABORT_TIMEOUT`] has an indefinite outcome: the producer is rebuilt, and the new one's
//!   `init_transactions` aborts whatever the transactional id left open (the coordinator never
//!   commits a transaction it was not told to commit, so this is safe). `init_transactions` is
//!   retried for up to [`INIT_PATIENCE`], so a broker bounce is waited out instead of stopping
//!   the engine. (Retrying the abort itself took 14 to 23 s after the broker was back: the
//!   abort of a transaction whose records timed out needs an epoch bump, which the restarted
//!   coordinator refuses until its own timeout of the transaction has run.)
//! - *Fatal or fenced* on begin, send, commit or abort. The usual cause is a transaction left
//!   in an unknown state by a timeout: the coordinator aborted it and bumped the epoch while
//!   the broker was away, and librdkafka has no KIP-890. The producer is rebuilt with the same
//!   transactional id ([`Transactor::rebuild`]), and the engine rolls back to the last commit
//!   (a send refused as fatal is an abortable failure: the abort finds the producer fatal and
//!   rebuilds it; a `begin` refused so rebuilds before anything is sent). A producer rebuilt
//!   [`MAX_REBUILDS`] times with no commit in between stops the engine: a broker fault costs
//!   one rebuild, so that takes another process with the same transactional id. The state
//!   dir's lock keeps such a process off this machine, so it would be a copied state dir
//!   elsewhere, and the two must not fence each other forever.
//! - *An assignment lost* (the session ended while the broker was down): nothing is
//!   committed for it; the transaction is aborted and the tasks are closed (see the engine's
//!   revoke callback).
//!
//! Partitions are revoked only after the open transaction commits (in the rebalance callback,
//! before the consumer rejoins), so a task's new owner never sees half of a transaction.
//!
//! The transaction's state (`Idle | Open | Committing`) is an enum with its transitions in one
//! place, [`lifecycle`], unit-tested without Kafka.
//!
//! **at_least_once**. An idempotent, non-transactional producer. At commit time the producer is
//! flushed; if every delivery succeeded, the stores' pending writes are applied and the input
//! offsets committed, else the writes are dropped and the partitions rewound. A crash can
//! repeat outputs, never lose them; the decisions themselves are idempotent (orders are
//! deduplicated by id, reservations by order and line, adjustments by id).

mod lifecycle;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::runtime::live::EngineStatus;

pub use lifecycle::{Lifecycle, Positions, TxState};

/// How long a transactional call may take before it counts as failed.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an abort may take before its outcome counts as indefinite and the producer is
/// rebuilt (see the error classes above).
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new producer's `init_transactions` keeps trying while the transaction
/// coordinator cannot be reached (a broker restarting) before the engine gives up and stops,
/// and how long each attempt waits ("retry call to resume": each attempt resumes the last).
const INIT_PATIENCE: Duration = Duration::from_secs(300);
const INIT_ATTEMPT: Duration = Duration::from_secs(5);

/// Rebuilds of one producer in a row, with no commit in between, that stop the engine.
const MAX_REBUILDS: u32 = 3;

/// How long a drain first sleeps when no delivery report has arrived; each further sleep is
/// twice as long, up to [`DRAIN_PAUSE_MAX`]. (A fixed 100 µs woke the idle engine thread up to
/// 170 times in a 17 ms drain: at 5,000 orders/s it woke 2,800 times a second, and 830 with
/// growing sleeps, which also took a fifth off its CPU; BENCHMARKS.md, session 9.)
const DRAIN_PAUSE: Duration = Duration::from_micros(100);

/// The longest sleep of a drain, so the last acknowledgement is served within a millisecond.
const DRAIN_PAUSE_MAX: Duration = Duration::from_millis(1);

/// Producer settings unless the user sets them (`-X KEY=VALUE`).
const PRODUCER_DEFAULTS: [(&str, &str); 5] = [
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("queue.buffering.max.messages", "1000000"),
    ("queue.buffering.max.kbytes", "1048576"),
    // A broker that comes back is reconnected to within a second, not librdkafka's 10 s.
    ("reconnect.backoff.max.ms", "1000"),
];

/// `processing.guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProcessingGuarantee {
    #[value(name = "exactly_once_v2")]
    ExactlyOnceV2,
    #[value(name = "at_least_once")]
    AtLeastOnce,
}

/// Why the producer side failed in a way the engine cannot recover from.
#[derive(Debug, thiserror::Error)]
pub enum GuaranteeError {
    #[error(
        "fenced: another instance with transactional.id {transactional_id} took over ({source})"
    )]
    Fenced {
        transactional_id: String,
        source: KafkaError,
    },
    #[error("Kafka producer: {0}")]
    Kafka(#[from] KafkaError),
    /// The transaction failed and must be aborted before anything more is sent (records timed
    /// out while the broker was away, say): the engine rolls back and goes on.
    #[error("the transaction must be aborted: {0}")]
    Abortable(KafkaError),
}

/// Collects delivery reports: the highest offset written to each changelog partition, and
/// the first failed delivery.
#[derive(Debug, Default)]
pub struct DeliveryTracker {
    changelogs: Vec<String>,
    state: Mutex<Delivered>,
}

#[derive(Debug, Default)]
struct Delivered {
    changelog_offsets: ChangelogOffsets,
    failure: Option<String>,
}

/// The highest offset written to each changelog partition: a handful of entries, scanned
/// (a delivery report allocates nothing once its partition is known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangelogOffsets(Vec<(String, i32, i64)>);

impl ChangelogOffsets {
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0
            .iter()
            .find(|(t, p, _)| t == topic && *p == partition)
            .map(|&(_, _, offset)| offset)
    }

    fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .0
            .iter_mut()
            .find(|(t, p, _)| t == topic && *p == partition)
        {
            Some((_, _, highest)) => *highest = (*highest).max(offset),
            None => self.0.push((topic.to_owned(), partition, offset)),
        }
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut state = self.lock();
        match result {
            Ok(message) => {
                let topic = message.topic();
                if self.changelogs.iter().any(|c| c == topic) {
                    state
                        .changelog_offsets
                        .record(topic, message.partition(), message.offset());
                }
            }
            Err((error, message)) => {
                state.failure.get_or_insert_with(|| {
                    format!("delivery to {} failed: {error}", message.topic())
                });
            }
        }
    }
}

impl DeliveryTracker {
    /// The delivery state is a few plain values, updated in one step each: a panic while it
    /// was held (it ends the engine thread) leaves nothing half-written.
    fn lock(&self) -> std::sync::MutexGuard<'_, Delivered> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Delivered {
        std::mem::take(&mut *self.lock())
    }
}

/// What a commit attempt ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Nothing was consumed since the last commit.
    Nothing,
    /// Committed: apply these changelog offsets to the stores.
    Done { changelog_offsets: ChangelogOffsets },
    /// Rolled back (the reason); the stores must drop their pending writes and the
    /// partitions must be rewound with [`Transactor::rewind`].
    Aborted(String),
    /// The commit failed in a way that leaves its outcome unknown (the reason): retried
    /// timeouts, or a fatal error. The producer was rebuilt, and its `init_transactions`
    /// settled the transaction on the coordinator, committed or aborted. The engine must
    /// call [`Transactor::abort`] (which only resets the state: the new producer has nothing
    /// open), drop everything it holds, and start every task again from what the broker has.
    Indefinite(String),
}

/// The producer side of the delivery guarantee: transactions, consumed positions, commits.
///
/// A commit has two steps, so that the engine can go on processing while the broker
/// acknowledges the transaction's records: [`Transactor::start_commit`] fixes what the commit
/// covers (the records consumed so far), and [`Transactor::finish_commit`] waits for every
/// delivery and commits. In between, the engine must not send (the producer's transaction is
/// the one being committed): it holds its outputs until the commit has finished, and what it
/// consumes meanwhile belongs to the next commit.
pub struct Transactor {
    /// Exactly-once: two transactional producers, used in turn, one transaction each (see
    /// [`Transactor::new`]); at-least-once: one idempotent producer.
    producers: Vec<EngineProducer>,
    /// The index of the producer of the open (or committing) transaction.
    current: usize,
    guarantee: ProcessingGuarantee,
    /// The transaction's state and the positions it covers.
    life: Lifecycle,
    last_commit: Instant,
    /// The producers' configuration and the changelogs, to rebuild a producer.
    config: ClientConfig,
    changelogs: Vec<String>,
    /// The engine thread's heartbeat, beaten while a producer waits for the broker.
    status: EngineStatus,
}

impl std::fmt::Debug for Transactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactor")
            .field("guarantee", &self.guarantee)
            .field("transactional_id", &self.transactional_id())
            .field("state", &self.life.state())
            .finish()
    }
}

/// A producer of the engine, with its transactional id (exactly-once).
struct EngineProducer {
    producer: BaseProducer<DeliveryTracker>,
    transactional_id: String,
    /// A transaction was begun and has not ended (exactly-once).
    in_transaction: bool,
    /// How many times this producer was rebuilt since a transaction last committed (see
    /// [`Transactor::rebuild`]).
    rebuilds: u32,
}

/// The second transactional producer's id: the first one's with this suffix.
pub const ALTERNATE_SUFFIX: &str = "-alt";

impl Transactor {
    /// Creates the producers; with exactly-once, initialises their transactions (fencing any
    /// earlier producer with the same transactional ids).
    ///
    /// Exactly-once uses two transactional producers, `transactional_id` and
    /// `transactional_id` + [`ALTERNATE_SUFFIX`], one transaction each in turn. When a
    /// transaction commits, the broker still writes its markers for a while; a transaction
    /// of the same producer that starts meanwhile has its partitions refused
    /// (`CONCURRENT_TRANSACTIONS`) and librdkafka retries after 20 ms, with every record of
    /// that transaction waiting. The other producer's last transaction finished a commit
    /// earlier, so the next transaction starts at once. Commits stay sequential: a
    /// transaction begins only once the previous one has committed or aborted.
    pub fn new(
        client: &ClientConfig,
        guarantee: ProcessingGuarantee,
        transactional_id: String,
        changelogs: Vec<String>,
        status: EngineStatus,
    ) -> Result<Self, GuaranteeError> {
        let mut config = client.clone();
        // Defaults that `-X` may override; the guarantee's own settings are not negotiable.
        for (key, value) in PRODUCER_DEFAULTS {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", plumbing::admin::PARTITIONER);
        let ids = match guarantee {
            ProcessingGuarantee::ExactlyOnceV2 => {
                let alternate = format!("{transactional_id}{ALTERNATE_SUFFIX}");
                vec![transactional_id, alternate]
            }
            ProcessingGuarantee::AtLeastOnce => vec![transactional_id],
        };
        let producers = ids
            .into_iter()
            .map(|id| create(&config, guarantee, id, &changelogs, &status))
            .collect::<Result<_, GuaranteeError>>()?;
        Ok(Self {
            producers,
            current: 0,
            guarantee,
            life: Lifecycle::default(),
            last_commit: Instant::now(),
            config,
            changelogs,
            status,
        })
    }

    /// After a fatal error of the current producer (fenced, or a transaction in an unknown
    /// state after a timeout: librdkafka has no KIP-890), rebuilds it (see
    /// [`Transactor::rebuild`]); any other error is returned.
    fn recover(&mut self, error: GuaranteeError) -> Result<(), GuaranteeError> {
        let fatal = match &error {
            GuaranteeError::Fenced { .. } => true,
            GuaranteeError::Kafka(KafkaError::Transaction(e)) => e.is_fatal(),
            _ => false,
        };
        if !fatal || self.guarantee != ProcessingGuarantee::ExactlyOnceV2 {
            return Err(error);
        }
        self.rebuild(error)
    }

    /// Replaces the current producer with a new one with the same transactional id, whose
    /// `init_transactions` bumps the epoch and aborts whatever the old one left open. The
    /// caller then rolls back to the last commit. Refused (`why` is returned) once the
    /// producer was rebuilt [`MAX_REBUILDS`] times with no commit in between: a second
    /// instance with the same id would otherwise be fought forever.
    fn rebuild(&mut self, why: GuaranteeError) -> Result<(), GuaranteeError> {
        let rebuilds = self.producers[self.current].rebuilds + 1;
        if rebuilds > MAX_REBUILDS {
            return Err(why);
        }
        let transactional_id = self.transactional_id().to_owned();
        tracing::warn!(error = %why, transactional_id, rebuilds, "rebuilding the transactional producer");
        let mut producer = create(
            &self.config,
            self.guarantee,
            transactional_id,
            &self.changelogs,
            &self.status,
        )?;
        producer.rebuilds = rebuilds;
        self.producers[self.current] = producer;
        Ok(())
    }

    /// The producer of the open (or committing) transaction.
    fn producer(&self) -> &BaseProducer<DeliveryTracker> {
        &self.producers[self.current].producer
    }

    fn transactional_id(&self) -> &str {
        &self.producers[self.current].transactional_id
    }

    /// The transaction has ended (committed or aborted): the next one uses the other producer.
    fn ended(&mut self) {
        self.current = (self.current + 1) % self.producers.len();
    }

    /// Opens a transaction if none is open (exactly-once only). Not while a commit is in
    /// progress: the engine holds its outputs until it has finished. A producer found fatal
    /// between transactions (the coordinator fenced it while it was idle) is rebuilt first:
    /// nothing was sent in the new transaction yet.
    pub fn begin(&mut self) -> Result<(), GuaranteeError> {
        if self.life.begin() && self.guarantee == ProcessingGuarantee::ExactlyOnceV2 {
            if let Err(error) = self.producer().begin_transaction() {
                self.recover(classify(self.transactional_id(), error))?;
                self.producer()
                    .begin_transaction()
                    .map_err(|e| classify(self.transactional_id(), e))?;
            }
            self.producers[self.current].in_transaction = true;
        }
        Ok(())
    }

    /// Sends one record, waiting for room in the producer's queue if it is full.
    pub fn send(&mut self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), GuaranteeError> {
        loop {
            match self.producer().send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    self.producer().poll(Duration::from_millis(10));
                }
                // A transaction in an abortable error state takes no more records (librdkafka
                // refuses them with `_STATE`), nor does a fatal producer (`_FATAL`: fenced by
                // the coordinator, say after it timed the transaction out). Either way the
                // transaction is rolled back; the abort finds a fatal producer and rebuilds it.
                Err((
                    error @ KafkaError::MessageProduction(
                        RDKafkaErrorCode::State | RDKafkaErrorCode::Fatal,
                    ),
                    _,
                )) if self.guarantee == ProcessingGuarantee::ExactlyOnceV2 => {
                    return Err(GuaranteeError::Abortable(error));
                }
                Err((error, _)) => return Err(classify(self.transactional_id(), error)),
            }
        }
    }

    /// Serves delivery reports; call often.
    pub fn poll(&self) {
        self.producer().poll(Duration::ZERO);
    }

    /// Notes that `offset` of `topic[partition]` was processed in the current transaction.
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        self.life.consumed(topic, partition, offset);
    }

    /// Whether `interval` has passed since the last commit.
    pub fn due(&self, interval: Duration) -> bool {
        self.last_commit.elapsed() >= interval
    }

    /// How long until `interval` has passed since the last commit (zero if it has).
    pub fn until_due(&self, interval: Duration) -> Duration {
        interval.saturating_sub(self.last_commit.elapsed())
    }

    /// Whether something was consumed or sent since the last commit finished.
    pub fn is_open(&self) -> bool {
        self.life.is_open()
    }

    /// Whether a commit has started and not finished.
    pub fn is_committing(&self) -> bool {
        self.life.is_committing()
    }

    /// Starts a commit of what was consumed so far; `false` if there is nothing to commit.
    /// Every record of the transaction must have been sent.
    pub fn start_commit(&mut self) -> bool {
        self.last_commit = Instant::now();
        self.life.start_commit()
    }

    /// Whether every record sent has its delivery report (serving the reports that arrived).
    pub fn delivered(&self) -> bool {
        self.producer().poll(Duration::ZERO);
        self.producer().in_flight_count() == 0
    }

    /// Commits what [`Transactor::start_commit`] fixed, with the guarantee's protocol, once
    /// every record is delivered (waiting for what is not). On [`Committed::Aborted`], the
    /// engine must call [`Transactor::abort`] and [`Transactor::rewind`].
    pub fn finish_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<Committed, GuaranteeError> {
        let Some(covers) = self.life.covers() else {
            return Ok(Committed::Nothing);
        };
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, next) in covers.next_offsets() {
            offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
        let committed = match self.guarantee {
            ProcessingGuarantee::ExactlyOnceV2 => self.commit_transaction(consumer, &offsets)?,
            ProcessingGuarantee::AtLeastOnce => {
                self.drain()?;
                let delivered = self.tracker().take();
                match delivered.failure {
                    Some(failure) => Committed::Aborted(failure),
                    None => {
                        if offsets.count() > 0 {
                            consumer.commit(&offsets, CommitMode::Sync)?;
                        }
                        Committed::Done {
                            changelog_offsets: delivered.changelog_offsets,
                        }
                    }
                }
            }
        };
        // Aborted: the positions go back under what was consumed since, to be rewound.
        self.life
            .finish(matches!(committed, Committed::Done { .. }));
        Ok(committed)
    }

    fn commit_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
    ) -> Result<Committed, GuaranteeError> {
        let Some(group) = consumer.group_metadata() else {
            return Ok(Committed::Aborted(
                "the consumer has no group metadata yet".to_owned(),
            ));
        };
        // Deliver everything first: commit_transaction's own flush waits in steps of 100 ms.
        if let Err(error) = self.drain() {
            return Ok(Committed::Aborted(error.to_string()));
        }
        let attempt = || -> Result<(), KafkaError> {
            if offsets.count() > 0 {
                self.producer()
                    .send_offsets_to_transaction(offsets, &group, TXN_TIMEOUT)?;
            }
            self.producer().commit_transaction(TXN_TIMEOUT)
        };
        let mut result = attempt();
        for _ in 0..3 {
            match &result {
                Err(KafkaError::Transaction(e)) if e.is_retriable() && !e.txn_requires_abort() => {
                    result = attempt()
                }
                _ => break,
            }
        }
        match result {
            Ok(()) => {
                let delivered = self.tracker().take();
                for producer in &mut self.producers {
                    producer.rebuilds = 0;
                }
                self.producers[self.current].in_transaction = false;
                self.ended();
                Ok(Committed::Done {
                    changelog_offsets: delivered.changelog_offsets,
                })
            }
            // Known not to have committed: the transaction is to be aborted.
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() && !e.is_fatal() => {
                Ok(Committed::Aborted(e.to_string()))
            }
            // Timed out again and again, fenced, or fatal: the coordinator may have committed
            // (EndTxn reached it and its answer was lost) or not. Without KIP-890 the old
            // producer cannot be trusted with the next transaction (Jepsen's advice for such
            // clients); a new one settles this one, and the engine learns the outcome from the
            // broker (the group's committed offsets, the changelogs).
            Err(e) => {
                let reason = e.to_string();
                self.rebuild(classify(self.transactional_id(), e))?;
                Ok(Committed::Indefinite(reason))
            }
        }
    }

    /// Waits until every record sent has its delivery report. (`BaseProducer::flush` polls in
    /// 100 ms steps, which would put a floor of 100 ms under every commit; and `poll` with a
    /// timeout spins for the last millisecond of it, so it is served without one here, with
    /// sleeps from 100 µs to 1 ms while nothing has arrived.)
    fn drain(&self) -> Result<(), GuaranteeError> {
        let deadline = Instant::now() + TXN_TIMEOUT;
        let mut in_flight = self.producer().in_flight_count();
        let mut pause = DRAIN_PAUSE;
        while in_flight > 0 {
            self.producer().poll(Duration::ZERO);
            let left = self.producer().in_flight_count();
            if left < in_flight {
                in_flight = left; // a report was served: others may be waiting
                continue;
            }
            if Instant::now() > deadline {
                return Err(GuaranteeError::Kafka(KafkaError::Flush(
                    RDKafkaErrorCode::OperationTimedOut,
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(DRAIN_PAUSE_MAX);
        }
        Ok(())
    }

    /// Aborts the open transaction (exactly-once), commit in progress or not, and forgets its
    /// deliveries.
    /// Returns where each partition consumed since the last finished commit must be rewound
    /// to (see [`Transactor::rewind`]).
    pub fn abort(&mut self) -> Result<Vec<(String, i32, i64)>, GuaranteeError> {
        let open = *self.life.state() != TxState::Idle;
        let rewind = self.life.abort();
        let begun = self.producers[self.current].in_transaction;
        if self.guarantee == ProcessingGuarantee::ExactlyOnceV2 && open && begun {
            // librdkafka's abort first flushes what is still in flight, but rust-rdkafka's
            // producer takes delivery reports as events, which that flush cannot serve: with
            // records in flight the abort failed after its timeout ("the event queue must be
            // polled for delivery report events ... prior to calling abort") and stopped the
            // engine. Serve them here first.
            if let Err(error) = self.drain() {
                tracing::warn!(%error, "not every delivery report arrived before the abort");
            }
            match self.producer().abort_transaction(ABORT_TIMEOUT) {
                Ok(()) => {}
                // Indefinite: the coordinator did not answer in time (a broker down or
                // restarting). A new producer's init_transactions finishes the abort.
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    self.rebuild(GuaranteeError::Kafka(KafkaError::Transaction(e)))?;
                }
                Err(e) => self.recover(classify(self.transactional_id(), e))?,
            }
            self.producers[self.current].in_transaction = false;
        }
        self.tracker().take();
        self.ended();
        Ok(rewind)
    }

    /// Seeks each partition back to the offset [`Transactor::abort`] returned for it.
    pub fn rewind<C: ConsumerContext>(consumer: &BaseConsumer<C>, to: Vec<(String, i32, i64)>) {
        for (topic, partition, first) in to {
            if let Err(error) = consumer.seek(
                &topic,
                partition,
                Offset::Offset(first),
                Duration::from_secs(10),
            ) {
                // Not assigned any more: its new owner starts from the committed offset.
                tracing::debug!(topic, partition, %error, "rewind skipped");
            }
        }
    }

    fn tracker(&self) -> &DeliveryTracker {
        self.producer().context()
    }
}

/// Creates one engine producer; with exactly-once, initialises its transactions (fencing any
/// earlier producer with the same id), waiting up to [`INIT_PATIENCE`] for a coordinator that
/// cannot be reached. Each attempt counts as the engine thread's progress (`status`): a wait
/// for a broker that is down is not a wedge, and `/health` stays true for up to
/// [`INIT_PATIENCE`], longer than the default stall timeout.
fn create(
    config: &ClientConfig,
    guarantee: ProcessingGuarantee,
    transactional_id: String,
    changelogs: &[String],
    status: &EngineStatus,
) -> Result<EngineProducer, GuaranteeError> {
    let mut config = config.clone();
    if guarantee == ProcessingGuarantee::ExactlyOnceV2 {
        config
            .set("transactional.id", &transactional_id)
            .set("transaction.timeout.ms", "10000");
    }
    let producer: BaseProducer<DeliveryTracker> = config.create_with_context(DeliveryTracker {
        changelogs: changelogs.to_vec(),
        state: Mutex::default(),
    })?;
    if guarantee == ProcessingGuarantee::ExactlyOnceV2 {
        let started = Instant::now();
        loop {
            status.beat();
            match producer.init_transactions(INIT_ATTEMPT) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && started.elapsed() < INIT_PATIENCE =>
                {
                    tracing::warn!(
                        error = %e,
                        waited = ?started.elapsed(),
                        "cannot initialise transactions yet (is the broker down?): trying again"
                    );
                }
                Err(e) => return Err(classify(&transactional_id, e)),
            }
        }
    }
    Ok(EngineProducer {
        producer,
        transactional_id,
        in_transaction: false,
        rebuilds: 0,
    })
}

fn classify(transactional_id: &str, error: KafkaError) -> GuaranteeError {
    let fenced = matches!(
        &error,
        KafkaError::Transaction(e) if e.is_fatal()
    ) || matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    );
    if fenced {
        GuaranteeError::Fenced {
            transactional_id: transactional_id.to_owned(),
            source: error,
        }
    } else {
        GuaranteeError::Kafka(error)
    }
}
