//! Reading topics back, **up to their high watermarks**: a reader first fetches every
//! partition's high watermark, then reads until its position in every partition has reached
//! it. It never stops "when the topic falls silent": what it returns is exactly what the
//! topics held when it looked (under `read_committed`, once the transactions open then have
//! ended), however slow the machine.
//!
//! A test that expects N records says so ([`read_at_least`]): while fewer have been read, the
//! reader fetches the watermarks again and reads on, and at its deadline it fails saying what
//! it found.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::names::unique;

/// How long [`read_to_end`] may take before it fails (a transaction left open by a killed
/// producer holds a `read_committed` reader back until the broker aborts it).
pub const END_DEADLINE: Duration = Duration::from_secs(120);

/// How long a metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp (milliseconds since the epoch), if it has one.
    pub timestamp: Option<i64>,
}

impl Record {
    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Whether a reader sees only committed transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

impl Isolation {
    fn config_value(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// Every record of `topics` from the beginning up to the high watermarks they have now.
/// Panics if that takes longer than [`END_DEADLINE`].
pub async fn read_to_end(bootstrap: &str, topics: &[&str], isolation: Isolation) -> Vec<Record> {
    TopicReader::new(bootstrap, topics, isolation)
        .read_to_end(END_DEADLINE)
        .await
}

/// Every record of `topics` from the beginning, once there are at least `expected`: up to the
/// high watermarks, fetched again while fewer than `expected` have been read. Panics at
/// `deadline`, saying how many it found and where each partition stands.
pub async fn read_at_least(
    bootstrap: &str,
    topics: &[&str],
    isolation: Isolation,
    expected: usize,
    deadline: Duration,
) -> Vec<Record> {
    TopicReader::new(bootstrap, topics, isolation)
        .read_at_least(expected, deadline)
        .await
}

/// Hands every record of `topics`, from the beginning up to the high watermarks they have now,
/// to `each` in the order read, without keeping them (for topics too large to hold in memory):
/// how many. Blocks the calling thread (call it from `spawn_blocking`); an error after
/// `deadline`, saying where each partition stands.
pub fn scan_to_end(
    bootstrap: &str,
    topics: &[&str],
    isolation: Isolation,
    deadline: Duration,
    mut each: impl FnMut(Record),
) -> Result<usize, String> {
    let mut inner = Inner {
        consumer: consumer(bootstrap, isolation),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        isolation,
        targets: BTreeMap::new(),
        positions: BTreeMap::new(),
    };
    inner.read_each(0, deadline, &mut each)
}

/// The high watermark of every partition of `topics` (a topic that does not exist has none).
pub fn high_watermarks(bootstrap: &str, topics: &[&str]) -> BTreeMap<(String, i32), i64> {
    end_offsets(bootstrap, topics, Isolation::ReadUncommitted)
}

/// The end of every partition of `topics` as an `isolation` reader sees it: the high
/// watermark under read_uncommitted, the last stable offset under read_committed (below it
/// every transaction is decided; librdkafka's ListOffsets request carries the consumer's
/// isolation level). A topic that does not exist has none.
pub fn end_offsets(
    bootstrap: &str,
    topics: &[&str],
    isolation: Isolation,
) -> BTreeMap<(String, i32), i64> {
    let consumer = consumer(bootstrap, isolation);
    let mut ends = BTreeMap::new();
    for topic in topics {
        for partition in partitions(&consumer, topic).unwrap_or_else(|e| panic!("{e}")) {
            let (_, end) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}[{partition}]: {e}"));
            ends.insert(((*topic).to_owned(), partition), end);
        }
    }
    ends
}

/// The offsets consumer group `group` has committed on the partitions of `topic` (a
/// partition without one is absent).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a test consumer");
    let mut query = TopicPartitionList::new();
    for partition in partitions(&consumer, topic).unwrap_or_else(|e| panic!("{e}")) {
        query.add_partition(topic, partition);
    }
    consumer
        .committed_offsets(query, REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"))
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// A reader of some topics that keeps its positions between calls: each call returns the
/// records after those the previous calls returned.
#[derive(Debug)]
pub struct TopicReader {
    /// Taken while a call reads on a blocking thread.
    inner: Option<Inner>,
}

impl TopicReader {
    /// A reader at the beginning of every partition of `topics` (no consumer group is joined
    /// and nothing is committed).
    pub fn new(bootstrap: &str, topics: &[&str], isolation: Isolation) -> Self {
        Self {
            inner: Some(Inner {
                consumer: consumer(bootstrap, isolation),
                topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                isolation,
                targets: BTreeMap::new(),
                positions: BTreeMap::new(),
            }),
        }
    }

    /// The records up to the high watermarks the topics have now. Panics after `deadline`.
    pub async fn read_to_end(&mut self, deadline: Duration) -> Vec<Record> {
        self.read_at_least(0, deadline).await
    }

    /// At least `expected` records (read by this call), up to the high watermarks fetched
    /// last. Panics at `deadline`, saying what it found.
    pub async fn read_at_least(&mut self, expected: usize, deadline: Duration) -> Vec<Record> {
        let mut inner = self
            .inner
            .take()
            .expect("invariant: a reader is not used by two calls at once");
        let (inner, result) = tokio::task::spawn_blocking(move || {
            let result = inner.read(expected, deadline);
            (inner, result)
        })
        .await
        .expect("the reader's thread does not panic");
        self.inner = Some(inner);
        result.unwrap_or_else(|failure| panic!("{failure}"))
    }
}

struct Inner {
    consumer: BaseConsumer,
    topics: Vec<String>,
    isolation: Isolation,
    /// The high watermark of every partition, as fetched last.
    targets: BTreeMap<(String, i32), i64>,
    /// The next offset to read in every assigned partition.
    positions: BTreeMap<(String, i32), i64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("topics", &self.topics)
            .field("isolation", &self.isolation)
            .field("targets", &self.targets)
            .field("positions", &self.positions)
            .finish()
    }
}

impl Inner {
    fn read(&mut self, expected: usize, deadline: Duration) -> Result<Vec<Record>, String> {
        let mut records = Vec::with_capacity(expected);
        self.read_each(expected, deadline, &mut |record| records.push(record))?;
        Ok(records)
    }

