//! The topology test driver: a topology's real processors, run through the same
//! [`TaskContext`] as in the engine, in memory, with no Kafka and no RocksDB. Kafka Streams'
//! `TopologyTestDriver` runs one partition; this one runs N partitions per topic and the
//! hops through repartition topics, and lets a test inject what the engine must survive:
//!
//! - **Topics** are in-memory logs, one per partition. Records sent without a partition go
//!   where the producers' partitioner (Kafka's murmur2, [`partition_for`]) puts their key.
//! - **Transactions.** Every task writes its outputs in a transaction of its own. Readers see
//!   what `read_committed` consumers see: records of committed transactions, never those of
//!   aborted ones, and nothing past the first record of a transaction still open (the last
//!   stable offset), so a hop through a repartition topic waits for the sender's commit.
//! - **Commits** make a task's store writes, outputs and input positions durable at once;
//!   **crashes** drop everything since the task's last commit (store writes, outputs, input
//!   positions, the processor's memory), as the engine's abort and restore do.
//! - **A seeded scheduler** interleaves the tasks: at each step it processes the next record
//!   of a random task's random readable source, commits a task, or crashes one, with the
//!   probabilities of a [`DriverConfig`]. The same seed gives the same run.
//!
//! Each task is its own unit of commit here; the engine commits all of a thread's tasks
//! together, which is one of the interleavings the driver can produce.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::partitioner::partition_for;
use super::task::TaskId;
use super::topology::{ProcessError, Processor, Record, SourceId, Topology};
use context::with_context;

mod context;

/// The wall clock the driver starts at (milliseconds since the epoch); it advances by one
/// millisecond a step.
const EPOCH: i64 = 1_767_225_600_000;

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Partitions of every external topic (inputs, outputs, dead letters) not named in
    /// `partitions`.
    pub default_partitions: i32,
    /// Partition counts of named external topics.
    pub partitions: BTreeMap<String, i32>,
    pub seed: u64,
    /// The chance, at each step, that a task with uncommitted work commits.
    pub commit_probability: f64,
    /// The chance, at each step, that a task crashes (while crashes remain).
    pub crash_probability: f64,
    pub max_crashes: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            default_partitions: 1,
            partitions: BTreeMap::new(),
            seed: 0,
            commit_probability: 0.1,
            crash_probability: 0.0,
            max_crashes: 0,
        }
    }
}

/// A record in a topic, as a test reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
    pub headers: Vec<(String, String)>,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub steps: u64,
    pub processed: u64,
    pub commits: u64,
    pub crashes: u32,
    pub punctuations: u64,
}

/// Why a run failed: a processor returned a fatal error.
#[derive(Debug, thiserror::Error)]
#[error("task {task}: {source}")]
pub struct DriverError {
    pub task: TaskId,
    pub source: ProcessError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnStatus {
    Open,
    Committed,
    Aborted,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    headers: Vec<(String, String)>,
    /// The transaction that wrote it (`None`: written outside one, like a test's input).
    txn: Option<usize>,
}

/// Topic logs, one per partition, and the status of every transaction.
#[derive(Debug, Default)]
struct Log {
    topics: BTreeMap<String, Vec<Vec<Entry>>>,
    txns: Vec<TxnStatus>,
    /// Topic names by [`SinkId`](crate::runtime::topology::SinkId).
    sinks: Vec<String>,
    dead_letter_topic: String,
}

impl Log {
    /// The offset of the next record a `read_committed` consumer at `position` gets, if
    /// any: aborted records are skipped, an open transaction's record stops it.
    fn next_visible(&self, topic: &str, partition: i32, mut position: i64) -> Option<i64> {
        let log = &self.topics[topic][partition as usize];
        loop {
            let entry = log.get(position as usize)?;
            match entry.txn.map(|t| self.txns[t]) {
                None | Some(TxnStatus::Committed) => return Some(position),
                Some(TxnStatus::Aborted) => position += 1,
                Some(TxnStatus::Open) => return None,
            }
        }
    }

    fn partitions(&self, topic: &str) -> i32 {
        self.topics.get(topic).map_or(0, |p| p.len() as i32)
    }

