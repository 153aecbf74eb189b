//! A PostgreSQL outage under load: stream processing never pauses, the sync backs off and
//! retries, and the read model converges to the processor's state when the database returns.
//!
//! This test stops the PostgreSQL every test shares, so it has a test binary of its own (cargo
//! runs test binaries one after another).

mod support;

use std::time::{Duration, Instant};

use support::World;
use testkit::stack;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_postgres_outage_never_pauses_processing_and_the_read_model_catches_up() {
    let world = World::new("pg-outage").await;
    let synthetic = 40;
    world.seed(synthetic, 400).await;
    let (running, token) = world.start(&[]).await;
    let metrics = running.metrics.clone();

    let generator = world.spawn_generator(&[
        "--rate",
        "3000",
        "--count",
        "60000",
        "--synthetic-skus",
        "40",
        "--lines-max",
        "3",
    ]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        metrics.sync_rows.with_label_values(&["orders"]).get() > 0,
        "the sync writes before the outage"
    );

    stack().await.stop_postgres().await;
    let stopped = Instant::now();
    let at_stop = metrics.orders_decided();
    let errors_at_stop = metrics.sync_errors.get();
    // Outcomes keep arriving while PostgreSQL is down, second after second.
    let mut during = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        during.push(metrics.orders_decided());
    }
    let pauses: Vec<_> = during.windows(2).filter(|w| w[1] <= w[0]).collect();
    eprintln!(
        "during the outage: {at_stop} -> {during:?} decided, {} sync errors, {} rows waiting",
        metrics.sync_errors.get() - errors_at_stop,
        metrics.sync_lag_rows.get()
    );
    assert!(
        pauses.is_empty() && during[0] > at_stop,
        "processing never paused while PostgreSQL was down: {at_stop} -> {during:?}"
    );
    assert!(
        metrics.sync_errors.get() > errors_at_stop,
        "failed syncs are counted"
    );
    assert!(
        metrics.sync_lag_rows.get() > 0 && metrics.sync_lag_seconds.get() >= 1.0,
        "the sync reports its lag: {} rows, {} s",
        metrics.sync_lag_rows.get(),
        metrics.sync_lag_seconds.get()
    );

    stack().await.start_postgres().await;
    eprintln!("PostgreSQL was down for {:?}", stopped.elapsed());

    let outcomes = world.check_generated(generator, synthetic, 400).await;
    world.check_read_model(&outcomes, 2 * MINUTE).await;
    let started = Instant::now();
    while metrics.sync_lag_rows.get() > 0 {
        assert!(started.elapsed() < MINUTE, "the sync lag returns to 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    token.cancel();
    running.wait().await.expect("stops cleanly");
}
