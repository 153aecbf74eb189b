//! The soak of issue 17 in the tests: the example `soak` (processor/examples/soak/, what
//! `scripts/soak.sh` runs for 30 minutes in RELIABILITY.md) for 3 minutes at 1,000 orders/s,
//! with a fault every 10 s, dealt from every kind. It fails if any invariant does, and prints
//! the report either way (`--nocapture` shows it when it passes).
//!
//! It stops and starts the broker, the registry and PostgreSQL every test shares, so it has a
//! test binary of its own (cargo runs test binaries one after another). It needs the local
//! stack (`scripts/stack.sh`): with containers it says so and checks nothing.

#[path = "../examples/soak/main.rs"]
#[allow(dead_code)] // its `main` and what only the command line uses
mod soak;

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_minutes_of_random_faults_break_no_invariant() {
    if !testkit::stack().await.is_local() {
        eprintln!("the services are containers: the soak needs the local stack");
        return;
    }
    let config = soak::Config::parse_from([
        "soak",
        "--duration",
        "3m",
        "--rate",
        "1000",
        "--fault-every",
        "10s",
    ]);
    let report = soak::run(config).await;
    println!("{report}");
    assert!(report.passed(), "the soak found a violation:\n{report}");
}
