//! `processor audit` against the real Kafka and schema registry: a run decided one order at a
//! time (so arrival order is the clerk's order) audits clean; a forged outcome makes it fail,
//! naming the order; an unreachable broker is one line and exit code 2.

mod support;

use std::process::Output;

use schemas::{InventoryUpdated, OrderConfirmed, OrderLine, now_millis};
use support::{MINUTE, World, order};
use testkit::Isolation;

/// Runs the `processor audit` binary with `flags` (connection flags, then `audit` and its own).
fn audit(flags: &[String], extra: &[&str]) -> Output {
    std::process::Command::new(support::processor_binary())
        .args(flags)
        .arg("audit")
        .args(extra)
        .output()
        .expect("the processor binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_serial_run_audits_clean_and_a_forged_outcome_does_not() {
    let world = World::new("audit").await;
    // The sample catalog, and SKU-000000 and SKU-000001 with 5 each: 6 adjustments.
    world.seed(2, 5).await;
    let (running, token) = world.start(&[]).await;

    let steps: [(&str, &[(&str, i32)]); 6] = [
        ("a-1", &[("SKU-BT-MOUSE", 1)]),                         // confirmed
        ("a-2", &[("SKU-BT-MOUSE", 2)]),                         // rejected: 1 left
        ("a-3", &[("SKU-MONITOR-STAND", 1), ("SKU-000000", 2)]), // confirmed
        ("a-4", &[("SKU-000000", 2), ("SKU-000001", 9)]),        // rejected, line 1 released
        ("a-5", &[("SKU-DOES-NOT-EXIST", 1)]),                   // rejected: unknown sku
        ("a-6", &[("SKU-KEYBOARD", 1)]),                         // rejected: none left
    ];
    // One at a time, so that each is decided on the stock the previous one left.
    for (i, (id, lines)) in steps.iter().enumerate() {
        world.send_orders(&[order(id, lines)]).await;
        world.outcomes(i + 1, MINUTE).await;
    }
    // Every stock change is out (a-4's release comes after its outcome): 6 adjustments, the
    // reserves of a-1 (1), a-3 (2) and a-4 (1), and a-4's release.
    world
        .read::<InventoryUpdated>(
            &world.topics.inventory_updated,
            Isolation::ReadCommitted,
            6 + 4 + 1,
            MINUTE,
        )
        .await;

    let clean = audit(&world.connection_flags(), &[]);
    let report = text(&clean.stdout);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "no differences: {report}{}",
        text(&clean.stderr)
    );
    assert!(report.contains("orders compared: 6 "), "{report}");
    assert!(report.contains("differences: 0\n"), "{report}");
    assert!(
        report.contains(&format!("{}-orders 6,", world.name)),
        "counts the orders read: {report}"
    );

    // A second outcome for a-2, which the clerk rejected: a confirmation.
    let forged = OrderConfirmed {
        order_id: "a-2".to_owned(),
        customer_id: "customer-1".to_owned(),
        currency: "EUR".to_owned(),
        lines: vec![OrderLine {
            sku: "SKU-BT-MOUSE".to_owned(),
            quantity: 2,
            unit_price_cents: 100,
        }],
        total_cents: 200,
        created_at: now_millis(),
        confirmed_at: now_millis(),
    };
    let payload = world.codec.encode(&forged).await.expect("encodes");
    world
        .send_raw(&world.topics.orders_confirmed, "a-2", &payload)
        .await;

    let dirty = audit(&world.connection_flags(), &["--show", "5"]);
    let report = text(&dirty.stdout);
    assert_eq!(
        dirty.status.code(),
        Some(1),
        "differences: {report}{}",
        text(&dirty.stderr)
    );
    assert!(report.contains("differences: 1\n"), "{report}");
    assert!(report.contains("  more than one outcome: 1\n"), "{report}");
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("  order "))
        .collect();
    assert_eq!(lines.len(), 1, "{report}");
    assert!(
        lines[0].starts_with("  order a-2: clerk REJECTED InsufficientStock [SKU-BT-MOUSE wanted 2, 1 left]; topics: 2 outcomes:")
            && lines[0].contains("CONFIRMED at "),
        "names the order, the clerk's decision and what the topics say: {report}"
    );

    token.cancel();
    running.wait().await.expect("the processor stops cleanly");
}

