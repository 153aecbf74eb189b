//! `processor reset` against the real Kafka and PostgreSQL: refused while the application runs,
//! a dry run that changes nothing, a reset that lets the next run reprocess everything, and a
//! reset to a point in time.

mod support;

use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use plumbing::admin::partition_counts;
use support::{World, order};

const MINUTE: Duration = Duration::from_secs(60);

/// Runs the `processor reset` binary for `world` with `extra` flags.
fn reset(world: &World, extra: &[&str]) -> Output {
    world.reset_processor(world.state.path(), extra)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The application group's committed offset on each partition of the orders topic.
fn committed_orders_offsets(world: &World) -> Vec<Option<i64>> {
    let committed = world.committed_offsets(&world.topics.orders);
    (0..4).map(|p| committed.get(&p).copied()).collect()
}

fn internal_topics(world: &World) -> Vec<String> {
    let topology = processor::topology::describe(&world.application_id, &world.topics);
    let names = topology.internal_topics();
    let mut existing: Vec<String> = partition_counts(&world.connection.client_config(), &names)
        .expect("metadata")
        .into_keys()
        .collect();
    existing.sort();
    existing
}

async fn read_model_orders(world: &World) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&world.pg().await)
        .await
        .expect("counts orders")
}

#[tokio::test]
async fn reset_lets_the_next_run_reprocess_everything() {
    let world = World::new("reset").await;
    world.seed(20, 1_000).await;
    let summary = world
        .run_generator(200, &["--synthetic-skus", "20", "--lines-max", "2"])
        .await;
    let orders = summary.valid + summary.invalid;
    let (running, token) = world.start(&[]).await;
    world.outcomes(orders as usize, MINUTE).await;

    // While the application runs, a reset is refused with one line, and changes nothing.
    let refused = reset(&world, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(refused.status.code(), Some(1), "exit code 1: {stderr}");
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(
        errors[0].contains("live member") && errors[0].contains(&world.application_id),
        "names the running application: {stderr}"
    );

    token.cancel();
    running.wait().await.expect("the processor stops cleanly");
    // Every decision is in the read model before the reset empties it.
    let deadline = Instant::now() + MINUTE;
    while read_model_orders(&world).await < orders as i64 {
        assert!(
            Instant::now() < deadline,
            "the read model holds every order"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let committed = committed_orders_offsets(&world);
    assert!(
        committed.iter().all(|o| o.is_some_and(|o| o > 0)),
        "the run committed its progress: {committed:?}"
    );
    let internal = internal_topics(&world);
    assert_eq!(internal.len(), 4, "the run created its internal topics");
    let state_dir = world.state.path().join(&world.application_id);
    assert!(state_dir.exists());

    // A dry run prints the plan and changes nothing.
    let dry = reset(&world, &["--dry-run"]);
    let plan = stdout(&dry);
    assert!(dry.status.success(), "dry run: {plan}{:?}", dry.stderr);
    for offset in committed.iter().flatten() {
        assert!(
            plan.contains(&format!(": {offset} -> 0")),
            "the plan shows {offset} -> 0: {plan}"
        );
    }
    for topic in &internal {
        assert!(
            plan.contains(topic.as_str()),
            "the plan names {topic}: {plan}"
        );
    }
    assert!(
        plan.contains(&format!(" rows) in schema {}", world.database_schema)),
        "the plan counts the read model's rows: {plan}"
    );
    assert!(plan.contains("dry run: nothing was changed"), "{plan}");
    assert_eq!(committed_orders_offsets(&world), committed);
    assert_eq!(internal_topics(&world), internal);
    assert!(state_dir.exists());
    assert_eq!(read_model_orders(&world).await, orders as i64);

    // The reset itself.
    let done = reset(&world, &[]);
    assert!(
        done.status.success(),
        "reset: {}{}",
        stdout(&done),
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(committed_orders_offsets(&world), vec![Some(0); 4]);
    assert!(
        internal_topics(&world).is_empty(),
        "internal topics deleted"
    );
    assert!(!state_dir.exists(), "local state removed");
    assert_eq!(read_model_orders(&world).await, 0, "read model emptied");

    // The next run decides every order again and rebuilds the read model.
    let (running, token) = world.start(&[]).await;
    let deadline = Instant::now() + MINUTE;
    while running.metrics.orders_decided() < orders
        || read_model_orders(&world).await < orders as i64
    {
        assert!(
            Instant::now() < deadline,
            "reprocessed {} of {orders} orders",
            running.metrics.orders_decided()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        running.metrics.orders_decided(),
        orders,
        "each order decided once"
    );
    token.cancel();
    running.wait().await.expect("the processor stops cleanly");
}

#[tokio::test]
async fn reset_to_a_datetime_starts_at_the_first_record_after_it() {
    let world = World::new("reset-time").await;
    let batch = |prefix: &str| {
        (0..12)
            .map(|i| order(&format!("{prefix}-{i}"), &[("SKU-BT-MOUSE", 1)]))
            .collect::<Vec<_>>()
    };
    world.send_orders(&batch("before")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let between = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world.send_orders(&batch("after")).await;

    let at = humantime::format_rfc3339_millis(between).to_string();
    let done = reset(&world, &["--to-datetime", &at]);
    assert!(
        done.status.success(),
        "reset: {}{}",
        stdout(&done),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(stdout(&done).contains(&format!("at or after {at}")));
    let committed: Vec<i64> = committed_orders_offsets(&world)
        .into_iter()
        .map(|o| o.expect("an offset for every partition"))
        .collect();
    assert_eq!(
        committed.iter().sum::<i64>(),
        12,
        "every partition starts after its records of the first batch: {committed:?}"
    );

    // An hour back starts before every record.
    let done = reset(&world, &["--by-duration", "1h"]);
    assert!(done.status.success(), "{}", stdout(&done));
    assert_eq!(committed_orders_offsets(&world), vec![Some(0); 4]);
}
