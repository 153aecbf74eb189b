//! A schema registry outage: records whose schema ids the processor has seen keep being
//! decided from its cache; a record with an id it has not seen pauses its partition, which is
//! retried with a backoff instead of stopping the processor; and when the registry returns,
//! every order is decided once, with every invariant.
//!
//! Two worlds run side by side through the same outage: one in event-time order (the
//! default), where a paused order partition holds every decision back, as the one clerk would
//! wait for it; and one in arrival order, where the other partitions' orders go on being
//! decided during the outage.
//!
//! This test stops the registry every test shares, so it has a test binary of its own (cargo
//! runs test binaries one after another).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use processor::app::Running;
use schemas::topics::value_subject;
use schemas::{Contract, OrderCreated, Registry, now_millis};
use support::{MINUTE, World, framed, initial_stock, order};
use testkit::stack;
use tokio_util::sync::CancellationToken;

/// Orders with the current contract (whose id every processor has seen) per world.
const CURRENT: usize = 30;
/// Orders with a newer contract version, first seen during the outage, per world.
const NEWER: usize = 3;

/// The current OrderCreated contract plus an optional field: a BACKWARD-compatible version.
fn newer_contract() -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(OrderCreated::SCHEMA).expect("the contract is JSON");
    schema["fields"]
        .as_array_mut()
        .expect("a record's fields")
        .push(
            serde_json::json!({"name": "gift_note", "type": ["null", "string"], "default": null}),
        );
    schema.to_string()
}

/// A Confluent-framed order of the newer version, registered as `id`.
fn newer_order(schema: &Schema, id: u32, order_id: &str, sku: &str) -> Vec<u8> {
    let line = Value::Record(vec![
        ("sku".into(), Value::String(sku.into())),
        ("quantity".into(), Value::Int(1)),
        ("unit_price_cents".into(), Value::Long(100)),
    ]);
    let value = Value::Record(vec![
        ("order_id".into(), Value::String(order_id.into())),
        ("customer_id".into(), Value::String("customer-newer".into())),
        ("created_at".into(), Value::TimestampMillis(now_millis())),
        ("currency".into(), Value::String("EUR".into())),
        ("lines".into(), Value::Array(vec![line])),
        (
            "gift_note".into(),
            Value::Union(1, Box::new(Value::String("happy birthday".into()))),
        ),
    ]);
    framed(schema, id, value)
}

/// One world and its processor.
struct Side {
    world: World,
    running: Running,
    token: CancellationToken,
    skus: Vec<String>,
}

impl Side {
    async fn start(name: &str, extra: &[&str]) -> Self {
        let world = World::new(name).await;
        world.seed(4, 1_000).await;
        let (running, token) = world.start(extra).await;
        // The synthetic SKUs, stocked for every order here: each order is confirmed.
        let skus = initial_stock(4, 1_000)
            .into_iter()
            .filter_map(|(sku, stock)| (stock == 1_000).then_some(sku))
            .collect();
        Side {
            world,
            running,
            token,
            skus,
        }
    }

    fn current_orders(&self, phase: &str, count: usize) -> Vec<OrderCreated> {
        (0..count)
            .map(|i| {
                let sku = &self.skus[i % self.skus.len()];
                order(&format!("{phase}-{i}"), &[(sku.as_str(), 1)])
            })
            .collect()
    }

    fn decided(&self) -> u64 {
        self.running.metrics.orders_decided()
    }

