//! The task API: what a topology is to the runtime, and the only door through which its
//! processors touch state and outputs.
//!
//! A [`Topology`] is a description, built with [`TopologyBuilder`]: sinks, a dead-letter
//! topic, and sub-topologies, each with its co-partitioned sources, its named stores and a
//! [`ProcessorSupplier`] that makes the [`Processor`] of each of its tasks. The builder hands
//! back typed handles ([`SourceId`], [`StoreId`], [`SinkId`]) that the processors keep. A
//! processor sees one record at a time through a [`TaskContext`]: it reads and writes its
//! stores, sends to sinks and dead-letters records there and nowhere else, so the same
//! processor runs in the engine (Kafka, RocksDB) and in the in-memory test driver.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::format;
use super::task::TaskId;

/// A source of a sub-topology: its position in the sub-topology's source list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub(crate) u8);

/// A store of a sub-topology: its position in the sub-topology's store list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreId(pub(crate) u8);

/// A sink of the topology: its position in the topology's sink list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SinkId(pub(crate) u16);

impl SinkId {
    /// Its position in [`Topology::sinks`] (for per-sink arrays).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A topic of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    /// An internal repartition topic (created with its reader's partition count, deleted by
    /// `processor reset`), or an external one (created with the default count if missing).
    pub internal: bool,
}

/// A named store of a sub-topology and its changelog topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub name: &'static str,
    pub changelog: String,
}

/// A sub-topology: co-partitioned sources, stores, and what processes each task's records.
#[derive(Clone)]
pub struct SubTopology {
    pub name: &'static str,
    /// Topic names, by [`SourceId`].
    pub sources: Vec<TopicSpec>,
    /// By [`StoreId`].
    pub stores: Vec<StoreSpec>,
    supplier: Option<Arc<dyn ProcessorSupplier>>,
}

impl fmt::Debug for SubTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubTopology")
            .field("name", &self.name)
            .field("sources", &self.sources)
            .field("stores", &self.stores)
            .field("supplier", &self.supplier.is_some())
            .finish()
    }
}

/// A topology: its sub-topologies (a task is a sub-topology on one partition), its sinks and
/// its dead-letter topic.
#[derive(Debug, Clone)]
pub struct Topology {
    pub application_id: String,
    pub subs: Vec<SubTopology>,
    /// By [`SinkId`].
    pub sinks: Vec<TopicSpec>,
    pub dead_letters: String,
}

impl Topology {
    /// The sub-topology and source that read `topic`, if any.
    pub fn source(&self, topic: &str) -> Option<(u8, SourceId)> {
        self.subs.iter().enumerate().find_map(|(sub, s)| {
            let source = s.sources.iter().position(|t| t.name == topic)?;
            Some((sub as u8, SourceId(source as u8)))
        })
    }

    /// Every topic the consumer subscribes to.
    pub fn source_topics(&self) -> Vec<&str> {
        self.subs
            .iter()
            .flat_map(|s| s.sources.iter().map(|t| t.name.as_str()))
            .collect()
    }

    /// The external topics the consumer subscribes to (not the repartition topics).
    pub fn input_topics(&self) -> Vec<&str> {
        self.subs
            .iter()
            .flat_map(|s| &s.sources)
            .filter(|t| !t.internal)
            .map(|t| t.name.as_str())
            .collect()
    }

    /// The topic of `sink`.
    pub fn sink(&self, sink: SinkId) -> &str {
        &self.sinks[sink.index()].name
    }

    /// The topics the runtime owns: repartition topics and changelogs (`processor reset`
    /// deletes them).
    pub fn internal_topics(&self) -> Vec<&str> {
        let repartition = self.sinks.iter().filter(|t| t.internal);
        let changelogs = self.subs.iter().flat_map(|s| &s.stores);
        repartition
            .map(|t| t.name.as_str())
            .chain(changelogs.map(|s| s.changelog.as_str()))
            .collect()
    }

    /// Every changelog topic.
    pub fn changelogs(&self) -> Vec<String> {
        self.subs
            .iter()
            .flat_map(|s| s.stores.iter().map(|st| st.changelog.clone()))
            .collect()
    }

