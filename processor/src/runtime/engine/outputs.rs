//! Everything an engine writes to Kafka: outputs to the topology's sinks, changelog records,
//! and dead letters, all through the [`Transactor`]. While a commit is in progress the
//! producer's transaction is the one being committed, so outputs are held in the outbox and
//! sent in the next transaction once the commit has finished (an abort drops them).

use prometheus::IntCounter;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::tasks::Tasks;
use crate::metrics::Metrics;
use crate::runtime::guarantee::{GuaranteeError, Transactor};
use crate::runtime::topics::Partitions;
use crate::runtime::topology::{Record, SinkId, Topology};

/// Outputs held while a commit is in progress, at most: beyond, the engine waits for it.
const OUTBOX_LIMIT: usize = 100_000;

/// An output held while a commit is in progress.
#[derive(Debug)]
struct Output {
    topic: usize,
    partition: Option<i32>,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    /// The record's timestamp if given, else the time it is produced.
    timestamp: Option<i64>,
}

/// The engine's producer side.
pub(super) struct Outputs {
    pub tx: Transactor,
    /// Outputs of records processed while a commit is in progress.
    outbox: Vec<Output>,
    /// Topic names: the sinks by [`SinkId`], then the dead-letter topic.
    topics: Vec<String>,
    /// Partition counts, by [`SinkId`].
    partitions: Vec<i32>,
    /// `records_produced` per topic (same order as `topics`), looked up once.
    produced: Vec<IntCounter>,
    /// `records_produced` per changelog, by sub-topology and store.
    changelogs: Vec<Vec<(String, IntCounter)>>,
    /// `dlq_records` per source topic.
    dead_lettered: Vec<(String, IntCounter)>,
    metrics: Metrics,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("tx", &self.tx)
            .field("outbox", &self.outbox.len())
            .finish()
    }
}

/// The producer record of an output.
fn record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    key: &'a [u8],
    payload: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
) -> BaseRecord<'a, [u8], [u8]> {
    let mut record = BaseRecord::to(topic).key(key);
    if let Some(timestamp) = timestamp {
        record = record.timestamp(timestamp);
    }
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

impl Outputs {
    pub fn new(
        tx: Transactor,
        topology: &Topology,
        partitions: &Partitions,
        metrics: &Metrics,
    ) -> Self {
        let topics: Vec<String> = topology
            .sinks
            .iter()
            .map(|t| t.name.clone())
            .chain([topology.dead_letters.clone()])
            .collect();
        let produced_in = |topic: &str| metrics.records_produced.with_label_values(&[topic]);
        let changelogs = topology
            .subs
            .iter()
            .map(|sub| {
                let stores = sub.stores.iter();
                stores
                    .map(|s| (s.changelog.clone(), produced_in(&s.changelog)))
                    .collect()
            })
            .collect();
        Self {
            tx,
            outbox: Vec::new(),
            partitions: topology
                .sinks
                .iter()
                .map(|t| partitions.sinks.get(&t.name).copied().unwrap_or(1))
                .collect(),
            produced: topics.iter().map(|t| produced_in(t)).collect(),
            topics,
            changelogs,
            dead_lettered: Vec::new(),
            metrics: metrics.clone(),
        }
    }

    pub fn partitions(&self, sink: SinkId) -> i32 {
        self.partitions[sink.index()]
    }

    pub fn outbox_full(&self) -> bool {
        self.outbox.len() >= OUTBOX_LIMIT
    }

    pub fn clear_outbox(&mut self) {
        self.outbox.clear();
    }

    /// Sends an output to `sink`, or holds it while a commit is in progress.
    pub fn send(
        &mut self,
        sink: SinkId,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> Result<(), GuaranteeError> {
        self.send_to(sink.index(), partition, key, payload, None, None)
    }

    /// [`Outputs::send`], with the record's timestamp given.
    pub fn send_at(
        &mut self,
        sink: SinkId,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        timestamp: i64,
    ) -> Result<(), GuaranteeError> {
        let index = sink.index();
        self.send_to(index, partition, key, Some(payload), None, Some(timestamp))
    }

    fn send_to(
        &mut self,
        topic: usize,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        timestamp: Option<i64>,
    ) -> Result<(), GuaranteeError> {
        self.produced[topic].inc();
        if self.tx.is_committing() {
            self.outbox.push(Output {
                topic,
                partition,
                key: key.to_vec(),
                payload: payload.map(<[u8]>::to_vec),
                headers,
                timestamp,
            });
            return Ok(());
        }
        // A punctuation or a processor's init may send before any record opened the
        // transaction.
        self.tx.begin()?;
        let name = &self.topics[topic];
        self.tx
            .send(record(name, partition, key, payload, headers, timestamp))
    }

    /// Sends the record's original bytes to the dead-letter topic, with headers naming the
    /// error and where the record came from.
    pub fn dead_letter(
        &mut self,
        source: &Record<'_>,
        kind: &str,
        error: &str,
    ) -> Result<(), GuaranteeError> {
        tracing::warn!(
            topic = source.topic,
            partition = source.partition,
            offset = source.offset,
            kind,
            error,
            "dead-lettered"
        );
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
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
                value: Some(source.topic),
            })
            .insert(Header {
                key: "stockflow.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "stockflow.source.offset",
                value: Some(offset.as_str()),
            });
        let dlq = self.topics.len() - 1;
        self.send_to(
            dlq,
            None,
            source.key.unwrap_or_default(),
            source.value,
            Some(headers),
            None,
        )?;
        match self.dead_lettered.iter().find(|(t, _)| t == source.topic) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter = self.metrics.dlq_records.with_label_values(&[source.topic]);
                counter.inc();
                self.dead_lettered.push((source.topic.to_owned(), counter));
            }
        }
        Ok(())
    }

    /// Sends each task's committing store writes to their changelogs, in the transaction: one
    /// record per key however often it changed since the last commit (a key that changes with
    /// every record is sent once), as Kafka Streams' record cache does.
    ///
    /// A write opens the transaction if nothing else did: a punctuation or a processor's `init`
    /// may write a store without consuming or sending anything (an idle partition's time
    /// moving on), and its changelog records and the store's commit belong to a transaction
    /// like any other. (Sent outside one, librdkafka refused them with `ERR__STATE` and the
    /// engine stopped.)
    pub fn send_changelogs(&mut self, tasks: &Tasks) -> Result<(), GuaranteeError> {
        for task in tasks.iter() {
            let changelogs = &self.changelogs[usize::from(task.id.sub)];
            for (store, (topic, produced)) in task.stores.iter().zip(changelogs) {
                let mut sent = 0;
                for (key, value) in store.committing() {
                    self.tx.begin()?;
                    let partition = Some(task.id.partition);
                    self.tx
                        .send(record(topic, partition, key, value, None, None))?;
                    sent += 1;
                }
                produced.inc_by(sent);
            }
        }
        Ok(())
    }

    /// Opens the next transaction for what was processed while the last commit was in
    /// progress, and sends its held outputs.
    pub fn send_outbox(&mut self) -> Result<(), GuaranteeError> {
        if !self.tx.is_open() && self.outbox.is_empty() {
            return Ok(()); // nothing was consumed meanwhile
        }
        self.tx.begin()?;
        let mut outbox = std::mem::take(&mut self.outbox);
        for output in outbox.drain(..) {
            let topic = &self.topics[output.topic];
            let payload = output.payload.as_deref();
            let held = record(
                topic,
                output.partition,
                &output.key,
                payload,
                output.headers,
                output.timestamp,
            );
            self.tx.send(held)?;
        }
        self.outbox = outbox; // keeps its capacity
        Ok(())
    }
}
