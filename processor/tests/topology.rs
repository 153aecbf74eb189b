//! The real topology (both processors, the Avro codec, the internal format) in the in-memory
//! topology test driver: random streams of multi-line orders, duplicates, invalid orders,
//! unknown skus, restocks and corrections, on random partition counts, with random task
//! interleavings, commit points and crashes. No service is needed.
//!
//! What must hold whatever the interleaving: exactly one outcome per order id; stock never
//! negative; per sku, the stock the store ends with is what the `InventoryUpdated` stream says
//! (every change published exactly once), what is reserved is what the confirmed orders hold,
//! and available + reserved is what the adjustments added (units conserved).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::executor::block_on;
use processor::metrics::Metrics;
use processor::runtime::driver::{DriverConfig, DriverStats, TopologyTestDriver};
use processor::runtime::format;
use processor::topology::inventory::{SkuRecord, keys};
use processor::topology::{self, DecisionOrder, INVENTORY, INVENTORY_STORE};
use proptest::prelude::*;
use schemas::{
    AdjustmentMode, AdjustmentReason, Codec, InventoryAdjusted, InventoryChangeReason,
    InventoryUpdated, OrderConfirmed, OrderCreated, OrderLine, OrderRejected, RejectionReason,
    Topics,
};

/// Skus 0..STOCKED get initial stock; STOCKED is never stocked (unknown).
const STOCKED: u8 = 4;

#[derive(Debug, Clone)]
enum Input {
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

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        8 => (0u8..40, prop::collection::vec((0u8..=STOCKED, 0i32..4), 1..4))
            .prop_map(|(id, lines)| Input::Order { id, lines }),
        1 => (0u8..STOCKED, 1i64..6).prop_map(|(sku, quantity)| Input::Restock { sku, quantity }),
        1 => (0u8..STOCKED, 0i64..8).prop_map(|(sku, level)| Input::Correction { sku, level }),
        1 => (0u8..STOCKED, -6i64..3).prop_map(|(sku, quantity)| Input::Delta { sku, quantity }),
    ]
}

fn sku(i: u8) -> String {
    format!("SKU-{i}")
}

struct World {
    topics: Topics,
    codec: Arc<Codec>,
}

impl World {
    fn new() -> Self {
        let topics = Topics::default();
        let codec = Arc::new(Codec::offline(&topics));
        Self { topics, codec }
    }

    fn driver(&self, config: DriverConfig) -> TopologyTestDriver {
        self.driver_deciding(config, DecisionOrder::Arrival)
    }

    fn driver_deciding(&self, config: DriverConfig, order: DecisionOrder) -> TopologyTestDriver {
        let metrics = Metrics::new(prometheus::Registry::new());
        let topology = topology::build("app", &self.topics, self.codec.clone(), metrics, order);
        TopologyTestDriver::new(topology, config).expect("the driver opens every task")
    }

    fn adjustment(
        &self,
        id: String,
        sku: u8,
        mode: AdjustmentMode,
        quantity: i64,
        reason: AdjustmentReason,
    ) -> Vec<u8> {
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
        block_on(self.codec.encode(&adjustment)).expect("encodes")
    }

    fn order(&self, id: &str, lines: &[(u8, i32)], at: i64) -> Vec<u8> {
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
        block_on(self.codec.encode(&order)).expect("encodes")
    }

    fn decode<C: schemas::Contract>(&self, bytes: &[u8]) -> C {
        block_on(self.codec.decode::<C>(bytes)).expect("an output decodes")
    }
}

