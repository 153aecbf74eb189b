//! The real topology (both processors, the Avro codec, the internal format) in the in-memory
//! topology test driver: random streams of multi-line orders, duplicates, invalid orders,
//! unknown skus, restocks and corrections, on random partition counts, with random task
//! interleavings, commit points and crashes. No service is needed.
//!
//! What must hold whatever the interleaving: exactly one outcome per order id; stock never
//! negative; per sku, the stock the store ends with is what the `InventoryUpdated` stream says
//! (every change published exactly once), what is reserved is what the confirmed orders hold,
//! and available + reserved is what the adjustments added (units conserved).

mod driven;

use std::collections::{BTreeMap, BTreeSet};

use driven::{Input, STOCKED, World, config, input, pipe_inputs, sku};
use processor::runtime::driver::{DriverConfig, DriverStats};
use processor::runtime::format;
use processor::topology::inventory::{SkuRecord, keys};
use processor::topology::{INVENTORY, INVENTORY_STORE};
use proptest::prelude::*;
use schemas::{
    InventoryChangeReason, InventoryUpdated, OrderConfirmed, OrderRejected, RejectionReason,
};

/// Runs `inputs` through the topology and checks every invariant.
fn check(
    initial: &[i64],
    inputs: &[Input],
    config: DriverConfig,
) -> Result<DriverStats, TestCaseError> {
    let world = World::new();
    let mut driver = world.driver(config);
    let (order_ids, _) = pipe_inputs(&world, &mut driver, initial, inputs, &[1]);
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

#[test]
fn in_arrival_mode_an_id_repeated_after_its_retention_is_decided_again() {
    use processor::topology::DecisionOrder;
    let world = World::new();
    let retention = std::time::Duration::from_millis(100);
    let mut driver =
        world.driver_retaining(DriverConfig::default(), DecisionOrder::Arrival, retention);
    pipe_inputs(&world, &mut driver, &[10], &[], &[1]);
    // The same id at 2,000, 2,100 (within the retention: a duplicate), 2,101 (past it:
    // decided again, reserving again) and 2,150 (within the second one's: a duplicate).
    for at in [2_000, 2_100, 2_101, 2_150] {
        let (_, bytes) = world.order("o-1", &[(0, 1)], at);
        driver.pipe("orders", Some(b"o-1"), &bytes, at);
        assert!(driver.run(100_000).expect("runs"), "the run settles");
    }
    let confirmed: Vec<OrderConfirmed> = driver
        .read("orders-confirmed")
        .iter()
        .map(|r| world.decode(r.value.as_deref().expect("a value")))
        .collect();
    assert_eq!(confirmed.len(), 2, "decided twice: {confirmed:?}");
    let last: InventoryUpdated = world.decode(
        driver
            .read("inventory-updated")
            .last()
            .and_then(|r| r.value.as_deref())
            .expect("stock updates"),
    );
    assert_eq!(
        (last.sku, last.available_after),
        (sku(0), 8),
        "reserved twice"
    );
}

#[test]
fn an_order_off_its_ids_partition_is_decided_once_by_its_ids_task() {
    use processor::runtime::partitioner::partition_for;
    use processor::topology::DecisionOrder;
    for order in [
        DecisionOrder::Arrival,
        DecisionOrder::EventTime { max_idle_ms: 100 },
    ] {
        let world = World::new();
        let partitions = 3;
        let config = DriverConfig {
            default_partitions: partitions,
            ..DriverConfig::default()
        };
        let mut driver = world.driver_deciding(config, order);
        pipe_inputs(&world, &mut driver, &[10], &[], &[1]);
        let own = partition_for(b"o-1", partitions);
        let (_, bytes) = world.order("o-1", &[(0, 1)], 2_000);
        // Under a customer's key on another partition, with no key on a third, then in place.
        driver.pipe_to(
            "orders",
            (own + 1) % partitions,
            Some(b"customer-7"),
            &bytes,
            2_000,
        );
        driver.pipe_to("orders", (own + 2) % partitions, None, &bytes, 2_001);
        driver.pipe_to("orders", own, Some(b"o-1"), &bytes, 2_002);
        // In event-time order idle partitions' times move on with the clock: let it pass,
        // then some more, for a second outcome to show if there were one.
        let mut rounds = 0;
        while rounds < 20 || driver.read("orders-confirmed").is_empty() {
            assert!(driver.run(100_000).expect("runs"), "the run settles");
            driver.advance(20).expect("the clock moves");
            rounds += 1;
            assert!(rounds < 500, "{order:?}: stuck, {:?}", driver.stats());
        }
        let confirmed = driver.read("orders-confirmed");
        assert_eq!(confirmed.len(), 1, "{order:?}: decided once");
        // The records on its partition keyed by its id: the one sent there and the two
        // copies, each with the timestamp of the record it copies.
        let mut times: Vec<i64> = driver
            .read("orders")
            .iter()
            .filter(|r| r.partition == own && r.key.as_deref() == Some(b"o-1".as_slice()))
            .map(|r| r.timestamp)
            .collect();
        times.sort_unstable();
        assert_eq!(
            times,
            [2_000, 2_001, 2_002],
            "{order:?}: the two records off its partition were re-produced to it"
        );
    }
}
