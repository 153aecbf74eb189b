//! `processor status` against the real services: with two instances running (members, the
//! partitions and tasks each owns, lag drained to 0, the dead-letter count), with one killed
//! (its rows say it does not answer), with none (from Kafka's metadata only), and with Kafka
//! unreachable (one line, exit code 1).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use processor::status::report::Report;
use support::{MINUTE, World, processor_binary};

/// Runs `processor status` for `world`'s application with `extra` flags.
fn run_status(world: &World, extra: &[&str]) -> Output {
    Command::new(processor_binary())
        .args(world.connection_flags())
        .args(["status", "--application-id", &world.application_id])
        .args(extra)
        .output()
        .expect("the processor binary runs")
}

/// `processor status --json`, parsed; panics unless it exits 0.
fn status_json(world: &World) -> Report {
    let output = run_status(world, &["--json", "--instance-timeout-ms", "3000"]);
    assert!(
        output.status.success(),
        "processor status exits 0: {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "processor status --json prints a report ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Asks `processor status --json` again until `done` holds of its report; panics after
/// `deadline` with the last report.
async fn status_until(world: &World, deadline: Duration, done: impl Fn(&Report) -> bool) -> Report {
    let started = Instant::now();
    loop {
        let report = status_json(world);
        if done(&report) {
            return report;
        }
        assert!(
            started.elapsed() < deadline,
            "processor status did not get there in {deadline:?}: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every partition of every source topic of the topology (4 partitions each).
fn source_partitions(world: &World) -> BTreeSet<String> {
    let topology = processor::topology::describe(&world.application_id, &world.topics);
    topology
        .source_topics()
        .iter()
        .flat_map(|topic| (0..4).map(move |p| format!("{topic}[{p}]")))
        .collect()
}

#[tokio::test]
async fn status_with_two_instances_one_killed_and_none() {
    let world = World::new("status").await;
    world.seed(10, 1000).await;
    let (state_a, state_b) = (
        tempfile::tempdir().expect("state dir"),
        tempfile::tempdir().expect("state dir"),
    );
    // a runs two engine threads: three group members, two instances.
    let mut a = world.spawn_processor("a", state_a.path(), &["--num-stream-threads", "2"]);
    a.wait_ready(MINUTE).await;
    // b joins once a has decided the seed's adjustments (14 skus, one changelog record each
    // at least), so that b's inventory task has state to restore.
    let changelog = format!("{}-inventory-changelog", world.application_id);
    let started = Instant::now();
    while testkit::kafka::high_watermarks(&world.bootstrap, &[changelog.as_str()])
        .values()
        .sum::<i64>()
        < 14
    {
        assert!(
            started.elapsed() < MINUTE,
            "a wrote the seed's stock to its changelog"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut b = world.spawn_processor("b", state_b.path(), &[]);
    b.wait_ready(MINUTE).await;
    // Until the rebalance that gives b its share has settled: every task owned once, by both.
    a.wait_shared_with(&b, 8.0).await;

    // A few orders and one record that is not Avro at all: one dead letter.
    let summary = world.run_generator(200, &["--synthetic-skus", "10"]).await;
    world
        .send_raw(&world.topics.orders, "garbage", b"not an order")
        .await;
    let expected = (summary.valid + summary.invalid) as usize;
    world.outcomes(expected, MINUTE).await;
    world.read_raw(&world.topics.orders_dlq, 1, MINUTE).await;

    // Drained: every input partition's committed offset reaches its end.
    let report = status_until(&world, MINUTE, |r| {
        r.total_lag == 0 && r.members.len() == 3 && r.members.iter().all(|m| m.answered)
    })
    .await;
    eprintln!("{report:#?}");
    assert_eq!(report.group_state, "Stable");
    assert_eq!(report.members.len(), 3, "one member per engine thread");
    let instances: BTreeSet<&str> = report
        .members
        .iter()
        .map(|m| {
            m.instance
                .as_deref()
                .expect("an engine's client id names its instance")
        })
        .collect();
    assert_eq!(instances.len(), 2, "two instances: {instances:?}");
    assert_eq!(report.instances.len(), 2);
    let threads: BTreeSet<(Option<usize>, usize)> = report
        .instances
        .iter()
        .map(|i| {
            let members = report
                .members
                .iter()
                .filter(|m| m.instance.as_deref() == Some(&i.instance))
                .count();
            (i.threads, members)
        })
        .collect();
    assert_eq!(
        threads,
        [(Some(1), 1), (Some(2), 2)].into_iter().collect(),
        "each instance reports its threads, and each thread is a member"
    );
    assert!(
        report
            .instances
            .iter()
            .all(|i| i.answered && i.ready == Some(true))
    );
    assert!(
        report
            .instances
            .iter()
            .all(|i| i.sync_lag_rows.is_some_and(|rows| rows >= 0)),
        "each instance reports its sync lag"
    );
    // Every partition of every source (inputs and repartition topics) is owned exactly once.
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    for member in &report.members {
        assert!(
            !member.partitions.is_empty(),
            "{} owns partitions",
            member.client_id
        );
        assert!(
            member.last_commit_ms.is_some(),
            "{} has committed",
            member.client_id
        );
        for partition in &member.partitions {
            *owned.entry(partition.clone()).or_default() += 1;
        }
        // What the group assigned is what the instance runs.
        let live: Vec<&str> = member.live_tasks.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(
            live, member.tasks,
            "{}: group and instance agree",
            member.client_id
        );
        // Restores finished, and said so as they went.
        assert!(
            member
                .live_tasks
                .iter()
                .all(|t| t.state == "running" && t.restored == t.to_restore),
            "{:?}",
            member.live_tasks
        );
    }
    // b joined after a had decided the seed's adjustments: its inventory task took their
    // state over from the changelog, and says how much it replayed.
    let b_addr = b.metrics.to_string();
    let b_restored: u64 = report
        .members
        .iter()
        .filter(|m| m.status_addr.as_deref() == Some(b_addr.as_str()))
        .flat_map(|m| &m.live_tasks)
        .filter(|t| t.task.starts_with("1_"))
        .map(|t| t.to_restore)
        .sum();
    assert!(b_restored > 0, "b restored its inventory task's changelog");
    assert_eq!(
        owned.keys().cloned().collect::<BTreeSet<_>>(),
        source_partitions(&world)
    );
    assert!(
        owned.values().all(|n| *n == 1),
        "owned once each: {owned:?}"
    );
    let tasks: BTreeSet<&String> = report.members.iter().flat_map(|m| &m.tasks).collect();
    assert_eq!(tasks.len(), 8, "2 sub-topologies x 4 partitions");
    // Lag: one row per input partition, each with its owner; the orders' ends hold every
    // order sent plus the garbage.
    assert_eq!(
        report.lag.len(),
        8,
        "orders and inventory-adjustments, 4 partitions each"
    );
    assert!(report.lag.iter().all(|l| l.lag == 0 && l.owner.is_some()));
    let orders_end: i64 = report
        .lag
        .iter()
        .filter(|l| l.topic == world.topics.orders)
        .map(|l| l.end)
        .sum();
    assert_eq!(
        orders_end,
        summary.sent as i64 + 1,
        "every order sent, and the garbage"
    );
    let dead = report
        .dead_letters
        .as_ref()
        .expect("the dead-letter topic exists");
    assert_eq!(dead.records, 1, "one record was dead-lettered");
    assert_eq!(dead.by_kind.values().sum::<u64>(), 1);

    // The screen for people.
    let output = run_status(&world, &[]);
    assert!(output.status.success());
    let screen = String::from_utf8_lossy(&output.stdout);
    eprintln!("{screen}");
    for heading in [
        "MEMBERS",
        "INSTANCES",
        "RESTORING",
        "INPUT LAG",
        "DEAD LETTERS",
    ] {
        assert!(
            screen.contains(&format!("\n{heading}\n")),
            "{heading} in:\n{screen}"
        );
    }
    assert!(screen.contains("2 of 2 instance(s) answered"), "{screen}");

    // b killed: the group still lists its member until the session times out (6 s); its row
    // says its instance does not answer.
    let b_client = report
        .members
        .iter()
        .find(|m| m.status_addr.as_deref() == Some(&b.metrics.to_string()))
        .map(|m| m.client_id.clone())
        .expect("b is a member, found by its status address");
    b.kill();
    let report = status_json(&world);
    let b_row = report
        .members
        .iter()
        .find(|m| m.client_id == b_client)
        .expect("a killed member stays in the group until its session times out");
    assert!(!b_row.answered);
    assert!(b_row.error.is_some(), "says why: {b_row:?}");
    assert!(
        !b_row.partitions.is_empty(),
        "the group's assignment is still shown"
    );

    // None: a leaves the group; b's member expires.
    a.signal("TERM");
    let exited = a.wait_exit(MINUTE).await.expect("a stops on SIGTERM");
    assert!(exited.success(), "a exits 0: {exited:?}");
    let report = status_until(&world, MINUTE, |r| r.members.is_empty()).await;
    assert!(report.instances.is_empty() && report.restoring.is_empty());
    assert_eq!(
        report.lag.len(),
        8,
        "lag per input partition from the metadata"
    );
    assert!(
        report
            .lag
            .iter()
            .all(|l| l.owner.is_none() && l.committed.is_some())
    );
    assert_eq!(report.total_lag, 0);
    assert_eq!(report.dead_letters.as_ref().map(|d| d.records), Some(1));
    let output = run_status(&world, &[]);
    assert!(output.status.success(), "exit 0 with no instance");
    let screen = String::from_utf8_lossy(&output.stdout);
    eprintln!("{screen}");
    assert!(screen.contains("no instance is running"), "{screen}");
    for heading in [
        "MEMBERS",
        "INSTANCES",
        "RESTORING",
        "INPUT LAG",
        "DEAD LETTERS",
    ] {
        assert!(
            screen.contains(&format!("\n{heading}\n")),
            "{heading} in:\n{screen}"
        );
    }
}

#[tokio::test]
async fn status_with_kafka_unreachable_says_so_in_one_line_and_exits_1() {
    let output = Command::new(processor_binary())
        .args(["--bootstrap-servers", "127.0.0.1:9", "status", "--json"])
        .output()
        .expect("the processor binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "no report");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("error: Kafka at 127.0.0.1:9 is unreachable"),
        "{stderr}"
    );
}
