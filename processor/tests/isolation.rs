//! What read_committed and read_uncommitted readers see, record by record, when transactions
//! abort: one aborted by hand (an order on the input topic and a fake outcome), and the
//! processor's own, left open by a processor binary frozen with SIGSTOP mid-transaction and
//! killed, then aborted by its restart (which fences its transactional ids).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use schemas::{OrderConfirmed, now_millis};
use support::{MINUTE, OutcomeAt, World, order, per_order};
use testkit::kafka::end_offsets;
use testkit::{Isolation, unique};

/// Produces `records` (topic, key, payload) in one transaction of a producer of its own, and
/// commits or aborts it.
async fn transaction(world: &World, records: Vec<(String, String, Vec<u8>)>, commit: bool) {
    let config = {
        let mut config = world.connection.client_config();
        config.set("transactional.id", unique("hand-made-txn"));
        config
    };
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = config.create().expect("a transactional producer");
        let timeout = Duration::from_secs(30);
        producer.init_transactions(timeout).expect("init");
        producer.begin_transaction().expect("begin");
        for (topic, key, payload) in &records {
            producer
                .send(BaseRecord::to(topic).key(key).payload(payload))
                .map_err(|(error, _)| error)
                .expect("queued");
        }
        producer.flush(timeout).expect("delivered");
        if commit {
            producer.commit_transaction(timeout).expect("committed");
        } else {
            producer.abort_transaction(timeout).expect("aborted");
        }
    })
    .await
    .expect("the producer ran");
}

