//! A broker killed with SIGKILL under load and started again: the processor rides it out
//! without a restart (its transaction's abort waits for the coordinator, an assignment lost
//! meanwhile is dropped, not committed), outcomes resume soon after the broker is back, and
//! every invariant holds.
//!
//! This test kills the Kafka broker every test shares, so it has a test binary of its own
//! (cargo runs test binaries one after another). It needs the local stack (`scripts/stack.sh`):
//! with containers it says so and checks nothing.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{MINUTE, World, initial_stock};
use testkit::stack;

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_is_ridden_out() {
    support::logs_on_failure();
    let world = World::new("broker-bounce").await;
    let synthetic = 40;
    world.seed(synthetic, 100_000).await;
    // The session ends while the broker is down, and the member rejoins under a new member
    // id: the restarted coordinator waits out the old member's session before it assigns
    // anything. A 6 s session, the soak's, keeps that wait short (with librdkafka's 45 s
    // default, outcomes resume about 45 s after the broker's return).
    let token = tokio_util::sync::CancellationToken::new();
    let mut connection = world.connection.clone();
    connection
        .kafka_properties
        .push(("session.timeout.ms".into(), "6000".into()));
    let running = processor::app::start(&connection, &world.run_args(&[]), token.clone())
        .await
        .expect("the processor starts");
    let metrics = running.metrics.clone();
    let health = || async {
        reqwest::get(format!("http://{}/health", running.metrics_addr))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };

    let generator = world.spawn_generator(&[
        "--rate",
        "300",
        "--count",
        "24000",
        "--synthetic-skus",
        "40",
        "--lines-max",
        "3",
    ]);
    let deadline = Instant::now() + MINUTE;
    while metrics.orders_decided() < 300 {
        assert!(
            Instant::now() < deadline,
            "orders are decided before the bounce"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let Some(outage) = stack().await.crash_kafka() else {
        eprintln!("the services are containers: this test needs the local stack");
        return;
    };
    let killed = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(
        health().await,
        200,
        "the processor is alive and healthy while the broker is down"
    );
    tokio::task::spawn_blocking(move || outage.end())
        .await
        .expect("the broker starts");
    let back = Instant::now();
    let at_return = metrics.orders_decided();
    eprintln!(
        "the broker was down for {:?}; {at_return} orders decided so far",
        killed.elapsed()
    );

    // Outcomes resume without a restart of the processor.
    while metrics.orders_decided() <= at_return + 100 {
        assert!(
            back.elapsed() < 2 * MINUTE,
            "outcomes resume after the broker is back: {} decided",
            metrics.orders_decided()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resumed = back.elapsed();
    eprintln!(
        "outcomes resumed {resumed:?} after the broker was back; aborted transactions: {}",
        metrics.transactions.with_label_values(&["aborted"]).get()
    );
    // Measured here with the 6 s session: 3.1, 7.6 and 7.1 s after the broker's port opened
    // (it was down 35 s), session 19; with a 10 s session, earlier, 21 to 40 s. Issue 17 asks
    // for 30 s.
    assert!(
        resumed < Duration::from_secs(30),
        "outcomes resume within 30 s of the broker's return: {resumed:?}"
    );

    let summary = generator.await.expect("the generator finished");
    // An engine that stopped (its error is in the log above) fails here, not in a long wait
    // for outcomes that cannot come.
    assert_eq!(
        health().await,
        200,
        "the processor is healthy after the bounce"
    );
    let distinct = (summary.valid + summary.invalid) as usize;
    world
        .check_invariants(
            distinct,
            &initial_stock(synthetic, 100_000),
            &HashMap::new(),
        )
        .await;
    assert_eq!(health().await, 200);
    token.cancel();
    running.wait().await.expect("stops cleanly");
}
