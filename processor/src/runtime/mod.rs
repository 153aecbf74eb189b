//! The generic streams runtime: tasks, state stores, restore, the delivery guarantee, and the
//! engine that moves records between Kafka and the topology's decisions.
//!
//! - [`task`]: task ids (sub-topology x partition) and the task state machine.
//! - [`topics`]: internal topic names, creation, and the co-partitioning check.
//! - [`format`]: the binary format of store values and repartition records.
//! - [`store`]: a RocksDB store with an in-memory batch of uncommitted writes.
//! - [`restore`]: replaying a changelog's tail into a store.
//! - [`guarantee`]: exactly-once v2 and at-least-once commits, in one module.
//! - [`engine`]: the processing loop and the rebalance callbacks.

pub mod engine;
pub mod format;
pub mod guarantee;
pub mod restore;
pub mod store;
pub mod task;
pub mod topics;
