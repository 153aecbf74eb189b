//! `processor tail`: follow the outputs as a person reads them, one decoded line per record,
//! with `read_committed` (what downstream consumers see).
//!
//! With `--from-beginning`, the history is printed first in time order across the topics:
//! every output partition is read up to the end it has at start (its last stable offset, under
//! `read_committed`), then those records are printed sorted by (timestamp, topic, partition,
//! offset), the order the processor's event-time clerk takes its inputs in. The history is held
//! in memory until then. What arrives after that is printed as it arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use plumbing::admin::ADMIN_TIMEOUT;
use plumbing::connection::ConnectionArgs;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use schemas::{Codec, InventoryUpdated, OrderConfirmed, OrderRejected, Topics, now_millis};
use tokio_util::sync::CancellationToken;

/// How long the catch-up waits for a record before it asks where the partitions stand (the
/// last records before an end may be transaction markers, which are never delivered).
const POSITION_CHECK: Duration = Duration::from_millis(200);

/// How often to look again for output topics that do not exist yet.
const TOPIC_WAIT: Duration = Duration::from_secs(1);

/// Where a record is in the merged history: (timestamp, topic, partition, offset).
type Place = (i64, String, i32, i64);

/// Follows the output topics until `shutdown` (or, with `limit`, after that many records).
pub async fn tail(
    connection: &ConnectionArgs,
    from_beginning: bool,
    limit: Option<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = connection.topics();
    let codec = Codec::new(&connection.schema_registry_url, &topics)?;
    // Kafka is checked first with a plain metadata call: a stream consumer that finds no broker
    // logs librdkafka's "all brokers down" up to hundreds of times before it gives up.
    let ping = connection.client_config();
    tokio::task::spawn_blocking(move || plumbing::admin::ping(&ping))
        .await
        .context("the Kafka check panicked")??;
    // Partitions are assigned, not subscribed: no consumer group is joined or left behind
    // (the group id only names the client; nothing is committed).
    let consumer: StreamConsumer = connection
        .client_config()
        .set("group.id", format!("stockflow-tail-{}", now_millis()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let outputs = [
        topics.orders_confirmed.as_str(),
        topics.orders_rejected.as_str(),
        topics.inventory_updated.as_str(),
        topics.orders_dlq.as_str(),
    ];
    let Some(partitions) = output_partitions(&consumer, &outputs, connection, &shutdown).await?
    else {
        return Ok(());
    };
    let start = if from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in &partitions {
        assignment.add_partition_offset(topic, *partition, start)?;
    }
    consumer.assign(&assignment)?;

    let mut printer = Printer { seen: 0, limit };
    if from_beginning {
        let (history, later) =
            read_history(&consumer, &codec, &topics, &partitions, &shutdown).await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        for (_, line) in history.into_iter().chain(later) {
            if !printer.print(&line) {
                return Ok(());
            }
        }
    }
    while !printer.done() {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => message?,
        };
        let line = describe(&message, &codec, &topics).await?;
        printer.print(&line);
    }
    Ok(())
}

/// Prints lines until the limit.
struct Printer {
    seen: u64,
    limit: Option<u64>,
}

impl Printer {
    /// Prints `line` unless the limit is reached; false once it is.
    fn print(&mut self, line: &str) -> bool {
        if self.done() {
            return false;
        }
        println!("{line}");
        self.seen += 1;
        !self.done()
    }

    fn done(&self) -> bool {
        self.limit.is_some_and(|l| self.seen >= l)
    }
}

/// Every partition of `outputs`, once they all exist (the processor creates them at its first
/// start): `None` if `shutdown` comes first. One line if Kafka does not answer.
async fn output_partitions(
    consumer: &StreamConsumer,
    outputs: &[&str],
    connection: &ConnectionArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<(String, i32)>>> {
    let mut said = false;
    loop {
        let metadata = consumer.fetch_metadata(None, ADMIN_TIMEOUT).map_err(|e| {
            anyhow::anyhow!(
                "Kafka at {} is unreachable: {e}",
                connection.bootstrap_servers
            )
        })?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for output in outputs {
            let topic = metadata
                .topics()
                .iter()
                .find(|t| t.name() == *output && t.error().is_none() && !t.partitions().is_empty());
            match topic {
                Some(topic) => found.extend(
                    topic
                        .partitions()
                        .iter()
                        .map(|p| ((*output).to_owned(), p.id())),
                ),
                None => missing.push(*output),
            }
        }
        if missing.is_empty() {
            return Ok(Some(found));
        }
        if !said {
            tracing::info!(
                topics = missing.join(", "),
                "waiting for the output topics (the processor creates them at start)"
            );
            said = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(TOPIC_WAIT) => {}
        }
    }
}

/// Reads every partition up to the end it has now. Returns the history sorted by [`Place`],
/// and the records read past those ends meanwhile, in the order they arrived.
async fn read_history(
    consumer: &StreamConsumer,
    codec: &Codec,
    topics: &Topics,
    partitions: &[(String, i32)],
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<(Place, String)>, Vec<(Place, String)>)> {
    // Under read_committed, the "high watermark" librdkafka asks for is the last stable offset.
    let mut ends = BTreeMap::new();
    for (topic, partition) in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, ADMIN_TIMEOUT)
            .with_context(|| format!("cannot read the end offsets of {topic}[{partition}]"))?;
        if high > low {
            ends.insert((topic.clone(), *partition), high);
        }
    }
    let mut pending: BTreeSet<(String, i32)> = ends.keys().cloned().collect();
    let mut history = BTreeMap::new();
    let mut later = Vec::new();
    while !pending.is_empty() {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = tokio::time::timeout(POSITION_CHECK, consumer.recv()) => received,
        };
        let Ok(message) = received else {
            // Nothing came: the partitions left may end with markers or aborted records.
            let positions = consumer.position()?;
            pending.retain(|(topic, partition)| {
                let position = positions
                    .find_partition(topic, *partition)
                    .and_then(|p| p.offset().to_raw());
                position.is_none_or(|p| p < ends[&(topic.clone(), *partition)])
            });
            continue;
        };
        let message = message?;
        let key = (message.topic().to_owned(), message.partition());
        let place: Place = (
            message.timestamp().to_millis().unwrap_or_default(),
            key.0.clone(),
            key.1,
            message.offset(),
        );
        let line = describe(&message, codec, topics).await?;
        match ends.get(&key) {
            Some(&end) if message.offset() < end => {
                history.insert(place, line);
                if message.offset() + 1 >= end {
                    pending.remove(&key);
                }
            }
            _ => later.push((place, line)),
        }
    }
    Ok((history.into_iter().collect(), later))
}

