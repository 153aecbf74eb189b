//! A task's state store: RocksDB for what is committed, in-memory layers for what is not.
//!
//! Writes go to the pending layer; reads see it first. When a commit starts,
//! [`Store::freeze`] moves the pending layer to the committing layer, whose last value of each
//! key the engine sends to the store's changelog topic, in the same Kafka transaction as the
//! outputs; new writes meanwhile go to a fresh pending layer (for the next transaction), and
//! reads see pending, then committing, then RocksDB. When the transaction commits,
//! [`Store::commit`] hands the committing layer to the engine's [`Writer`], which applies it to
//! RocksDB on a thread of its own, in one atomic `WriteBatch` together with the changelog
//! offset it reaches; until it has, reads see the layer too. Once applied, the writer
//! publishes what it wrote ([`Applied`]) to its [`Subscription`], if it has one (the read
//! model). When the transaction aborts, [`Store::rollback`] drops both uncommitted layers.
//! RocksDB therefore only ever holds committed state, tagged with the changelog offset that
//! produced it, so a restart restores only the changelog's tail.
//!
//! RocksDB's WAL is kept but never synced: a killed process loses nothing (the OS has the
//! pages), and a lost machine loses only what the changelog gives back.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteBufferManager,
    WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::format;
pub use writer::{Applied, Origin, Subscription, Writer};
use writer::{Job, JobState};

mod writer;

const META: &str = "meta";
const CHANGELOG_OFFSET: &[u8] = b"changelog-offset";
/// The partition count of the changelog the store was restored from (`processor repartition`
/// changes it, and a store of another count is a different partitioning's state).
const CHANGELOG_PARTITIONS: &[u8] = b"changelog-partitions";

/// (key, value) pairs.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes by key: `None` is a delete. Hashed with foldhash, seeded per process: every store
/// read looks up to three layers, and SipHash (the standard hasher) was a visible cost.
type Layer = HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// Committed layers handed to the writer and not yet applied, at most, per store: beyond, the
/// engine waits for the oldest.
const MAX_APPLYING: usize = 4;

/// How long a wait for the writer sleeps between checks.
const SETTLE_PAUSE: Duration = Duration::from_micros(100);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {source}")]
    Rocks {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("cannot create the store directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store value under key {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the store writer thread stopped")]
    WriterStopped,
}

/// Memory shared by every store of the process: one bounded block cache, and one write-buffer
/// manager charged to that cache.
#[derive(Clone)]
pub struct SharedMemory {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("cache_usage", &self.cache.get_usage())
            .finish()
    }
}

impl SharedMemory {
    /// A block cache of `bytes`, a quarter of which may hold memtables.
    pub fn new(bytes: usize) -> Self {
        let cache = Cache::new_lru_cache(bytes);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            bytes / 4,
            false,
            cache.clone(),
        );
        Self {
            cache,
            write_buffers,
        }
    }

    pub fn block_cache_usage(&self) -> usize {
        self.cache.get_usage()
    }

    pub fn memtable_usage(&self) -> usize {
        self.write_buffers.get_usage()
    }

    fn options(&self) -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        options.set_write_buffer_manager(&self.write_buffers);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options
    }
}

/// One task's store.
pub struct Store {
    path: PathBuf,
    db: Arc<DB>,
    memory: SharedMemory,
    /// Writes since the commit in progress started (or the last one).
    pending: Layer,
    /// Writes of the transaction being committed, frozen when its commit started.
    committing: Layer,
    /// Committed layers the writer has not applied yet, oldest first.
    applying: VecDeque<Applying>,
    /// The last changelog offset whose write RocksDB holds (or will, once applied).
    changelog_offset: Option<i64>,
    /// The partition count of that changelog, once recorded.
    changelog_partitions: Option<i32>,
}

/// A committed layer on its way to RocksDB.
#[derive(Debug)]
struct Applying {
    layer: Arc<Layer>,
    /// [`PENDING`], then [`APPLIED`] once RocksDB holds the layer, or [`FAILED`]: the layer
    /// then stays readable here, and the next commit reports the writer's error.
    state: Arc<AtomicU8>,
}

/// Reads a store's committed state, as RocksDB holds it, from another thread than the engine's
/// (interactive queries): never a write the engine has not committed, and a committed one once
/// the writer has applied it (a few milliseconds after its transaction). It does not keep the
/// store open: once the store is dropped, every read answers `None`.
#[derive(Debug, Clone)]
pub struct Reader {
    db: Weak<DB>,
    path: PathBuf,
}