    /// The changelog of the store `name` (in whichever sub-topology has it).
    pub fn changelog(&self, name: &str) -> Option<&str> {
        self.subs
            .iter()
            .flat_map(|s| &s.stores)
            .find(|s| s.name == name)
            .map(|s| s.changelog.as_str())
    }

    /// A new processor for `task`.
    ///
    /// # Panics
    /// If the topology was described without processors ([`TopologyBuilder::describe_only`]):
    /// only the engine and the driver ask, and they are given full topologies.
    pub fn processor(&self, task: TaskId) -> Box<dyn Processor> {
        self.subs[usize::from(task.sub)]
            .supplier
            .as_ref()
            .expect("invariant: a topology that runs has a processor per sub-topology")
            .processor(task)
    }
}

/// Builds a [`Topology`] and hands back the handles its processors use.
#[derive(Debug)]
pub struct TopologyBuilder {
    topology: Topology,
}

impl TopologyBuilder {
    /// A topology named after `application_id` (the prefix of its internal topics), whose
    /// undecodable or invalid records go to `dead_letters`.
    pub fn new(application_id: &str, dead_letters: &str) -> Self {
        Self {
            topology: Topology {
                application_id: application_id.to_owned(),
                subs: Vec::new(),
                sinks: Vec::new(),
                dead_letters: dead_letters.to_owned(),
            },
        }
    }

    /// The name of the internal repartition topic `name`.
    pub fn repartition_topic(&self, name: &str) -> String {
        format!("{}-{name}-repartition", self.topology.application_id)
    }

    /// An external output topic.
    pub fn sink(&mut self, topic: &str) -> SinkId {
        self.add_sink(topic.to_owned(), false)
    }

    /// An internal repartition topic, `<application.id>-<name>-repartition`: a sink here and a
    /// source (see [`SubTopologyBuilder::repartition_source`]) of the sub-topology that reads
    /// it.
    pub fn repartition(&mut self, name: &str) -> SinkId {
        let topic = self.repartition_topic(name);
        self.add_sink(topic, true)
    }

    fn add_sink(&mut self, name: String, internal: bool) -> SinkId {
        let id = SinkId(self.topology.sinks.len() as u16);
        self.topology.sinks.push(TopicSpec { name, internal });
        id
    }

    /// Starts a sub-topology; its sources and stores are added on the returned builder.
    pub fn sub_topology(&mut self, name: &'static str) -> SubTopologyBuilder<'_> {
        self.topology.subs.push(SubTopology {
            name,
            sources: Vec::new(),
            stores: Vec::new(),
            supplier: None,
        });
        let application_id = self.topology.application_id.clone();
        SubTopologyBuilder {
            sub: self
                .topology
                .subs
                .last_mut()
                .expect("invariant: just pushed"),
            application_id,
        }
    }

    /// Sets the processor supplier of sub-topology number `sub` (in the order they were
    /// added).
    pub fn processors(&mut self, sub: usize, supplier: Arc<dyn ProcessorSupplier>) {
        self.topology.subs[sub].supplier = Some(supplier);
    }

    pub fn build(self) -> Topology {
        self.topology
    }
}

/// Adds sources and stores to a sub-topology.
#[derive(Debug)]
pub struct SubTopologyBuilder<'a> {
    sub: &'a mut SubTopology,
    application_id: String,
}

impl SubTopologyBuilder<'_> {
    /// An external input topic.
    pub fn source(&mut self, topic: &str) -> SourceId {
        self.add_source(topic.to_owned(), false)
    }

    /// Reads the internal repartition topic that [`TopologyBuilder::repartition`] named `name`.
    pub fn repartition_source(&mut self, name: &str) -> SourceId {
        let topic = format!("{}-{name}-repartition", self.application_id);
        self.add_source(topic, true)
    }

    fn add_source(&mut self, name: String, internal: bool) -> SourceId {
        let id = SourceId(self.sub.sources.len() as u8);
        self.sub.sources.push(TopicSpec { name, internal });
        id
    }

    /// A store named `name`, changelogged to `<application.id>-<name>-changelog`.
    pub fn store(&mut self, name: &'static str) -> StoreId {
        let id = StoreId(self.sub.stores.len() as u8);
        let changelog = format!("{}-{name}-changelog", self.application_id);
        self.sub.stores.push(StoreSpec { name, changelog });
        id
    }
}