#[tokio::test]
async fn an_unreachable_broker_is_one_line_and_exit_code_2() {
    let flags: Vec<String> = [
        "--bootstrap-servers",
        "127.0.0.1:9",
        "--topic-prefix",
        "nowhere-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let failed = audit(&flags, &[]);
    let stderr = text(&failed.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(failed.status.code(), Some(2), "{stderr}");
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(
        errors[0].contains("Kafka at 127.0.0.1:9 is unreachable"),
        "{stderr}"
    );
    assert!(failed.stdout.is_empty(), "no report");
}

/// Sends `value` to `partition` of `topic` with `key` (or none), as a producer that does not
/// key or partition `orders` by order id would.
async fn send_to(world: &World, topic: &str, partition: i32, key: Option<&str>, value: &[u8]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = world
        .connection
        .client_config()
        .create()
        .expect("a producer");
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, std::time::Duration::from_secs(10))
        .await
        .expect("delivered");
}

/// A partition of `orders` (4 partitions) other than `order_id`'s.
fn elsewhere(order_id: &str) -> i32 {
    (processor::runtime::partitioner::partition_for(order_id.as_bytes(), 4) + 1) % 4
}

/// Issue 17: an order id is decided once whatever key or partition its records carry. The
/// same order is sent keyed by its id, then under a customer's key on another partition, and
/// with no key on a third; two more orders are only ever sent off their id's partition. Each
/// record off its id's partition is re-produced there, so each order is decided once, by its
/// id's task, and the audit (whose clerk decides the copies) agrees with every decision.
#[tokio::test]
async fn an_order_is_decided_once_whatever_its_key_or_partition() {
    let world = World::new("rekey").await;
    world.seed(2, 5).await;
    let (running, token) = world.start(&[]).await;
    let orders = world.topics.orders.clone();
    let mut encoded = Vec::new();
    for id in ["twice", "by-customer", "keyless"] {
        let order = order(id, &[("SKU-000000", 1)]);
        encoded.push(world.codec.encode(&order).await.expect("encodes"));
    }
    let [twice, by_customer, keyless] = &encoded[..] else {
        unreachable!("three orders")
    };

    world.send_raw(&orders, "twice", twice).await; // in place
    send_to(
        &world,
        &orders,
        elsewhere("twice"),
        Some("customer-7"),
        twice,
    )
    .await;
    let third = (elsewhere("twice") + 1) % 4;
    send_to(&world, &orders, third, None, twice).await;
    let (partition, key) = (elsewhere("by-customer"), Some("customer-7"));
    send_to(&world, &orders, partition, key, by_customer).await;
    send_to(&world, &orders, elsewhere("keyless"), None, keyless).await;

    // Four records off their id's partition; the two copies of "twice" beyond the first are
    // duplicates where they are decided.
    let metrics = running.metrics.clone();
    let started = std::time::Instant::now();
    while metrics.rerouted_orders.get() < 4 || metrics.duplicate_orders.get() < 2 {
        assert!(
            started.elapsed() < MINUTE,
            "4 records rerouted ({}), 2 duplicates ({})",
            metrics.rerouted_orders.get(),
            metrics.duplicate_orders.get()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let outcomes = world.outcomes(3, MINUTE).await;
    // Read again to the ends: nothing more came.
    let all = world.outcomes_at(Isolation::ReadCommitted).await;
    let per_order = support::per_order(&all);
    assert_eq!(per_order.len(), 3, "three orders: {per_order:?}");
    assert!(
        per_order.values().all(|&n| n == 1),
        "one outcome each: {per_order:?}"
    );
    assert!(outcomes.confirmed("twice").is_some(), "twice is confirmed");
    assert_eq!(metrics.rerouted_orders.get(), 4);
    assert_eq!(metrics.duplicate_orders.get(), 2);
    token.cancel();
    running.wait().await.expect("stops cleanly");

    let out = audit(&world.connection_flags(), &[]);
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "the audit is clean:\n{report}{}",
        text(&out.stderr)
    );
    assert!(
        report.contains("2 repeated order ids ignored, 4 on another partition than their id's"),
        "{report}"
    );
}
