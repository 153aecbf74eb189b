//! The [`TaskContext`] a processor sees in the driver: its task's in-memory stores and the
//! driver's topic logs, writing in the task's transaction.

use std::time::Duration;

use super::{DriverTask, Entry, Log, MemStore, TxnStatus};
use crate::runtime::partitioner::partition_for;
use crate::runtime::task::TaskId;
use crate::runtime::topology::{
    NoRecord, ProcessError, Processor, Record, SinkId, SourceId, StoreId, TaskContext,
};

/// Calls `f` with the task's processor and a context over the task and the log.
pub(super) fn with_context<T>(
    log: &mut Log,
    task: &mut DriverTask,
    clock: i64,
    record: Option<&Record<'_>>,
    f: impl FnOnce(&mut dyn Processor, &mut dyn TaskContext) -> T,
) -> T {
    let DriverTask {
        id,
        processor,
        stores,
        txn,
        stream_time,
        punctuation,
        dirty,
        idle_since,
        ..
    } = task;
    let mut ctx = DriverContext {
        id: *id,
        log,
        stores,
        txn,
        stream_time: *stream_time,
        punctuation,
        dirty,
        idle_since,
        clock,
        record: record.map(|r| RecordCopy {
            topic: r.topic.to_owned(),
            partition: r.partition,
            offset: r.offset,
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
        }),
    };
    f(processor.as_mut(), &mut ctx)
}

/// The record being processed, for dead letters.
struct RecordCopy {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

struct DriverContext<'a> {
    id: TaskId,
    log: &'a mut Log,
    stores: &'a mut [MemStore],
    txn: &'a mut Option<usize>,
    stream_time: i64,
    punctuation: &'a mut Option<(i64, i64)>,
    dirty: &'a mut bool,
    idle_since: &'a [Option<i64>],
    clock: i64,
    record: Option<RecordCopy>,
}

impl DriverContext<'_> {
    fn append(&mut self, topic: &str, partition: i32, entry: Entry) {
        *self.dirty = true;
        self.log.append(topic, partition, entry);
    }

    /// The task's open transaction, opened if need be.
    fn txn(&mut self) -> usize {
        match *self.txn {
            Some(txn) => txn,
            None => {
                self.log.txns.push(TxnStatus::Open);
                let txn = self.log.txns.len() - 1;
                *self.txn = Some(txn);
                txn
            }
        }
    }

    /// Appends `record` to the dead-letter topic with the headers the engine writes.
    fn send_dead_letter(&mut self, record: &RecordCopy, kind: &str, reason: &str) {
        let topic = self.log.dead_letter_topic.clone();
        let headers = vec![
            ("stockflow.error".to_owned(), reason.to_owned()),
            ("stockflow.error.kind".to_owned(), kind.to_owned()),
            ("stockflow.source.topic".to_owned(), record.topic.clone()),
            (
                "stockflow.source.partition".to_owned(),
                record.partition.to_string(),
            ),
            (
                "stockflow.source.offset".to_owned(),
                record.offset.to_string(),
            ),
        ];
        let partition = record
            .key
            .as_deref()
            .map_or(0, |k| partition_for(k, self.log.partitions(&topic)));
        let txn = self.txn();
        let entry = Entry {
            key: record.key.clone(),
            value: record.value.clone(),
            timestamp: self.clock,
            headers,
            txn: Some(txn),
        };
        self.append(&topic, partition, entry);
    }
}

impl TaskContext for DriverContext<'_> {
    fn task(&self) -> TaskId {
        self.id
    }

    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, ProcessError> {
        let store = &self.stores[usize::from(store.0)];
        Ok(match store.pending.get(key) {
            Some(value) => value.clone(),
            None => store.committed.get(key).cloned(),
        })
    }

    fn put(&mut self, store: StoreId, key: &[u8], value: Vec<u8>) {
        *self.dirty = true;
        self.stores[usize::from(store.0)]
            .pending
            .insert(key.to_vec(), Some(value));
    }

    fn delete(&mut self, store: StoreId, key: &[u8]) {
        *self.dirty = true;
        self.stores[usize::from(store.0)]
            .pending
            .insert(key.to_vec(), None);
    }

    fn scan(&self, store: StoreId, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ProcessError> {
        let store = &self.stores[usize::from(store.0)];
        let mut merged: std::collections::BTreeMap<&[u8], &[u8]> = store
            .committed
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        for (key, value) in store.pending.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match value {
                Some(value) => merged.insert(key, value),
                None => merged.remove(key.as_slice()),
            };
        }
        Ok(merged
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect())
    }

    fn scan_settled(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ProcessError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let store = &self.stores[usize::from(store.0)];
        Ok(store
            .committed
            .range(from.to_vec()..to.to_vec())
            .filter(|(k, _)| !store.pending.contains_key(*k))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn idle_since(&self, source: SourceId) -> Option<i64> {
        self.idle_since[usize::from(source.0)]
    }

    fn send(
        &mut self,
        sink: SinkId,
        key: &[u8],
        value: &[u8],
        partition: Option<i32>,
    ) -> Result<(), ProcessError> {
        let now = self.clock;
        self.send_at(sink, key, value, partition, now)
    }

    fn send_at(
        &mut self,
        sink: SinkId,
        key: &[u8],
        value: &[u8],
        partition: Option<i32>,
        timestamp: i64,
    ) -> Result<(), ProcessError> {
        let topic = self.sink_topic(sink);
        let partition =
            partition.unwrap_or_else(|| partition_for(key, self.log.partitions(&topic)));
        let txn = self.txn();
        let entry = Entry {
            key: Some(key.to_vec()),
            value: Some(value.to_vec()),
            timestamp,
            headers: Vec::new(),
            txn: Some(txn),
        };
        self.append(&topic, partition, entry);
        Ok(())
    }

    fn dead_letter(&mut self, kind: &str, reason: &str) -> Result<(), ProcessError> {
        let Some(record) = self.record.take() else {
            return Err(ProcessError::fatal(NoRecord));
        };
        self.send_dead_letter(&record, kind, reason);
        self.record = Some(record);
        Ok(())
    }

    fn dead_letter_record(
        &mut self,
        record: &Record<'_>,
        kind: &str,
        reason: &str,
    ) -> Result<(), ProcessError> {
        let copy = RecordCopy {
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
        };
        self.send_dead_letter(&copy, kind, reason);
        Ok(())
    }

    fn partitions(&self, sink: SinkId) -> i32 {
        self.log.partitions(&self.sink_topic(sink))
    }

    fn stream_time(&self) -> i64 {
        self.stream_time
    }

    fn wall_clock(&self) -> i64 {
        self.clock
    }

    fn schedule(&mut self, interval: Duration) {
        let interval = (interval.as_millis() as i64).max(1);
        *self.punctuation = Some((interval, self.clock + interval));
    }
}

impl DriverContext<'_> {
    fn sink_topic(&self, sink: SinkId) -> String {
        self.log.sinks[sink.index()].clone()
    }
}
