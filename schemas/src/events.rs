//! The event types, one Rust struct per Avro contract in `schemas/avro/`.
//!
//! The `.avsc` files are the single source of truth: each type names its file through
//! [`Contract::SCHEMA`], and the unit tests check that every Rust value round-trips through
//! its schema. Timestamps are milliseconds since the Unix epoch (Avro `timestamp-millis`);
//! money is integer cents.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An Avro contract: a record type with its schema and the topic it travels on by default.
pub trait Contract: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The record's full name, as written in the schema (`namespace.name`).
    const FULL_NAME: &'static str;
    /// The `.avsc` text.
    const SCHEMA: &'static str;
    /// Which [`crate::Topics`] field carries this record.
    const TOPIC: TopicRole;

    /// The Kafka message key (order_id or sku).
    fn key(&self) -> &str;
}

/// The role a topic plays, so a contract can name its topic without fixing the name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicRole {
    Orders,
    InventoryAdjustments,
    InventoryUpdated,
    OrdersConfirmed,
    OrdersRejected,
}

/// One line of an order: how many of which sku, at what unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// A customer placed an order (topic `orders`, key order_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: String,
    pub customer_id: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub currency: String,
    pub lines: Vec<OrderLine>,
}

/// How an [`InventoryAdjusted`] changes the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AdjustmentMode {
    /// Add `quantity` (which may be negative) to the available stock.
    Delta,
    /// Set the available stock to `quantity`.
    Absolute,
}

/// Why stock was adjusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AdjustmentReason {
    Initial,
    Restock,
    Correction,
}

/// Stock arrives or is corrected (topic `inventory-adjustments`, key sku).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryAdjusted {
    /// Unique per adjustment: a repeated id is applied once.
    pub adjustment_id: String,
    pub sku: String,
    pub mode: AdjustmentMode,
    pub quantity: i64,
    pub reason: AdjustmentReason,
    /// Milliseconds since the Unix epoch.
    pub adjusted_at: i64,
    pub product_name: Option<String>,
    pub unit_price_cents: Option<i64>,
}

/// Why a sku's stock changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InventoryChangeReason {
    Reserved,
    Released,
    Restocked,
    Corrected,
}

/// A sku's stock changed (topic `inventory-updated`, key sku).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryUpdated {
    pub sku: String,
    pub order_id: Option<String>,
    pub adjustment_id: Option<String>,
    /// Signed change of the available stock.
    pub change: i64,
    pub available_after: i64,
    pub reserved_after: i64,
    pub reason: InventoryChangeReason,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
}

/// Why an order was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectionReason {
    InsufficientStock,
    UnknownSku,
    InvalidOrder,
}

/// A line of a rejected order: what was asked for and what was there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    pub sku: String,
    pub requested: i32,
    /// `None` when the sku has never been stocked.
    pub available: Option<i64>,
}

/// An order that could not be fulfilled (topic `orders-rejected`, key order_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    pub order_id: String,
    pub customer_id: String,
    pub reason: RejectionReason,
    pub message: String,
    pub lines: Vec<RejectedLine>,
    /// The order's `created_at`, milliseconds since the Unix epoch.
    pub created_at: i64,
    pub rejected_at: i64,
}

/// Every line of the order is reserved (topic `orders-confirmed`, key order_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    /// The order's `created_at`, milliseconds since the Unix epoch.
    pub created_at: i64,
    pub confirmed_at: i64,
}

macro_rules! contract {
    ($ty:ty, $name:literal, $file:literal, $role:ident, $key:ident) => {
        impl Contract for $ty {
            const FULL_NAME: &'static str = concat!("io.stockflow.events.", $name);
            const SCHEMA: &'static str = include_str!(concat!("../avro/", $file));
            const TOPIC: TopicRole = TopicRole::$role;

            fn key(&self) -> &str {
                &self.$key
            }
        }
    };
}