    /// Hands every record read to `each`, at least `expected` of them (up to the high
    /// watermarks fetched last): how many.
    fn read_each(
        &mut self,
        expected: usize,
        deadline: Duration,
        each: &mut dyn FnMut(Record),
    ) -> Result<usize, String> {
        let started = Instant::now();
        let mut read = 0;
        let mut last_error = None;
        loop {
            self.fetch_targets()?;
            while !self.reached() {
                if started.elapsed() > deadline {
                    return Err(self.failure(read, expected, deadline, last_error));
                }
                match self.consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        self.positions
                            .insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                        read += 1;
                        each(Record::from_message(&m));
                    }
                    // Control records (transaction markers) and aborted records are never
                    // delivered: the consumer's position says how far it got past them.
                    Some(Err(KafkaError::PartitionEOF(_))) | None => self.update_positions(),
                    Some(Err(error)) => last_error = Some(error.to_string()),
                }
            }
            if read >= expected {
                return Ok(read);
            }
            if started.elapsed() > deadline {
                return Err(self.failure(read, expected, deadline, last_error));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fetches every partition's high watermark; partitions seen for the first time are
    /// assigned from the beginning.
    fn fetch_targets(&mut self) -> Result<(), String> {
        let mut added = false;
        for topic in &self.topics {
            for partition in partitions(&self.consumer, topic)? {
                let (_, high) = self
                    .consumer
                    .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                    .map_err(|e| format!("watermarks of {topic}[{partition}]: {e}"))?;
                let key = (topic.clone(), partition);
                self.targets.insert(key.clone(), high);
                if let Entry::Vacant(entry) = self.positions.entry(key) {
                    entry.insert(0);
                    added = true;
                }
            }
        }
        if added {
            let mut assignment = TopicPartitionList::new();
            for ((topic, partition), position) in &self.positions {
                assignment
                    .add_partition_offset(topic, *partition, Offset::Offset(*position))
                    .map_err(|e| format!("assign {topic}[{partition}]: {e}"))?;
            }
            self.consumer
                .assign(&assignment)
                .map_err(|e| format!("assign {:?}: {e}", self.topics))?;
        }
        Ok(())
    }

    fn reached(&self) -> bool {
        self.targets
            .iter()
            .all(|(key, target)| self.positions.get(key).is_some_and(|p| p >= target))
    }

    fn update_positions(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let Offset::Offset(p) = element.offset() {
                let key = (element.topic().to_owned(), element.partition());
                if let Some(position) = self.positions.get_mut(&key) {
                    *position = (*position).max(p);
                }
            }
        }
    }

    fn failure(
        &self,
        read: usize,
        expected: usize,
        deadline: Duration,
        last_error: Option<String>,
    ) -> String {
        let behind: Vec<String> = self
            .targets
            .iter()
            .filter_map(|(key, target)| {
                let position = self.positions.get(key).copied().unwrap_or(0);
                (position < *target)
                    .then(|| format!("{}[{}] at {position} of {target}", key.0, key.1))
            })
            .collect();
        format!(
            "read {} records (expected at least {expected}) from {} ({}) in {deadline:?}; \
             partitions behind their high watermark: {}{}",
            read,
            self.topics.join(","),
            self.isolation.config_value(),
            if behind.is_empty() {
                "none".to_owned()
            } else {
                behind.join(", ")
            },
            last_error
                .map(|e| format!("; last consumer error: {e}"))
                .unwrap_or_default()
        )
    }
}

/// A consumer for assigned partitions: it never joins its group nor commits.
fn consumer(bootstrap: &str, isolation: Isolation) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("testkit-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "20")
        .set("isolation.level", isolation.config_value())
        .create()
        .expect("a test consumer")
}

/// The partitions of `topic`, none if it does not exist (yet).
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}