/// One input record, as a processor sees it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub source: SourceId,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (milliseconds since the epoch).
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Why a processor could not process a record.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Not the record's fault and may pass (the registry is unreachable). Returned before
    /// the processor has had any effect (a store write, a send, a dead letter) and with its
    /// own memory as it was, it pauses the record's partition, and the record is processed
    /// again after a backoff while the other partitions go on; returned after one, the
    /// transaction is rolled back and the records are read again after a pause.
    #[error("transient: {0}")]
    Retry(String),
    /// The engine must stop (a store failed, the producer was fenced, an output cannot be
    /// encoded).
    #[error(transparent)]
    Fatal(Box<dyn std::error::Error + Send + Sync>),
}

impl ProcessError {
    pub fn fatal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ProcessError::Fatal(Box::new(error))
    }
}

/// `dead_letter` outside of `process`: a bug in the processor, fatal in the engine and the
/// driver alike.
#[derive(Debug, thiserror::Error)]
#[error("dead_letter called with no record being processed (in init or punctuate)")]
pub struct NoRecord;

/// What a processor may do while it processes a record (or a punctuation): the engine
/// implements it over RocksDB and Kafka, the test driver in memory.
pub trait TaskContext {
    /// The task being processed.
    fn task(&self) -> TaskId;

    /// The value under `key` in `store`: uncommitted writes first, then committed state.
    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, ProcessError>;

    /// Writes `value` under `key` (uncommitted until the task's next commit).
    fn put(&mut self, store: StoreId, key: &[u8], value: Vec<u8>);

    /// Deletes `key` (uncommitted until the task's next commit).
    fn delete(&mut self, store: StoreId, key: &[u8]);

    /// Every key of `store` that starts with `prefix`, with its value, in key order
    /// (uncommitted writes included). A full scan: for `init`, to rebuild what a processor
    /// keeps in memory, not for every record.
    fn scan(&self, store: StoreId, prefix: &[u8]) -> Result<super::store::Entries, ProcessError>;

    /// At most `limit` entries of `store` with keys in `from..to`, in key order, as the store
    /// holds them once committed and applied (in the engine: what RocksDB holds, so what the
    /// read model has been handed), leaving out every key with a write not yet applied. A
    /// bounded range read, for work done in batches (expiring old entries) from `punctuate`.
    fn scan_settled(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<super::store::Entries, ProcessError>;

    /// Sends a record to `sink`, to `partition` if given, else to the partition the producers'
    /// partitioner picks for `key`. It becomes visible when the task's transaction commits.
    fn send(
        &mut self,
        sink: SinkId,
        key: &[u8],
        value: &[u8],
        partition: Option<i32>,
    ) -> Result<(), ProcessError>;

    /// [`TaskContext::send`] with the record's timestamp given, instead of the time it is
    /// sent: a record passed on as it was read keeps its time (as a repartition does).
    fn send_at(
        &mut self,
        sink: SinkId,
        key: &[u8],
        value: &[u8],
        partition: Option<i32>,
        timestamp: i64,
    ) -> Result<(), ProcessError>;

    /// Sends the record being processed, as it was read, to the dead-letter topic with
    /// headers naming `kind`, `reason` and where it came from.
    fn dead_letter(&mut self, kind: &str, reason: &str) -> Result<(), ProcessError>;

    /// Sends `record`, read before the one being processed, to the dead-letter topic with the
    /// same headers: for a refusal decided after its record was read (an event-time merge
    /// decides entries it buffered while other records are at hand).
    fn dead_letter_record(
        &mut self,
        record: &Record<'_>,
        kind: &str,
        reason: &str,
    ) -> Result<(), ProcessError>;

    /// How many partitions `sink` has.
    fn partitions(&self, sink: SinkId) -> i32;

    /// The highest record timestamp the task has processed (milliseconds; `i64::MIN` before
    /// the first record).
    fn stream_time(&self) -> i64;

    /// Now, by the wall clock (milliseconds since the epoch); the test driver's own clock.
    fn wall_clock(&self) -> i64;

    /// Since when (wall clock) this task's partition of `source` has had nothing to hand out,
    /// if it has nothing now: its last record's time (or the task's start), once the consumer
    /// has caught up with it. `None` while records of it are waiting or arriving. The basis of
    /// Kafka Streams' `max.task.idle.ms`: a processor that orders its sources by time decides
    /// how long an idle source may hold the others back.
    fn idle_since(&self, source: SourceId) -> Option<i64>;

    /// Calls [`Processor::punctuate`] every `interval` of wall-clock time from now on
    /// (replacing an earlier schedule of this task).
    fn schedule(&mut self, interval: Duration);
}

impl dyn TaskContext + '_ {
    /// [`TaskContext::get`], decoded from the runtime's internal format.
    pub fn get_value<T: DeserializeOwned>(
        &self,
        store: StoreId,
        key: &[u8],
    ) -> Result<Option<T>, ProcessError> {
        self.get(store, key)?
            .map(|bytes| {
                format::decode(&bytes).map_err(|e| {
                    ProcessError::fatal(CorruptValue {
                        key: String::from_utf8_lossy(key).into_owned(),
                        reason: e.to_string(),
                    })
                })
            })
            .transpose()
    }

