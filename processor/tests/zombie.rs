//! Zombie fencing: one of two processor binaries is frozen (SIGSTOP) past its session timeout
//! while orders flow, so the other takes its tasks over; then it resumes (SIGCONT) still
//! believing it owns them. Whatever it does then, no order may get two outcomes under
//! read_committed, and stock never goes negative.
//!
//! The frozen instance's open transaction blocks the other's restore of its changelogs until
//! the broker aborts it (`transaction.timeout.ms`, 10 s); when it resumes, its next
//! transactional call finds the transaction gone and its group generation stale.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{MINUTE, ProcessorChild, World, initial_stock, per_order};
use testkit::Isolation;

/// The assigned tasks of `a` and `b` once they add up to all 8 and both own some.
async fn shared(a: &ProcessorChild, b: &ProcessorChild) -> (f64, f64) {
    let started = Instant::now();
    loop {
        let tasks_a = a.metric("stockflow_assigned_tasks").await.unwrap_or(0.0);
        let tasks_b = b.metric("stockflow_assigned_tasks").await.unwrap_or(0.0);
        if tasks_a > 0.0 && tasks_b > 0.0 && tasks_a + tasks_b == 8.0 {
            return (tasks_a, tasks_b);
        }
        assert!(
            started.elapsed() < 2 * MINUTE,
            "the tasks were not shared: a {tasks_a}, b {tasks_b}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_frozen_past_its_session_timeout_never_decides_an_order_twice() {
    // Resumed as soon as b owns everything (8-10 s): its transaction is still open.
    zombie("zombie-session", Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_frozen_past_its_transaction_timeout_never_decides_an_order_twice() {
    // Frozen 16 s: the broker has aborted its transaction (transaction.timeout.ms, 10 s) and
    // bumped its producer epoch by the time it resumes.
    zombie("zombie-txn", Duration::from_secs(16)).await;
}

/// Freezes one of two instances until the other owns every task and for at least `hold`,
/// then resumes it and checks that no order was decided twice.
async fn zombie(name: &str, hold: Duration) {
    let world = World::new(name).await;
    let (synthetic, stock) = (40, 500);
    world.seed(synthetic, stock).await;
    let (state_a, state_b) = (
        tempfile::tempdir().expect("state dir"),
        tempfile::tempdir().expect("state dir"),
    );
    let a_name = format!("{name}-a");
    let mut a = world.spawn_processor(&a_name, state_a.path(), &[]);
    a.wait_ready(MINUTE).await;
    let b_name = format!("{name}-b");
    let mut b = world.spawn_processor(&b_name, state_b.path(), &[]);
    let (tasks_a, tasks_b) = shared(&a, &b).await;
    eprintln!("{name}: tasks before the freeze: a {tasks_a}, b {tasks_b}");

    let generator = world.spawn_generator(&[
        "--rate",
        "200",
        "--count",
        "9000",
        "--synthetic-skus",
        &synthetic.to_string(),
        "--lines-max",
        "3",
    ]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let decided_a = a
        .metric("stockflow_order_outcomes_total")
        .await
        .unwrap_or(0.0);
    assert!(decided_a > 0.0, "a decides orders before it is frozen");

    // Frozen past the 6 s session timeout: b takes every task (its restore of a's changelogs
    // waits for the broker to abort a's open transaction).
    a.signal("STOP");
    let frozen = Instant::now();
    b.wait_metric("stockflow_assigned_tasks", 8.0, 2 * MINUTE)
        .await;
    b.wait_ready(2 * MINUTE).await;
    eprintln!(
        "{name}: b owns all 8 tasks {:?} after a froze",
        frozen.elapsed()
    );
    // Orders keep flowing to b for a while before the zombie wakes up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(rest) = hold.checked_sub(frozen.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let decided_b = b
        .metric("stockflow_order_outcomes_total")
        .await
        .unwrap_or(0.0);
    a.signal("CONT");
    eprintln!(
        "{name}: a resumed after {:?} frozen, having decided {decided_a} orders; b has decided \
         {decided_b}",
        frozen.elapsed()
    );

    // Watch the zombie for 20 s: does it exit, rejoin, decide?
    let mut observed = Vec::new();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(20) {
        if let Some(status) = a.exit_status() {
            observed.push(format!(
                "exited ({status}) {:?} after SIGCONT",
                watch.elapsed()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if a.exit_status().is_none() {
        let tasks = a.metric("stockflow_assigned_tasks").await;
        let decided = a.metric("stockflow_order_outcomes_total").await;
        let transactions: Option<Vec<_>> = a.scrape().await.map(|page| {
            page.of("stockflow_transactions_total")
                .map(|s| (s.labels.clone(), s.value))
                .collect()
        });
        observed.push(format!(
            "still alive 20 s after SIGCONT: assigned tasks {tasks:?}, outcomes {decided:?} \
             (before the freeze {decided_a}), transactions {transactions:?}"
        ));
    }
    for needle in ["fenced", "ERROR", "error", "WARN"] {
        let lines = a.log_lines(needle);
        if !lines.is_empty() {
            observed.push(format!(
                "{} log lines with {needle:?}, first: {}",
                lines.len(),
                lines[0]
            ));
        }
    }
    eprintln!("{name}: the zombie: {observed:#?}");

    // Whatever it did, take it out, so that b decides whatever it may still hold.
    a.kill();
    let summary = generator.await.expect("the generator ran");
    let orders = (summary.valid + summary.invalid) as usize;
    b.wait_metric("stockflow_assigned_tasks", 8.0, 2 * MINUTE)
        .await;
    let started = Instant::now();
    let outcomes = loop {
        let outcomes = world.outcomes_at(Isolation::ReadCommitted).await;
        if per_order(&outcomes).len() >= orders || started.elapsed() > 3 * MINUTE {
            break outcomes;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // the last releases
    b.signal("TERM");
    let status = b.wait_exit(MINUTE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "b exits 0 on SIGTERM: {status:?}"
    );

    let counts = per_order(&outcomes);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    eprintln!(
        "{name}: {orders} orders sent, {} decided, {} outcome records under read_committed",
        counts.len(),
        outcomes.len()
    );
    assert!(
        repeated.is_empty(),
        "no order is decided twice under read_committed: {repeated:?}"
    );
    if counts.len() < orders {
        // Name the undecided orders and where they are, for the failure message.
        let sent = world
            .read_to_end(
                &[world.topics.orders.as_str()],
                Isolation::ReadCommitted,
                MINUTE,
            )
            .await;
        let missing: Vec<String> = sent
            .iter()
            .filter_map(|r| {
                let id = String::from_utf8_lossy(r.key.as_deref()?).into_owned();
                (!counts.contains_key(&id))
                    .then(|| format!("{id} at orders[{}]@{}", r.partition, r.offset))
            })
            .take(10)
            .collect();
        panic!(
            "{name}: {} of {orders} orders decided; undecided: {missing:?}",
            counts.len()
        );
    }
    assert_eq!(counts.len(), orders, "every order is decided once");

    let updates = world.inventory_updates().await;
    let negative: Vec<_> = updates.iter().filter(|u| u.available_after < 0).collect();
    assert!(negative.is_empty(), "stock never negative: {negative:?}");
    // Units are conserved: initial - confirmed = final, for every sku.
    let decided = world.outcomes(orders, MINUTE).await;
    let mut confirmed: HashMap<&str, i64> = HashMap::new();
    for c in &decided.confirmed {
        for line in &c.lines {
            *confirmed.entry(line.sku.as_str()).or_default() += i64::from(line.quantity);
        }
    }
    let last = support::final_stock(&updates);
    for (sku, initial) in initial_stock(synthetic, stock) {
        assert_eq!(
            last.get(&sku).copied().unwrap_or(initial),
            initial - confirmed.get(sku.as_str()).copied().unwrap_or(0),
            "{sku}: initial - confirmed = final"
        );
    }
}