contract!(
    OrderCreated,
    "OrderCreated",
    "order_created.avsc",
    Orders,
    order_id
);
contract!(
    InventoryAdjusted,
    "InventoryAdjusted",
    "inventory_adjusted.avsc",
    InventoryAdjustments,
    sku
);
contract!(
    InventoryUpdated,
    "InventoryUpdated",
    "inventory_updated.avsc",
    InventoryUpdated,
    sku
);
contract!(
    OrderConfirmed,
    "OrderConfirmed",
    "order_confirmed.avsc",
    OrdersConfirmed,
    order_id
);
contract!(
    OrderRejected,
    "OrderRejected",
    "order_rejected.avsc",
    OrdersRejected,
    order_id
);

/// Every contract as (full name, schema text, topic role), for registering them all.
pub const ALL: [(&str, &str, TopicRole); 5] = [
    (
        OrderCreated::FULL_NAME,
        OrderCreated::SCHEMA,
        OrderCreated::TOPIC,
    ),
    (
        InventoryAdjusted::FULL_NAME,
        InventoryAdjusted::SCHEMA,
        InventoryAdjusted::TOPIC,
    ),
    (
        InventoryUpdated::FULL_NAME,
        InventoryUpdated::SCHEMA,
        InventoryUpdated::TOPIC,
    ),
    (
        OrderConfirmed::FULL_NAME,
        OrderConfirmed::SCHEMA,
        OrderConfirmed::TOPIC,
    ),
    (
        OrderRejected::FULL_NAME,
        OrderRejected::SCHEMA,
        OrderRejected::TOPIC,
    ),
];

impl OrderCreated {
    /// The order's value: the sum of quantity x unit price over its lines.
    pub fn total_cents(&self) -> i64 {
        self.lines
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }
}

/// Sample values of every contract, for tests and benchmarks.
pub mod samples {
    use super::*;

    pub fn order_created() -> OrderCreated {
        OrderCreated {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            created_at: 1_700_000_000_000,
            currency: "EUR".into(),
            lines: vec![
                OrderLine {
                    sku: "SKU-MONITOR-STAND".into(),
                    quantity: 1,
                    unit_price_cents: 4550,
                },
                OrderLine {
                    sku: "SKU-BT-MOUSE".into(),
                    quantity: 2,
                    unit_price_cents: 1525,
                },
            ],
        }
    }

    /// An order of `lines` lines (`SKU-000000`, `SKU-000001`, ...; line i wants i + 1 units at
    /// 19.99), as the generator makes them: for benchmarks of a multi-line order.
    pub fn order_with_lines(lines: i32) -> OrderCreated {
        OrderCreated {
            order_id: "order-42-0000001187".into(),
            customer_id: "customer-00042".into(),
            created_at: 1_764_000_000_000,
            currency: "EUR".into(),
            lines: (0..lines)
                .map(|i| OrderLine {
                    sku: format!("SKU-{i:06}"),
                    quantity: 1 + i,
                    unit_price_cents: 1999,
                })
                .collect(),
        }
    }

    pub fn inventory_adjusted() -> InventoryAdjusted {
        InventoryAdjusted {
            adjustment_id: "a-1".into(),
            sku: "SKU-BT-MOUSE".into(),
            mode: AdjustmentMode::Absolute,
            quantity: 2,
            reason: AdjustmentReason::Initial,
            adjusted_at: 1_700_000_000_000,
            product_name: Some("Bluetooth Mouse".into()),
            unit_price_cents: Some(1525),
        }
    }

    pub fn inventory_updated() -> InventoryUpdated {
        InventoryUpdated {
            sku: "SKU-BT-MOUSE".into(),
            order_id: Some("o-1".into()),
            adjustment_id: None,
            change: -2,
            available_after: 0,
            reserved_after: 2,
            reason: InventoryChangeReason::Reserved,
            updated_at: 1_700_000_000_100,
        }
    }

