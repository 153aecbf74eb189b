//! Transaction commits that go wrong on the wire, through the test kit's fault proxy
//! (`testkit::proxy`): the processor talks to the broker only through it, and the proxy
//! cuts connections or holds responses back for `EndTxn`, the request that commits. Each
//! test runs orders through the fault and ends with every invariant checked.
//!
//! - EndTxn requests cut: the broker never hears of the commit, times the transaction out
//!   (`transaction.timeout.ms`, 10 s) and bumps the producer's epoch; the producer's retried
//!   EndTxn is then refused. The commit's outcome is unknown to the engine until it asks the
//!   broker: it rebuilds the producer and starts its tasks again from what the broker has.
//! - EndTxn responses cut: the broker commits, the answer is lost, and the client retries.
//! - EndTxn responses held back beyond the transaction timeout.
//!
//! The proxy sits in front of a listener of the local stack's broker that advertises the
//! proxy's address (`scripts/stack.sh`); with containers these tests say so and check nothing.
//! They share the proxy's port, so they take turns.

mod support;

use std::time::{Duration, Instant};

use processor::app::Running;
use support::{MINUTE, World};
use testkit::proxy::{END_TXN, Fault, FaultProxy, PROXIED_LISTENER, PROXY_ADDRESS};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// One test at a time owns the proxy's port.
static PROXY_PORT: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_txn_requests_cut_until_the_transaction_times_out() {
    let _port = PROXY_PORT.lock().await;
    let report = through_fault(
        "txn-cut-request",
        Fault::CutOnRequest(END_TXN),
        Duration::from_secs(25),
    )
    .await;
    let Some(report) = report else { return };
    // The broker aborted the transaction it never heard the end of and bumped the epoch, so
    // the retried EndTxn was refused as fenced: a commit of unknown outcome, which the engine
    // settled by asking the broker (a new producer, the tasks started again from the
    // changelogs and the group's committed offsets), not by rolling back on its own word.
    assert!(
        report.indefinite >= 1,
        "the refused commit counted as indefinite: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_txn_responses_cut_after_the_broker_committed() {
    let _port = PROXY_PORT.lock().await;
    through_fault(
        "txn-cut-response",
        Fault::CutOnResponse(END_TXN),
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_txn_responses_held_beyond_the_transaction_timeout() {
    let _port = PROXY_PORT.lock().await;
    through_fault(
        "txn-delay-response",
        Fault::DelayResponses(END_TXN, Duration::from_secs(12)),
        Duration::from_secs(15),
    )
    .await;
}

/// What the engine went through.
#[derive(Debug)]
#[allow(dead_code)] // printed
struct Report {
    hits: u64,
    committed: u64,
    aborted: u64,
    indefinite: u64,
    resumed_after: Duration,
}

/// Runs orders through the processor, with `fault` on for `lasting` once orders flow; checks
/// that outcomes resume after it and every invariant. `None` when the services are
/// containers (no proxied listener).
async fn through_fault(name: &str, fault: Fault, lasting: Duration) -> Option<Report> {
    support::logs_on_failure();
    if !testkit::stack().await.is_local() {
        eprintln!(
            "the services are containers: these tests need the local stack's proxied listener"
        );
        return None;
    }
    let proxy = FaultProxy::start(PROXY_ADDRESS, PROXIED_LISTENER)
        .await
        .unwrap_or_else(|e| panic!("the fault proxy listens on {PROXY_ADDRESS}: {e}"));
    let world = World::new(name).await;
    let synthetic = 40;
    world.seed(synthetic, 100_000).await;

    let token = CancellationToken::new();
    let mut connection = world.connection.clone();
    connection.bootstrap_servers = PROXY_ADDRESS.to_owned();
    let running = processor::app::start(&connection, &world.run_args(&[]), token.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the processor starts through the proxy ({e:#}); a broker started before the \
                 proxied listener existed needs `scripts/stack.sh stop kafka && scripts/stack.sh start`"
            )
        });
    let generator = world.spawn_generator(&[
        "--rate",
        "300",
        "--count",
        "12000",
        "--synthetic-skus",
        "40",
        "--lines-max",
        "3",
    ]);
    let metrics = running.metrics.clone();
    wait_for_decisions(&running, 300, MINUTE, "orders are decided before the fault").await;

    proxy.set(Some(fault));
    tokio::time::sleep(lasting).await;
    proxy.set(None);
    let cleared = Instant::now();
    let after = metrics.orders_decided();
    wait_for_decisions(
        &running,
        after + 100,
        2 * MINUTE,
        "outcomes resume after the fault",
    )
    .await;
    let outcomes = |outcome: &str| metrics.transactions.with_label_values(&[outcome]).get();
    let report = Report {
        hits: proxy.hits(),
        committed: outcomes("committed"),
        aborted: outcomes("aborted"),
        indefinite: outcomes("indefinite"),
        resumed_after: cleared.elapsed(),
    };
    eprintln!("{name}: {report:?}");
    assert!(report.hits > 0, "the fault acted: {report:?}");

    world.check_generated(generator, synthetic, 100_000).await;
    token.cancel();
    running.wait().await.expect("stops cleanly");
    Some(report)
}

async fn wait_for_decisions(running: &Running, at_least: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while running.metrics.orders_decided() < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} decided, waited for {at_least}",
            running.metrics.orders_decided()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
