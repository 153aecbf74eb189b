//! Interactive queries (Kafka Streams' name): the stores of the process's running tasks,
//! readable from outside the engine threads, by store name and partition. An engine publishes
//! a task's stores once they are restored and the task runs, and withdraws them when the task
//! closes (whatever closes it: the [`Published`] guard withdraws on drop). A read sees the
//! committed state only (see [`Reader`]): what a query answers never rolls back.
//!
//! Which partition holds a key, and which instance owns that partition, are the caller's to
//! work out (the HTTP API does both: the partitioner, then the group's assignment).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::store::{Reader, StoreError};

/// The queryable stores of one process, shared by its engine threads and its readers.
#[derive(Debug, Clone, Default)]
pub struct LiveStores(Arc<RwLock<Vec<Entry>>>);

#[derive(Debug)]
struct Entry {
    store: &'static str,
    partition: i32,
    reader: Reader,
}

/// What a query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// This process does not run the task that holds the partition's store (another instance
    /// owns it, or it is restoring here, or moving).
    NotHere,
    /// The committed value under the key (`None`: no such key).
    Found(Option<Vec<u8>>),
}

impl LiveStores {
    /// The value under `key` in the store `store` of partition `partition`.
    pub fn get(&self, store: &str, partition: i32, key: &[u8]) -> Result<Lookup, StoreError> {
        // The read lock is held through the read, so a task's store is never read after
        // `withdraw` returned (its directory may then be reopened by another task).
        let entries = self.read();
        let Some(entry) = entries
            .iter()
            .find(|e| e.store == store && e.partition == partition)
        else {
            return Ok(Lookup::NotHere);
        };
        Ok(entry
            .reader
            .get(key)?
            .map_or(Lookup::NotHere, Lookup::Found))
    }

    /// Whether this process serves the store `store` of partition `partition` now.
    pub fn serves(&self, store: &str, partition: i32) -> bool {
        self.read()
            .iter()
            .any(|e| e.store == store && e.partition == partition)
    }

    /// Makes `stores` of `partition` queryable until the guard is dropped.
    pub fn publish(
        &self,
        partition: i32,
        stores: impl IntoIterator<Item = (&'static str, Reader)>,
    ) -> Published {
        let mut entries = self.write();
        let mut names = Vec::new();
        for (store, reader) in stores {
            entries.retain(|e| !(e.store == store && e.partition == partition));
            entries.push(Entry {
                store,
                partition,
                reader,
            });
            names.push(store);
        }
        Published {
            live: self.clone(),
            partition,
            stores: names,
        }
    }

    fn withdraw(&self, partition: i32, stores: &[&'static str]) {
        self.write()
            .retain(|e| !(e.partition == partition && stores.contains(&e.store)));
    }

    /// The lock; what it guards is changed in single steps, so a poisoned one is taken as is.
    fn read(&self) -> RwLockReadGuard<'_, Vec<Entry>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Entry>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A task's stores, queryable while this lives: it withdraws them when dropped.
#[derive(Debug)]
pub struct Published {
    live: LiveStores,
    partition: i32,
    stores: Vec<&'static str>,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.live.withdraw(self.partition, &self.stores);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::store::{Origin, SharedMemory, Store, Writer};
    use crate::runtime::task::TaskId;

    #[test]
    fn answers_committed_values_while_published_and_nothing_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let memory = SharedMemory::new(8 << 20);
        let mut store = Store::open(&dir.path().join("0_1"), &memory).expect("store");
        let writer = Writer::start("test-writer".into(), None).expect("writer starts");
        let origin = Origin {
            task: TaskId {
                sub: 0,
                partition: 1,
            },
            store: "orders",
            committed_at: std::time::Instant::now(),
        };
        store.write(b"o-1".to_vec(), Some(b"committed".to_vec()));
        store.freeze();
        store.commit(Some(0), &writer, origin).expect("commit");
        store.settle();
        // Written, not committed: a query does not see it.
        store.write(b"o-2".to_vec(), Some(b"pending".to_vec()));

        let live = LiveStores::default();
        let get = |store: &str, partition: i32, key: &[u8]| {
            live.get(store, partition, key).expect("RocksDB reads")
        };
        assert_eq!(get("orders", 1, b"o-1"), Lookup::NotHere);
        let published = live.publish(1, [("orders", store.reader())]);
        assert!(live.serves("orders", 1) && !live.serves("orders", 0));
        assert_eq!(
            get("orders", 1, b"o-1"),
            Lookup::Found(Some(b"committed".to_vec()))
        );
        assert_eq!(get("orders", 1, b"o-2"), Lookup::Found(None));
        assert_eq!(get("inventory", 1, b"o-1"), Lookup::NotHere);
        drop(published);
        assert_eq!(get("orders", 1, b"o-1"), Lookup::NotHere);

        // A store dropped while still published (a failed engine) is not read either.
        let _published = live.publish(1, [("orders", store.reader())]);
        drop(store);
        assert_eq!(get("orders", 1, b"o-1"), Lookup::NotHere);
    }
}
