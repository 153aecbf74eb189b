//! `processor repartition` against the real Kafka and PostgreSQL (issue 18, item 1): 6 -> 12
//! partitions after a run stopped with orders in flight. Every sku's stock and every order's
//! state survive (a dump of both stores before and after), each entry lands on its key's new
//! partition, and the next run, on 12 engine threads, decides the remaining and new orders with
//! every invariant.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Output;

use clap::Parser;
use plumbing::admin::partition_counts;
use processor::runtime::format;
use processor::runtime::partitioner::partition_for;
use processor::topology::event_time::Queued;
use processor::topology::inventory::{Hold, Reservation};
use processor::topology::order::{OrderRecord, OrderStatus};
use schemas::{AdjustmentMode, AdjustmentReason, InventoryAdjusted};
use support::{MINUTE, World, initial_stock};
use testkit::kafka::Isolation;

const FROM: i32 = 6;
const TO: i32 = 12;
const SKUS: u32 = 30;
const STOCK: i64 = 60;

/// Runs `processor repartition` for `world`'s application on `state_dir` with `extra` flags.
fn repartition(world: &World, state_dir: &Path, extra: &[&str]) -> Output {
    let state = state_dir.to_string_lossy().into_owned();
    std::process::Command::new(support::processor_binary())
        .args(world.connection_flags())
        .args([
            "repartition",
            "--application-id",
            &world.application_id,
            "--state-dir",
            &state,
            "--database-url",
            &world.database_url,
            "--database-schema",
            &world.database_schema,
        ])
        .args(extra)
        .output()
        .expect("the processor binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `generator <command> --partitions 6` with `args`.
fn generator_args(command: &str, args: &[&str]) -> generator::cli::Command {
    let mut argv = vec!["generator", command, "--partitions", "6"];
    argv.extend_from_slice(args);
    generator::cli::Cli::try_parse_from(argv)
        .expect("generator arguments")
        .command
}

/// The partition counts of the inputs and of the internal topics.
fn counts(world: &World) -> BTreeMap<String, i32> {
    let topology = processor::topology::describe(&world.application_id, &world.topics);
    let mut names = topology.input_topics();
    names.extend(topology.internal_topics());
    partition_counts(&world.connection.client_config(), &names)
        .expect("metadata")
        .into_iter()
        .collect()
}

/// Both stores as their changelogs hold them (read_committed, to the end): per changelog, per
/// partition, the last value of each key.
type Dump = BTreeMap<(String, i32), BTreeMap<Vec<u8>, Vec<u8>>>;

async fn dump(world: &World) -> Dump {
    let changelogs =
        processor::topology::describe(&world.application_id, &world.topics).changelogs();
    let names: Vec<&str> = changelogs.iter().map(String::as_str).collect();
    let mut records = world
        .read_to_end(&names, Isolation::ReadCommitted, 2 * MINUTE)
        .await;
    records.sort_by_key(|r| (r.topic.clone(), r.partition, r.offset));
    let mut dump = Dump::new();
    for record in records {
        let entries = dump.entry((record.topic, record.partition)).or_default();
        let key = record.key.unwrap_or_default();
        match record.payload {
            Some(value) => entries.insert(key, value),
            None => entries.remove(&key),
        };
    }
    dump
}

/// What a store means, whatever its partitioning: each entry by changelog and key, except the
/// entries that describe one input partition (its time), which stay with that partition; the
/// merge buffer's reserves without their reply partition (which names the order's partition);
/// and the applied adjustments as a set (they are copied to every partition).
fn logical(dump: &Dump) -> BTreeMap<(String, Vec<u8>), Vec<u8>> {
    let mut out = BTreeMap::new();
    for ((topic, partition), entries) in dump {
        for (key, value) in entries {
            let mut value = value.clone();
            let mut key = key.clone();
            if key == b"\0partition-time" || key == b"t/adjustments" {
                key.extend_from_slice(format!("@{partition}").as_bytes());
            }
            if key.starts_with(b"q/") {
                let (position, mut entry) = Queued::decode_stored(&value).expect("a queued entry");
                if let Queued::Reserve {
                    reply_partition, ..
                } = &mut entry
                {
                    *reply_partition = -1;
                }
                value = format::encode(&(position, &entry));
            }
            out.insert((topic.clone(), key), value);
        }
    }
    out
}

/// The key an entry is partitioned by, if it is one that moves.
fn routing_key(key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    if let Some(sku) = key.strip_prefix(b"s/") {
        return Some(sku.to_vec());
    }
    if key.starts_with(b"r/") {
        let reservation: Reservation = format::decode(value).expect("a reservation");
        return Some(reservation.sku.into_bytes());
    }
    if key.starts_with(b"h/") {
        let hold: Hold = format::decode(value).expect("a hold");
        return Some(hold.sku.into_bytes());
    }
    if key.starts_with(b"q/") {
        let (_, entry) = Queued::decode_stored(value).expect("a queued entry");
        return Some(entry.sku().as_bytes().to_vec());
    }
    if key.first().is_some_and(|&b| b != 0 && !key.contains(&b'/')) {
        return Some(key.to_vec()); // an order id
    }
    None
}

fn pending_orders(dump: &Dump, orders_changelog: &str) -> usize {
    dump.iter()
        .filter(|((topic, _), _)| topic == orders_changelog)
        .flat_map(|(_, entries)| entries.iter())
        .filter(|(key, _)| key.first().is_some_and(|&b| b != 0))
        .filter(|(_, value)| {
            let record: OrderRecord = format::decode(value).expect("an order record");
            matches!(record.status, OrderStatus::Pending { .. })
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_to_twelve_partitions_keeps_the_state_and_the_next_run_decides_the_rest() {
    support::logs_on_failure();
    let world = World::new("repartition").await;
    let generator::cli::Command::Seed(seed) = generator_args(
        "seed",
        &[
            "--synthetic-skus",
            &SKUS.to_string(),
            "--synthetic-stock",
            &STOCK.to_string(),
        ],
    ) else {
        unreachable!("parsed as seed")
    };
    generator::app::seed(&world.connection, &seed)
        .await
        .expect("seeds");
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut a = world.spawn_processor("a", a_dir.path(), &[]);
    let mut b = world.spawn_processor("b", b_dir.path(), &[]);
    a.wait_ready(2 * MINUTE).await;
    b.wait_ready(2 * MINUTE).await;

    // Orders of up to three lines flow, faster than two instances decide them; the instances
    // are stopped in the middle, so orders are left pending with some lines answered.
    let run = |seed: &str, count: &str| {
        let generator::cli::Command::Run(run) = generator_args(
            "run",
            &[
                "--count",
                count,
                "--rate",
                "0",
                "--seed",
                seed,
                "--synthetic-skus",
                &SKUS.to_string(),
                "--lines-max",
                "3",
            ],
        ) else {
            unreachable!("parsed as run")
        };
        let connection = world.connection.clone();
        tokio::spawn(async move {
            generator::app::run_orders(&connection, &run, Default::default())
                .await
                .expect("runs")
        })
    };
    let first = run("11", "6000");
    world.outcomes(500, 2 * MINUTE).await;

    // While the application runs, a repartition is refused with one line naming the members.
    let refused = repartition(&world, a_dir.path(), &["--partitions", "12"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let errors: Vec<String> = text(&refused)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "one line: {}", text(&refused));
    assert!(
        errors[0].contains("live member") && errors[0].contains("engine"),
        "names the members: {errors:?}"
    );

    a.signal("TERM");
    b.signal("TERM");
    for child in [&mut a, &mut b] {
        let status = child.wait_exit(2 * MINUTE).await.expect("stops on SIGTERM");
        assert!(status.success(), "a clean stop: {status}");
    }
    let first = first.await.expect("the generator finished");
    // Adjustments the application has not read: they move with their skus.
    let mut adjusted = HashMap::new();
    for i in 0..SKUS.min(8) {
        let sku = format!("SKU-{i:06}");
        let adjustment = InventoryAdjusted {
            adjustment_id: format!("restock-{i}"),
            sku: sku.clone(),
            mode: AdjustmentMode::Delta,
            quantity: 25,
            reason: AdjustmentReason::Restock,
            adjusted_at: 1,
            product_name: None,
            unit_price_cents: None,
        };
        let bytes = world.codec.encode(&adjustment).await.expect("encodes");
        world
            .send_raw(&world.topics.inventory_adjustments, &sku, &bytes)
            .await;
        adjusted.insert(sku, 25);
    }

    let topology = processor::topology::describe(&world.application_id, &world.topics);
    let orders_changelog = topology.changelogs()[0].clone();
    let before = dump(&world).await;
    let pending = pending_orders(&before, &orders_changelog);
    assert!(pending > 0, "the stop left orders pending");
    let decided_before = world.outcomes(0, MINUTE).await.per_order().len();
    assert!(
        decided_before < (first.valid + first.invalid) as usize,
        "the stop left orders undecided"
    );

    // A dry run reads everything, prints the plan, and changes nothing.
    let dry = repartition(&world, a_dir.path(), &["--partitions", "12", "--dry-run"]);
    let plan = text(&dry);
    assert!(dry.status.success(), "dry run: {plan}");
    assert!(plan.contains("from 6 to 12 partitions"), "{plan}");
    assert!(plan.contains("dry run: nothing was changed"), "{plan}");
    assert!(
        plan.contains(&format!("{}: 6 -> 12", world.topics.orders)),
        "{plan}"
    );
    assert!(
        counts(&world).values().all(|&n| n == FROM),
        "{:?}",
        counts(&world)
    );

    let done = repartition(&world, a_dir.path(), &["--partitions", "12"]);
    assert!(done.status.success(), "repartition: {}", text(&done));
    println!(
        "{pending} orders pending, {decided_before} decided before:\n{}",
        text(&done)
    );
    let after_counts = counts(&world);
    assert_eq!(
        after_counts.len(),
        6,
        "inputs and internal topics: {after_counts:?}"
    );
    assert!(after_counts.values().all(|&n| n == TO), "{after_counts:?}");
    assert!(
        !a_dir.path().join(&world.application_id).exists(),
        "this machine's state dir removed"
    );
    assert!(
        b_dir.path().join(&world.application_id).exists(),
        "another machine's state dir is left for its stores to notice"
    );

    // The same state, each entry on its key's new partition.
    let after = dump(&world).await;
    assert_eq!(
        logical(&after),
        logical(&before),
        "the stores' state survives"
    );
    assert_eq!(pending_orders(&after, &orders_changelog), pending);
    let mut applied = BTreeSet::new();
    for ((topic, partition), entries) in &after {
        assert!(*partition < TO);
        for (key, value) in entries {
            if let Some(routing) = routing_key(key, value) {
                assert_eq!(
                    *partition,
                    partition_for(&routing, TO),
                    "{topic}: {} on its key's partition",
                    String::from_utf8_lossy(key)
                );
            }
            if key.starts_with(b"a/") {
                applied.insert((key.clone(), *partition));
            }
        }
    }
    let adjustments = applied
        .iter()
        .map(|(k, _)| k)
        .collect::<BTreeSet<_>>()
        .len();
    assert_eq!(
        applied.len(),
        adjustments * TO as usize,
        "applied ids on every partition"
    );

    // The next run: two instances of six engine threads, one task of each sub-topology each.
    let threads = ["--num-stream-threads", "6"];
    let mut a = world.spawn_processor("a", a_dir.path(), &threads);
    let mut b = world.spawn_processor("b", b_dir.path(), &threads);
    a.wait_ready(2 * MINUTE).await;
    b.wait_ready(2 * MINUTE).await;
    a.wait_shared_with(&b, f64::from(2 * TO)).await;
    let second = run("12", "2000").await.expect("the generator finished");
    let orders = (first.valid + first.invalid + second.valid + second.invalid) as usize;
    let outcomes = world
        .check_invariants(orders, &initial_stock(SKUS, STOCK), &adjusted)
        .await;
    world.check_read_model(&outcomes, 2 * MINUTE).await;
    for child in [&a, &b] {
        let consumed = child.consumed().await;
        let orders_partitions: BTreeSet<i32> = consumed
            .keys()
            .filter(|(topic, _)| *topic == world.topics.orders)
            .map(|(_, p)| *p)
            .collect();
        assert!(
            orders_partitions.len() >= 5,
            "{} read orders from its share of the 12 partitions: {orders_partitions:?}",
            child.name
        );
    }
    assert!(
        !b.log_lines("local store wiped").is_empty(),
        "b's stores from before noticed the new partition count"
    );
    a.signal("TERM");
    b.signal("TERM");
    for child in [&mut a, &mut b] {
        child.wait_exit(2 * MINUTE).await;
    }
}
