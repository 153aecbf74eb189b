//! Orders written with an older, BACKWARD-compatible version of the OrderCreated contract
//! are decided, not dead-lettered: the codec resolves the writer's schema (named by the
//! record's id) against the contract compiled into the processor.
//!
//! The older version here is the contract as it might have been: unit prices as `int` (since
//! widened to `long`, a promotion Avro resolves) and an optional `channel` field (since
//! dropped; a reader ignores a field it does not know). It is registered first, so the
//! processor's own registration at start makes the current contract version 2.

mod support;

use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value;
use schemas::topics::value_subject;
use schemas::{Registry, now_millis};
use support::{MINUTE, World, framed, order};
use testkit::Isolation;

/// OrderCreated, version 1.
const ORDER_CREATED_V1: &str = r#"{
  "type": "record",
  "name": "OrderCreated",
  "namespace": "io.stockflow.events",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "customer_id", "type": "string"},
    {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "currency", "type": "string"},
    {"name": "channel", "type": ["null", "string"], "default": null},
    {
      "name": "lines",
      "type": {
        "type": "array",
        "items": {
          "type": "record",
          "name": "OrderLine",
          "fields": [
            {"name": "sku", "type": "string"},
            {"name": "quantity", "type": "int"},
            {"name": "unit_price_cents", "type": "int"}
          ]
        }
      }
    }
  ]
}"#;

/// A v1 order of one line.
fn v1_order(id: &str, sku: &str, quantity: i32, unit_price_cents: i32) -> Value {
    let line = Value::Record(vec![
        ("sku".into(), Value::String(sku.into())),
        ("quantity".into(), Value::Int(quantity)),
        ("unit_price_cents".into(), Value::Int(unit_price_cents)),
    ]);
    Value::Record(vec![
        ("order_id".into(), Value::String(id.into())),
        ("customer_id".into(), Value::String("customer-v1".into())),
        ("created_at".into(), Value::TimestampMillis(now_millis())),
        ("currency".into(), Value::String("EUR".into())),
        (
            "channel".into(),
            Value::Union(1, Box::new(Value::String("web".into()))),
        ),
        ("lines".into(), Value::Array(vec![line])),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_written_with_an_older_schema_version_is_decided() {
    let world = World::new("evolution").await;
    let registry = Registry::new(&world.registry_url).expect("a registry client");
    let subject = value_subject(&world.topics.orders);
    let v1 = registry
        .register(&subject, ORDER_CREATED_V1)
        .await
        .expect("version 1 registers");
    // Seeding and the processor's start register the current contracts: version 2.
    world.seed(0, 0).await;
    let (running, token) = world.start(&[]).await;
    let versions: Vec<u32> = serde_json::from_str(
        &reqwest::get(format!(
            "{}/subjects/{subject}/versions",
            world.registry_url
        ))
        .await
        .expect("the registry answers")
        .text()
        .await
        .expect("a body"),
    )
    .expect("a list of versions");
    assert_eq!(
        versions.len(),
        2,
        "v1 and the current contract: {versions:?}"
    );

    let schema = Schema::parse_str(ORDER_CREATED_V1).expect("v1 parses");
    // Two v1 orders (the second after the codec has seen the v1 id once), then a current one.
    for id in ["v1-first", "v1-second"] {
        let bytes = framed(&schema, v1.id, v1_order(id, "SKU-BT-MOUSE", 1, 1525));
        world.send_raw(&world.topics.orders, id, &bytes).await;
    }
    let current = order("v2", &[("SKU-MONITOR-STAND", 1)]);
    let current_bytes = world.codec.encode(&current).await.expect("encodes");
    assert_ne!(
        current_bytes[1..5],
        v1.id.to_be_bytes(),
        "the current contract has another schema id than v1"
    );
    world.send_orders(&[current]).await;

    let outcomes = world.outcomes(3, MINUTE).await;
    for id in ["v1-first", "v1-second"] {
        let confirmed = outcomes
            .confirmed(id)
            .unwrap_or_else(|| panic!("{id} is confirmed: rejected {:?}", outcomes.rejected(id)));
        assert_eq!(confirmed.customer_id, "customer-v1");
        assert_eq!(confirmed.currency, "EUR");
        assert_eq!(confirmed.lines.len(), 1);
        assert_eq!(
            (
                confirmed.lines[0].sku.as_str(),
                confirmed.lines[0].quantity,
                confirmed.lines[0].unit_price_cents
            ),
            ("SKU-BT-MOUSE", 1, 1525),
            "the v1 line, its int price read as a long"
        );
        assert_eq!(confirmed.total_cents, 1525);
    }
    assert!(outcomes.confirmed("v2").is_some(), "the current order too");
    assert_eq!(outcomes.per_order().len(), 3);

    assert_eq!(
        running
            .metrics
            .dlq_records
            .with_label_values(&[world.topics.orders.as_str()])
            .get(),
        0,
        "nothing dead-lettered"
    );
    let dead = world
        .read_to_end(
            &[world.topics.orders_dlq.as_str()],
            Isolation::ReadUncommitted,
            Duration::from_secs(30),
        )
        .await;
    assert!(dead.is_empty(), "the dead-letter topic is empty: {dead:?}");

    token.cancel();
    running.wait().await.expect("stops cleanly");
}