    async fn health(&self) -> u16 {
        reqwest::get(format!("http://{}/health", self.running.metrics_addr))
            .await
            .expect("/health answers")
            .status()
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_pauses_the_partitions_that_need_it_and_nothing_is_lost() {
    let event_time = Side::start("registry-outage-et", &[]).await;
    let arrival = Side::start("registry-outage-ar", &["--decision-order", "arrival"]).await;
    let sides = [&event_time, &arrival];

    // Before the outage: the newer version is registered (nobody has used it yet), and one
    // order of each world is decided, so the current contract's id is in every cache.
    let registry = Registry::new(&event_time.world.registry_url).expect("a registry client");
    let newer_schema = Schema::parse_str(&newer_contract()).expect("the newer version parses");
    let mut newer_ids = Vec::new();
    for side in sides {
        let subject = value_subject(&side.world.topics.orders);
        let registered = registry
            .register(&subject, &newer_contract())
            .await
            .expect("a BACKWARD-compatible version registers");
        newer_ids.push(registered.id);
        let before = side.current_orders("before", 1);
        side.world.send_orders(&before).await;
        // The test's own codec learns the current contract's id, to write during the outage.
        side.world.codec.encode(&before[0]).await.expect("encodes");
    }
    for side in sides {
        side.world.outcomes(1, MINUTE).await;
    }

    let outage = stack().await.stop_registry().await;
    let stopped = Instant::now();
    let at_stop: Vec<u64> = sides.iter().map(|s| s.decided()).collect();
    for (side, newer_id) in sides.iter().zip(&newer_ids) {
        for i in 0..NEWER {
            let id = format!("newer-{i}");
            let sku = &side.skus[i % side.skus.len()];
            let bytes = newer_order(&newer_schema, *newer_id, &id, sku);
            side.world
                .send_raw(&side.world.topics.orders, &id, &bytes)
                .await;
        }
        // Encoded with the id the test's codec has cached: the registry is not needed.
        for order in side.current_orders("during", CURRENT) {
            let bytes = side.world.codec.encode(&order).await.expect("encodes");
            side.world
                .send_raw(&side.world.topics.orders, &order.order_id, &bytes)
                .await;
        }
    }

    // The processors pause what needs the registry and retry it; they stay up and healthy.
    let deadline = Instant::now() + MINUTE;
    while sides
        .iter()
        .any(|s| s.running.metrics.processing_retries.get() < 3)
    {
        assert!(
            Instant::now() < deadline,
            "a record with an unseen schema id is retried while the registry is down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for side in sides {
        let paused = side.running.metrics.paused_partitions.get();
        assert!(
            (1..=NEWER as i64).contains(&paused),
            "{}: the partitions of the newer orders are paused, and only they: {paused}",
            side.world.name
        );
        assert_eq!(
            side.health().await,
            200,
            "a paused partition is not ill health"
        );
        assert_eq!(
            side.running
                .metrics
                .dlq_records
                .with_label_values(&[&side.world.topics.orders])
                .get(),
            0,
            "nothing is dead-lettered for the registry's absence"
        );
    }
    // Arrival order: the orders of the partitions that are not paused are decided meanwhile.
    let deadline = Instant::now() + MINUTE;
    while arrival.decided() - at_stop[1] < (CURRENT / 3) as u64 {
        assert!(
            Instant::now() < deadline,
            "arrival order decides the other partitions' orders during the outage: {} of {CURRENT}",
            arrival.decided() - at_stop[1]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "during the outage ({:?}): decided {} (event time), {} (arrival) of {} each; retries {} and {}",
        stopped.elapsed(),
        event_time.decided() - at_stop[0],
        arrival.decided() - at_stop[1],
        CURRENT + NEWER,
        event_time.running.metrics.processing_retries.get(),
        arrival.running.metrics.processing_retries.get(),
    );

    outage.end().await;
    eprintln!("the registry was down for {:?}", stopped.elapsed());

    let distinct = 1 + NEWER + CURRENT;
    let initial = initial_stock(4, 1_000);
    for side in sides {
        let outcomes = side
            .world
            .check_invariants(distinct, &initial, &HashMap::new())
            .await;
        for i in 0..NEWER {
            let id = format!("newer-{i}");
            let confirmed = outcomes
                .confirmed(&id)
                .unwrap_or_else(|| panic!("{id} is confirmed: {:?}", outcomes.rejected(&id)));
            assert_eq!(confirmed.customer_id, "customer-newer");
        }
        assert_eq!(
            side.running.metrics.paused_partitions.get(),
            0,
            "every partition is resumed"
        );
    }
    for side in [event_time, arrival] {
        side.token.cancel();
        side.running.wait().await.expect("stops cleanly");
    }
}
