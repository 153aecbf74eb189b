//! What the driver-based tests share: random inputs (multi-line orders with duplicates,
//! invalid orders and unknown skus, restocks, corrections and deltas), random driver
//! configurations, and a world that encodes them and pipes them into the driver.

#![allow(dead_code)] // each test binary uses its part

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use processor::metrics::Metrics;
use processor::runtime::driver::{DriverConfig, TopologyTestDriver};
use processor::topology::serial::{self, InputRecord};
use processor::topology::{self, DecisionOrder};
use proptest::prelude::*;
use schemas::{
    AdjustmentMode, AdjustmentReason, Codec, InventoryAdjusted, OrderCreated, OrderLine, Topics,
};

/// The default order retention: longer than any test's stream.
pub const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// Skus 0..STOCKED get initial stock; STOCKED is never stocked (unknown).
pub const STOCKED: u8 = 4;

#[derive(Debug, Clone)]
pub enum Input {
    /// An order; ids repeat (duplicates), quantity 0 makes it invalid, sku STOCKED unknown.
    Order {
        id: u8,
        lines: Vec<(u8, i32)>,
    },
    Restock {
        sku: u8,
        quantity: i64,
    },
    /// An absolute stock level, as a stock count would set it.
    Correction {
        sku: u8,
        level: i64,
    },
    /// A delta that may be negative (shrinkage); stock stops at zero.
    Delta {
        sku: u8,
        quantity: i64,
    },
}

pub fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        8 => (0u8..40, prop::collection::vec((0u8..=STOCKED, 0i32..4), 1..4))
            .prop_map(|(id, lines)| Input::Order { id, lines }),
        1 => (0u8..STOCKED, 1i64..6).prop_map(|(sku, quantity)| Input::Restock { sku, quantity }),
        1 => (0u8..STOCKED, 0i64..8).prop_map(|(sku, level)| Input::Correction { sku, level }),
        1 => (0u8..STOCKED, -6i64..3).prop_map(|(sku, quantity)| Input::Delta { sku, quantity }),
    ]
}

pub fn sku(i: u8) -> String {
    format!("SKU-{i}")
}

pub struct World {
    topics: Topics,
    codec: Arc<Codec>,
}

impl World {
    pub fn new() -> Self {
        let topics = Topics::default();
        let codec = Arc::new(Codec::offline(&topics));
        Self { topics, codec }
    }

    pub fn driver(&self, config: DriverConfig) -> TopologyTestDriver {
        self.driver_deciding(config, DecisionOrder::Arrival)
    }

    pub fn driver_deciding(
        &self,
        config: DriverConfig,
        order: DecisionOrder,
    ) -> TopologyTestDriver {
        self.driver_retaining(config, order, WEEK)
    }

    /// A driver whose order tasks remember a decided order for `retention`.
    pub fn driver_retaining(
        &self,
        config: DriverConfig,
        order: DecisionOrder,
        retention: Duration,
    ) -> TopologyTestDriver {
        let metrics = Metrics::new(prometheus::Registry::new());
        let codec = self.codec.clone();
        let topology = topology::build("app", &self.topics, codec, metrics, order, retention);
        TopologyTestDriver::new(topology, config).expect("the driver opens every task")
    }

    pub fn adjustment(
        &self,
        id: String,
        sku: u8,
        mode: AdjustmentMode,
        quantity: i64,
        reason: AdjustmentReason,
    ) -> (InventoryAdjusted, Vec<u8>) {
        let adjustment = InventoryAdjusted {
            adjustment_id: id,
            sku: self::sku(sku),
            mode,
            quantity,
            reason,
            adjusted_at: 0,
            product_name: None,
            unit_price_cents: Some(100),
        };
        let bytes = block_on(self.codec.encode(&adjustment)).expect("encodes");
        (adjustment, bytes)
    }

    pub fn order(&self, id: &str, lines: &[(u8, i32)], at: i64) -> (OrderCreated, Vec<u8>) {
        let order = OrderCreated {
            order_id: id.to_owned(),
            customer_id: "c".to_owned(),
            created_at: at,
            currency: "EUR".to_owned(),
            lines: lines
                .iter()
                .map(|&(s, quantity)| OrderLine {
                    sku: sku(s),
                    quantity,
                    unit_price_cents: 100,
                })
                .collect(),
        };
        let bytes = block_on(self.codec.encode(&order)).expect("encodes");
        (order, bytes)
    }

