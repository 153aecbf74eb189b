//! The business rules of Stockflow and the topology that runs them.
//!
//! The rules are pure functions over plain data: no Kafka, RocksDB or SQL in here. Two
//! sub-topologies, in Kafka Streams' vocabulary:
//! - [`order`] (A, partitioned by order_id): validates and deduplicates orders, fans their lines
//!   out as reserve commands, collects the line results, and confirms or rejects the order,
//!   releasing what was reserved when it rejects (a saga with compensation).
//! - [`inventory`] (B, partitioned by sku): the stream-table join of line commands and
//!   inventory adjustments against the stock of each sku; stock never goes negative.
//!
//! [`describe`] and [`build`] describe the topology to the runtime (its sources, stores and
//! sinks), and [`processors`] are its two processors: they decode a record, load the state
//! the rule needs through the runtime's `TaskContext`, call the rule, and write back the
//! changes and outputs it returns.
//!
//! The records that travel between the sub-topologies on internal topics, and the store
//! values, are defined here and serialized in the runtime's internal format
//! (`runtime::format`: postcard; the external contracts are Avro).

pub mod event_time;
pub mod inventory;
pub mod order;
pub mod processors;
pub mod serial;

use std::sync::Arc;

use schemas::{Codec, Topics};

use crate::metrics::Metrics;
use crate::runtime::format::{self, FormatError};
use crate::runtime::task::TaskId;
use crate::runtime::topology::{SinkId, SourceId, StoreId, Topology, TopologyBuilder};
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
    /// Line `line` of `order_id` keeps what it reserved: its order is confirmed (sent in
    /// event-time mode only, where it settles the line's pending hold).
    Confirm {
        order_id: String,
        line: u32,
        sku: String,
    },
    /// Line `line` of a confirmed `order_id` is forgotten (order retention): its reservation
    /// key goes, its stock stays taken, so that a new order of the same id reserves afresh.
    /// Settles like a confirm, on arrival. (A build before retention cannot decode it.)
    Forget {
        order_id: String,
        line: u32,
        sku: String,
    },
}

impl LineCommand {
    /// The order the command is about, and its line.
    pub fn order_line(&self) -> (&str, u32) {
        match self {
            LineCommand::Reserve { order_id, line, .. }
            | LineCommand::Release { order_id, line, .. }
            | LineCommand::Confirm { order_id, line, .. }
            | LineCommand::Forget { order_id, line, .. } => (order_id, *line),
        }
    }

    pub fn sku(&self) -> &str {
        match self {
            LineCommand::Reserve { sku, .. }
            | LineCommand::Release { sku, .. }
            | LineCommand::Confirm { sku, .. }
            | LineCommand::Forget { sku, .. } => sku,
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

/// Where an input record stands in the canonical order (ARCHITECTURE.md, "Decision order"):
/// its partition time, its topic's rank among the input topics' names, its partition and
/// offset, and for a reserve command the line of the order. Ordered field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub time: i64,
    pub topic: u8,
    pub partition: i32,
    pub offset: i64,
    pub line: u32,
}

impl Position {
    /// The lowest position of all.
    pub const MIN: Position = Position {
        time: i64::MIN,
        topic: 0,
        partition: i32::MIN,
        offset: i64::MIN,
        line: 0,
    };

    /// 25 bytes that sort as the position does (store keys of the merge buffer).
    pub fn to_sortable(self) -> [u8; 25] {
        let mut bytes = [0u8; 25];
        bytes[0..8].copy_from_slice(&((self.time as u64) ^ (1 << 63)).to_be_bytes());
        bytes[8] = self.topic;
        bytes[9..13].copy_from_slice(&((self.partition as u32) ^ (1 << 31)).to_be_bytes());
        bytes[13..21].copy_from_slice(&((self.offset as u64) ^ (1 << 63)).to_be_bytes());
        bytes[21..25].copy_from_slice(&self.line.to_be_bytes());
        bytes
    }
}

/// The record on the order-lines repartition topic: a command, and where to send its result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// The partition of the order's task (results go straight back to it).
    pub reply_partition: i32,
    pub command: LineCommand,
    /// A reserve's place in the canonical order (event-time mode; `None` in arrival mode and
    /// for releases and confirms).
    pub position: Option<Position>,
    /// A reserve of an order's only line (event-time mode): reserved, its order is confirmed,
    /// so it leaves no pending hold for later reserves to wait on.
    pub sole_line: bool,
}

/// The envelope before `sole_line` (records in flight across an upgrade).
#[derive(Deserialize)]
struct PositionedEnvelope {
    reply_partition: i32,
    command: LineCommand,
    position: Option<Position>,
}

/// The envelope before positions existed.
#[derive(Deserialize)]
struct LegacyEnvelope {
    reply_partition: i32,
    command: LineCommand,
}

/// An order task's promise to an inventory task: nothing it sends from now on has a position
/// at or below `position` (event-time mode). Sent on the order-lines topic with an empty key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The order task's partition.
    pub origin: i32,
    pub position: Position,
}

