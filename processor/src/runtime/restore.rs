//! Restoring a store from its changelog: only the tail after the offset the store already
//! holds, read with `read_committed` so aborted writes never come back.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use rocksdb::WriteBatch;

use super::live::RestoreProgress;
use super::store::{Store, StoreError};
use crate::metrics::Metrics;

/// Records written to RocksDB per batch while restoring.
const BATCH: usize = 10_000;
/// How long a restore may wait for the changelog's end without progress (a transaction left
/// open by a dead instance holds it back until the broker aborts it).
const STALL_LIMIT: Duration = Duration::from_secs(120);
/// How often a restore asks again whether a transaction left open on the changelog has ended.
const OPEN_TRANSACTION_PAUSE: Duration = Duration::from_millis(100);
/// How long a changelog may stay unknown to the restore's new client: another instance (or
/// engine thread) may have created it a moment ago, and the broker's metadata lags.
const UNKNOWN_LIMIT: Duration = Duration::from_secs(10);

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restoring {topic}[{partition}]: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        source: KafkaError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "restoring {topic}[{partition}]: no progress for {STALL_LIMIT:?} at offset {at} of {end}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        at: i64,
        end: i64,
    },
}

/// The restore consumers' context: the end-of-partition events it asks for are how a restore
/// knows it is done, not errors, even when one is still queued as the consumer closes.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error != KafkaError::Global(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(%error, reason, "restore consumer");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// Changelog records replayed.
    pub records: u64,
    /// Whether the store was wiped first because the changelog no longer matched it.
    pub wiped: bool,
}

/// The changelog partition's low and high watermarks, waiting up to [`UNKNOWN_LIMIT`] for a
/// just-created changelog to appear in the metadata.
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + UNKNOWN_LIMIT;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Err(e)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::UnknownPartition
                            | RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownTopic
                    )
                ) && Instant::now() < deadline =>
            {
                tracing::debug!(topic, partition, error = %e, "changelog not in the metadata yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// The changelog partition's low watermark and end, once no transaction is open on it: its
/// last stable offset (what `committed`, a read_committed client, reads up to) has reached the
/// high watermark (what `uncommitted`, a read_uncommitted client, sees).
///
/// A previous owner's transaction still open (a zombie that commits it when it resumes, or a
/// dead instance's, which the broker aborts after `transaction.timeout.ms`) holds store
/// writes that a restore to the last stable offset leaves out. If it then commits, its input
/// offsets move past the records those writes came from, and they are never processed again
/// (seen in the zombie test: orders whose pending state a resumed zombie committed stayed
/// undecided forever). So the restore waits for that transaction to end, as the consumer's
/// fetch of the committed input offsets waits for the same transaction (KIP-447).
fn stable_watermarks<C: ConsumerContext>(
    committed: &BaseConsumer<C>,
    uncommitted: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), RestoreError> {
    let kafka = |source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let started = Instant::now();
    let mut said = false;
    loop {
        let (_, high) = watermarks(uncommitted, topic, partition).map_err(kafka)?;
        let (low, stable) = watermarks(committed, topic, partition).map_err(kafka)?;
        if stable >= high {
            return Ok((low, stable));
        }
        if started.elapsed() > STALL_LIMIT {
            return Err(RestoreError::Stalled {
                topic: topic.to_owned(),
                partition,
                at: stable,
                end: high,
            });
        }
        if !said {
            tracing::info!(
                topic,
                partition,
                stable,
                high,
                "waiting for a transaction left open on the changelog to end"
            );
            said = true;
        }
        std::thread::sleep(OPEN_TRANSACTION_PAUSE);
    }
}

/// The two clients restores use, made once for the tasks of an assignment: a read_committed
/// consumer that replays changelogs (assigned by hand, one partition at a time) and a
/// read_uncommitted one that only asks for high watermarks.
pub struct Restorer {
    committed: BaseConsumer<RestoreContext>,
    uncommitted: BaseConsumer<RestoreContext>,
}

impl std::fmt::Debug for Restorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restorer").finish_non_exhaustive()
    }
}

