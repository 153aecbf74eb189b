//! Serial equivalence on the topology driver: in event-time mode, whatever the partition
//! counts, task interleavings, commit points and crashes, every order is decided exactly as
//! the clerk (`topology::serial`) decides it taking the same records one at a time in
//! canonical order, and every sku ends with the clerk's stock. The inputs contend for a few
//! skus, repeat order ids, restock and correct, and their timestamps tie and go backwards.
//! With a short order retention, orders come in batches spread in time, and an id repeated
//! after its order's retention is decided again, as the clerk decides it again.
//! No service is needed.

mod driven;

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use driven::{Input, STOCKED, WEEK, World, config, input, pipe_inputs, pipe_inputs_at};
use processor::runtime::driver::{DriverConfig, DriverStats, TopologyTestDriver};
use processor::runtime::format;
use processor::topology::inventory::{SkuRecord, keys};
use processor::topology::serial::{self, Decision};
use processor::topology::{
    CommandEnvelope, DecisionOrder, INVENTORY, INVENTORY_STORE, LineCommand, LineOutcome,
    LineResult, LinesRecord,
};
use proptest::prelude::*;
use schemas::{OrderConfirmed, OrderRejected};

const EVENT_TIME: DecisionOrder = DecisionOrder::EventTime { max_idle_ms: 50 };

/// The decisions on the outcome topics, by order id (an id decided twice fails).
fn decisions(world: &World, driver: &TopologyTestDriver) -> BTreeMap<String, Vec<Decision>> {
    let mut decided: BTreeMap<String, Vec<Decision>> = BTreeMap::new();
    for record in driver.read("orders-confirmed") {
        let confirmed: OrderConfirmed = world.decode(record.value.as_deref().expect("a value"));
        decided
            .entry(confirmed.order_id)
            .or_default()
            .push(Decision::Confirmed);
    }
    for record in driver.read("orders-rejected") {
        let rejected: OrderRejected = world.decode(record.value.as_deref().expect("a value"));
        decided
            .entry(rejected.order_id)
            .or_default()
            .push(Decision::Rejected {
                reason: rejected.reason,
                lines: rejected.lines,
            });
    }
    decided
}

/// What the inventory stores hold: stock per sku, and how many holds and buffered entries
/// are still pending.
fn inventory(driver: &TopologyTestDriver) -> (BTreeMap<String, i64>, usize) {
    let mut stock = BTreeMap::new();
    let mut pending = 0;
    for task in driver.tasks().into_iter().filter(|t| t.sub == INVENTORY) {
        for (key, value) in driver.store(task, INVENTORY_STORE) {
            if let Some(sku) = key.strip_prefix(keys::SKU_PREFIX.as_bytes()) {
                let record: SkuRecord = format::decode(&value).expect("a sku record");
                stock.insert(String::from_utf8_lossy(sku).into_owned(), record.available);
            } else if key.starts_with(keys::HOLD_PREFIX.as_bytes())
                || key.starts_with(keys::QUEUED_PREFIX)
            {
                pending += 1;
            }
        }
    }
    (stock, pending)
}