    pub fn order_confirmed() -> OrderConfirmed {
        let order = order_created();
        OrderConfirmed {
            total_cents: order.total_cents(),
            order_id: order.order_id,
            customer_id: order.customer_id,
            currency: order.currency,
            lines: order.lines,
            created_at: order.created_at,
            confirmed_at: 1_700_000_000_200,
        }
    }

    pub fn order_rejected() -> OrderRejected {
        OrderRejected {
            order_id: "o-2".into(),
            customer_id: "c-1".into(),
            reason: RejectionReason::InsufficientStock,
            message: "1 of 1 lines short".into(),
            lines: vec![RejectedLine {
                sku: "SKU-KEYBOARD".into(),
                requested: 1,
                available: Some(0),
            }],
            created_at: 1_700_000_000_000,
            rejected_at: 1_700_000_000_300,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::{Schema, from_value, to_value};
    use proptest::prelude::*;

    /// Rust value -> Avro datum with the contract's schema -> Rust value.
    fn round_trip<C: Contract + PartialEq + std::fmt::Debug>(value: &C) -> C {
        let schema = Schema::parse_str(C::SCHEMA).expect("contract schema parses");
        let avro = to_value(value)
            .expect("to avro value")
            .resolve(&schema)
            .expect("fits the schema");
        let writer = GenericDatumWriter::builder(&schema)
            .build()
            .expect("a writer");
        let bytes = writer.write_value_to_vec(avro).expect("encodes");
        let reader = GenericDatumReader::builder(&schema)
            .build()
            .expect("a reader");
        let back = reader.read_value(&mut bytes.as_slice()).expect("decodes");
        from_value::<C>(&back).expect("back to rust")
    }

    #[test]
    fn every_contract_round_trips_through_its_schema() {
        assert_eq!(
            round_trip(&samples::order_created()),
            samples::order_created()
        );
        assert_eq!(
            round_trip(&samples::inventory_adjusted()),
            samples::inventory_adjusted()
        );
        assert_eq!(
            round_trip(&samples::inventory_updated()),
            samples::inventory_updated()
        );
        assert_eq!(
            round_trip(&samples::order_confirmed()),
            samples::order_confirmed()
        );
        assert_eq!(
            round_trip(&samples::order_rejected()),
            samples::order_rejected()
        );
    }

    #[test]
    fn full_names_match_the_schemas() {
        for (full_name, schema, _) in ALL {
            let parsed = Schema::parse_str(schema).expect("contract schema parses");
            let name = match parsed {
                Schema::Record(record) => record.name.fullname(None),
                other => panic!("{full_name} is not a record: {other:?}"),
            };
            assert_eq!(name, full_name);
        }
    }

    #[test]
    fn total_is_quantity_times_price() {
        assert_eq!(samples::order_created().total_cents(), 4550 + 2 * 1525);
    }

    fn arb_line() -> impl Strategy<Value = OrderLine> {
        ("[A-Z0-9-]{1,16}", any::<i32>(), any::<i64>()).prop_map(
            |(sku, quantity, unit_price_cents)| OrderLine {
                sku,
                quantity,
                unit_price_cents,
            },
        )
    }

    proptest! {
        #[test]
        fn any_order_round_trips(
            order_id in "\\PC{0,24}",
            customer_id in "\\PC{0,24}",
            created_at in any::<i64>(),
            lines in proptest::collection::vec(arb_line(), 0..8),
        ) {
            let order = OrderCreated { order_id, customer_id, created_at, currency: "EUR".into(), lines };
            prop_assert_eq!(round_trip(&order), order);
        }

        #[test]
        fn any_rejection_round_trips(available in proptest::option::of(any::<i64>()), requested in any::<i32>()) {
            let mut rejected = samples::order_rejected();
            rejected.lines[0].available = available;
            rejected.lines[0].requested = requested;
            prop_assert_eq!(round_trip(&rejected), rejected);
        }
    }
}