    pub fn decode<C: schemas::Contract>(&self, bytes: &[u8]) -> C {
        block_on(self.codec.decode::<C>(bytes)).expect("an output decodes")
    }
}

/// Pipes the initial stock, then `inputs`, the clock moving by each of `steps` in turn (a
/// step below 1 repeats or goes back in time); returns the order ids and the records as the
/// clerk reads them.
pub fn pipe_inputs(
    world: &World,
    driver: &mut TopologyTestDriver,
    initial: &[i64],
    inputs: &[Input],
    steps: &[i64],
) -> (BTreeSet<String>, Vec<InputRecord>) {
    pipe_inputs_at(world, driver, initial, inputs, steps, 1_000)
}

/// [`pipe_inputs`] from timestamp `start` (adjustment ids are unique per `start`).
pub fn pipe_inputs_at(
    world: &World,
    driver: &mut TopologyTestDriver,
    initial: &[i64],
    inputs: &[Input],
    steps: &[i64],
    start: i64,
) -> (BTreeSet<String>, Vec<InputRecord>) {
    let mut records = Vec::new();
    let mut at = start;
    let mut adjustment = 0;
    let mut adjust =
        |driver: &mut TopologyTestDriver, (value, bytes): (InventoryAdjusted, Vec<u8>), at| {
            let topic = "inventory-adjustments";
            let (partition, offset) = driver.pipe(topic, Some(value.sku.as_bytes()), &bytes, at);
            records.push(InputRecord {
                topic: topic.to_owned(),
                partition,
                offset,
                timestamp: at,
                input: serial::Input::Adjustment(value),
            });
        };
    for (i, &stock) in initial.iter().enumerate() {
        let initial = world.adjustment(
            format!("initial-{i}"),
            i as u8,
            AdjustmentMode::Delta,
            stock,
            AdjustmentReason::Initial,
        );
        adjust(driver, initial, at);
    }
    let mut orders = Vec::new();
    let mut order_ids = BTreeSet::new();
    for (i, input) in inputs.iter().enumerate() {
        at += steps.get(i % steps.len().max(1)).copied().unwrap_or(1);
        adjustment += 1;
        let id = format!("adj-{start}-{adjustment}");
        let value = match input {
            Input::Order { id, lines } => {
                let id = format!("order-{id}");
                let (value, bytes) = world.order(&id, lines, at);
                let (partition, offset) = driver.pipe("orders", Some(id.as_bytes()), &bytes, at);
                orders.push(InputRecord {
                    topic: "orders".to_owned(),
                    partition,
                    offset,
                    timestamp: at,
                    input: serial::Input::Order(value),
                });
                order_ids.insert(id);
                continue;
            }
            Input::Restock { sku, quantity } => world.adjustment(
                id,
                *sku,
                AdjustmentMode::Delta,
                *quantity,
                AdjustmentReason::Restock,
            ),
            Input::Correction { sku, level } => world.adjustment(
                id,
                *sku,
                AdjustmentMode::Absolute,
                *level,
                AdjustmentReason::Correction,
            ),
            Input::Delta { sku, quantity } => world.adjustment(
                id,
                *sku,
                AdjustmentMode::Delta,
                *quantity,
                AdjustmentReason::Correction,
            ),
        };
        adjust(driver, value, at);
    }
    records.extend(orders);
    (order_ids, records)
}

pub fn config() -> impl Strategy<Value = DriverConfig> {
    (
        1i32..5,
        1i32..5,
        any::<u64>(),
        0.02f64..0.6,
        0.0f64..0.05,
        0u32..6,
    )
        .prop_map(
            |(orders, adjustments, seed, commit_probability, crash_probability, max_crashes)| {
                let partitions = BTreeMap::from([
                    ("orders".to_owned(), orders),
                    ("inventory-adjustments".to_owned(), adjustments),
                ]);
                DriverConfig {
                    default_partitions: 2,
                    partitions,
                    seed,
                    commit_probability,
                    crash_probability,
                    max_crashes,
                }
            },
        )
}