/// An inventory task's request to an order task: it holds an entry at `position` that waits
/// for that order task's watermark, which has not moved for a while. An idle order partition
/// moves its time on only when asked, so an idle system sends nothing. Sent on the
/// line-results topic with an empty key (event-time mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkRequest {
    pub position: Position,
}

/// The record on the line-results repartition topic: a line's result, and whether its reserve
/// left a pending hold (event-time mode) that the order's confirm must settle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEnvelope {
    pub result: LineResult,
    /// False when the inventory task kept no hold: an order's only line, reserved (its order
    /// is confirmed, nothing to settle), or any line decided in arrival mode.
    pub hold: bool,
}

/// What a record of the line-results topic carries.
#[derive(Debug, Clone)]
pub enum ResultsRecord {
    Result(ResultEnvelope),
    Request(WatermarkRequest),
}

impl ResultsRecord {
    /// Decodes a line-results record: an empty key is a request, any other a result.
    pub fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<Self, FormatError> {
        if key.is_none_or(<[u8]>::is_empty) {
            return format::decode(value).map(ResultsRecord::Request);
        }
        // The newest first; a bare `LineResult` (the format before `hold`) is one byte shorter,
        // so it fails at its end. Its build kept a hold for every reserved line in event-time
        // mode, so it reads as held.
        let error = match format::decode::<ResultEnvelope>(value) {
            Ok(envelope) => return Ok(ResultsRecord::Result(envelope)),
            Err(error) => error,
        };
        match format::decode::<LineResult>(value) {
            Ok(result) => Ok(ResultsRecord::Result(ResultEnvelope { result, hold: true })),
            Err(_) => Err(error),
        }
    }
}

/// What a record of the order-lines topic carries.
#[derive(Debug, Clone)]
pub enum LinesRecord {
    Command(CommandEnvelope),
    Watermark(Watermark),
}

impl LinesRecord {
    /// Decodes an order-lines record: an empty key is a watermark, any other a command.
    pub fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<Self, FormatError> {
        if key.is_none_or(<[u8]>::is_empty) {
            return format::decode(value).map(LinesRecord::Watermark);
        }
        // The newest envelope first: an older one is shorter, so it fails at its end.
        let error = match format::decode::<CommandEnvelope>(value) {
            Ok(envelope) => return Ok(LinesRecord::Command(envelope)),
            Err(error) => error,
        };
        let (reply_partition, command, position) = match format::decode::<PositionedEnvelope>(value)
        {
            Ok(old) => (old.reply_partition, old.command, old.position),
            Err(_) => match format::decode::<LegacyEnvelope>(value) {
                Ok(old) => (old.reply_partition, old.command, None),
                Err(_) => return Err(error),
            },
        };
        Ok(LinesRecord::Command(CommandEnvelope {
            reply_partition,
            command,
            position,
            sole_line: false,
        }))
    }
}

/// In which order the inventory tasks decide (ARCHITECTURE.md, "Decision order").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionOrder {
    /// As records arrive (the first stage's behaviour).
    Arrival,
    /// Serially equivalent: in canonical order, an idle partition holding the others back
    /// for at most `max_idle_ms`.
    EventTime { max_idle_ms: i64 },
}

/// Sub-topology A's number (orders, by order_id).
pub const ORDERS: u8 = 0;
/// Sub-topology B's number (inventory, by sku).
pub const INVENTORY: u8 = 1;
/// A's store: order_id -> [`order::OrderRecord`].
pub const ORDERS_STORE: &str = "orders";
/// B's store: sku, reservation and applied-adjustment keys (see [`inventory::keys`]).
pub const INVENTORY_STORE: &str = "inventory";