    fn append(&mut self, topic: &str, partition: i32, entry: Entry) {
        self.topics
            .get_mut(topic)
            .expect("invariant: the driver created every topic of the topology")
            [partition as usize]
            .push(entry);
    }
}

/// One store: committed entries, and writes since the task's last commit.
#[derive(Debug, Default)]
struct MemStore {
    committed: BTreeMap<Vec<u8>, Vec<u8>>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

struct DriverTask {
    id: TaskId,
    processor: Box<dyn Processor>,
    stores: Vec<MemStore>,
    /// Per source: the next offset to read, and the one the last commit recorded.
    position: Vec<i64>,
    committed: Vec<i64>,
    /// The transaction of its uncommitted outputs.
    txn: Option<usize>,
    stream_time: i64,
    committed_stream_time: i64,
    /// (interval, next) in wall-clock milliseconds.
    punctuation: Option<(i64, i64)>,
    /// Whether anything happened since the last commit.
    dirty: bool,
    /// Per source: when its last record was processed (or the task started), driver clock.
    last_record: Vec<i64>,
    /// Per source: since when it has had nothing visible to read, as of the last check.
    idle_since: Vec<Option<i64>>,
}

/// Runs a topology in memory (see the module documentation).
pub struct TopologyTestDriver {
    topology: Topology,
    config: DriverConfig,
    log: Log,
    tasks: BTreeMap<TaskId, DriverTask>,
    rng: StdRng,
    clock: i64,
    stats: DriverStats,
}

impl std::fmt::Debug for TopologyTestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopologyTestDriver")
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish()
    }
}

impl TopologyTestDriver {
    /// Creates every topic of `topology` (external ones with the configured counts, internal
    /// ones with their reader's, as `topics::ensure` does) and opens every task.
    ///
    /// # Panics
    /// If a sub-topology's external sources are not co-partitioned.
    pub fn new(topology: Topology, config: DriverConfig) -> Result<Self, DriverError> {
        let count = |topic: &str| {
            config
                .partitions
                .get(topic)
                .copied()
                .unwrap_or(config.default_partitions)
        };
        let mut log = Log {
            sinks: topology.sinks.iter().map(|t| t.name.clone()).collect(),
            dead_letter_topic: topology.dead_letters.clone(),
            ..Log::default()
        };
        let mut subs = Vec::new();
        for sub in &topology.subs {
            let external: Vec<i32> = sub
                .sources
                .iter()
                .filter(|t| !t.internal)
                .map(|t| count(&t.name))
                .collect();
            let n = external[0];
            assert!(
                external.iter().all(|&c| c == n),
                "sub-topology {}: external sources must be co-partitioned",
                sub.name
            );
            subs.push(n);
            for source in &sub.sources {
                log.topics
                    .insert(source.name.clone(), vec![Vec::new(); n as usize]);
            }
        }
        for sink in topology.sinks.iter().filter(|t| !t.internal) {
            let n = count(&sink.name) as usize;
            log.topics
                .entry(sink.name.clone())
                .or_insert(vec![Vec::new(); n]);
        }
        let dlq = count(&topology.dead_letters) as usize;
        log.topics
            .entry(topology.dead_letters.clone())
            .or_insert(vec![Vec::new(); dlq]);
        let mut driver = Self {
            rng: StdRng::seed_from_u64(config.seed),
            topology,
            config,
            log,
            tasks: BTreeMap::new(),
            clock: EPOCH,
            stats: DriverStats::default(),
        };
        for (sub, n) in subs.into_iter().enumerate() {
            for partition in 0..n {
                let id = TaskId {
                    sub: sub as u8,
                    partition,
                };
                let spec = &driver.topology.subs[sub];
                let task = DriverTask {
                    id,
                    processor: driver.topology.processor(id),
                    stores: spec.stores.iter().map(|_| MemStore::default()).collect(),
                    position: vec![0; spec.sources.len()],
                    committed: vec![0; spec.sources.len()],
                    txn: None,
                    stream_time: i64::MIN,
                    committed_stream_time: i64::MIN,
                    punctuation: None,
                    dirty: false,
                    last_record: vec![EPOCH; spec.sources.len()],
                    idle_since: vec![None; spec.sources.len()],
                };
                driver.tasks.insert(id, task);
                driver.init(id)?;
            }
        }
        Ok(driver)
    }

    /// Appends a record to an input topic, at the partition the producers' partitioner picks
    /// for `key` (Kafka's murmur2; a record without a key goes to partition 0).
    /// Returns its (partition, offset).
    pub fn pipe(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: i64,
    ) -> (i32, i64) {
        let partitions = self.log.partitions(topic);
        assert!(partitions > 0, "unknown topic {topic}");
        let partition = key.map_or(0, |k| partition_for(k, partitions));
        let offset = self.pipe_to(topic, partition, key, value, timestamp);
        (partition, offset)
    }

