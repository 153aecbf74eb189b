//! What one engine thread is doing right now, for people asking from outside (`GET /status`,
//! `processor status`): its tasks and their state, the progress of the restores under way, and
//! when it last committed. The engine writes it only when that changes (a rebalance, a restore
//! batch, a commit), never per record; readers take a copy. It has a lock of its own, not the
//! engine's, so a reader is answered while the engine restores inside a rebalance callback.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::task::{TaskId, TaskState};

/// One engine thread's state, shared between the engine (writer) and the status endpoint.
#[derive(Debug, Clone, Default)]
pub struct EngineStatus(Arc<Mutex<ThreadStatus>>);

/// A copy of one engine thread's state (the shape `GET /status` answers with, per thread).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadStatus {
    /// The thread's name: `engine-<n>`.
    pub thread: String,
    /// Its consumer's `client.id`, as the consumer group lists it.
    pub client_id: String,
    /// Its tasks, by id.
    pub tasks: Vec<TaskStatus>,
    /// When its last commit (transaction or offset commit) ended, ms since the epoch.
    pub last_commit_ms: Option<i64>,
    /// Commits since it started.
    pub commits: u64,
}

/// One task of an engine thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// `<sub-topology>_<partition>`.
    pub task: String,
    /// `restoring`, `running` or `suspended`.
    pub state: String,
    /// Changelog offsets its restore has covered so far (the one under way, or the last):
    /// records replayed, and the transaction markers and aborted records passed over.
    pub restored: u64,
    /// Changelog offsets its restore has to cover in all (known once each store's changelog
    /// end is known; grows as the restore reaches its next store).
    pub to_restore: u64,
}

impl EngineStatus {
    pub fn new(thread: &str, client_id: &str) -> Self {
        Self(Arc::new(Mutex::new(ThreadStatus {
            thread: thread.to_owned(),
            client_id: client_id.to_owned(),
            ..ThreadStatus::default()
        })))
    }

    /// A copy of the thread's state.
    pub fn snapshot(&self) -> ThreadStatus {
        self.lock().clone()
    }

    /// The lock; what it guards is written in single steps, so a poisoned one is taken as is.
    fn lock(&self) -> MutexGuard<'_, ThreadStatus> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The thread's tasks are now `tasks` (after a rebalance); restore figures are kept.
    pub fn set_tasks(&self, tasks: impl Iterator<Item = (TaskId, TaskState)>) {
        let mut status = self.lock();
        let before = std::mem::take(&mut status.tasks);
        status.tasks = tasks
            .map(|(id, state)| {
                let task = id.to_string();
                let (restored, to_restore) = before
                    .iter()
                    .find(|t| t.task == task)
                    .map_or((0, 0), |t| (t.restored, t.to_restore));
                TaskStatus {
                    task,
                    state: state_name(state).to_owned(),
                    restored,
                    to_restore,
                }
            })
            .collect();
    }

    /// Task `id` starts restoring: its progress is reported through the handle.
    pub fn restoring(&self, id: TaskId) -> RestoreProgress {
        let task = id.to_string();
        let mut status = self.lock();
        status.tasks.retain(|t| t.task != task);
        status.tasks.push(TaskStatus {
            task: task.clone(),
            state: state_name(TaskState::Restoring).to_owned(),
            restored: 0,
            to_restore: 0,
        });
        status.tasks.sort_by(|a, b| a.task.cmp(&b.task));
        RestoreProgress {
            status: self.clone(),
            task,
        }
    }

    /// A commit ended at `at_ms`.
    pub fn committed(&self, at_ms: i64) {
        let mut status = self.lock();
        status.last_commit_ms = Some(at_ms);
        status.commits += 1;
    }

    fn update(&self, task: &str, change: impl FnOnce(&mut TaskStatus)) {
        if let Some(t) = self.lock().tasks.iter_mut().find(|t| t.task == task) {
            change(t);
        }
    }
}

/// How a restore reports its progress: once per store when it knows how much there is, and
/// once per batch written.
#[derive(Debug, Clone)]
pub struct RestoreProgress {
    status: EngineStatus,
    task: String,
}

impl RestoreProgress {
    /// `records` more changelog records are to be replayed.
    pub fn expect(&self, records: u64) {
        self.status.update(&self.task, |t| t.to_restore += records);
    }

    /// `records` more were replayed.
    pub fn advance(&self, records: u64) {
        self.status.update(&self.task, |t| t.restored += records);
    }
}

fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Restoring => "restoring",
        TaskState::Running => "running",
        TaskState::Suspended => "suspended",
        TaskState::Closed => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_report_progress_and_the_task_list_keeps_it() {
        let status = EngineStatus::new("engine-0", "stockflow-x-engine-0@127.0.0.1:9400");
        let id = TaskId {
            sub: 1,
            partition: 2,
        };
        let progress = status.restoring(id);
        progress.expect(100);
        progress.advance(40);
        let snapshot = status.snapshot();
        assert_eq!(snapshot.tasks.len(), 1);
        assert_eq!(
            (
                snapshot.tasks[0].state.as_str(),
                snapshot.tasks[0].restored,
                snapshot.tasks[0].to_restore
            ),
            ("restoring", 40, 100)
        );
        progress.advance(60);
        status.set_tasks([(id, TaskState::Running)].into_iter());
        let task = &status.snapshot().tasks[0];
        assert_eq!(
            (task.task.as_str(), task.state.as_str()),
            ("1_2", "running")
        );
        assert_eq!((task.restored, task.to_restore), (100, 100));
        status.set_tasks(std::iter::empty());
        assert!(status.snapshot().tasks.is_empty());
        status.committed(5);
        status.committed(7);
        let snapshot = status.snapshot();
        assert_eq!((snapshot.last_commit_ms, snapshot.commits), (Some(7), 2));
    }
}
