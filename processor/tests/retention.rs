//! Order retention against the real Kafka, registry and PostgreSQL: a processor run with
//! `--order-retention 2s` while orders flow for about ten seconds (their timestamps the
//! producer's clock). An id sent again long after its order (its retention passed) is decided
//! again; one sent again within the retention is a duplicate. The `orders` store stays
//! bounded while orders keep coming, counted from its changelog (read to its high watermarks:
//! the last record of each key, a tombstone removing it); every expired order has its
//! tombstones there, one per time it expired; and what a compaction of the changelog would
//! keep is only the orders of the last retention. The read
//! model keeps every decided order: a retention tombstone deletes no row. An id decided
//! again takes stock again, and `processor audit --order-retention 2s` finds the run equal
//! to the clerk. Last, the broker's log cleaner, made eager, compacts the changelog for real:
//! every value an expired order had is gone, the live orders' values stay.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use processor::topology::ORDERS_STORE;
use processor::topology::order::keys;
use support::{MINUTE, World, order};
use testkit::Isolation;

/// Orders per round; a round a second.
const ROUND: usize = 30;
const ROUNDS: usize = 10;

/// The orders changelog as a compaction would leave it ((partition, key) -> its last value,
/// tombstoned keys left out), and the tombstones per key (an order id lives in one partition;
/// the task's own keys are in every one).
struct Changelog {
    live: BTreeMap<(i32, Vec<u8>), Vec<u8>>,
    tombstones: HashMap<Vec<u8>, usize>,
    records: usize,
}

async fn read_changelog(world: &World) -> Changelog {
    let topology = processor::topology::describe(&world.application_id, &world.topics);
    let topic = topology
        .changelog(ORDERS_STORE)
        .expect("the orders store has a changelog")
        .to_owned();
    let records = world
        .read_to_end(&[&topic], Isolation::ReadCommitted, 2 * MINUTE)
        .await;
    let mut live = BTreeMap::new();
    let mut tombstones: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut ordered = records.clone();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    for record in ordered {
        let key = record.key.expect("changelog records have keys");
        match record.payload {
            Some(value) => {
                live.insert((record.partition, key), value);
            }
            None => {
                live.remove(&(record.partition, key.clone()));
                *tombstones.entry(key).or_default() += 1;
            }
        }
    }
    Changelog {
        live,
        tombstones,
        records: records.len(),
    }
}

