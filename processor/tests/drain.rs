//! SIGTERM under load: the processor binary commits what it has in hand, leaves the group and
//! exits 0; nothing it did is left in an open transaction or aborted, and its restart on the
//! same state dir replays no changelog record and decides every order exactly once. And what
//! it logs on the way: plain text in a pipe, or JSON lines with `--log-format json`.

mod support;

use std::time::{Duration, Instant};

use support::{MINUTE, World, per_order, processor_binary};
use testkit::Isolation;
use testkit::kafka::end_offsets;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_commits_everything_and_exits_0() {
    let world = World::new("drain").await;
    let (synthetic, stock) = (40, 1_000);
    world.seed(synthetic, stock).await;
    let state = tempfile::tempdir().expect("state dir");
    let mut processor = world.spawn_processor("p1", state.path(), &[]);
    processor.wait_ready(MINUTE).await;

    let generator = world.spawn_generator(&[
        "--rate",
        "300",
        "--count",
        "7500",
        "--synthetic-skus",
        &synthetic.to_string(),
        "--lines-max",
        "3",
    ]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let consumed = processor.consumed().await;
    let aborted = processor.scrape().await.expect("metrics").sum_where(
        "stockflow_transactions_total",
        "outcome",
        "aborted",
    );
    let decided = processor
        .metric("stockflow_order_outcomes_total")
        .await
        .unwrap_or(0.0);
    assert!(decided > 0.0, "it is deciding orders when the signal comes");
    processor.signal("TERM");
    let signalled = Instant::now();
    let status = processor.wait_exit(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    eprintln!("SIGTERM after {decided} outcomes: exited {status:?} in {took:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "exits 0 within 30 s of SIGTERM: {status:?}"
    );
    let logged = processor.log_lines("");
    assert!(!logged.is_empty(), "its log was captured");
    let coloured: Vec<&String> = logged.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        coloured.is_empty(),
        "a log written to a pipe has no escape codes: {coloured:?}"
    );
    assert_eq!(aborted, 0.0, "no transaction aborted before the signal");

    // Nothing is left open: on every topic it writes, the last stable offset is the end.
    let topology = processor::topology::describe(&world.application_id, &world.topics);
    // Its sinks, its changelogs and the dead-letter topic. (Not `orders`, a sink too, for the
    // orders it re-produces to their id's partition: the generator may still be writing it.)
    let sources = topology.source_topics();
    let written: Vec<String> = topology
        .sinks
        .iter()
        .map(|t| t.name.clone())
        .filter(|name| !sources.contains(&name.as_str()))
        .chain(topology.changelogs())
        .chain([topology.dead_letters.clone()])
        .collect();
    for topic in &written {
        let topic = topic.as_str();
        let stable = end_offsets(&world.bootstrap, &[topic], Isolation::ReadCommitted);
        let end = end_offsets(&world.bootstrap, &[topic], Isolation::ReadUncommitted);
        assert_eq!(
            stable, end,
            "{topic}: no transaction left open (last stable offsets vs high watermarks)"
        );
    }
    // What it had consumed before the signal is committed.
    for source in topology.source_topics() {
        let committed = world.committed_offsets(source);
        for partition in 0..4 {
            let before = consumed
                .get(&(source.to_owned(), partition))
                .copied()
                .unwrap_or(0);
            let at = committed.get(&partition).copied().unwrap_or(0);
            assert!(
                at >= before,
                "{source}[{partition}]: committed offset {at} covers the {before} records \
                 consumed before the signal"
            );
        }
    }

    // The restart replays nothing: its stores hold everything the changelogs do.
    let mut processor = world.spawn_processor("p2", state.path(), &[]);
    processor.wait_ready(MINUTE).await;
    processor
        .wait_metric("stockflow_assigned_tasks", 8.0, MINUTE)
        .await;
    let restored = processor
        .metric("stockflow_restored_records_total")
        .await
        .expect("the restore metric");
    eprintln!("the restart restored {restored} changelog records");
    assert_eq!(
        restored, 0.0,
        "a drained instance's restart replays no changelog record"
    );

    let summary = generator.await.expect("the generator ran");
    let orders = (summary.valid + summary.invalid) as usize;
    world.outcomes(orders, 3 * MINUTE).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the last releases
    processor.signal("TERM");
    let status = processor.wait_exit(MINUTE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "p2 exits 0: {status:?}"
    );

    let committed = world.outcomes_at(Isolation::ReadCommitted).await;
    let uncommitted = world.outcomes_at(Isolation::ReadUncommitted).await;
    let counts = per_order(&committed);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(repeated.is_empty(), "no order decided twice: {repeated:?}");
    assert_eq!(counts.len(), orders, "every order decided once");
    assert_eq!(
        uncommitted.len(),
        committed.len(),
        "no outcome was ever written in a transaction that aborted"
    );
    let updates = world.inventory_updates().await;
    assert!(
        updates.iter().all(|u| u.available_after >= 0),
        "stock never negative"
    );
}

/// The fields every JSON log line has; panics naming the line if it is not one.
fn json_event(line: &str) -> serde_json::Value {
    let event: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
    for field in ["timestamp", "level", "target", "message"] {
        assert!(event[field].is_string(), "no {field}: {line:?}");
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_one_json_object_per_line() {
    let world = World::new("jsonlog").await;
    world.seed(4, 100).await;
    let state = tempfile::tempdir().expect("state dir");
    let mut processor = world.spawn_processor("json", state.path(), &["--log-format", "json"]);
    processor.wait_ready(MINUTE).await;
    world.run_generator(50, &["--synthetic-skus", "4"]).await;
    world.outcomes(50, MINUTE).await;
    processor.signal("TERM");
    let status = processor.wait_exit(MINUTE).await;
    assert!(status.is_some_and(|s| s.success()), "exits 0: {status:?}");

    let lines = processor.log_lines("");
    assert!(lines.len() >= 3, "it logged its start and stop: {lines:?}");
    let events: Vec<serde_json::Value> = lines.iter().map(|l| json_event(l)).collect();
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "task running" && e["task"].is_string()),
        "events carry their fields as JSON fields: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no escape codes in JSON"
    );

    // A failure is one JSON line too (an ERROR event), not a plain `error: ...` line.
    let failed = std::process::Command::new(processor_binary())
        .args([
            "--bootstrap-servers",
            "127.0.0.1:9",
            "--topic-prefix",
            "nowhere-",
            "audit",
        ])
        .env("STOCKFLOW_LOG_FORMAT", "json")
        .output()
        .expect("the processor binary runs");
    assert_eq!(failed.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    let event = json_event(lines[0]);
    assert_eq!(event["level"], "ERROR", "{stderr}");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("error: Kafka at 127.0.0.1:9 is unreachable")),
        "{stderr}"
    );
}