    /// [`TaskContext::put`], encoded in the runtime's internal format.
    pub fn put_value<T: Serialize>(&mut self, store: StoreId, key: &[u8], value: &T) {
        self.put(store, key, format::encode(value));
    }
}

/// A store value that does not decode: the store is corrupt (a bug, or a foreign writer).
#[derive(Debug, thiserror::Error)]
#[error("store value under key {key:?} is corrupt: {reason}")]
pub struct CorruptValue {
    pub key: String,
    pub reason: String,
}

/// Processes the records of one task. One instance per task, made by the sub-topology's
/// [`ProcessorSupplier`] when the task opens (and again after a crash or a rewind of the
/// driver): anything it keeps in memory must be derivable from its stores.
pub trait Processor: Send {
    /// Called once when the task starts running, before its first record.
    fn init(&mut self, _ctx: &mut dyn TaskContext) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Processes one record of one of the sub-topology's sources.
    fn process(
        &mut self,
        ctx: &mut dyn TaskContext,
        record: &Record<'_>,
    ) -> Result<(), ProcessError>;

    /// A punctuation scheduled with [`TaskContext::schedule`]; `now` is the wall clock.
    fn punctuate(&mut self, _ctx: &mut dyn TaskContext, _now: i64) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// Makes the processor of each task of a sub-topology.
pub trait ProcessorSupplier: Send + Sync {
    fn processor(&self, task: TaskId) -> Box<dyn Processor>;
}

impl<F> ProcessorSupplier for F
where
    F: Fn(TaskId) -> Box<dyn Processor> + Send + Sync,
{
    fn processor(&self, task: TaskId) -> Box<dyn Processor> {
        self(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_names_internal_topics_like_kafka_streams() {
        let mut builder = TopologyBuilder::new("app", "dlq");
        let lines = builder.repartition("lines");
        let out = builder.sink("out");
        let mut a = builder.sub_topology("a");
        let input = a.source("in");
        let store = a.store("things");
        let mut b = builder.sub_topology("b");
        let from_a = b.repartition_source("lines");
        let topology = builder.build();
        assert_eq!(topology.sink(lines), "app-lines-repartition");
        assert_eq!(topology.sink(out), "out");
        assert_eq!(topology.source("in"), Some((0, input)));
        assert_eq!(topology.source("app-lines-repartition"), Some((1, from_a)));
        assert_eq!(topology.source("out"), None);
        assert_eq!(store, StoreId(0));
        assert_eq!(
            topology.internal_topics(),
            vec!["app-lines-repartition", "app-things-changelog"]
        );
        assert_eq!(topology.changelog("things"), Some("app-things-changelog"));
    }
}