/// The outcome records above the last stable offset of their partition: in transactions not
/// decided yet.
async fn undecided(world: &World) -> Vec<OutcomeAt> {
    let topics = [
        world.topics.orders_confirmed.as_str(),
        world.topics.orders_rejected.as_str(),
    ];
    let stable = end_offsets(&world.bootstrap, &topics, Isolation::ReadCommitted);
    world
        .outcomes_at(Isolation::ReadUncommitted)
        .await
        .into_iter()
        .filter(|o| o.offset >= stable[&(o.topic.clone(), o.partition)])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_records_are_seen_by_read_uncommitted_only_and_each_order_has_one_outcome() {
    let world = World::new("isolation").await;
    world.seed(40, 1_000).await;
    let state = tempfile::tempdir().expect("state dir");
    // Long transactions (commits every 2 s, or after 0.5 s when the input is drained), so a
    // SIGSTOP finds one open with outcomes in it.
    let flags = ["--commit-interval-ms", "2000"];
    let mut processor = world.spawn_processor("p1", state.path(), &flags);
    processor.wait_ready(MINUTE).await;

    // By hand: an order on the input topic and a fake outcome, in a transaction that aborts;
    // then an order in one that commits.
    let aborted_order = world
        .codec
        .encode(&order("aborted-input", &[("SKU-000001", 1)]))
        .await
        .expect("encodes");
    let fake_outcome = world
        .codec
        .encode(&OrderConfirmed {
            order_id: "aborted-output".into(),
            customer_id: "customer-1".into(),
            currency: "EUR".into(),
            lines: Vec::new(),
            total_cents: 0,
            created_at: now_millis(),
            confirmed_at: now_millis(),
        })
        .await
        .expect("encodes");
    transaction(
        &world,
        vec![
            (
                world.topics.orders.clone(),
                "aborted-input".into(),
                aborted_order,
            ),
            (
                world.topics.orders_confirmed.clone(),
                "aborted-output".into(),
                fake_outcome,
            ),
        ],
        false,
    )
    .await;
    let committed_order = world
        .codec
        .encode(&order("committed-input", &[("SKU-000001", 1)]))
        .await
        .expect("encodes");
    transaction(
        &world,
        vec![(
            world.topics.orders.clone(),
            "committed-input".into(),
            committed_order,
        )],
        true,
    )
    .await;

    // Orders flow; freeze the processor until it is caught with outcomes in an open
    // transaction, then kill it there.
    let generator = world.spawn_generator(&[
        "--rate",
        "250",
        "--count",
        "5000",
        "--synthetic-skus",
        "40",
        "--lines-max",
        "3",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let mut attempts = 0;
    let caught = loop {
        attempts += 1;
        processor.signal("STOP");
        // A commit the broker was already finishing completes within milliseconds: take two
        // looks a second apart and keep what stayed undecided.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first: HashSet<OutcomeAt> = undecided(&world).await.into_iter().collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second: HashSet<OutcomeAt> = undecided(&world).await.into_iter().collect();
        let caught: Vec<OutcomeAt> = first.intersection(&second).cloned().collect();
        if !caught.is_empty() {
            break caught;
        }
        assert!(
            started.elapsed() < MINUTE,
            "no open transaction with outcomes caught in {attempts} SIGSTOPs"
        );
        processor.signal("CONT");
        tokio::time::sleep(Duration::from_millis(400 + 137 * (attempts % 7))).await;
    };
    eprintln!(
        "caught {} outcomes in an open transaction (attempt {attempts}), killing the processor",
        caught.len()
    );
    processor.kill();

    // The restart fences the dead instance's transactional ids: its transaction aborts.
    let mut processor = world.spawn_processor("p2", state.path(), &flags);
    processor.wait_ready(2 * MINUTE).await;
    let summary = generator.await.expect("the generator ran");
    let orders = (summary.valid + summary.invalid) as usize + 1; // and committed-input
    world.outcomes(orders, 3 * MINUTE).await;
    processor.signal("TERM");
    let status = processor.wait_exit(MINUTE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the restarted processor drains and exits 0: {status:?}"
    );

    let committed = world.outcomes_at(Isolation::ReadCommitted).await;
    let uncommitted = world.outcomes_at(Isolation::ReadUncommitted).await;
    let at = |o: &OutcomeAt| (o.topic.clone(), o.partition, o.offset);
    let committed_at: HashSet<_> = committed.iter().map(at).collect();
    let uncommitted_at: HashSet<_> = uncommitted.iter().map(at).collect();
    let per_committed = per_order(&committed);
    eprintln!(
        "outcome records: {} read_committed, {} read_uncommitted; {} distinct orders",
        committed.len(),
        uncommitted.len(),
        per_committed.len()
    );

    // read_committed: exactly one outcome per order, never an aborted order or outcome.
    assert_eq!(per_committed.len(), orders, "every order has an outcome");
    let repeated: Vec<_> = per_committed.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        repeated.is_empty(),
        "one outcome per order under read_committed: {repeated:?}"
    );
    assert!(
        per_committed.contains_key("committed-input"),
        "the committed order is decided"
    );
    for id in ["aborted-input", "aborted-output"] {
        assert!(
            !per_committed.contains_key(id),
            "{id} is invisible to read_committed"
        );
    }
    assert!(
        committed_at.is_subset(&uncommitted_at),
        "read_uncommitted sees every committed record"
    );

    // read_uncommitted: the aborted records are there.
    assert!(
        uncommitted.iter().any(|o| o.order_id == "aborted-output"),
        "the hand-aborted outcome is visible to read_uncommitted"
    );
    assert!(
        !uncommitted.iter().any(|o| o.order_id == "aborted-input"),
        "an aborted input order is never decided, even tentatively"
    );
    for o in &caught {
        assert!(
            uncommitted_at.contains(&at(o)),
            "{o:?}, seen in the killed processor's open transaction, is still in the topic"
        );
        assert!(
            !committed_at.contains(&at(o)),
            "{o:?} was in the killed processor's transaction, which aborted: read_committed \
             must not see it"
        );
        assert_eq!(
            per_committed.get(&o.order_id),
            Some(&1),
            "{}, whose outcome aborted, was decided again, once",
            o.order_id
        );
    }
    let aborted = uncommitted.len().saturating_sub(committed.len());
    assert!(
        aborted > caught.len(),
        "read_uncommitted sees the aborted outcomes too: {aborted} extra records, \
         {} caught plus the hand-made one",
        caught.len()
    );
}
