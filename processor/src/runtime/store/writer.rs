//! The store writer: applies committed layers to RocksDB on a thread of its own, in the order
//! they were committed, then publishes what it applied ([`Applied`]) to its
//! [`Subscription`], if it has one. A job dropped unapplied (the thread died) marks itself
//! failed, so no store waits for it forever, and the next commit reports the death.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::{DB, WriteBatch};
use tokio::sync::mpsc::UnboundedSender;

use super::{APPLIED, Entries, FAILED, Layer, PENDING, Store, StoreError, write_batch};
use crate::runtime::task::TaskId;

/// What a store writer applied to RocksDB (or, for a snapshot, what a store held when its task
/// opened), for a [`Subscription`].
#[derive(Debug)]
pub struct Applied {
    pub task: TaskId,
    pub store: &'static str,
    /// The changelog offset the writes reach.
    pub changelog_offset: i64,
    /// The puts (key, value) the subscription's filter kept.
    pub entries: Entries,
    /// When their transaction committed (for a snapshot: when the task opened).
    pub committed_at: Instant,
}

/// Whose writes a store commit carries: the task, its store, and when it committed.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub task: TaskId,
    pub store: &'static str,
    pub committed_at: Instant,
}

/// A subscription to what the store writers apply: which puts it wants, and where they go.
/// The writer never waits for the subscriber (the channel is unbounded).
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Whether the subscriber wants the put of `key` in store `store`.
    pub filter: fn(store: &str, key: &[u8]) -> bool,
    pub sender: UnboundedSender<Applied>,
}

impl Subscription {
    fn publish(&self, applied: Applied) {
        // The subscriber stops only after the engines (it ends when they drop their
        // subscriptions), so a closed channel is a broken invariant: say so and go on, since
        // stream processing must not depend on it.
        if self.sender.send(applied).is_err() {
            tracing::error!("invariant broken: a store subscriber stopped before the engine");
        }
    }

    /// Publishes everything `store` holds committed that the filter wants, tagged with its
    /// changelog offset (when its task opens: the subscriber may have missed some of it).
    pub fn snapshot(&self, store: &Store, origin: Origin) {
        let Some(changelog_offset) = store.changelog_offset() else {
            return;
        };
        store.settle();
        let entries = store
            .db
            .iterator(rocksdb::IteratorMode::Start)
            .filter_map(Result::ok)
            .filter(|(k, _)| (self.filter)(origin.store, k))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        self.publish(Applied {
            task: origin.task,
            store: origin.store,
            changelog_offset,
            entries,
            committed_at: origin.committed_at,
        });
    }
}

/// A committed layer for the writer.
pub(super) struct Job {
    pub db: Arc<DB>,
    pub path: PathBuf,
    pub layer: Arc<Layer>,
    pub changelog_offset: Option<i64>,
    pub origin: Origin,
    pub state: JobState,
}

/// A job's state, shared with its store: FAILED if the job is dropped unapplied (the writer
/// thread died), so that no store waits for it forever.
pub(super) struct JobState(pub Arc<AtomicU8>);

impl Drop for JobState {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(PENDING, FAILED, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Applies committed layers to RocksDB, in the order they were committed, on a thread of its
/// own: an engine's writes took a seventh of its time. One per engine; dropping it applies
/// what was handed to it, then stops the thread.
pub struct Writer {
    jobs: Option<Sender<Job>>,
    /// Whether the thread is still there (a panic in it would otherwise go unseen).
    thread_alive: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<StoreError>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread, named `name`; it publishes what it applies to `subscription`.
    pub fn start(name: String, subscription: Option<Subscription>) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let thread_alive = Arc::new(AtomicBool::new(true));
        let thread = std::thread::Builder::new().name(name).spawn({
            let failure = failure.clone();
            let alive = AliveGuard(thread_alive.clone());
            move || {
                let _alive = alive;
                write_all(queue, &failure, subscription.as_ref())
            }
        })?;
        Ok(Self {
            jobs: Some(jobs),
            thread_alive,
            thread: Some(thread),
            failure,
        })
    }

    pub(super) fn submit(&self, job: Job) {
        let jobs = self
            .jobs
            .as_ref()
            .expect("invariant: the writer's queue is open until it is dropped");
        if let Err(returned) = jobs.send(job) {
            // The thread is gone (it only stops when the queue closes): a broken invariant,
            // but the layer must not look pending forever.
            tracing::error!("invariant broken: the store writer stopped early");
            lock(&self.failure).get_or_insert(StoreError::WriterStopped);
            returned.0.state.0.store(FAILED, Ordering::Release);
        }
    }

    /// The first write that failed, if any, or the thread's death.
    pub fn check(&self) -> Result<(), StoreError> {
        if let Some(error) = lock(&self.failure).take() {
            return Err(error);
        }
        if !self.thread_alive.load(Ordering::Acquire) {
            return Err(StoreError::WriterStopped);
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store writer panicked");
        }
    }
}

/// Clears its flag when the writer thread ends, by return or by panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The failure slot is only ever set or taken, never left half-written: a panic elsewhere
/// while it was held leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: applies each layer in key order (RocksDB's memtable insert starts from
/// the previous insert's position in its skip list, so sorted keys are much cheaper).
fn write_all(
    queue: Receiver<Job>,
    failure: &Mutex<Option<StoreError>>,
    subscription: Option<&Subscription>,
) {
    while let Ok(job) = queue.recv() {
        let Job {
            db,
            path,
            layer,
            changelog_offset,
            origin,
            state,
        } = job;
        let wanted = |key: &[u8]| subscription.is_some_and(|s| (s.filter)(origin.store, key));
        let mut sorted: Vec<_> = layer.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Sized up front (a tag and two lengths per entry): growing it copies it each time.
        let bytes: usize = sorted
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        let mut batch = WriteBatch::with_capacity_bytes(bytes + 64);
        let mut puts = Vec::new();
        for (key, value) in sorted {
            match value {
                Some(value) => {
                    batch.put(key, value);
                    if wanted(key) {
                        puts.push((key.clone(), value.clone()));
                    }
                }
                None => batch.delete(key),
            }
        }
        let outcome = match write_batch(&db, &path, batch, changelog_offset) {
            Ok(()) => {
                if let (Some(subscription), Some(changelog_offset)) =
                    (subscription, changelog_offset)
                {
                    subscription.publish(Applied {
                        task: origin.task,
                        store: origin.store,
                        changelog_offset,
                        entries: puts,
                        committed_at: origin.committed_at,
                    });
                }
                APPLIED
            }
            Err(error) => {
                lock(failure).get_or_insert(error);
                FAILED
            }
        };
        // The database and the layer are released before the store learns the outcome.
        drop((db, layer));
        state.0.store(outcome, Ordering::Release);
    }
}
