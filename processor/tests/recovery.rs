//! Crashes and scaling: a processor child process killed with SIGKILL and restarted, and two
//! instances sharing the partitions until one of them dies.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{MINUTE, OffsetWatch, World, initial_stock};

/// Records in the changelogs (the sum of their partitions' high watermarks).
fn changelog_size(world: &World) -> i64 {
    let changelogs: Vec<String> = ["orders", "inventory"]
        .iter()
        .map(|store| format!("{}-{store}-changelog", world.application_id))
        .collect();
    let changelogs: Vec<&str> = changelogs.iter().map(String::as_str).collect();
    testkit::kafka::high_watermarks(&world.bootstrap, &changelogs)
        .values()
        .sum()
}

#[tokio::test]
async fn sigkill_and_restart_lose_nothing_and_restore_only_the_tail() {
    let world = World::new("crash").await;
    let synthetic = 40;
    world.seed(synthetic, 400).await;
    let state = tempfile::tempdir().expect("state dir");

    let generator = world.spawn_generator(&[
        "--rate",
        "8000",
        "--count",
        "100000",
        "--synthetic-skus",
        "40",
        "--lines-max",
        "3",
        "--duplicate-rate",
        "0.01",
    ]);

    let mut child = world.spawn_processor("crash-0", state.path(), &[]);
    child.wait_ready(MINUTE).await;
    // No row of the read model may go backwards at any sync, across the kills.
    let watch = OffsetWatch::start(world.pg().await, Duration::from_millis(700));
    let mut rng_state = 7u64;
    for round in 0..3 {
        // Let it work for 2-4 s, then kill it mid-flight.
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pause = 2000 + (rng_state >> 33) % 2000;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let decided = child
            .metric("stockflow_order_outcomes_total")
            .await
            .unwrap_or(0.0);
        eprintln!("round {round}: killing after {pause} ms, {decided} outcomes so far");
        child.kill();
        let before_restart = changelog_size(&world);
        child = world.spawn_processor(&format!("crash-{}", round + 1), state.path(), &[]);
        child.wait_ready(3 * MINUTE).await;
        let restored = child.restored_records().await;
        eprintln!("round {round}: restored {restored} of {before_restart} changelog records");
        assert!(
            before_restart > 1000,
            "the changelogs hold real state ({before_restart} records)"
        );
        assert!(
            restored < before_restart as f64 / 10.0,
            "a restart restores only the changelog tail: {restored} of {before_restart}"
        );
    }
    let outcomes = world.check_generated(generator, synthetic, 400).await;
    // The read model is complete after the kills: the restarted tasks re-synced what the
    // killed process had not.
    world.check_read_model(&outcomes, MINUTE).await;
    let (looks, regressions) = watch.finish().await;
    eprintln!("read model: {looks} looks at every row's source offset");
    assert!(looks > 10, "the watch saw the read model ({looks} looks)");
    assert!(
        regressions.is_empty(),
        "no row's source offset ever went down: {:?}",
        &regressions[..regressions.len().min(5)]
    );
    child.kill();
}

#[tokio::test]
async fn two_instances_one_with_two_threads_share_the_work_and_survive_one_dying() {
    let world = World::new("scale-out").await;
    let synthetic = 40;
    world.seed(synthetic, 400).await;
    let (state_a, state_b) = (
        tempfile::tempdir().expect("state dir"),
        tempfile::tempdir().expect("state dir"),
    );

    // a runs two engine threads, so three group members share the tasks, and when b dies its
    // tasks move to a's threads.
    let mut a = world.spawn_processor("a", state_a.path(), &["--num-stream-threads", "2"]);
    a.wait_ready(MINUTE).await;
    let mut b = world.spawn_processor("b", state_b.path(), &[]);
    b.wait_ready(MINUTE).await;
    // The rebalance that gives b its share may still be settling on a loaded machine: wait
    // (bounded) until every task is owned once and both instances own some, before any order
    // is sent. (Sent earlier, the orders could all be decided by a before b joins; b's tasks
    // would then have nothing for a to restore when b dies.)
    let started = Instant::now();
    let (tasks_a, tasks_b) = loop {
        let tasks_a = a
            .metric("stockflow_assigned_tasks")
            .await
            .expect("a's tasks");
        let tasks_b = b
            .metric("stockflow_assigned_tasks")
            .await
            .expect("b's tasks");
        if (tasks_a > 0.0 && tasks_b > 0.0 && tasks_a + tasks_b == 8.0)
            || started.elapsed() > 2 * MINUTE
        {
            break (tasks_a, tasks_b);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("tasks: a {tasks_a}, b {tasks_b}");
    let traffic = [
        "--synthetic-skus",
        "40",
        "--lines-max",
        "3",
        "--rate",
        "6000",
    ];
    let summary = world.run_generator(30_000, &traffic).await;
    assert!(
        tasks_a > 0.0 && tasks_b > 0.0,
        "both instances own tasks: a {tasks_a}, b {tasks_b}"
    );
    assert_eq!(
        tasks_a + tasks_b,
        8.0,
        "2 sub-topologies x 4 partitions, each owned once"
    );

    b.kill();
    let more = world
        .run_generator(10_000, &[&traffic[..], &["--seed", "43"]].concat())
        .await;
    let started = Instant::now();
    while a.metric("stockflow_assigned_tasks").await != Some(8.0) {
        assert!(started.elapsed() < 2 * MINUTE, "a took over every task");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restored = a.restored_records().await;
    eprintln!("a restored {restored} changelog records of b's tasks");
    assert!(
        restored > 0.0,
        "b's state moved to a through the changelogs"
    );
    let distinct = (summary.valid + summary.invalid + more.valid + more.invalid) as usize;
    let outcomes = world
        .check_invariants(distinct, &initial_stock(synthetic, 400), &HashMap::new())
        .await;
    world.check_read_model(&outcomes, MINUTE).await;
    a.kill();
}
