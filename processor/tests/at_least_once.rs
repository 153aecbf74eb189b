//! `processing.guarantee = at_least_once` end to end, with the processor binary killed with
//! SIGKILL mid-stream and restarted: no order is lost, outcomes may repeat (counted here),
//! and the decisions stay consistent because they are idempotent (orders by id, reservations
//! by order and line).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{MINUTE, World, initial_stock, per_order};
use testkit::Isolation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_no_order_across_a_sigkill() {
    let world = World::new("alo").await;
    let (synthetic, stock) = (20, 150);
    world.seed(synthetic, stock).await;
    let state = tempfile::tempdir().expect("state dir");
    // Commits every second, so the SIGKILL lands with outputs sent and their inputs not yet
    // committed: the restart consumes those inputs again.
    let flags = [
        "--processing-guarantee",
        "at_least_once",
        "--commit-interval-ms",
        "1000",
    ];
    let mut processor = world.spawn_processor("alo-1", state.path(), &flags);
    processor.wait_ready(MINUTE).await;

    let generator = world.spawn_generator(&[
        "--rate",
        "100",
        "--count",
        "800",
        "--synthetic-skus",
        &synthetic.to_string(),
        "--lines-max",
        "3",
    ]);
    // Kill it mid-stream, once it has decided some orders.
    let started = Instant::now();
    loop {
        let decided = processor
            .metric("stockflow_order_outcomes_total")
            .await
            .unwrap_or(0.0);
        if decided >= 150.0 {
            eprintln!("killing the processor after {decided} outcomes");
            break;
        }
        assert!(started.elapsed() < MINUTE, "{decided} outcomes in a minute");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    processor.kill();
    let mut processor = world.spawn_processor("alo-2", state.path(), &flags);
    processor.wait_ready(2 * MINUTE).await;
    let summary = generator.await.expect("the generator ran");
    let orders = (summary.valid + summary.invalid) as usize;
    assert!(orders >= 800, "{orders} distinct orders sent");

    // Every order gets an outcome (read_committed sees non-transactional records at once).
    let started = Instant::now();
    let outcomes = loop {
        let outcomes = world.outcomes_at(Isolation::ReadCommitted).await;
        if per_order(&outcomes).len() >= orders || started.elapsed() > 2 * MINUTE {
            break outcomes;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Let the last releases land, then stop it cleanly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    processor.signal("TERM");
    let status = processor.wait_exit(MINUTE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exits 0 on SIGTERM: {status:?}"
    );

    let counts = per_order(&outcomes);
    let repeated = outcomes.len() - counts.len();
    eprintln!(
        "{orders} orders, {} with an outcome, {} outcome records: {repeated} repeated outcomes \
         after the SIGKILL",
        counts.len(),
        outcomes.len()
    );
    assert_eq!(counts.len(), orders, "no order is lost");
    // Repeats are allowed, but they repeat the same decision.
    let mut decisions: HashMap<&str, bool> = HashMap::new();
    let mut conflicting = Vec::new();
    for o in &outcomes {
        if let Some(previous) = decisions.insert(&o.order_id, o.confirmed)
            && previous != o.confirmed
        {
            conflicting.push(o.order_id.clone());
        }
    }
    assert!(
        conflicting.is_empty(),
        "a repeated outcome repeats the decision: {conflicting:?}"
    );

    // Stock never went negative, and every unit is accounted for: for each sku, available +
    // reserved is its initial stock, and reserved is what the confirmed orders hold.
    let updates = world.inventory_updates().await;
    let negative: Vec<_> = updates.iter().filter(|u| u.available_after < 0).collect();
    assert!(negative.is_empty(), "stock never negative: {negative:?}");
    let confirmed = world.outcomes(orders, MINUTE).await.confirmed;
    let mut held: HashMap<String, i64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for c in &confirmed {
        if seen.insert(c.order_id.clone()) {
            for line in &c.lines {
                *held.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
            }
        }
    }
    let state = world.processor_inventory().await;
    for (sku, initial) in initial_stock(synthetic, stock) {
        let (available, reserved) = state.get(&sku).copied().unwrap_or((initial, 0));
        assert_eq!(
            (available + reserved, reserved),
            (initial, held.get(&sku).copied().unwrap_or(0)),
            "{sku}: (available + reserved, reserved) = (initial, confirmed quantities)"
        );
    }
}
