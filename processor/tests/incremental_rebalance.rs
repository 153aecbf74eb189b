//! Rebalancing that moves only what changes (issue 18): under the consumer group protocol
//! (KIP-848, the broker's `range` assignor) one instance becomes three and then one again
//! while 2,000 orders/s flow. The first instance never closes a task it keeps: it closes
//! exactly the tasks that move away when the others join, and none when they leave; the order
//! partitions it keeps go on deciding orders while the others join; and every order gets
//! exactly one outcome, with every invariant. (Under the classic protocol every rebalance
//! closes and reopens every task: this test fails there.)
//!
//! The decision order is arrival: in event-time order every decision waits for the watermark
//! of every order partition, so while one moves all of them pause (ARCHITECTURE.md,
//! "Rebalancing").

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use processor::runtime::partitioner::partition_for;
use support::{MINUTE, ProcessorChild, World};

const SKUS: u32 = 40;
const STOCK: i64 = 1_000_000;
const PARTITIONS: i32 = 4;
const TASKS: f64 = 8.0;

/// A task's life in an instance's log: the tasks open now, and how often each was closed.
#[derive(Debug, Default)]
struct TaskLog {
    open: BTreeSet<String>,
    closed: HashMap<String, usize>,
}

fn task_log(child: &ProcessorChild) -> TaskLog {
    let mut log = TaskLog::default();
    for line in child.log_lines("processor::runtime::engine::tasks: task ") {
        let Some(task) = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("task="))
        else {
            continue;
        };
        if line.contains(" task running ") {
            log.open.insert(task.to_owned());
        } else if line.contains(" task closed ") {
            log.open.remove(task);
            *log.closed.entry(task.to_owned()).or_default() += 1;
        }
    }
    log
}

/// Waits until `members` own every task between them, each some.
async fn wait_spread(members: &[&ProcessorChild]) {
    let started = Instant::now();
    loop {
        let mut owned = Vec::new();
        for member in members {
            owned.push(
                member
                    .metric("stockflow_assigned_tasks")
                    .await
                    .unwrap_or(0.0),
            );
        }
        if owned.iter().all(|&n| n > 0.0) && owned.iter().sum::<f64>() == TASKS {
            return;
        }
        assert!(
            started.elapsed() < 2 * MINUTE,
            "the tasks spread over {} members: {owned:?}",
            members.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn scaling_out_and_in_moves_only_the_tasks_that_change_owner() {
    let world = World::new("incremental").await;
    world.seed(SKUS, STOCK).await;
    let flags = [
        "--group-protocol",
        "consumer",
        "--decision-order",
        "arrival",
    ];
    let states: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("state dir"))
        .collect();
    let mut a = world.spawn_processor("a", states[0].path(), &flags);
    a.wait_ready(MINUTE).await;
    a.wait_metric("stockflow_assigned_tasks", TASKS, MINUTE)
        .await;
    let generator = world.spawn_generator(&[
        "--rate",
        "2000",
        "--count",
        "70000",
        "--synthetic-skus",
        &SKUS.to_string(),
        "--lines-max",
        "3",
    ]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Scale out: b and c join.
    let joined_at = schemas::now_millis();
    let mut b = world.spawn_processor("b", states[1].path(), &flags);
    let mut c = world.spawn_processor("c", states[2].path(), &flags);
    b.wait_ready(MINUTE).await;
    c.wait_ready(MINUTE).await;
    wait_spread(&[&a, &b, &c]).await;
    let spread_at = schemas::now_millis();
    let out = task_log(&a);
    eprintln!(
        "scale-out took {} ms; a keeps {:?}, closed {:?}",
        spread_at - joined_at,
        out.open,
        out.closed
    );
    assert!(!out.open.is_empty(), "a keeps some tasks");
    assert_eq!(
        out.closed.len() + out.open.len(),
        TASKS as usize,
        "a closed exactly the tasks that moved away: {out:?}"
    );
    for task in &out.open {
        assert!(
            !out.closed.contains_key(task),
            "a task a kept was never closed: {task} ({out:?})"
        );
    }
    assert!(
        out.closed.values().all(|&n| n == 1),
        "each task that moved was closed once: {out:?}"
    );

    // Scale in: b and c stop (and leave the group).
    b.signal("TERM");
    c.signal("TERM");
    for member in [&mut b, &mut c] {
        let status = member.wait_exit(MINUTE).await.expect("stops");
        assert!(status.success(), "{} stops cleanly: {status}", member.name);
    }
    a.wait_metric("stockflow_assigned_tasks", TASKS, MINUTE)
        .await;
    let back = task_log(&a);
    assert_eq!(back.open.len(), TASKS as usize, "a owns every task again");
    assert_eq!(
        back.closed, out.closed,
        "a closed nothing when the others left"
    );

    let outcomes = world.check_generated(generator, SKUS, STOCK).await;
    world.check_read_model(&outcomes, MINUTE).await;

    // The order partitions a kept decided orders all along the scale-out: no gap between
    // decisions (the outcomes' wall-clock decision times) longer than 2 s between the join
    // and the moment the tasks were spread.
    let kept: Vec<i32> = out
        .open
        .iter()
        .filter_map(|task| task.strip_prefix("0_")?.parse().ok())
        .collect();
    assert!(!kept.is_empty(), "a kept an order task: {:?}", out.open);
    let mut decided: HashMap<i32, Vec<i64>> = HashMap::new();
    for outcome in world.outcomes_at(testkit::Isolation::ReadCommitted).await {
        let partition = partition_for(outcome.order_id.as_bytes(), PARTITIONS);
        decided
            .entry(partition)
            .or_default()
            .push(outcome.decided_at);
    }
    for partition in kept {
        let mut times = decided.remove(&partition).unwrap_or_default();
        times.push(joined_at);
        times.push(spread_at);
        times.sort_unstable();
        let window: Vec<i64> = times
            .into_iter()
            .filter(|&t| (joined_at..=spread_at).contains(&t))
            .collect();
        let gap = window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        eprintln!(
            "order partition {partition}: {} decisions during the scale-out, longest gap {gap} ms",
            window.len() - 2
        );
        assert!(
            gap < 2_000,
            "order partition {partition} (kept by a) went {gap} ms without a decision during the scale-out"
        );
    }
    a.kill();
}
