//! Restores, counted exactly. RocksDB holds only committed state, tagged with the changelog
//! offset it reaches, and a task replays only the changelog after that offset
//! (`runtime/restore.rs`). So a clean restart of the same instance (SIGTERM, or its token
//! cancelled: the engine commits, its store writer applies every layer, the stores flush)
//! replays nothing, and a restart on an emptied state dir replays every committed changelog
//! record, and the state it rebuilds decides the next orders as the old state would have.

mod support;

use std::time::{Duration, Instant};

use processor::app::Running;
use schemas::RejectionReason;
use support::{MINUTE, World, order, per_order};
use testkit::Isolation;

/// Waits until `running` has decided `orders` orders and counted `duplicates` duplicates.
async fn wait_decided(running: &Running, orders: u64, duplicates: u64) {
    let started = Instant::now();
    while running.metrics.orders_decided() < orders
        || running.metrics.duplicate_orders.get() < duplicates
    {
        assert!(
            started.elapsed() < MINUTE,
            "decided {} of {orders}, {} of {duplicates} duplicates, after a minute",
            running.metrics.orders_decided(),
            running.metrics.duplicate_orders.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every task of the 2 sub-topologies x 4 partitions is assigned and restored.
async fn wait_all_tasks(running: &Running) {
    let started = Instant::now();
    while !(running.ready.is_ready() && running.metrics.assigned_tasks.get() == 8) {
        assert!(
            started.elapsed() < MINUTE,
            "8 tasks restored in a minute (assigned {})",
            running.metrics.assigned_tasks.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_restores_nothing_and_an_empty_state_dir_restores_every_record() {
    let world = World::new("restore").await;
    // SKU-000000 .. SKU-000003, 3 units each, plus the sample catalog.
    world.seed(4, 3).await;

    // First run: two orders take and ask for SKU-000000, one multi-line order.
    let (running, token) = world.start(&[]).await;
    wait_all_tasks(&running).await;
    assert_eq!(
        running.metrics.restored_records.get(),
        0,
        "nothing to restore from empty changelogs"
    );
    world
        .send_orders(&[order("take-2", &[("SKU-000000", 2)])])
        .await;
    world.outcomes(1, MINUTE).await;
    world
        .send_orders(&[
            order("want-2", &[("SKU-000000", 2)]),
            order("two-lines", &[("SKU-000001", 1), ("SKU-000002", 3)]),
        ])
        .await;
    let outcomes = world.outcomes(3, MINUTE).await;
    assert!(outcomes.confirmed("take-2").is_some());
    assert!(outcomes.confirmed("two-lines").is_some());
    assert_eq!(
        outcomes.rejected("want-2").map(|r| r.lines[0].available),
        Some(Some(1)),
        "1 of SKU-000000 left"
    );
    token.cancel();
    running.wait().await.expect("the first run stops cleanly");
    let after_first = world.committed_changelog_records().await;
    assert!(
        after_first > 0,
        "the changelogs hold the state ({after_first} records)"
    );

    // Second run, same state dir: RocksDB holds everything the changelogs do.
    let (running, token) = world.start(&[]).await;
    wait_all_tasks(&running).await;
    let restored = running.metrics.restored_records.get();
    eprintln!("clean restart: restored {restored} of {after_first} changelog records");
    assert_eq!(
        restored, 0,
        "a clean restart of the same instance replays nothing ({after_first} records in the \
         changelogs)"
    );
    // And it knows what it decided: the same order again is a duplicate.
    world
        .send_orders(&[order("take-2", &[("SKU-000000", 2)])])
        .await;
    wait_decided(&running, 0, 1).await;
    token.cancel();
    running.wait().await.expect("the second run stops cleanly");

    // Third run on an emptied state dir: every committed changelog record is replayed.
    std::fs::remove_dir_all(world.state.path().join(&world.application_id))
        .expect("the state dir is removed");
    let in_changelogs = world.committed_changelog_records().await;
    let (running, token) = world.start(&[]).await;
    wait_all_tasks(&running).await;
    let restored = running.metrics.restored_records.get();
    eprintln!("empty state dir: restored {restored} of {in_changelogs} changelog records");
    assert!(
        restored > 0,
        "an empty state dir is rebuilt from the changelogs"
    );
    assert_eq!(
        restored, in_changelogs as u64,
        "every committed changelog record is replayed, and no aborted one"
    );
    // The rebuilt state decides as the old one: the orders store remembers take-2 (no second
    // outcome), the inventory store has 1 of SKU-000000 left (not an unknown sku). One order
    // at a time, so each sees the stock the previous one left.
    world
        .send_orders(&[
            order("take-2", &[("SKU-000000", 2)]),
            order("want-2-again", &[("SKU-000000", 2)]),
        ])
        .await;
    wait_decided(&running, 1, 1).await;
    world
        .send_orders(&[order("take-1", &[("SKU-000000", 1)])])
        .await;
    wait_decided(&running, 2, 1).await;
    token.cancel();
    running.wait().await.expect("the third run stops cleanly");

    let outcomes = world.outcomes_at(Isolation::ReadCommitted).await;
    let counts = per_order(&outcomes);
    assert_eq!(counts.len(), 5, "five distinct orders decided: {counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "one outcome per order across the restarts: {counts:?}"
    );
    let decided = world.outcomes(5, MINUTE).await;
    let again = decided
        .rejected("want-2-again")
        .expect("want-2-again is rejected");
    assert_eq!(again.reason, RejectionReason::InsufficientStock);
    assert_eq!(
        again.lines[0].available,
        Some(1),
        "the restored stock of SKU-000000"
    );
    assert!(
        decided.confirmed("take-1").is_some(),
        "take-1 takes the last unit"
    );
}
