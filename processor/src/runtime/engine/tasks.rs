//! The tasks an engine owns: opening one on assignment (its stores restored from their
//! changelogs' tails, its processor made), suspending and closing on revocation, and the
//! per-task pieces a processor's context is made of. Each task's life is its
//! [`TaskState`]; every change of it goes through [`TaskState::advance`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;

use super::{EngineConfig, EngineError};
use crate::metrics::Metrics;
use crate::runtime::queryable::Published;
use crate::runtime::restore::Restorer;
use crate::runtime::store::{Origin, Store};
use crate::runtime::task::{TaskId, TaskState};
use crate::runtime::topology::{Processor, Topology};

/// A task with its stores (in the order of its sub-topology's store list) and processor.
pub(super) struct Task {
    /// Its stores, queryable while it runs; withdrawn first when the task is dropped (the
    /// fields drop in this order), so that no query reads a store being closed.
    pub published: Option<Published>,
    pub id: TaskId,
    pub state: TaskState,
    pub stores: Vec<Store>,
    pub processor: Box<dyn Processor>,
    /// The highest record timestamp processed.
    pub stream_time: i64,
    pub punctuation: Option<Punctuation>,
    /// Per source (by [`SourceId`](crate::runtime::topology::SourceId)): where the task's
    /// partition of it stands.
    pub sources: Vec<SourceState>,
}

/// What the engine knows of one source partition of a task, for [`TaskContext::idle_since`]
/// (see [`super::idleness`]).
///
/// [`TaskContext::idle_since`]: crate::runtime::topology::TaskContext::idle_since
pub(super) struct SourceState {
    /// When the consumer last handed out one of its records (or the task started), wall clock.
    pub last_record: i64,
    /// Since when it has had nothing to hand out, as of the last check.
    pub idle_since: Option<i64>,
    /// The offset the consumer must reach before the partition can count as idle: its end
    /// offset when it was assigned or rewound (`None`: reached, or nothing to read then).
    pub catching_up: Option<i64>,
}

/// A wall-clock punctuation schedule.
#[derive(Debug, Clone, Copy)]
pub(super) struct Punctuation {
    pub interval: Duration,
    pub next: Instant,
}

/// What a processor's context sees of its task.
pub(super) struct TaskView<'a> {
    pub id: TaskId,
    pub stores: &'a mut [Store],
    pub stream_time: i64,
    pub punctuation: &'a mut Option<Punctuation>,
    pub sources: &'a [SourceState],
}

impl Task {
    /// The processor, and the rest of the task for its context.
    pub fn split(&mut self) -> (&mut dyn Processor, TaskView<'_>) {
        let view = TaskView {
            id: self.id,
            stores: &mut self.stores,
            stream_time: self.stream_time,
            punctuation: &mut self.punctuation,
            sources: &self.sources,
        };
        (self.processor.as_mut(), view)
    }
}

/// The tasks of one engine, by id.
#[derive(Default)]
pub(super) struct Tasks {
    tasks: BTreeMap<TaskId, Task>,
    /// The earliest punctuation of any task, so the loop checks one instant per record.
    next_punctuation: Option<Instant>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.tasks.values().map(|t| (t.id, t.state)))
            .finish()
    }
}

impl Tasks {
    pub fn contains(&self, id: TaskId) -> bool {
        self.tasks.contains_key(&id)
    }