/// The live order keys (not the task's own keys, which start with a zero byte).
fn live_orders(changelog: &Changelog) -> BTreeSet<String> {
    changelog
        .live
        .keys()
        .filter(|(_, k)| k.first().is_some_and(|&b| b != 0))
        .map(|(_, k)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

fn ids(round: usize) -> Vec<String> {
    (0..ROUND).map(|i| format!("r{round}-{i}")).collect()
}

#[tokio::test]
async fn a_short_retention_bounds_the_store_tombstones_its_changelog_and_keeps_the_read_model() {
    let world = World::new("retention").await;
    world.seed(2, 1_000_000).await;
    let (running, token) = world.start(&["--order-retention", "2s"]).await;
    let sku = "SKU-000000";

    // Ten rounds a second apart; round 6 also repeats round 0 (6 s old: decided again) and
    // round 5 (1 s old: duplicates).
    let mut sent = 0;
    let mut peak_live = 0;
    for round in 0..ROUNDS {
        let started = Instant::now();
        let mut orders: Vec<_> = ids(round).iter().map(|id| order(id, &[(sku, 1)])).collect();
        if round == 6 {
            orders.extend(ids(0).iter().map(|id| order(id, &[(sku, 1)])));
            orders.extend(ids(5).iter().map(|id| order(id, &[(sku, 1)])));
        }
        sent += orders.len();
        world.send_orders(&orders).await;
        if round >= 7 {
            // Bounded while orders flow: about the last two seconds' orders (and what the
            // sweep, every 200 ms of a commit, has not reached yet), not everything sent.
            let decided = (round + 1) * ROUND + if round >= 6 { ROUND } else { 0 };
            world.outcomes(decided, MINUTE).await;
            let live = live_orders(&read_changelog(&world).await).len();
            peak_live = peak_live.max(live);
            assert!(
                live <= 5 * ROUND,
                "round {round}: {live} orders live in the store of {decided} decided"
            );
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    }
    // Every order decided once, round 0's twice, round 5's repeats ignored.
    let decided = ROUNDS * ROUND + ROUND;
    assert_eq!(sent, decided + ROUND);
    world.outcomes(decided, MINUTE).await;

    // Three seconds later, orders that move every partition's time on: everything before
    // them has expired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ticks: Vec<String> = (0..40).map(|i| format!("tick-{i}")).collect();
    let orders: Vec<_> = ticks.iter().map(|id| order(id, &[(sku, 1)])).collect();
    world.send_orders(&orders).await;
    let outcomes = world.outcomes(decided + ticks.len(), MINUTE).await;
    let per_order = outcomes.per_order();
    for round in 0..ROUNDS {
        let expected = if round == 0 { 2 } else { 1 };
        for id in ids(round) {
            assert_eq!(per_order.get(&id), Some(&expected), "outcomes of {id}");
        }
    }

    // Round 0's ids took stock twice: their old reservations were forgotten, not replayed.
    let stock = support::final_stock(&world.inventory_updates().await);
    assert_eq!(stock[sku], 1_000_000 - (decided + ticks.len()) as i64);

    // `processor audit` given the run's retention finds no difference from the clerk; with
    // the default (7 days) it counts round 0's repeats as duplicates, so their second
    // outcomes (and the stock they took) differ.
    let audit = |retention: &str| {
        let output = std::process::Command::new(support::processor_binary())
            .args(world.connection_flags())
            .args(["audit", "--order-retention", retention])
            .output()
            .expect("the processor binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let (code, report) = audit("2s");
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("orders compared: {} ", decided + ticks.len())),
        "{report}"
    );
    let (code, report) = audit("7d");
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("  more than one outcome: {ROUND}\n")),
        "{report}"
    );

    // The sweep deletes what expired, oldest first: wait until only the ticks are live.
    let ticks_set: BTreeSet<String> = ticks.iter().cloned().collect();
    let deadline = Instant::now() + MINUTE;
    let changelog = loop {
        let changelog = read_changelog(&world).await;
        if live_orders(&changelog) == ticks_set || Instant::now() > deadline {
            break changelog;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let live = live_orders(&changelog);
    assert_eq!(
        live.len(),
        ticks.len(),
        "a compaction keeps the last retention's orders only: {:?}",
        live.difference(&ticks_set).take(10).collect::<Vec<_>>()
    );
    assert_eq!(live, ticks_set);
    // One tombstone per expiry: round 0's ids expired twice.
    for round in 0..ROUNDS {
        let expected = if round == 0 { 2 } else { 1 };
        for id in ids(round) {
            assert_eq!(
                changelog.tombstones.get(id.as_bytes()),
                Some(&expected),
                "tombstones of {id}"
            );
        }
    }
    // The index keeps the live orders only, and each expired order's index key was deleted.
    let indexed: BTreeSet<String> = changelog
        .live
        .keys()
        .filter_map(|(_, k)| keys::parse_expiry(k))
        .map(|(_, id)| id.to_owned())
        .collect();
    assert_eq!(indexed, ticks_set, "the index holds the live orders");
    let index_tombstones: usize = changelog
        .tombstones
        .iter()
        .filter(|(k, _)| keys::parse_expiry(k).is_some())
        .map(|(_, n)| n)
        .sum();
    assert_eq!(index_tombstones, decided, "one index tombstone per expiry");
    assert!(
        changelog.live.len() < changelog.records / 4,
        "{} live keys of {} changelog records",
        changelog.live.len(),
        changelog.records
    );
    println!(
        "changelog: {} records, {} live keys after compaction, peak {peak_live} live orders",
        changelog.records,
        changelog.live.len()
    );

    // The read model keeps every decided order: no tombstone deleted a row.
    let pool = world.pg().await;
    let all: BTreeSet<String> = (0..ROUNDS).flat_map(ids).chain(ticks).collect();
    let deadline = Instant::now() + MINUTE;
    loop {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT order_id, status FROM orders")
            .fetch_all(&pool)
            .await
            .expect("the orders table reads");
        let shown: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
        if shown == all {
            assert!(rows.iter().all(|(_, status)| status == "CONFIRMED"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read model shows {} of {} orders; missing e.g. {:?}",
            shown.len(),
            all.len(),
            all.difference(&shown).take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Then the broker's log cleaner compacts the changelog for real. Its segments now roll
    // every 100 ms and any dirt is worth cleaning; the cleaner looks every 15 s (Kafka's
    // default). An order a second keeps the changelog growing, so its segments roll and the
    // cleaner can reach everything written before. The expired orders' values go; what the
    // changelog then restores is the last retention's orders.
    let topic = processor::topology::describe(&world.application_id, &world.topics)
        .changelog(ORDERS_STORE)
        .expect("the orders store has a changelog")
        .to_owned();
    compact_eagerly(&world.bootstrap, &topic).await;
    let expired: BTreeSet<Vec<u8>> = (0..ROUNDS).flat_map(ids).map(String::into_bytes).collect();
    let expired_values = |records: &[testkit::kafka::Record]| {
        records
            .iter()
            .filter(|r| r.payload.is_some())
            .filter(|r| r.key.as_ref().is_some_and(|k| expired.contains(k)))
            .count()
    };
    let before = world
        .read_to_end(&[&topic], Isolation::ReadCommitted, MINUTE)
        .await;
    assert!(
        expired_values(&before) >= decided,
        "before the cleaner, the expired orders' values are there (one a decision at least): {}",
        expired_values(&before)
    );
    let started = Instant::now();
    let mut late = 0;
    let after = loop {
        world
            .send_orders(&[order(&format!("late-{late}"), &[(sku, 1)])])
            .await;
        late += 1;
        let records = world
            .read_to_end(&[&topic], Isolation::ReadCommitted, MINUTE)
            .await;
        if expired_values(&records) == 0 {
            break records;
        }
        assert!(
            started.elapsed() < 3 * MINUTE,
            "the cleaner compacted the changelog within 3 minutes: {} values of expired orders left of {}",
            expired_values(&records),
            expired_values(&before)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // What the compacted changelog restores is the store as it is now: the late orders of the
    // last retention (the ticks expired too, as the late orders moved time on), and nothing
    // older.
    let restored = live_orders(&read_changelog(&world).await);
    assert!(
        !restored.is_empty() && restored.iter().all(|id| id.starts_with("late-")),
        "the compacted changelog holds the last retention's orders only: {restored:?}"
    );
    assert!(
        after.len() < before.len(),
        "{} < {}",
        after.len(),
        before.len()
    );
    println!(
        "compacted by the broker after {:?}: {} changelog records before, {} after",
        started.elapsed(),
        before.len(),
        after.len()
    );

    token.cancel();
    running.wait().await.expect("the processor stops cleanly");
}

/// Makes the broker compact `topic` as soon as it can: segments roll every 100 ms, any dirt
/// is worth cleaning, tombstones go at once. (A non-incremental alter replaces every dynamic
/// config of the topic, so the compaction policy is given again.)
async fn compact_eagerly(bootstrap: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client");
    let config = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "0");
    let results = admin
        .alter_configs(&[config], &AdminOptions::new())
        .await
        .expect("the alter request is answered");
    for result in results {
        result.unwrap_or_else(|e| panic!("{topic}'s config is altered: {e:?}"));
    }
}