/// The handles the processors use: sources, stores and sinks of the topology.
#[derive(Debug, Clone, Copy)]
pub struct Wiring {
    /// A's sources: `orders`, and the line results coming back from B.
    pub orders: SourceId,
    pub line_results_in: SourceId,
    pub orders_store: StoreId,
    /// B's sources: `inventory-adjustments`, and the line commands coming from A.
    pub adjustments: SourceId,
    pub line_commands_in: SourceId,
    pub inventory_store: StoreId,
    /// `orders` again: an order read on a partition other than its id's is re-produced to
    /// its id's partition, keyed by its id (see [`processors`]).
    pub orders_rerouted: SinkId,
    /// A -> B, keyed by sku.
    pub line_commands: SinkId,
    /// B -> A, to the order task's partition.
    pub line_results: SinkId,
    pub confirmed: SinkId,
    pub rejected: SinkId,
    pub inventory_updated: SinkId,
}

/// The topology's description and handles, without processors.
fn describe_with_handles(application_id: &str, topics: &Topics) -> (TopologyBuilder, Wiring) {
    let mut builder = TopologyBuilder::new(application_id, &topics.orders_dlq);
    let line_commands = builder.repartition("order-lines");
    let line_results = builder.repartition("line-results");
    let confirmed = builder.sink(&topics.orders_confirmed);
    let rejected = builder.sink(&topics.orders_rejected);
    let inventory_updated = builder.sink(&topics.inventory_updated);
    let orders_rerouted = builder.sink(&topics.orders);
    let mut a = builder.sub_topology("orders");
    let orders = a.source(&topics.orders);
    let line_results_in = a.repartition_source("line-results");
    let orders_store = a.store(ORDERS_STORE);
    let mut b = builder.sub_topology("inventory");
    let adjustments = b.source(&topics.inventory_adjustments);
    let line_commands_in = b.repartition_source("order-lines");
    let inventory_store = b.store(INVENTORY_STORE);
    let wiring = Wiring {
        orders,
        line_results_in,
        orders_store,
        adjustments,
        line_commands_in,
        inventory_store,
        orders_rerouted,
        line_commands,
        line_results,
        confirmed,
        rejected,
        inventory_updated,
    };
    (builder, wiring)
}

/// The topology without its processors: its topics and stores (for topic creation checks,
/// `processor reset`, and tests that read its internal topics).
pub fn describe(application_id: &str, topics: &Topics) -> Topology {
    describe_with_handles(application_id, topics).0.build()
}

/// [`describe`], and the handles of its sources, stores and sinks (e.g. to name a sink's
/// topic: `topology.sink(wiring.line_commands)`).
pub fn describe_wired(application_id: &str, topics: &Topics) -> (Topology, Wiring) {
    let (builder, wiring) = describe_with_handles(application_id, topics);
    (builder.build(), wiring)
}

/// The topology with its processors, ready to run, deciding in `order`, and remembering a
/// decided order for `retention` of event time (ARCHITECTURE.md, "Order retention").
pub fn build(
    application_id: &str,
    topics: &Topics,
    codec: Arc<Codec>,
    metrics: Metrics,
    order: DecisionOrder,
    retention: std::time::Duration,
) -> Topology {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let (mut builder, wiring) = describe_with_handles(application_id, topics);
    let avro = processors::Avro::new(codec);
    let sequencing = match order {
        DecisionOrder::Arrival => None,
        DecisionOrder::EventTime { max_idle_ms } => {
            // The canonical order breaks ties on time by topic name.
            let orders_rank = u8::from(topics.orders > topics.inventory_adjustments);
            Some(processors::Sequencing {
                max_idle_ms,
                orders_rank,
                adjustments_rank: 1 - orders_rank,
            })
        }
    };
    let (a, m) = (avro.clone(), metrics.clone());
    builder.processors(
        usize::from(ORDERS),
        Arc::new(move |_: TaskId| {
            processors::orders(wiring, a.clone(), m.clone(), sequencing, retention_ms)
        }),
    );
    let adjustments_topic: Arc<str> = topics.inventory_adjustments.as_str().into();
    builder.processors(
        usize::from(INVENTORY),
        Arc::new(move |_: TaskId| {
            let topic = adjustments_topic.clone();
            processors::inventory(wiring, topic, avro.clone(), metrics.clone(), sequencing)
        }),
    );
    builder.build()
}

#[cfg(test)]
mod format_tests {
    //! The topology's store values and internal records in the runtime's internal format.
    use crate::runtime::format::{FormatError, decode, encode};
    use crate::topology::order::{OrderRecord, OrderStatus};
    use crate::topology::{LineCommand, LineOutcome};
    use schemas::{OrderLine, RejectedLine, RejectionReason};