/// Runs `inputs` in event-time mode and compares with the clerk.
fn check(
    initial: &[i64],
    inputs: &[Input],
    steps: &[i64],
    config: DriverConfig,
) -> Result<DriverStats, TestCaseError> {
    let world = World::new();
    let mut driver = world.driver_deciding(config, EVENT_TIME);
    let (order_ids, records) = pipe_inputs(&world, &mut driver, initial, inputs, steps);
    let expected = serial::run(records, WEEK);

    // An idle partition's time moves on with the clock (a millisecond a step) once an
    // inventory task asks: run, and let the clock pass when nothing else happens, until every
    // order is decided and every hold settled.
    let mut rounds = 0;
    loop {
        let settled = driver
            .run(100_000)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(settled, "the run settles: {:?}", driver.stats());
        let decided = decisions(&world, &driver).len();
        if decided == order_ids.len() && inventory(&driver).1 == 0 {
            break;
        }
        rounds += 1;
        prop_assert!(
            rounds < 500,
            "stuck: {} of {} orders decided, {} holds or entries pending, {:?}",
            decided,
            order_ids.len(),
            inventory(&driver).1,
            driver.stats()
        );
        driver
            .advance(20)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    let decided = decisions(&world, &driver);
    for (id, outcomes) in &decided {
        prop_assert_eq!(outcomes.len(), 1, "{} decided {:?}", id, outcomes);
    }
    let decided: BTreeMap<String, Decision> = decided
        .into_iter()
        .map(|(id, mut outcomes)| (id, outcomes.remove(0)))
        .collect();
    let keys: BTreeSet<&String> = decided.keys().collect();
    prop_assert_eq!(keys, order_ids.iter().collect::<BTreeSet<_>>());
    for (id, clerk) in &expected.decisions {
        prop_assert_eq!(decided.get(id), clerk.first(), "order {}", id);
    }
    let (stock, _) = inventory(&driver);
    prop_assert_eq!(&stock, &expected.stock, "final stock");
    prop_assert!(
        driver.read("orders-dlq").is_empty(),
        "nothing dead-lettered"
    );
    Ok(driver.stats())
}

/// The outcomes per order id as a sorted list (the two outcome topics do not order an id's
/// decisions between them).
fn sorted(decisions: BTreeMap<String, Vec<Decision>>) -> BTreeMap<String, Vec<String>> {
    decisions
        .into_iter()
        .map(|(id, outcomes)| {
            let mut outcomes: Vec<String> = outcomes.iter().map(|d| format!("{d:?}")).collect();
            outcomes.sort();
            (id, outcomes)
        })
        .collect()
}

/// What a retention run saw: ids decided more than once, and duplicates ignored.
#[derive(Debug, Default, Clone, Copy)]
struct Retained {
    redecided: usize,
    duplicates: u64,
}

/// Runs `batches` of inputs in event-time mode with `retention_ms`: each batch is piped from
/// a timestamp past the previous batch's last (by its gap) and past the driver's clock, and
/// decided to the end before the next. Within a batch the timestamps span less than the
/// retention, so an order never outlives its retention while it is still pending (an order
/// the tasks have not decided yet is remembered, where the clerk, who decides at once, would
/// have forgotten it: ARCHITECTURE.md, "Order retention"). Compares with the clerk.
fn check_retaining(
    initial: &[i64],
    batches: &[(Vec<Input>, i64)],
    steps: &[i64],
    retention_ms: i64,
    config: DriverConfig,
) -> Result<Retained, TestCaseError> {
    let world = World::new();
    let retention = Duration::from_millis(retention_ms as u64);
    let mut driver = world.driver_retaining(config, EVENT_TIME, retention);
    let mut records = Vec::new();
    let mut last = 0;
    for (i, (inputs, gap)) in batches.iter().enumerate() {
        // Past every floor idleness set (the clock, less max-task-idle) and past the last
        // batch, even where steps go back (at most 5 a step).
        let start = (driver.clock() + 200).max(last + 5 * inputs.len() as i64 + 1) + gap;
        let initial = if i == 0 { initial } else { &[] };
        let (_, batch) = pipe_inputs_at(&world, &mut driver, initial, inputs, steps, start);
        last = batch.iter().map(|r| r.timestamp).max().unwrap_or(last);
        records.extend(batch);
        let expected = serial::run(records.clone(), retention);
        let wanted: usize = expected.decisions.values().map(Vec::len).sum();
        let mut rounds = 0;
        loop {
            let settled = driver
                .run(100_000)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(settled, "the run settles: {:?}", driver.stats());
            let decided: usize = decisions(&world, &driver).values().map(Vec::len).sum();
            if decided >= wanted && inventory(&driver).1 == 0 {
                break;
            }
            rounds += 1;
            prop_assert!(
                rounds < 500,
                "stuck in batch {}: {} of {} decisions, {:?}",
                i,
                decided,
                wanted,
                driver.stats()
            );
            driver
                .advance(20)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    let expected = serial::run(records, retention);
    let decided = decisions(&world, &driver);
    prop_assert_eq!(sorted(decided), sorted(expected.decisions.clone()));
    let (stock, _) = inventory(&driver);
    prop_assert_eq!(&stock, &expected.stock, "final stock");
    Ok(Retained {
        redecided: expected.decisions.values().filter(|d| d.len() > 1).count(),
        duplicates: expected.duplicates,
    })
}

/// Batches of at most 25 inputs (their timestamps span at most 75 ms), each after a gap.
fn batches() -> impl Strategy<Value = Vec<(Vec<Input>, i64)>> {
    prop::collection::vec((prop::collection::vec(input(), 1..25), 0i64..400), 1..5)
}

/// Clock steps between inputs: mostly forward, some ties, some back in time.
fn steps() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop_oneof![6 => 1i64..4, 2 => Just(0i64), 1 => -5i64..0],
        1..16,
    )
}

proptest! {
    // Each case runs up to five batches to the end.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn with_a_short_retention_every_interleaving_decides_as_the_clerk(
        initial in prop::collection::vec(0i64..10, STOCKED as usize),
        batches in batches(),
        steps in steps(),
        retention_ms in 80i64..600,
        config in config(),
    ) {
        check_retaining(&initial, &batches, &steps, retention_ms, config)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_interleaving_decides_as_the_clerk(
        initial in prop::collection::vec(0i64..10, STOCKED as usize),
        inputs in prop::collection::vec(input(), 1..150),
        steps in steps(),
        config in config(),
    ) {
        check(&initial, &inputs, &steps, config)?;
    }
}

#[test]
fn a_burst_on_scarce_stock_rejects_no_order_for_a_doomed_orders_hold() {
    // Every order wants one unit of sku 0 (scarce) and, every other order, more of sku 1
    // than there is: those are doomed, and hold their unit of sku 0 only for a moment.
    let inputs: Vec<Input> = (0..40u8)
        .map(|i| Input::Order {
            id: i,
            lines: if i % 2 == 0 {
                vec![(0, 1), (1, 9)]
            } else {
                vec![(0, 1)]
            },
        })
        .collect();
    let mut crashes = 0;
    for seed in 0..8 {
        let config = DriverConfig {
            default_partitions: 3,
            seed,
            commit_probability: 0.1,
            crash_probability: 0.01,
            max_crashes: 10,
            ..DriverConfig::default()
        };
        let stats = check(&[10, 2, 0, 0], &inputs, &[1], config).expect("the clerk's decisions");
        crashes += stats.crashes;
    }
    assert!(crashes > 0, "some runs crashed");
}

#[test]
fn ids_repeated_after_their_retention_are_decided_again_and_within_it_are_not() {
    // Few ids, many repeats, gaps around the retention: both cases must occur.
    let mut total = Retained::default();
    for seed in 0..6u64 {
        let batches: Vec<(Vec<Input>, i64)> = (0..4u8)
            .map(|b| {
                let inputs = (0..12u8)
                    .map(|i| Input::Order {
                        id: (i + b * 3) % 8,
                        lines: vec![(i % STOCKED, 1)],
                    })
                    .collect();
                (inputs, i64::from(b) * 150)
            })
            .collect();
        let config = DriverConfig {
            default_partitions: 2,
            seed,
            commit_probability: 0.2,
            crash_probability: 0.01,
            max_crashes: 3,
            ..DriverConfig::default()
        };
        let retained = check_retaining(&[20, 20, 20, 20], &batches, &[2], 300, config)
            .expect("the clerk's decisions");
        total.redecided += retained.redecided;
        total.duplicates += retained.duplicates;
    }
    assert!(total.redecided > 0, "some ids decided again: {total:?}");
    assert!(
        total.duplicates > 0,
        "some repeats within the retention: {total:?}"
    );
}

/// The confirms on the order-lines topic, as (order id, line).
fn confirms(driver: &TopologyTestDriver) -> BTreeSet<(String, u32)> {
    driver
        .read("app-order-lines-repartition")
        .into_iter()
        .filter_map(|r| {
            match LinesRecord::decode(r.key.as_deref(), r.value.as_deref().unwrap_or_default()) {
                Ok(LinesRecord::Command(CommandEnvelope {
                    command: LineCommand::Confirm { order_id, line, .. },
                    ..
                })) => Some((order_id, line)),
                _ => None,
            }
        })
        .collect()
}

/// Runs until every order in `ids` is decided and no hold or entry is pending.
fn settle(world: &World, driver: &mut TopologyTestDriver, ids: &[&str]) {
    for _ in 0..500 {
        assert!(driver.run(100_000).expect("runs"), "the run settles");
        let decided = decisions(world, driver);
        if ids.iter().all(|id| decided.contains_key(*id)) && inventory(driver).1 == 0 {
            return;
        }
        driver.advance(20).expect("the clock moves");
    }
    panic!("stuck: {:?}", driver.stats());
}

#[test]
fn an_only_line_is_confirmed_only_when_its_inventory_task_kept_a_hold() {
    let world = World::new();
    let mut driver = world.driver_deciding(DriverConfig::default(), EVENT_TIME);
    pipe_inputs(&world, &mut driver, &[10, 10], &[], &[1]);
    // One line: reserved with no hold, so no confirm. Two lines: both held, both confirmed.
    let (_, single) = world.order("single", &[(0, 1)], 2_000);
    driver.pipe("orders", Some(b"single"), &single, 2_000);
    let (_, double) = world.order("double", &[(0, 1), (1, 1)], 2_001);
    driver.pipe("orders", Some(b"double"), &double, 2_001);
    settle(&world, &mut driver, &["single", "double"]);
    let expected = BTreeSet::from([("double".to_owned(), 0), ("double".to_owned(), 1)]);
    assert_eq!(confirms(&driver), expected);

    // A result in the format before `hold` (a build that held every reserved line) answers
    // the only line first: the order is confirmed with a confirm, as that build needs.
    let (_, old) = world.order("old", &[(0, 1)], 3_000);
    let (partition, _) = driver.pipe("orders", Some(b"old"), &old, 3_000);
    let result = LineResult {
        order_id: "old".into(),
        line: 0,
        outcome: LineOutcome::Reserved,
    };
    let topic = "app-line-results-repartition";
    driver.pipe_to(
        topic,
        partition,
        Some(b"old"),
        &format::encode(&result),
        3_001,
    );
    settle(&world, &mut driver, &["old"]);
    assert!(confirms(&driver).contains(&("old".to_owned(), 0)));
    assert_eq!(decisions(&world, &driver)["old"], vec![Decision::Confirmed]);
}
