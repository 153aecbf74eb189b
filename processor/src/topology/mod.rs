//! The business rules of Stockflow, as pure functions over plain data: no Kafka, RocksDB or
//! SQL in here. The runtime loads the state a record needs, calls a `decide` function, and
//! writes back the changes and outputs it returns.
//!
//! Two sub-topologies, in Kafka Streams' vocabulary:
//! - [`order`] (A, partitioned by order_id): validates and deduplicates orders, fans their lines
//!   out as reserve commands, collects the line results, and confirms or rejects the order,
//!   releasing what was reserved when it rejects (a saga with compensation).
//! - [`inventory`] (B, partitioned by sku): the stream-table join of line commands and
//!   inventory adjustments against the stock of each sku; stock never goes negative.
//!
//! The records that travel between them on internal topics, and the store values, are defined
//! here and serialized in the runtime's internal format (`runtime::format`: postcard; the
//! external contracts are Avro).

pub mod inventory;
pub mod order;

use serde::{Deserialize, Serialize};

/// A command from an order task to the inventory task that owns `sku` (key: sku).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineCommand {
    /// Take `quantity` of `sku` for line `line` of `order_id`, if there is enough.
    Reserve {
        order_id: String,
        line: u32,
        sku: String,
        quantity: i64,
    },
    /// Give back what line `line` of `order_id` reserved (compensation of a rejected order).
    Release {
        order_id: String,
        line: u32,
        sku: String,
        quantity: i64,
    },
}

impl LineCommand {
    pub fn sku(&self) -> &str {
        match self {
            LineCommand::Reserve { sku, .. } | LineCommand::Release { sku, .. } => sku,
        }
    }
}

/// What an inventory task answers for one line (key: order_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineResult {
    pub order_id: String,
    pub line: u32,
    pub outcome: LineOutcome,
}

/// The outcome of a reserve command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineOutcome {
    Reserved,
    Insufficient { available: i64 },
    UnknownSku,
}

/// How a store key changes: the runtime turns this into a store write and a changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    Keep,
    Put(T),
    Delete,
}
