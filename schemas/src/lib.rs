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
//! - [`codec`]: encode/decode through the schema registry, with ids and schemas cached.
//! - [`registry`]: register the contracts, pin compatibility, check a changed schema.
//! - [`topics`]: topic and subject names.
//! - [`admin`]: create missing topics and read partition counts.
//! - [`cli`]: the endpoint flags and the `schemas` subcommand every binary shares.
//! - [`process`]: logging, the shutdown signal path and exit codes, shared by the binaries.
//! - `testkit` (feature `testkit`): endpoints and helpers for integration tests.

pub mod admin;
pub mod cli;
pub mod codec;
pub mod events;
pub mod process;
pub mod registry;
#[cfg(feature = "testkit")]
pub mod testkit;
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
