//! The application's consumer group seen from outside, for the commands that inspect or move
//! it (`processor reset`, `processor status`): a consumer that never joins the group, and the
//! offsets the group has committed.

use anyhow::Context;
use plumbing::admin::ADMIN_TIMEOUT;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};

/// A consumer in `group` that never joins it: it only reads (and, for a reset, commits) the
/// group's offsets, which Kafka allows while the group has no members.
pub fn outside_consumer(config: &ClientConfig, group: &str) -> anyhow::Result<BaseConsumer> {
    config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a Kafka consumer")
}

/// The offset the group has committed in each of `topic`'s `partitions` partitions (by
/// partition number; `None` where it has committed none).
pub fn committed_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<Option<i64>>> {
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(query, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot read the committed offsets of {topic}"))?;
    Ok((0..partitions)
        .map(|partition| {
            committed
                .find_partition(topic, partition)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
        })
        .collect())
}