impl Reader {
    /// The value under `key` (`Some(None)`: no such key), or `None` if the store is closed.
    pub fn get(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let Some(db) = self.db.upgrade() else {
            return Ok(None);
        };
        db.get(key).map(Some).map_err(|source| StoreError::Rocks {
            path: self.path.clone(),
            source,
        })
    }
}

const PENDING: u8 = 0;
const APPLIED: u8 = 1;
const FAILED: u8 = 2;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("pending", &self.pending.len())
            .field("committing", &self.committing.len())
            .field("applying", &self.applying.len())
            .field("changelog_offset", &self.changelog_offset)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, memory: &SharedMemory) -> Result<Self, StoreError> {
        let rocks = |source| StoreError::Rocks {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        let options = memory.options();
        let families = [
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, options.clone()),
            ColumnFamilyDescriptor::new(META, options.clone()),
        ];
        let db = DB::open_cf_descriptors(&options, path, families).map_err(rocks)?;
        let meta = db
            .cf_handle(META)
            .expect("invariant: the meta column family was just opened");
        let changelog_offset = db
            .get_cf(meta, CHANGELOG_OFFSET)
            .map_err(rocks)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_be_bytes);
        let changelog_partitions = db
            .get_cf(meta, CHANGELOG_PARTITIONS)
            .map_err(rocks)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(i32::from_be_bytes);
        Ok(Self {
            path: path.to_owned(),
            db: Arc::new(db),
            memory: memory.clone(),
            pending: Layer::default(),
            committing: Layer::default(),
            applying: VecDeque::new(),
            changelog_offset,
            changelog_partitions,
        })
    }

    /// A reader of what RocksDB holds, for threads other than the engine's (see [`Reader`]).
    pub fn reader(&self) -> Reader {
        Reader {
            db: Arc::downgrade(&self.db),
            path: self.path.clone(),
        }
    }

    /// The last changelog offset whose write is in RocksDB (`None`: nothing yet).
    pub fn changelog_offset(&self) -> Option<i64> {
        self.changelog_offset
    }

    /// The partition count of the changelog the store follows (`None`: a store written before
    /// it was recorded, or a new one).
    pub fn changelog_partitions(&self) -> Option<i32> {
        self.changelog_partitions
    }

    /// Records the partition count of the changelog the store follows.
    pub fn set_changelog_partitions(&mut self, partitions: i32) -> Result<(), StoreError> {
        let meta = self
            .db
            .cf_handle(META)
            .expect("invariant: the meta column family is open");
        self.db
            .put_cf(meta, CHANGELOG_PARTITIONS, partitions.to_be_bytes())
            .map_err(|e| self.rocks(e))?;
        self.changelog_partitions = Some(partitions);
        Ok(())
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    /// The value under `key`: pending writes first, then those being committed, then those
    /// being applied (newest first), then RocksDB.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let layered = self
            .pending
            .get(key)
            .or_else(|| self.committing.get(key))
            .or_else(|| self.applying.iter().rev().find_map(|a| a.layer.get(key)));
        if let Some(value) = layered {
            return Ok(value.clone());
        }
        self.db.get(key).map_err(|e| self.rocks(e))
    }

    /// Every key starting with `prefix` and its value, in key order: RocksDB, overlaid with
    /// the layers being applied, committed and written (newest last), deletes removed.
    pub fn scan(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            std::collections::BTreeMap::new();
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
            let (key, value) = item.map_err(|e| self.rocks(e))?;
            if !key.starts_with(prefix) {
                break;
            }
            merged.insert(key.into_vec(), Some(value.into_vec()));
        }
        let layers = self
            .applying
            .iter()
            .map(|a| a.layer.as_ref())
            .chain([&self.committing, &self.pending]);
        for layer in layers {
            for (key, value) in layer.iter().filter(|(k, _)| k.starts_with(prefix)) {
                merged.insert(key.clone(), value.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect())
    }

    /// At most `limit` entries with keys in `from..to`, in key order, as RocksDB holds them,
    /// leaving out every key that a layer (pending, committing or being applied) writes: what
    /// is committed, applied and handed to the subscription, and not about to change.
    pub fn scan_settled(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let mut entries = Vec::new();
        if from >= to || limit == 0 {
            return Ok(entries);
        }
        let written = |key: &[u8]| {
            self.pending.contains_key(key)
                || self.committing.contains_key(key)
                || self.applying.iter().any(|a| a.layer.contains_key(key))
        };
        let mode = rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
            let (key, value) = item.map_err(|e| self.rocks(e))?;
            if &*key >= to {
                break;
            }
            if !written(&key) {
                entries.push((key.into_vec(), value.into_vec()));
                if entries.len() == limit {
                    break;
                }
            }
        }
        Ok(entries)
    }

    /// The value under `key`, decoded (see [`format`]).
    pub fn get_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.get(key.as_bytes())?
            .map(|bytes| {
                format::decode(&bytes).map_err(|e| StoreError::Corrupt {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Records an uncommitted write (`None` deletes). A key written since the last commit
    /// started and deleted again, which nothing below holds, is forgotten rather than deleted:
    /// its changelog tombstone and RocksDB delete would record nothing. (Event-time mode's
    /// merge buffer puts and deletes most of its entries within one commit.)
    pub fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if value.is_none() && matches!(self.pending.get(&key), Some(Some(_))) && !self.below(&key) {
            self.pending.remove(&key);
            return;
        }
        self.pending.insert(key, value);
    }

    /// Whether the layers under the pending one or RocksDB hold a value under `key` (a
    /// RocksDB that cannot be read counts as holding one: the delete is then kept).
    fn below(&self, key: &[u8]) -> bool {
        let layered = self
            .committing
            .get(key)
            .or_else(|| self.applying.iter().rev().find_map(|a| a.layer.get(key)));
        match layered {
            Some(value) => value.is_some(),
            None => !matches!(self.db.get_pinned(key), Ok(None)),
        }
    }

    /// Serializes `value` as the store and changelog both hold it (see [`format`]).
    pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        format::encode(value)
    }

    /// Starts a commit: the pending writes become the committing layer (see the module's
    /// documentation). The previous commit must have finished ([`Store::commit`] or
    /// [`Store::rollback`]).
    pub fn freeze(&mut self) {
        assert!(
            self.committing.is_empty(),
            "invariant: a store's commit finishes before the next one starts"
        );
        // The emptied map keeps its capacity: the next transaction's writes reuse it.
        std::mem::swap(&mut self.pending, &mut self.committing);
    }

    /// The writes being committed, in no particular order (`None` deletes).
    pub fn committing(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.committing
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// Whether there are writes being committed.
    pub fn is_committing(&self) -> bool {
        !self.committing.is_empty()
    }

    /// The transaction committed: hands the committing layer and the changelog offset it
    /// reaches to `writer`, which applies them to RocksDB atomically and then publishes them
    /// to its subscription, as written by `origin`. Reads see the layer until it is applied.
    /// Fails if an earlier write of this writer failed.
    pub fn commit(
        &mut self,
        changelog_offset: Option<i64>,
        writer: &Writer,
        origin: Origin,
    ) -> Result<(), StoreError> {
        writer.check()?;
        self.prune();
        if self.committing.is_empty() && changelog_offset.is_none() {
            return Ok(());
        }
        while self.applying.len() >= MAX_APPLYING {
            std::thread::sleep(SETTLE_PAUSE);
            writer.check()?;
            self.prune();
        }
        // The next transaction's layer starts at this one's size rather than growing to it.
        let next = Layer::with_capacity_and_hasher(self.committing.len(), Default::default());
        let layer = Arc::new(std::mem::replace(&mut self.committing, next));
        let state = Arc::new(AtomicU8::new(PENDING));
        writer.submit(Job {
            db: self.db.clone(),
            path: self.path.clone(),
            layer: layer.clone(),
            changelog_offset,
            origin,
            state: JobState(state.clone()),
        });
        self.applying.push_back(Applying { layer, state });
        if changelog_offset.is_some() {
            self.changelog_offset = changelog_offset;
        }
        Ok(())
    }

    /// Forgets the layers RocksDB holds now.
    fn prune(&mut self) {
        while self
            .applying
            .front()
            .is_some_and(|a| a.state.load(Ordering::Acquire) == APPLIED)
        {
            self.applying.pop_front();
        }
    }

    /// Waits until the writer is done with every layer handed to it.
    pub fn settle(&self) {
        while self
            .applying
            .iter()
            .any(|a| a.state.load(Ordering::Acquire) == PENDING)
        {
            std::thread::sleep(SETTLE_PAUSE);
        }
    }

    /// Applies `batch` (restored changelog records) and the offset it reaches, atomically.
    pub fn apply(
        &mut self,
        batch: WriteBatch,
        changelog_offset: Option<i64>,
    ) -> Result<(), StoreError> {
        write_batch(&self.db, &self.path, batch, changelog_offset)?;
        if changelog_offset.is_some() {
            self.changelog_offset = changelog_offset;
        }
        Ok(())
    }

    /// Drops every uncommitted write, pending and committing (the transaction aborted).
    pub fn rollback(&mut self) {
        self.pending.clear();
        self.committing.clear();
    }

    /// Deletes everything and starts empty (the changelog no longer matches local state).
    pub fn wipe(self) -> Result<Self, StoreError> {
        self.settle();
        let Self {
            path, db, memory, ..
        } = self;
        drop(db);
        DB::destroy(&Options::default(), &path).map_err(|source| StoreError::Rocks {
            path: path.clone(),
            source,
        })?;
        Self::open(&path, &memory)
    }

    /// Waits for the writer, then flushes memtables to disk (on close; not needed for safety,
    /// it only speeds up reopening). Call it before dropping a store: the writer's last job for
    /// it may otherwise still hold the database open.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.settle();
        self.db.flush().map_err(|e| self.rocks(e))
    }

    /// Every committed (key, value) pair, for tests and the read-model sync.
    pub fn committed_entries(&self, prefix: &[u8]) -> Entries {
        self.settle();
        self.db
            .prefix_iterator(prefix)
            .filter_map(Result::ok)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }
}

/// Writes `batch` and the changelog offset it reaches to `db`, atomically.
fn write_batch(
    db: &DB,
    path: &Path,
    mut batch: WriteBatch,
    changelog_offset: Option<i64>,
) -> Result<(), StoreError> {
    let meta = db
        .cf_handle(META)
        .expect("invariant: the meta column family is open");
    if let Some(offset) = changelog_offset {
        batch.put_cf(meta, CHANGELOG_OFFSET, offset.to_be_bytes());
    }
    let mut options = WriteOptions::default();
    options.set_sync(false);
    db.write_opt(batch, &options)
        .map_err(|source| StoreError::Rocks {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::runtime::task::TaskId;

    fn origin() -> Origin {
        Origin {
            task: TaskId {
                sub: 0,
                partition: 0,
            },
            store: "test",
            committed_at: Instant::now(),
        }
    }

    #[test]
    fn a_dead_writer_is_reported_and_waits_for_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), &SharedMemory::new(8 << 20)).expect("opens");
        let (sender, published) = tokio::sync::mpsc::unbounded_channel();
        // A subscriber whose filter panics kills the writer thread on its first job.
        let subscription = Subscription {
            filter: |_, _| panic!("test: the writer thread dies"),
            sender,
        };
        let writer = Writer::start("test-writer".into(), Some(subscription)).expect("starts");
        store.write(b"a".to_vec(), Some(b"1".to_vec()));
        store.freeze();
        store
            .commit(Some(1), &writer, origin())
            .expect("handed over");
        store.settle(); // returns: the job failed rather than staying pending
        drop(published);
        let deadline = Instant::now() + Duration::from_secs(5);
        while writer.check().is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1)); // the thread is still unwinding
        }
        assert!(matches!(writer.check(), Err(StoreError::WriterStopped)));
        store.write(b"b".to_vec(), Some(b"2".to_vec()));
        store.freeze();
        assert!(
            store.commit(Some(2), &writer, origin()).is_err(),
            "the next commit reports it"
        );
    }

    #[test]
    fn the_committing_layer_holds_the_last_write_of_each_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), &SharedMemory::new(8 << 20)).expect("opens");
        store.write(b"a".to_vec(), Some(b"1".to_vec()));
        store.write(b"a".to_vec(), Some(b"2".to_vec()));
        store.write(b"b".to_vec(), Some(b"3".to_vec()));
        store.write(b"b".to_vec(), None);
        store.freeze();
        let mut committing: Vec<(Vec<u8>, Option<Vec<u8>>)> = store
            .committing()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        committing.sort();
        assert_eq!(
            committing,
            vec![(b"a".to_vec(), Some(b"2".to_vec()))],
            "one changelog record per key, its last value; b, written and deleted before any \
             commit held it, is no record at all"
        );
    }

    #[test]
    fn a_delete_of_a_key_a_commit_holds_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), &SharedMemory::new(8 << 20)).expect("opens");
        let writer = Writer::start("test-writer".into(), None).expect("writer starts");
        let committing = |store: &Store| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            let mut records: Vec<_> = store
                .committing()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect();
            records.sort();
            records
        };
        store.write(b"a".to_vec(), Some(b"1".to_vec()));
        store.freeze();
        store.commit(Some(0), &writer, origin()).expect("commits");
        // Rewritten and deleted while a commit holds it (being applied), then once RocksDB
        // holds it: the tombstone stays both times.
        store.write(b"a".to_vec(), Some(b"2".to_vec()));
        store.write(b"a".to_vec(), None);
        store.freeze();
        assert_eq!(committing(&store), vec![(b"a".to_vec(), None)]);
        store.commit(Some(1), &writer, origin()).expect("commits");
        store.settle();
        store.write(b"b".to_vec(), Some(b"1".to_vec()));
        store.freeze();
        store.commit(Some(2), &writer, origin()).expect("commits");
        store.settle();
        store.write(b"b".to_vec(), Some(b"2".to_vec()));
        store.write(b"b".to_vec(), None);
        store.freeze();
        assert_eq!(committing(&store), vec![(b"b".to_vec(), None)]);
    }

    #[test]
    fn reads_see_layers_until_the_writer_has_applied_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = Store::open(dir.path(), &SharedMemory::new(8 << 20)).expect("opens");
        let writer = Writer::start("test-writer".into(), None).expect("writer starts");
        // Many commits of the same keys in a row: each read sees the newest committed value,
        // whether the writer has applied it yet or not.
        for round in 0..50u32 {
            for key in 0..100u32 {
                store.write(
                    key.to_be_bytes().to_vec(),
                    Some(round.to_be_bytes().to_vec()),
                );
            }
            store.freeze();
            store
                .commit(Some(i64::from(round)), &writer, origin())
                .expect("commits");
            for key in 0..100u32 {
                assert_eq!(
                    store.get(&key.to_be_bytes()).expect("reads"),
                    Some(round.to_be_bytes().to_vec())
                );
            }
        }
        store.settle();
        assert_eq!(store.changelog_offset(), Some(49));
        assert_eq!(
            store.committed_entries(b"").len(),
            100,
            "RocksDB holds every key once the writer is done"
        );
    }

    #[test]
    fn reads_see_pending_then_committing_writes_and_only_commit_persists_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let memory = SharedMemory::new(8 << 20);
        let mut store = Store::open(dir.path(), &memory).expect("opens");
        assert_eq!(store.changelog_offset(), None);
        store.write(b"a".to_vec(), Some(b"1".to_vec()));
        assert_eq!(store.get(b"a").expect("reads"), Some(b"1".to_vec()));
        store.freeze();
        store.write(b"c".to_vec(), Some(b"9".to_vec()));
        store.rollback();
        assert_eq!(store.get(b"a").expect("reads"), None, "both layers dropped");
        assert_eq!(store.get(b"c").expect("reads"), None, "both layers dropped");

        store.write(b"a".to_vec(), Some(b"2".to_vec()));
        store.write(b"b".to_vec(), Some(b"3".to_vec()));
        store.freeze();
        // The next transaction's writes, made while this one commits, shadow it.
        store.write(b"b".to_vec(), None);
        assert_eq!(store.get(b"a").expect("reads"), Some(b"2".to_vec()));
        assert_eq!(store.get(b"b").expect("reads"), None);
        let (sender, mut published) = tokio::sync::mpsc::unbounded_channel();
        let subscription = Subscription {
            filter: |store, key| store == "test" && key.starts_with(b"a"),
            sender,
        };
        let writer = Writer::start("test-writer".into(), Some(subscription)).expect("starts");
        store.commit(Some(41), &writer, origin()).expect("commits");
        assert_eq!(
            store.get(b"b").expect("reads"),
            None,
            "the pending delete survives the commit before it"
        );
        assert_eq!(store.get(b"a").expect("reads"), Some(b"2".to_vec()));
        let applied = published.blocking_recv().expect("published once applied");
        assert_eq!(
            (applied.changelog_offset, applied.entries),
            (41, vec![(b"a".to_vec(), b"2".to_vec())]),
            "the puts the filter wants, at the offset they reach"
        );
        store.freeze();
        store.commit(Some(42), &writer, origin()).expect("commits");
        let applied = published.blocking_recv().expect("published");
        assert!(applied.entries.is_empty());
        store.flush().expect("flushes");
        drop(store);

        let store = Store::open(dir.path(), &memory).expect("reopens");
        assert_eq!(store.changelog_offset(), Some(42));
        assert_eq!(store.get(b"a").expect("reads"), Some(b"2".to_vec()));
        assert_eq!(store.get(b"b").expect("reads"), None);
        let store = store.wipe().expect("wipes");
        assert_eq!(
            (store.changelog_offset(), store.get(b"a").expect("reads")),
            (None, None)
        );
    }
}