    /// The task `id` if it is running.
    pub fn running(&mut self, id: TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(&id).filter(|t| t.state.is_running())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Task> {
        self.tasks.values_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// Adds an opened task, running.
    pub fn insert(&mut self, task: Task, metrics: &Metrics) -> &mut Task {
        metrics.assigned_tasks.inc();
        self.tasks.entry(task.id).or_insert(task)
    }

    /// The state of the source partition that reads `topic[partition]`, if its task runs.
    pub fn source_state(
        &mut self,
        topology: &Topology,
        topic: &str,
        partition: i32,
    ) -> Option<&mut SourceState> {
        let (sub, source) = topology.source(topic)?;
        let task = self.running(TaskId { sub, partition })?;
        task.sources.get_mut(usize::from(source.0))
    }

    /// The tasks that `partitions` belong to, each once.
    pub fn ids_of(&self, topology: &Topology, partitions: &TopicPartitionList) -> Vec<TaskId> {
        let mut ids: Vec<TaskId> = partitions
            .elements()
            .iter()
            .filter_map(|e| {
                let (sub, _) = topology.source(e.topic())?;
                Some(TaskId {
                    sub,
                    partition: e.partition(),
                })
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The source partitions of task `id`, as (topic, partition).
    pub fn partitions_of(topology: &Topology, id: TaskId) -> impl Iterator<Item = (&str, i32)> {
        topology.subs[usize::from(id.sub)]
            .sources
            .iter()
            .map(move |source| (source.name.as_str(), id.partition))
    }

    /// Whether every source partition of task `id` is in `assignment`: a task runs only
    /// whole (the consumer protocol may hand a task's partitions out one by one).
    pub fn is_whole(topology: &Topology, id: TaskId, assignment: &TopicPartitionList) -> bool {
        Self::partitions_of(topology, id)
            .all(|(topic, partition)| assignment.find_partition(topic, partition).is_some())
    }

    /// Starts a commit of every store: pending writes become the committing layer.
    pub fn freeze(&mut self) {
        for store in self.tasks.values_mut().flat_map(|t| &mut t.stores) {
            store.freeze();
        }
    }

    /// Drops every store's uncommitted writes.
    pub fn roll_back(&mut self) {
        for store in self.tasks.values_mut().flat_map(|t| &mut t.stores) {
            store.rollback();
        }
    }

    /// The revoked tasks stop processing (their last work is committed next).
    pub fn suspend(&mut self, ids: &[TaskId]) {
        for id in ids {
            if let Some(task) = self.tasks.get_mut(id)
                && task.state.is_running()
            {
                task.state = task.state.advance(TaskState::Suspended);
            }
        }
    }

    /// Closes the tasks `ids`: their stores wait for the writer and flush.
    pub fn close(&mut self, ids: &[TaskId], metrics: &Metrics) {
        for id in ids {
            if let Some(task) = self.tasks.remove(id) {
                close(task, metrics);
            }
        }
        self.reschedule();
    }

    /// Closes every task (shutdown).
    pub fn close_all(&mut self, metrics: &Metrics) {
        for (_, task) in std::mem::take(&mut self.tasks) {
            close(task, metrics);
        }
        self.next_punctuation = None;
    }

    /// Whether some punctuation is due at `now`.
    pub fn punctuation_due(&self, now: Instant) -> bool {
        self.next_punctuation.is_some_and(|next| next <= now)
    }

    /// The running tasks whose punctuation is due at `now`; their next one is scheduled.
    pub fn punctuations(&mut self, now: Instant) -> Vec<TaskId> {
        let mut due = Vec::new();
        for task in self.tasks.values_mut() {
            if let Some(p) = &mut task.punctuation
                && p.next <= now
                && task.state.is_running()
            {
                p.next = now + p.interval;
                due.push(task.id);
            }
        }
        self.reschedule();
        due
    }

    /// Recomputes the earliest punctuation (after a task scheduled one or closed).
    pub fn reschedule(&mut self) {
        self.next_punctuation = self
            .tasks
            .values()
            .filter_map(|t| t.punctuation.map(|p| p.next))
            .min();
    }
}

fn close(mut task: Task, metrics: &Metrics) {
    metrics.assigned_tasks.dec();
    task.published = None;
    task.state = task.state.advance(TaskState::Closed);
    for store in &task.stores {
        if let Err(error) = store.flush() {
            tracing::warn!(task = %task.id, %error, "flush on close failed");
        }
    }
    tracing::info!(task = %task.id, "task closed");
}

/// Opens task `id`: each store at `<state dir>/<task>` (further stores of the sub-topology
/// at `<task>-<store>`), restored from its changelog's tail, and offered to the subscription
/// whole (what a crash kept from it is published now; the subscriber drops what it has);
/// then its processor.
pub(super) fn open(
    config: &EngineConfig,
    restorer: &Restorer,
    id: TaskId,
    metrics: &Metrics,
) -> Result<Task, EngineError> {
    let sub = &config.topology.subs[usize::from(id.sub)];
    let mut state = TaskState::Restoring;
    let started = Instant::now();
    let mut stores = Vec::with_capacity(sub.stores.len());
    let mut records = 0;
    let progress = config.status.restoring(id);
    for (i, spec) in sub.stores.iter().enumerate() {
        let dir = match i {
            0 => config.state_dir.join(id.to_string()),
            _ => config.state_dir.join(format!("{id}-{}", spec.name)),
        };
        let store = Store::open(&dir, &config.memory)?;
        let partitions = (id.partition, config.partitions.subs[usize::from(id.sub)]);
        let (store, restored) =
            restorer.restore(&spec.changelog, partitions, store, metrics, &progress)?;
        if let Some(subscription) = &config.subscription {
            let origin = Origin {
                task: id,
                store: spec.name,
                committed_at: Instant::now(),
            };
            subscription.snapshot(&store, origin);
        }
        if restored.wiped {
            tracing::info!(
                task = %id,
                store = spec.name,
                "local store wiped: its changelog was recreated or repartitioned"
            );
        }
        tracing::debug!(
            task = %id,
            store = spec.name,
            restored = restored.records,
            wiped = restored.wiped,
            changelog_offset = ?store.changelog_offset(),
            "store restored"
        );
        records += restored.records;
        stores.push(store);
    }
    state = state.advance(TaskState::Running);
    // The benchmark sums `elapsed_ms` over these lines (time spent restoring).
    tracing::info!(
        task = %id,
        restored = records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "task running"
    );
    let now = schemas::now_millis();
    let sources = sub
        .sources
        .iter()
        .map(|_| SourceState {
            last_record: now,
            idle_since: None,
            catching_up: None,
        })
        .collect();
    let published = config.queryable.publish(
        id.partition,
        sub.stores
            .iter()
            .zip(&stores)
            .map(|(spec, store)| (spec.name, store.reader())),
    );
    Ok(Task {
        published: Some(published),
        id,
        state,
        stores,
        processor: config.topology.processor(id),
        stream_time: i64::MIN,
        punctuation: None,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::TopicPartitionList;

    use super::Tasks;
    use crate::runtime::task::TaskId;

    #[test]
    fn a_task_is_whole_only_with_every_source_partition_assigned() {
        let topology = crate::topology::describe("app", &schemas::Topics::with_prefix(""));
        let orders = TaskId {
            sub: crate::topology::ORDERS,
            partition: 3,
        };
        let sources: Vec<(&str, i32)> = Tasks::partitions_of(&topology, orders).collect();
        assert_eq!(
            sources,
            [("orders", 3), ("app-line-results-repartition", 3)]
        );
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition("orders", 3);
        assignment.add_partition("app-line-results-repartition", 2);
        assert!(!Tasks::is_whole(&topology, orders, &assignment));
        assignment.add_partition("app-line-results-repartition", 3);
        assert!(Tasks::is_whole(&topology, orders, &assignment));
    }
}