/// Runs `inputs` through the topology and checks every invariant.
fn check(
    initial: &[i64],
    inputs: &[Input],
    config: DriverConfig,
) -> Result<DriverStats, TestCaseError> {
    let world = World::new();
    let mut driver = world.driver(config);
    let mut at = 1_000;
    let mut adjustment = 0;
    for (i, &stock) in initial.iter().enumerate() {
        let bytes = world.adjustment(
            format!("initial-{i}"),
            i as u8,
            AdjustmentMode::Delta,
            stock,
            AdjustmentReason::Initial,
        );
        driver.pipe(
            "inventory-adjustments",
            Some(sku(i as u8).as_bytes()),
            &bytes,
            at,
        );
    }
    let mut order_ids = BTreeSet::new();
    for input in inputs {
        at += 1;
        adjustment += 1;
        let (sku_index, bytes) = match input {
            Input::Order { id, lines } => {
                let id = format!("order-{id}");
                let bytes = world.order(&id, lines, at);
                driver.pipe("orders", Some(id.as_bytes()), &bytes, at);
                order_ids.insert(id);
                continue;
            }
            Input::Restock { sku, quantity } => (
                *sku,
                world.adjustment(
                    format!("adj-{adjustment}"),
                    *sku,
                    AdjustmentMode::Delta,
                    *quantity,
                    AdjustmentReason::Restock,
                ),
            ),
            Input::Correction { sku, level } => (
                *sku,
                world.adjustment(
                    format!("adj-{adjustment}"),
                    *sku,
                    AdjustmentMode::Absolute,
                    *level,
                    AdjustmentReason::Correction,
                ),
            ),
            Input::Delta { sku, quantity } => (
                *sku,
                world.adjustment(
                    format!("adj-{adjustment}"),
                    *sku,
                    AdjustmentMode::Delta,
                    *quantity,
                    AdjustmentReason::Correction,
                ),
            ),
        };
        driver.pipe(
            "inventory-adjustments",
            Some(sku(sku_index).as_bytes()),
            &bytes,
            at,
        );
    }
    let settled = driver
        .run(1_000_000)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(settled, "the run settles: {:?}", driver.stats());

    // Exactly one outcome per order id.
    let confirmed: Vec<OrderConfirmed> = driver
        .read("orders-confirmed")
        .iter()
        .map(|r| world.decode(r.value.as_deref().expect("a value")))
        .collect();
    let rejected: Vec<OrderRejected> = driver
        .read("orders-rejected")
        .iter()
        .map(|r| world.decode(r.value.as_deref().expect("a value")))
        .collect();
    let mut outcomes: BTreeMap<&str, u32> = BTreeMap::new();
    for id in confirmed
        .iter()
        .map(|c| &c.order_id)
        .chain(rejected.iter().map(|r| &r.order_id))
    {
        *outcomes.entry(id).or_default() += 1;
    }
    let decided: BTreeSet<String> = outcomes.keys().map(|k| (*k).to_owned()).collect();
    prop_assert_eq!(&decided, &order_ids, "every order id decided");
    prop_assert!(
        outcomes.values().all(|&n| n == 1),
        "one outcome each: {:?}",
        outcomes
    );
    for r in &rejected {
        if r.reason == RejectionReason::InsufficientStock {
            prop_assert!(
                r.lines
                    .iter()
                    .any(|l| l.available.is_some_and(|a| a < i64::from(l.requested)))
            );
        }
    }
    prop_assert!(
        driver.read("orders-dlq").is_empty(),
        "nothing dead-lettered"
    );

    // Per sku: the store, the published changes and the confirmed orders agree.
    let updates: Vec<InventoryUpdated> = driver
        .read("inventory-updated")
        .iter()
        .map(|r| world.decode(r.value.as_deref().expect("a value")))
        .collect();
    let mut stock: BTreeMap<String, SkuRecord> = BTreeMap::new();
    for task in driver.tasks().into_iter().filter(|t| t.sub == INVENTORY) {
        for (key, value) in driver.store(task, INVENTORY_STORE) {
            let key = String::from_utf8(key).expect("utf-8 keys");
            if let Some(sku) = key.strip_prefix(keys::SKU_PREFIX) {
                let record: SkuRecord = format::decode(&value).expect("a sku record");
                stock.insert(sku.to_owned(), record);
            }
        }
    }
    for s in 0..=STOCKED {
        let name = sku(s);
        let (available, reserved) = stock
            .get(&name)
            .map_or((0, 0), |r| (r.available, r.reserved));
        let changes = updates.iter().filter(|u| u.sku == name);
        let published: i64 = changes.clone().map(|u| u.change).sum();
        let added: i64 = changes
            .clone()
            .filter(|u| {
                matches!(
                    u.reason,
                    InventoryChangeReason::Restocked | InventoryChangeReason::Corrected
                )
            })
            .map(|u| u.change)
            .sum();
        let held: i64 = confirmed
            .iter()
            .flat_map(|c| &c.lines)
            .filter(|l| l.sku == name)
            .map(|l| i64::from(l.quantity))
            .sum();
        prop_assert!(available >= 0, "{} has {} available", name, available);
        prop_assert!(changes.clone().all(|u| u.available_after >= 0));
        prop_assert_eq!(available, published, "{}: store vs InventoryUpdated", &name);
        prop_assert_eq!(reserved, held, "{}: reserved vs confirmed lines", &name);
        prop_assert_eq!(available + reserved, added, "{}: units conserved", &name);
    }
    Ok(driver.stats())
}

fn config() -> impl Strategy<Value = DriverConfig> {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_interleaving_keeps_the_invariants(
        initial in prop::collection::vec(0i64..10, STOCKED as usize),
        inputs in prop::collection::vec(input(), 1..80),
        config in config(),
    ) {
        check(&initial, &inputs, config)?;
    }
}

#[test]
fn crashes_between_commits_repeat_nothing() {
    // Many crashes, rare commits: most work is lost and redone at least once.
    let inputs: Vec<Input> = (0..60u8)
        .map(|i| Input::Order {
            id: i,
            lines: vec![(i % STOCKED, 1), ((i + 1) % STOCKED, 2)],
        })
        .collect();
    let mut crashes = 0;
    for seed in 0..10 {
        let config = DriverConfig {
            default_partitions: 3,
            seed,
            commit_probability: 0.05,
            crash_probability: 0.02,
            max_crashes: 40,
            ..DriverConfig::default()
        };
        let stats = check(&[20, 20, 20, 20], &inputs, config).expect("the invariants hold");
        crashes += stats.crashes;
    }
    assert!(crashes >= 50, "the runs crashed often ({crashes} crashes)");
}
