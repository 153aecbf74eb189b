//! Stockflow's contracts: the Avro schemas every program agrees on, their Rust types, the
//! Confluent-framed codec, the registry administration, and the topic names.
//!
//! The `.avsc` files under `schemas/avro/` are the single source of truth. Every record on a
//! Stockflow topic is Confluent-framed Avro (magic byte 0, 4-byte big-endian schema id, Avro
//! body), and every subject follows TopicNameStrategy (`<topic>-value`) with BACKWARD
//! compatibility.
//!
//! Layout:
//! - [`events`]: the event types and the [`Contract`] trait tying each to its schema and topic.
//! - [`codec`]: encode/decode through the schema registry, with ids and schemas cached; or
//!   offline, with fixed ids, for benchmarks and tests.
//! - [`registry`]: register the contracts, pin compatibility, check a changed schema.
//! - [`cli`]: the `schemas` subcommand (register, check, list) both binaries offer.
//! - [`topics`]: topic and subject names.
//!
//! The process plumbing the binaries share (connection flags, topic creation, signals, exit
//! codes) is the `plumbing` crate; the integration tests' kit is the `testkit` crate.

pub mod cli;
pub mod codec;
pub mod events;
pub mod registry;
pub mod topics;

pub use codec::{Codec, CodecError};
pub use events::{
    AdjustmentMode, AdjustmentReason, Contract, InventoryAdjusted, InventoryChangeReason,
    InventoryUpdated, OrderConfirmed, OrderCreated, OrderLine, OrderRejected, RejectedLine,
    RejectionReason, TopicRole,
};
pub use registry::Registry;
pub use topics::Topics;

/// Milliseconds since the Unix epoch, now (the unit of every timestamp in the contracts).
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