impl Restorer {
    pub fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        let committed = config
            .clone()
            // Partitions are assigned by hand: the group is never joined, nothing is committed.
            .set("group.id", "stockflow-restore")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("fetch.max.bytes", "52428800")
            // The tail ends in a partial fetch: answer it at once instead of after the default
            // 500 ms, which each task would otherwise pay.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(RestoreContext)?;
        let uncommitted = config
            .clone()
            .set("group.id", "stockflow-restore")
            .set("isolation.level", "read_uncommitted")
            .create_with_context(RestoreContext)?;
        Ok(Self {
            committed,
            uncommitted,
        })
    }

    /// Replays `topic[partition]` (of `partitions`) from just after the store's offset to the
    /// current end, and reports how far it got to `progress` (and the metrics). The consumer
    /// goes on fetching the partition until the next restore assigns its own, or the restorer
    /// is dropped.
    pub fn restore(
        &self,
        topic: &str,
        (partition, partitions): (i32, i32),
        store: Store,
        metrics: &Metrics,
        progress: &RestoreProgress,
    ) -> Result<(Store, Restored), RestoreError> {
        let (consumer, uncommitted) = (&self.committed, &self.uncommitted);
        let kafka = |source| RestoreError::Kafka {
            topic: topic.to_owned(),
            partition,
            source,
        };
        let (low, high) = stable_watermarks(consumer, uncommitted, topic, partition)?;
        let mut store = store;
        let mut restored = Restored::default();
        let mut from = store.changelog_offset().map_or(0, |o| o + 1);
        let repartitioned = store
            .changelog_partitions()
            .is_some_and(|n| n != partitions);
        if from > high || repartitioned {
            // The changelog was truncated or recreated (a reset), or the application was
            // repartitioned (this task's partition now holds other keys): local state is stale.
            store = store.wipe()?;
            restored.wiped = true;
            from = 0;
        }
        if store.changelog_partitions() != Some(partitions) {
            store.set_changelog_partitions(partitions)?;
        }
        let from = from.max(low);
        if from >= high {
            return Ok((store, restored));
        }
        metrics.restore_remaining.add(high - from);
        progress.expect((high - from) as u64);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(kafka)?;
        consumer.assign(&assignment).map_err(kafka)?;

        let mut batch = WriteBatch::default();
        let mut last: Option<i64> = None;
        let mut position = from;
        let mut progressed = Instant::now();
        while position < high {
            match consumer.poll(Duration::from_millis(200)) {
                // A record fetched for the restore before (this client serves every task of
                // an assignment) is not this one's.
                Some(Ok(message))
                    if message.partition() != partition || message.topic() != topic => {}
                Some(Ok(message)) => {
                    let key = message.key().unwrap_or_default();
                    match message.payload() {
                        Some(value) => batch.put(key, value),
                        None => batch.delete(key),
                    }
                    last = Some(message.offset());
                    position = message.offset() + 1;
                    restored.records += 1;
                    progressed = Instant::now();
                    if batch.len() >= BATCH {
                        store.apply(std::mem::take(&mut batch), last)?;
                        metrics.restored_records.inc_by(BATCH as u64);
                        metrics.restore_remaining.sub(BATCH as i64);
                        progress.advance(BATCH as u64);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // Control records (transaction markers) are never delivered: ask where we are.
                    if let Ok(positions) = consumer.position()
                        && let Some(Offset::Offset(p)) = positions
                            .find_partition(topic, partition)
                            .map(|e| e.offset())
                        && p > position
                    {
                        position = p;
                        progressed = Instant::now();
                    }
                    if progressed.elapsed() > STALL_LIMIT {
                        return Err(RestoreError::Stalled {
                            topic: topic.to_owned(),
                            partition,
                            at: position,
                            end: high,
                        });
                    }
                }
                Some(Err(error)) => {
                    // Transient (a broker reconnecting); a restore that stops progressing fails below.
                    tracing::warn!(topic, partition, %error, "restore consumer error");
                    if progressed.elapsed() > STALL_LIMIT {
                        return Err(kafka(error));
                    }
                }
            }
        }
        let rest = batch.len();
        if rest > 0 {
            store.apply(batch, last)?;
        }
        metrics.restored_records.inc_by(rest as u64);
        metrics.restore_remaining.sub(rest as i64);
        // Records skipped as aborted still counted as remaining: settle the gauge.
        let skipped = (high - from) - restored.records as i64;
        metrics.restore_remaining.sub(skipped.max(0));
        progress.advance(rest as u64 + skipped.max(0) as u64);
        Ok((store, restored))
    }
}