    fn record(status: OrderStatus) -> OrderRecord {
        OrderRecord {
            customer_id: "customer-0042".into(),
            currency: "EUR".into(),
            created_at: 1_795_331_857_000,
            lines: vec![OrderLine {
                sku: "SKU-000123".into(),
                quantity: 2,
                unit_price_cents: 1999,
            }],
            total_cents: 3998,
            status,
            decided_at: Some(1_795_331_857_123),
            time: Some(1_795_331_857_000),
        }
    }

    #[test]
    fn every_status_round_trips_and_is_much_smaller_than_json() {
        let statuses = [
            OrderStatus::Pending {
                results: vec![None, Some(LineOutcome::Insufficient { available: 3 })],
            },
            OrderStatus::Confirmed,
            OrderStatus::Rejected {
                reason: RejectionReason::InsufficientStock,
                message: "line 1: 3 available".into(),
                lines: vec![RejectedLine {
                    sku: "SKU-000123".into(),
                    requested: 2,
                    available: Some(1),
                }],
            },
        ];
        for status in statuses {
            let value = record(status);
            let bytes = encode(&value);
            assert_eq!(decode::<OrderRecord>(&bytes), Ok(value.clone()));
            let json = serde_json::to_vec(&value).expect("JSON");
            assert!(
                bytes.len() * 2 < json.len(),
                "{} bytes against {} in JSON",
                bytes.len(),
                json.len()
            );
        }
        let command = LineCommand::Release {
            order_id: "o-1".into(),
            line: 1,
            sku: "SKU-1".into(),
            quantity: 5,
        };
        assert_eq!(decode::<LineCommand>(&encode(&command)), Ok(command));
    }

    #[test]
    fn an_order_record_from_before_retention_reads_with_no_time_and_the_new_one_as_old() {
        /// The record as builds before retention wrote and read it.
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Before {
            customer_id: String,
            currency: String,
            created_at: i64,
            lines: Vec<schemas::OrderLine>,
            total_cents: i64,
            status: OrderStatus,
            decided_at: Option<i64>,
        }
        let new = record(OrderStatus::Confirmed);
        let before = Before {
            customer_id: new.customer_id.clone(),
            currency: new.currency.clone(),
            created_at: new.created_at,
            lines: new.lines.clone(),
            total_cents: new.total_cents,
            status: new.status.clone(),
            decided_at: new.decided_at,
        };
        let old = decode::<OrderRecord>(&encode(&before)).expect("an old record reads");
        assert_eq!(
            old,
            OrderRecord {
                time: None,
                ..new.clone()
            }
        );
        assert_eq!(decode::<Before>(&encode(&new)), Ok(before));
    }

    #[test]
    fn a_result_from_before_hold_reads_as_held_and_the_new_one_still_reads_as_old() {
        use crate::topology::{LineResult, ResultEnvelope, ResultsRecord};
        let result = LineResult {
            order_id: "o-1".into(),
            line: 0,
            outcome: LineOutcome::Reserved,
        };
        let decoded = |bytes: &[u8]| match ResultsRecord::decode(Some(b"o-1"), bytes) {
            Ok(ResultsRecord::Result(envelope)) => envelope,
            other => panic!("a result, not {other:?}"),
        };
        // A build before `hold` kept a hold for every reserve: its result reads as held.
        let old = decoded(&encode(&result));
        assert_eq!((old.result, old.hold), (result.clone(), true));
        let new = ResultEnvelope {
            result: result.clone(),
            hold: false,
        };
        assert_eq!(decoded(&encode(&new)), new);
        // ...and a build before `hold` reads the new record as the result it knows.
        assert_eq!(decode::<LineResult>(&encode(&new)), Ok(result));
        assert!(ResultsRecord::decode(Some(b"o-1"), &[1, 200]).is_err());
    }

    #[test]
    fn refuses_json_unknown_versions_and_garbage_with_a_reason() {
        let json = serde_json::to_vec(&record(OrderStatus::Confirmed)).expect("JSON");
        assert_eq!(decode::<OrderRecord>(&json), Err(FormatError::Json));
        assert_eq!(decode::<OrderRecord>(&[]), Err(FormatError::Empty));
        assert_eq!(
            decode::<OrderRecord>(&[7, 1, 2]),
            Err(FormatError::Version(7))
        );
        let mut truncated = encode(&record(OrderStatus::Confirmed));
        truncated.truncate(10);
        assert!(matches!(
            decode::<OrderRecord>(&truncated),
            Err(FormatError::Postcard(_))
        ));
    }
}
