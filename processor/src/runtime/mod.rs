//! The streams runtime: it moves bytes between Kafka, RocksDB and a topology's processors,
//! and knows nothing of what the bytes mean (it imports nothing from `topology` or
//! `readmodel`).
//!
//! - [`topology`]: the task API: a topology's description, its processors, and the
//!   `TaskContext` through which they touch state and outputs.
//! - [`task`]: task ids (sub-topology x partition) and the task state machine.
//! - [`topics`]: creating a topology's topics, and the co-partitioning check.
//! - [`format`]: the binary format of store values and repartition records.
//! - [`store`]: a RocksDB store with in-memory layers of uncommitted writes, and the writer
//!   that applies committed ones and publishes them to a subscriber.
//! - [`restore`]: replaying a changelog's tail into a store.
//! - [`guarantee`]: exactly-once v2 and at-least-once commits, in one module.
//! - [`engine`]: the processing loop, the commits and the rebalance callbacks.
//! - [`live`]: what each engine thread is doing right now (tasks, restores, last commit), for
//!   `GET /status`.
//! - [`queryable`]: the running tasks' stores, readable from other threads (interactive
//!   queries, for the HTTP API).
//! - [`driver`]: the in-memory topology test driver (no Kafka, no RocksDB).
//! - [`partitioner`]: Kafka's default partitioner (murmur2), as the producers use it.

pub mod driver;
pub mod engine;
pub mod format;
pub mod guarantee;
pub mod live;
pub mod partitioner;
pub mod queryable;
pub mod restore;
pub mod store;
pub mod task;
pub mod topics;
pub mod topology;
