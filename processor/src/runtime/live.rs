//! What one engine thread is doing right now, for people asking from outside (`GET /status`,
//! `processor status`): its tasks and their state, the progress of the restores under way, and
//! when it last committed. The engine writes it only when that changes (a rebalance, a restore
//! batch, a commit), never per record; readers take a copy. It has a lock of its own, not the
//! engine's, so a reader is answered while the engine restores inside a rebalance callback.
//!
//! Beside it, for `GET /health`: the thread's heartbeat (when its loop last went round, or a
//! restore last wrote a batch), an atomic the loop sets every [`BEAT_EVERY`] turns and whenever
//! it waits for records; and why the thread ended, once it has. [`EngineStatus::health`] turns
//! them into a verdict: a thread that ended, or has not beaten for the stall timeout, is not
//! healthy.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::task::{TaskId, TaskState};

/// The loop beats once per this many turns (and whenever it waits for records): a clock read
/// per record would cost more than the rest of the bookkeeping.
pub const BEAT_EVERY: u32 = 256;

/// One engine thread's state, shared between the engine (writer) and the status endpoint.
#[derive(Debug, Clone)]
pub struct EngineStatus(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    status: Mutex<ThreadStatus>,
    /// When the thread last showed progress, ms since the epoch.
    beat_ms: AtomicI64,
    /// Why the thread ended, once it has.
    ended: Mutex<Option<String>>,
}

impl Default for EngineStatus {
    fn default() -> Self {
        Self::new("engine", "")
    }
}

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
        Self(Arc::new(Shared {
            status: Mutex::new(ThreadStatus {
                thread: thread.to_owned(),
                client_id: client_id.to_owned(),
                ..ThreadStatus::default()
            }),
            beat_ms: AtomicI64::new(schemas::now_millis()),
            ended: Mutex::new(None),
        }))
    }

    /// The thread is making progress (its loop went round, a restore wrote a batch).
    pub fn beat(&self) {
        self.0
            .beat_ms
            .store(schemas::now_millis(), Ordering::Relaxed);
    }

    /// The thread ended, for `why`.
    pub fn end(&self, why: String) {
        *self
            .0
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }

    /// Whether the thread has ended.
    pub fn has_ended(&self) -> bool {
        self.0
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Whether the thread is alive and going round at `now_ms`: `Err` says why not (it ended,
    /// or it has not shown progress for longer than `stall`).
    pub fn health(&self, now_ms: i64, stall: Duration) -> Result<(), String> {
        let thread = self.lock().thread.clone();
        if let Some(why) = self
            .0
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            return Err(format!("{thread} stopped: {why}"));
        }
        let quiet = now_ms.saturating_sub(self.0.beat_ms.load(Ordering::Relaxed));
        if quiet > i64::try_from(stall.as_millis()).unwrap_or(i64::MAX) {
            return Err(format!(
                "{thread} has made no progress for {:.1} s (stall timeout {})",
                quiet as f64 / 1000.0,
                humantime::format_duration(stall)
            ));
        }
        Ok(())
    }

    /// A copy of the thread's state.
    pub fn snapshot(&self) -> ThreadStatus {
        self.lock().clone()
    }

    /// The lock; what it guards is written in single steps, so a poisoned one is taken as is.
    fn lock(&self) -> MutexGuard<'_, ThreadStatus> {
        self.0
            .status
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
        self.status.beat();
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

    #[test]
    fn health_fails_for_a_thread_that_stalled_or_ended() {
        let status = EngineStatus::new("engine-1", "c");
        let stall = Duration::from_secs(60);
        let now = schemas::now_millis();
        assert_eq!(status.health(now, stall), Ok(()));
        let stalled = status.health(now + 61_000, stall).expect_err("stalled");
        assert!(
            stalled.starts_with("engine-1 has made no progress for 6"),
            "{stalled}"
        );
        // A restore batch is progress.
        std::thread::sleep(Duration::from_millis(5));
        let progress = status.restoring(TaskId {
            sub: 0,
            partition: 0,
        });
        progress.advance(1);
        assert_eq!(status.health(schemas::now_millis() + 59_000, stall), Ok(()));
        status.end("engine-1 panicked: boom".into());
        assert_eq!(
            status.health(schemas::now_millis(), stall),
            Err("engine-1 stopped: engine-1 panicked: boom".into())
        );
    }
}