/// One line for a record of an output topic.
async fn describe(
    message: &BorrowedMessage<'_>,
    codec: &Codec,
    topics: &Topics,
) -> anyhow::Result<String> {
    let payload = message.payload().unwrap_or_default();
    let topic = message.topic();
    let line = if topic == topics.orders_confirmed {
        let c: OrderConfirmed = codec.decode(payload).await?;
        format!(
            "CONFIRMED  {}  {} line(s)  {}.{:02} {}  after {} ms",
            c.order_id,
            c.lines.len(),
            c.total_cents / 100,
            c.total_cents % 100,
            c.currency,
            c.confirmed_at - c.created_at
        )
    } else if topic == topics.orders_rejected {
        let r: OrderRejected = codec.decode(payload).await?;
        let lines: Vec<String> = r
            .lines
            .iter()
            .map(|l| match l.available {
                Some(a) => format!("{} wanted {}, {} left", l.sku, l.requested, a),
                None => format!("{} unknown", l.sku),
            })
            .collect();
        format!(
            "REJECTED   {}  {:?}: {}  [{}]",
            r.order_id,
            r.reason,
            r.message,
            lines.join("; ")
        )
    } else if topic == topics.inventory_updated {
        let u: InventoryUpdated = codec.decode(payload).await?;
        let by = u.order_id.or(u.adjustment_id).unwrap_or_default();
        format!(
            "STOCK      {}  {:?} {:+} -> {} available, {} reserved  ({by})",
            u.sku, u.reason, u.change, u.available_after, u.reserved_after
        )
    } else {
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        format!(
            "DEAD       {}[{}]@{}  {}",
            header("stockflow.source.topic"),
            header("stockflow.source.partition"),
            header("stockflow.source.offset"),
            header("stockflow.error")
        )
    };
    Ok(line)
}
