//! The [`TaskContext`] a processor sees in the engine: its task's RocksDB stores (through their
//! uncommitted layers) and the engine's outputs, for the record being processed.

use std::time::{Duration, Instant};

use super::outputs::Outputs;
use super::tasks::{Punctuation, TaskView};
use crate::runtime::guarantee::GuaranteeError;
use crate::runtime::task::TaskId;
use crate::runtime::topology::{
    NoRecord, ProcessError, Record, SinkId, SourceId, StoreId, TaskContext,
};

pub(super) struct EngineContext<'a> {
    task: TaskView<'a>,
    out: &'a mut Outputs,
    /// The record being processed (`None` in `init` and `punctuate`).
    record: Option<&'a Record<'a>>,
    /// Whether the processor changed its punctuation schedule.
    scheduled: bool,
    /// Whether the processor wrote to a store, sent or dead-lettered anything.
    effects: bool,
}

impl<'a> EngineContext<'a> {
    pub fn new(task: TaskView<'a>, out: &'a mut Outputs, record: Option<&'a Record<'a>>) -> Self {
        Self {
            task,
            out,
            record,
            scheduled: false,
            effects: false,
        }
    }

    /// Whether the processor has had an effect: written to a store, sent or dead-lettered
    /// (a record whose processing failed before any effect can simply be taken again).
    pub fn effects(&self) -> bool {
        self.effects
    }

    /// Whether the processor changed its punctuation schedule (the engine's earliest
    /// punctuation must be recomputed).
    pub fn scheduled(&self) -> bool {
        self.scheduled
    }
}

/// A send that failed because the transaction must be aborted is retried after the rollback
/// (see [`ProcessError::Retry`]); any other failure stops the engine.
fn send_error(error: GuaranteeError) -> ProcessError {
    match error {
        GuaranteeError::Abortable(e) => ProcessError::Retry(e.to_string()),
        other => ProcessError::fatal(other),
    }
}

impl TaskContext for EngineContext<'_> {
    fn task(&self) -> TaskId {
        self.task.id
    }

    fn get(&self, store: StoreId, key: &[u8]) -> Result<Option<Vec<u8>>, ProcessError> {
        self.task.stores[usize::from(store.0)]
            .get(key)
            .map_err(ProcessError::fatal)
    }

    fn put(&mut self, store: StoreId, key: &[u8], value: Vec<u8>) {
        self.effects = true;
        self.task.stores[usize::from(store.0)].write(key.to_vec(), Some(value));
    }

    fn delete(&mut self, store: StoreId, key: &[u8]) {
        self.effects = true;
        self.task.stores[usize::from(store.0)].write(key.to_vec(), None);
    }

    fn scan(&self, store: StoreId, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ProcessError> {
        self.task.stores[usize::from(store.0)]
            .scan(prefix)
            .map_err(ProcessError::fatal)
    }

    fn scan_settled(
        &self,
        store: StoreId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ProcessError> {
        self.task.stores[usize::from(store.0)]
            .scan_settled(from, to, limit)
            .map_err(ProcessError::fatal)
    }

    fn idle_since(&self, source: SourceId) -> Option<i64> {
        self.task.sources[usize::from(source.0)].idle_since
    }

    fn send(
        &mut self,
        sink: SinkId,
        key: &[u8],
        value: &[u8],
        partition: Option<i32>,
    ) -> Result<(), ProcessError> {
        self.effects = true;
        self.out
            .send(sink, partition, key, Some(value))
            .map_err(send_error)
    }

    fn send_at(
        &mut self,
        sink: SinkId,
        key: &[u8],
        value: &[u8],
        partition: Option<i32>,
        timestamp: i64,
    ) -> Result<(), ProcessError> {
        self.effects = true;
        self.out
            .send_at(sink, partition, key, value, timestamp)
            .map_err(send_error)
    }

    fn dead_letter(&mut self, kind: &str, reason: &str) -> Result<(), ProcessError> {
        let Some(record) = self.record else {
            return Err(ProcessError::fatal(NoRecord));
        };
        self.effects = true;
        self.out
            .dead_letter(record, kind, reason)
            .map_err(send_error)
    }

    fn dead_letter_record(
        &mut self,
        record: &Record<'_>,
        kind: &str,
        reason: &str,
    ) -> Result<(), ProcessError> {
        self.effects = true;
        self.out
            .dead_letter(record, kind, reason)
            .map_err(send_error)
    }

    fn partitions(&self, sink: SinkId) -> i32 {
        self.out.partitions(sink)
    }

    fn stream_time(&self) -> i64 {
        self.task.stream_time
    }

    fn wall_clock(&self) -> i64 {
        schemas::now_millis()
    }

    fn schedule(&mut self, interval: Duration) {
        *self.task.punctuation = Some(Punctuation {
            interval,
            next: Instant::now() + interval,
        });
        self.scheduled = true;
    }
}