    /// Appends a record to partition `partition` of an input topic; returns its offset.
    pub fn pipe_to(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: i64,
    ) -> i64 {
        let entry = Entry {
            key: key.map(<[u8]>::to_vec),
            value: Some(value.to_vec()),
            timestamp,
            headers: Vec::new(),
            txn: None,
        };
        self.log.append(topic, partition, entry);
        self.log.topics[topic][partition as usize].len() as i64 - 1
    }

    /// Every committed record of `topic`, partition by partition, in offset order.
    pub fn read(&self, topic: &str) -> Vec<OutputRecord> {
        let Some(partitions) = self.log.topics.get(topic) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (partition, log) in partitions.iter().enumerate() {
            for (offset, entry) in log.iter().enumerate() {
                let committed = entry
                    .txn
                    .is_none_or(|t| self.log.txns[t] == TxnStatus::Committed);
                if committed {
                    out.push(OutputRecord {
                        partition: partition as i32,
                        offset: offset as i64,
                        key: entry.key.clone(),
                        value: entry.value.clone(),
                        timestamp: entry.timestamp,
                        headers: entry.headers.clone(),
                    });
                }
            }
        }
        out
    }

    /// Every committed entry of store `store` of task `task`.
    pub fn store(&self, task: TaskId, store: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let index = self.topology.subs[usize::from(task.sub)]
            .stores
            .iter()
            .position(|s| s.name == store)
            .expect("a store of the task's sub-topology");
        self.tasks[&task].stores[index].committed.clone()
    }

