//! Whether a task's source partition has nothing to hand out, for
//! [`TaskContext::idle_since`]: the basis of event-time processing's wait for idle partitions.
//!
//! A partition counts as idle once the consumer has had nothing at all for anyone since the
//! partition's last record (an empty poll), and it has caught up with the partition: reached
//! the end offset the partition had when it was assigned (or rewound). The second condition is
//! Kafka Streams' "fetched lag is known and zero": right after an assignment the consumer
//! drains before its first fetch of the new partitions has answered, and the records written
//! during the rebalance (seconds of them) would otherwise be read after their partition's time
//! had moved past them, and count as late. (librdkafka names a partition that reached its end
//! only by number, not topic, and its cached high watermarks need an unsafe call: so the end is
//! asked of the broker once per assignment.)
//!
//! [`TaskContext::idle_since`]: crate::runtime::topology::TaskContext::idle_since

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::tasks::Task;
use crate::runtime::topology::{SourceId, Topology};

/// How long asking the broker for a partition's offsets may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The offset the consumer must reach in each of `partitions` before it can count as idle:
/// the partition's end offset now, if the consumer starts below it (from its committed offset,
/// or `from` where given: a rewind). `None` where there is nothing to read, or the broker did
/// not answer (logged: the partition is then taken as caught up, as before this check).
pub(super) fn ends_to_reach<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[(String, i32, Option<i64>)],
) -> Vec<Option<i64>> {
    let mut unknown = TopicPartitionList::new();
    for (topic, partition, _) in partitions.iter().filter(|(_, _, from)| from.is_none()) {
        unknown.add_partition(topic, *partition);
    }
    let committed = if unknown.count() == 0 {
        None
    } else {
        match consumer.committed_offsets(unknown, QUERY_TIMEOUT) {
            Ok(committed) => Some(committed),
            Err(error) => {
                tracing::warn!(%error, "cannot read the committed offsets: idleness is not checked against them");
                None
            }
        }
    };
    partitions
        .iter()
        .map(|(topic, partition, from)| {
            let (low, high) = match consumer.fetch_watermarks(topic, *partition, QUERY_TIMEOUT) {
                Ok(watermarks) => watermarks,
                Err(error) => {
                    tracing::warn!(topic, partition, %error, "cannot read the end offset: idleness is not checked against it");
                    return None;
                }
            };
            let start = match from {
                Some(from) => *from,
                None => {
                    let elements = committed.as_ref()?;
                    match elements.find_partition(topic, *partition)?.offset() {
                        Offset::Offset(offset) => offset,
                        // No committed offset: `auto.offset.reset` is `earliest`.
                        _ => low,
                    }
                }
            };
            (start < high).then_some(high)
        })
        .collect()
}

/// Updates whether each source partition of `task` has nothing to hand out, as of
/// `drained_at` (when the consumer last had nothing for anyone) and `now`; a partition with
/// records `buffered` (read, not processed yet) has something.
pub(super) fn update<C: ConsumerContext>(
    task: &mut Task,
    drained_at: i64,
    now: i64,
    buffered: impl Fn(SourceId) -> bool,
    topology: &Topology,
    consumer: &BaseConsumer<C>,
) {
    let sources = &topology.subs[usize::from(task.id.sub)].sources;
    for (i, (state, source)) in task.sources.iter_mut().zip(sources).enumerate() {
        if let Some(end) = state.catching_up
            && position(consumer, &source.name, task.id.partition).is_some_and(|at| at >= end)
        {
            // Reached over records the consumer does not hand out (transaction markers, aborted
            // records): caught up now.
            state.catching_up = None;
            state.last_record = state.last_record.max(now);
        }
        let drained = state.catching_up.is_none()
            && drained_at >= state.last_record
            && !buffered(SourceId(i as u8));
        state.idle_since = drained.then_some(state.last_record);
    }
}

/// The consumer's position in `topic[partition]`: the offset after the last record it handed
/// out or skipped, if it has any.
fn position<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}