    /// The tasks, in id order.
    pub fn tasks(&self) -> Vec<TaskId> {
        self.tasks.keys().copied().collect()
    }

    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Runs the scheduler until no task has a record to read and every task has committed;
    /// at most `max_steps` steps. Returns whether it got there.
    pub fn run(&mut self, max_steps: u64) -> Result<bool, DriverError> {
        for _ in 0..max_steps {
            if !self.step()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One scheduler step; `false` when there was nothing left to do.
    pub fn step(&mut self) -> Result<bool, DriverError> {
        self.stats.steps += 1;
        self.clock += 1;
        self.punctuate()?;
        let dirty = self.dirty();
        if self.stats.crashes < self.config.max_crashes
            && self.rng.random_bool(self.config.crash_probability)
        {
            let all = self.tasks();
            let victim = all[self.rng.random_range(0..all.len())];
            self.crash(victim)?;
            return Ok(true);
        }
        if !dirty.is_empty() && self.rng.random_bool(self.config.commit_probability) {
            let task = dirty[self.rng.random_range(0..dirty.len())];
            self.commit(task);
            return Ok(true);
        }
        let readable = self.readable();
        if readable.is_empty() {
            if dirty.is_empty() {
                return Ok(false);
            }
            // Nothing to read until someone commits: commit one.
            let task = dirty[self.rng.random_range(0..dirty.len())];
            self.commit(task);
            return Ok(true);
        }
        let (task, source, offset) = readable[self.rng.random_range(0..readable.len())];
        self.process(task, source, offset)?;
        Ok(true)
    }

    /// Every (task, source, offset) with a record to read.
    fn readable(&self) -> Vec<(TaskId, usize, i64)> {
        let mut readable = Vec::new();
        for task in self.tasks.values() {
            let sources = &self.topology.subs[usize::from(task.id.sub)].sources;
            for (i, source) in sources.iter().enumerate() {
                if let Some(offset) =
                    self.log
                        .next_visible(&source.name, task.id.partition, task.position[i])
                {
                    readable.push((task.id, i, offset));
                }
            }
        }
        readable
    }

    fn process(&mut self, id: TaskId, source: usize, offset: i64) -> Result<(), DriverError> {
        let topic = self.topology.subs[usize::from(id.sub)].sources[source]
            .name
            .clone();
        let entry = self.log.topics[&topic][id.partition as usize][offset as usize].clone();
        let record = Record {
            source: SourceId(source as u8),
            topic: &topic,
            partition: id.partition,
            offset,
            timestamp: entry.timestamp,
            key: entry.key.as_deref(),
            value: entry.value.as_deref(),
        };
        let task = self
            .tasks
            .get_mut(&id)
            .expect("invariant: a task of the driver");
        task.position[source] = offset + 1;
        task.last_record[source] = self.clock;
        task.stream_time = task.stream_time.max(entry.timestamp);
        task.dirty = true;
        self.stats.processed += 1;
        let result = with_context(&mut self.log, task, self.clock, Some(&record), |p, ctx| {
            p.process(ctx, &record)
        });
        self.settle(id, result)
    }

    /// A processor's error: a transient one rolls the task back (as the engine does), a fatal
    /// one ends the run.
    fn settle(&mut self, id: TaskId, result: Result<(), ProcessError>) -> Result<(), DriverError> {
        match result {
            Ok(()) => Ok(()),
            Err(ProcessError::Retry(_)) => self.crash(id),
            Err(source) => Err(DriverError { task: id, source }),
        }
    }

    fn init(&mut self, id: TaskId) -> Result<(), DriverError> {
        let task = self
            .tasks
            .get_mut(&id)
            .expect("invariant: a task of the driver");
        let result = with_context(&mut self.log, task, self.clock, None, |p, ctx| p.init(ctx));
        self.settle(id, result)
    }

    fn punctuate(&mut self) -> Result<(), DriverError> {
        let due: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.punctuation.is_some_and(|(_, next)| next <= self.clock))
            .map(|t| t.id)
            .collect();
        for id in due {
            self.refresh_idleness(id);
            let clock = self.clock;
            let task = self
                .tasks
                .get_mut(&id)
                .expect("invariant: a task of the driver");
            if let Some((interval, next)) = &mut task.punctuation {
                *next = clock + *interval;
            }
            self.stats.punctuations += 1;
            let result = with_context(&mut self.log, task, clock, None, |p, ctx| {
                p.punctuate(ctx, clock)
            });
            self.settle(id, result)?;
        }
        Ok(())
    }

    /// Whether each source partition of task `id` has a visible record left (see
    /// [`TaskContext::idle_since`](crate::runtime::topology::TaskContext::idle_since)): the
    /// driver knows exactly.
    fn refresh_idleness(&mut self, id: TaskId) {
        let sources = &self.topology.subs[usize::from(id.sub)].sources;
        let task = self
            .tasks
            .get_mut(&id)
            .expect("invariant: a task of the driver");
        for (i, source) in sources.iter().enumerate() {
            let waiting = self
                .log
                .next_visible(&source.name, id.partition, task.position[i])
                .is_some();
            task.idle_since[i] = (!waiting).then_some(task.last_record[i]);
        }
    }

    /// The driver's clock (milliseconds since the epoch).
    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Moves the clock `millis` forward, one millisecond at a time, running the punctuations
    /// that fall due (and nothing else: [`Self::run`] processes what they send).
    pub fn advance(&mut self, millis: i64) -> Result<(), DriverError> {
        for _ in 0..millis {
            self.clock += 1;
            self.punctuate()?;
        }
        Ok(())
    }

    /// Commits task `id`: its store writes, outputs and input positions become durable.
    pub fn commit(&mut self, id: TaskId) {
        let task = self
            .tasks
            .get_mut(&id)
            .expect("invariant: a task of the driver");
        for store in &mut task.stores {
            for (key, value) in std::mem::take(&mut store.pending) {
                match value {
                    Some(value) => store.committed.insert(key, value),
                    None => store.committed.remove(&key),
                };
            }
        }
        if let Some(txn) = task.txn.take() {
            self.log.txns[txn] = TxnStatus::Committed;
        }
        task.committed.clone_from(&task.position);
        task.committed_stream_time = task.stream_time;
        task.dirty = false;
        self.stats.commits += 1;
    }

    /// Crashes task `id`: everything since its last commit is lost, and a new processor
    /// reads again from the committed positions.
    pub fn crash(&mut self, id: TaskId) -> Result<(), DriverError> {
        let task = self
            .tasks
            .get_mut(&id)
            .expect("invariant: a task of the driver");
        for store in &mut task.stores {
            store.pending.clear();
        }
        if let Some(txn) = task.txn.take() {
            self.log.txns[txn] = TxnStatus::Aborted;
        }
        task.position.clone_from(&task.committed);
        task.stream_time = task.committed_stream_time;
        task.punctuation = None;
        task.processor = self.topology.processor(id);
        task.dirty = false;
        self.stats.crashes += 1;
        self.init(id)
    }

    /// The tasks with uncommitted work.
    fn dirty(&self) -> Vec<TaskId> {
        self.tasks
            .values()
            .filter(|t| t.dirty)
            .map(|t| t.id)
            .collect()
    }

    /// Commits every task with uncommitted work.
    pub fn commit_all(&mut self) {
        for id in self.dirty() {
            self.commit(id);
        }
    }
}

#[cfg(test)]
mod tests;
