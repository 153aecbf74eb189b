//! The processor end to end against real Kafka and a real schema registry: the sample catalog,
//! compensation, bad input, co-partitioning, and exactly-once at scale.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use schemas::{
    AdjustmentMode, AdjustmentReason, InventoryAdjusted, InventoryChangeReason, InventoryUpdated,
    RejectionReason, now_millis,
};
use support::{World, final_stock, initial_stock, order};
use testkit::Isolation;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_sample_catalog_scenario() {
    let world = World::new("sample").await;
    world.seed(0, 0).await;
    let (running, token) = world.start(&[]).await;

    let steps: [(&str, &[(&str, i32)]); 6] = [
        ("stand-1", &[("SKU-MONITOR-STAND", 1)]),
        ("stand-2", &[("SKU-MONITOR-STAND", 1)]),
        ("mouse-2", &[("SKU-BT-MOUSE", 2)]),
        ("mouse-3", &[("SKU-BT-MOUSE", 3)]),
        ("keyboard-1", &[("SKU-KEYBOARD", 1)]),
        ("unknown-1", &[("SKU-DOES-NOT-EXIST", 1)]),
    ];
    // One at a time, so that each sees the stock the previous one left.
    for (i, (id, lines)) in steps.iter().enumerate() {
        world.send_orders(&[order(id, lines)]).await;
        world.outcomes(i + 1, MINUTE).await;
    }
    let outcomes = world.outcomes(6, MINUTE).await;
    assert_eq!(
        outcomes.per_order().values().copied().collect::<Vec<_>>(),
        vec![1; 6],
        "one outcome each"
    );

    let stand = outcomes
        .confirmed("stand-1")
        .expect("Monitor Stand x1 is confirmed");
    assert_eq!(stand.total_cents, 100);
    let rejected = outcomes
        .rejected("stand-2")
        .expect("Monitor Stand x1 again is rejected");
    assert_eq!(rejected.reason, RejectionReason::InsufficientStock);
    assert_eq!(rejected.lines[0].available, Some(0));
    assert!(
        outcomes.confirmed("mouse-2").is_some(),
        "Bluetooth Mouse x2 is confirmed"
    );
    assert_eq!(
        outcomes.rejected("mouse-3").map(|r| r.reason),
        Some(RejectionReason::InsufficientStock)
    );
    assert_eq!(
        outcomes.rejected("keyboard-1").map(|r| r.reason),
        Some(RejectionReason::InsufficientStock)
    );
    let unknown = outcomes
        .rejected("unknown-1")
        .expect("the unknown sku is rejected");
    assert_eq!(unknown.reason, RejectionReason::UnknownSku);
    assert_eq!(unknown.lines[0].available, None);

    let updates: Vec<InventoryUpdated> = world
        .read(
            &world.topics.inventory_updated,
            Isolation::ReadCommitted,
            4 + 2,
            MINUTE,
        )
        .await;
    let stand_reserved = updates
        .iter()
        .find(|u| u.sku == "SKU-MONITOR-STAND" && u.reason == InventoryChangeReason::Reserved)
        .expect("an InventoryUpdated for the stand");
    assert_eq!(
        (
            stand_reserved.available_after,
            stand_reserved.order_id.as_deref()
        ),
        (0, Some("stand-1"))
    );
    let stock = final_stock(&updates);
    assert_eq!(stock["SKU-MONITOR-STAND"], 0);
    assert_eq!(stock["SKU-BT-MOUSE"], 0);

    // The read model shows the same, within a few sync intervals.
    world.check_read_model(&outcomes, MINUTE).await;
    let pg = world.pg().await;
    let stock: Vec<(String, i64, i64, Option<String>)> =
        sqlx::query_as("SELECT sku, available, reserved, product_name FROM inventory ORDER BY sku")
            .fetch_all(&pg)
            .await
            .expect("inventory rows");
    assert_eq!(
        stock,
        vec![
            ("SKU-BT-MOUSE".into(), 0, 2, Some("Bluetooth Mouse".into())),
            (
                "SKU-KEYBOARD".into(),
                0,
                0,
                Some("Wireless Keyboard".into())
            ),
            (
                "SKU-MONITOR-STAND".into(),
                0,
                1,
                Some("Monitor Stand".into())
            ),
            ("SKU-USBC-HUB".into(), 0, 0, Some("USB-C Hub".into())),
        ]
    );
    let orders: Vec<(String, String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT o.order_id, o.status, o.reason, o.total_cents, count(l.line_no)
         FROM orders o LEFT JOIN order_lines l USING (order_id)
         GROUP BY o.order_id ORDER BY o.order_id",
    )
    .fetch_all(&pg)
    .await
    .expect("order rows");
    let rejected = |id: &str, reason: &str| (id.into(), "REJECTED".into(), Some(reason.into()));
    assert_eq!(
        orders
            .iter()
            .map(|(id, status, reason, _, _)| (id.clone(), status.clone(), reason.clone()))
            .collect::<Vec<(String, String, Option<String>)>>(),
        vec![
            rejected("keyboard-1", "INSUFFICIENT_STOCK"),
            ("mouse-2".into(), "CONFIRMED".into(), None),
            rejected("mouse-3", "INSUFFICIENT_STOCK"),
            ("stand-1".into(), "CONFIRMED".into(), None),
            rejected("stand-2", "INSUFFICIENT_STOCK"),
            rejected("unknown-1", "UNKNOWN_SKU"),
        ]
    );
    assert!(
        orders.iter().all(|(_, _, _, _, lines)| *lines == 1),
        "each order has its one line: {orders:?}"
    );

    token.cancel();
    running.wait().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_short_line_rejects_the_order_and_releases_the_others() {
    let world = World::new("release").await;
    world.seed(2, 5).await;
    let (running, token) = world.start(&[]).await;

    world
        .send_orders(&[order(
            "two-lines",
            &[("SKU-000000", 2), ("SKU-KEYBOARD", 1)],
        )])
        .await;
    let outcomes = world.outcomes(1, MINUTE).await;
    let rejected = outcomes.rejected("two-lines").expect("rejected");
    assert_eq!(rejected.reason, RejectionReason::InsufficientStock);
    assert_eq!(rejected.lines.len(), 1, "only the short line is listed");
    assert_eq!(rejected.lines[0].sku, "SKU-KEYBOARD");

    // 6 initial stock updates, then the reservation and its release.
    let updates: Vec<InventoryUpdated> = world
        .read(
            &world.topics.inventory_updated,
            Isolation::ReadCommitted,
            8,
            MINUTE,
        )
        .await;
    let hub: Vec<(InventoryChangeReason, i64, i64)> = updates
        .iter()
        .filter(|u| u.sku == "SKU-000000")
        .map(|u| (u.reason, u.change, u.available_after))
        .collect();
    assert_eq!(
        hub,
        vec![
            (InventoryChangeReason::Restocked, 5, 5),
            (InventoryChangeReason::Reserved, -2, 3),
            (InventoryChangeReason::Released, 2, 5),
        ],
        "reserved, then released: stock back where it was"
    );

    token.cancel();
    running.wait().await.expect("stops cleanly");
}

#[tokio::test]
async fn bad_records_are_dead_lettered_and_the_pipeline_goes_on() {
    let world = World::new("dlq").await;
    world.seed(0, 0).await;
    let (running, token) = world.start(&[]).await;

    world
        .send_raw(
            &world.topics.orders,
            "garbage-1",
            b"\xde\xad\xbe\xef not avro",
        )
        .await;
    world
        .send_raw(
            &world.topics.orders,
            "unknown-schema",
            &[0, 0x7f, 0xff, 0xff, 0x01, 2, 4],
        )
        .await;
    let adjustment = world
        .codec
        .encode(&InventoryAdjusted {
            adjustment_id: "x".into(),
            sku: "SKU-BT-MOUSE".into(),
            mode: AdjustmentMode::Delta,
            quantity: 1,
            reason: AdjustmentReason::Restock,
            adjusted_at: now_millis(),
            product_name: None,
            unit_price_cents: None,
        })
        .await
        .expect("encodes");
    world
        .send_raw(&world.topics.orders, "wrong-contract", &adjustment)
        .await;
    world
        .send_raw(
            &world.topics.inventory_adjustments,
            "SKU-BT-MOUSE",
            b"also garbage",
        )
        .await;
    world
        .send_orders(&[order("after-garbage", &[("SKU-BT-MOUSE", 1)])])
        .await;

    let outcomes = world.outcomes(1, MINUTE).await;
    assert!(
        outcomes.confirmed("after-garbage").is_some(),
        "the order after the garbage is decided"
    );

    let dead = world.read_raw(&world.topics.orders_dlq, 4, MINUTE).await;
    assert_eq!(dead.len(), 4, "every bad record is dead-lettered once");
    let garbage = dead
        .iter()
        .find(|r| r.key.as_deref() == Some(b"garbage-1"))
        .expect("the garbage");
    assert_eq!(
        garbage.payload.as_deref(),
        Some(&b"\xde\xad\xbe\xef not avro"[..]),
        "original bytes"
    );
    assert_eq!(
        garbage.header("stockflow.source.topic").as_deref(),
        Some(world.topics.orders.as_str())
    );
    assert!(
        garbage
            .header("stockflow.source.partition")
            .is_some_and(|p| p.parse::<i32>().is_ok())
    );
    assert!(
        garbage
            .header("stockflow.source.offset")
            .is_some_and(|o| o.parse::<i64>().is_ok())
    );
    assert!(
        garbage
            .header("stockflow.error")
            .is_some_and(|e| !e.is_empty())
    );
    let wrong = dead
        .iter()
        .find(|r| r.key.as_deref() == Some(b"wrong-contract"))
        .expect("the wrong contract");
    assert!(
        wrong
            .header("stockflow.error")
            .is_some_and(|e| e.contains("InventoryAdjusted")),
        "names what it found"
    );
    let from_adjustments = dead
        .iter()
        .filter(|r| {
            r.header("stockflow.source.topic").as_deref()
                == Some(world.topics.inventory_adjustments.as_str())
        })
        .count();
    assert_eq!(from_adjustments, 1);
    assert_eq!(
        running
            .metrics
            .dlq_records
            .with_label_values(&[world.topics.orders.as_str()])
            .get(),
        3
    );

    token.cancel();
    running.wait().await.expect("stops cleanly");
}

#[tokio::test]
async fn mismatched_partition_counts_are_refused() {
    let world = World::new("copart").await;
    let config = world.connection.client_config();
    plumbing::admin::ensure_topics(
        &config,
        &[
            plumbing::admin::TopicSpec::new(&world.topics.orders, 4),
            plumbing::admin::TopicSpec::new(
                format!("{}-line-results-repartition", world.application_id),
                3,
            ),
        ],
    )
    .await
    .expect("topics created");
    let error = processor::app::start(
        &world.connection,
        &world.run_args(&[]),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("refuses to start");
    let message = format!("{error:#}");
    assert!(
        message.contains("line-results-repartition has 3 partitions but must have 4"),
        "{message}"
    );
}

#[tokio::test]
async fn a_hundred_thousand_orders_each_get_exactly_one_outcome() {
    let world = World::new("scale").await;
    let synthetic = 40;
    world.seed(synthetic, 300).await;
    let initial = initial_stock(synthetic, 300);
    let (running, token) = world.start(&[]).await;

    // Restocks arrive while the orders do.
    let restocks: Vec<InventoryAdjusted> = (0..200)
        .map(|i| InventoryAdjusted {
            adjustment_id: format!("restock-{i}"),
            sku: generator::catalog::synthetic_sku(i % synthetic),
            mode: AdjustmentMode::Delta,
            quantity: 25,
            reason: AdjustmentReason::Restock,
            adjusted_at: now_millis(),
            product_name: None,
            unit_price_cents: None,
        })
        .collect();
    let mut restocked: HashMap<String, i64> = HashMap::new();
    for r in &restocks {
        *restocked.entry(r.sku.clone()).or_default() += r.quantity;
    }
    let adjustments = {
        let connection = world.connection.clone();
        let topic = world.topics.inventory_adjustments.clone();
        tokio::spawn(async move {
            let mut publisher = generator::publish::Publisher::connect(&connection, 4)
                .await
                .expect("publisher");
            for restock in &restocks {
                publisher.send(&topic, restock).await.expect("sends");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            publisher.finish().await.expect("delivered");
        })
    };
    let summary = world
        .run_generator(
            100_000,
            &[
                "--synthetic-skus",
                &synthetic.to_string(),
                "--lines-max",
                "4",
                "--duplicate-rate",
                "0.01",
                "--invalid-rate",
                "0.01",
            ],
        )
        .await;
    adjustments.await.expect("restocks sent");
    let distinct = (summary.valid + summary.invalid) as usize;

    world
        .wait_for_outcomes(&running.metrics, distinct as u64, 5 * MINUTE)
        .await;
    assert_eq!(
        running.metrics.duplicate_orders.get(),
        summary.duplicates,
        "every duplicate counted"
    );
    // Let the releases of the last rejected orders land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = world.check_invariants(distinct, &initial, &restocked).await;
    // Every inventory row equals the processor's state and every order has its row.
    world.check_read_model(&outcomes, MINUTE).await;

    token.cancel();
    running.wait().await.expect("stops cleanly");
}

/// `processor` with `global` flags, then `run` for `world` with `run` flags.
fn run_processor(world: &World, global: &[&str], run: &[&str]) -> std::process::Output {
    let state = world.state.path().to_string_lossy().into_owned();
    std::process::Command::new(support::processor_binary())
        .args(global)
        .args([
            "run",
            "--application-id",
            &world.application_id,
            "--state-dir",
            &state,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(run)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("SCHEMA_REGISTRY_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("the processor binary runs")
}

/// The `error:` lines of a failed command, after checking its exit code is 1.
fn one_error_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(output.status.code(), Some(1), "exit code 1: {stderr}");
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    errors[0].to_owned()
}

#[tokio::test]
async fn usage_errors_exit_2_and_unreachable_services_exit_1_leaving_nothing_behind() {
    let world = World::new("start-fails").await;
    let db = ["--database-url", &world.database_url];
    let schema = ["--database-schema", &world.database_schema];
    let kafka = ["--bootstrap-servers", &world.bootstrap];
    let registry = ["--schema-registry-url", &world.registry_url];
    let prefix = format!("{}-", world.name);
    let prefix = ["--topic-prefix", &prefix];
    let flags = |kafka: [&str; 2], registry: [&str; 2]| -> Vec<String> {
        [kafka, registry, prefix]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    // A usage error: clap's message and usage, exit code 2 (the convention).
    let bogus = run_processor(&world, &[], &["--bogus-flag"]);
    let stderr = String::from_utf8_lossy(&bogus.stderr);
    assert_eq!(bogus.status.code(), Some(2), "exit code 2: {stderr}");
    assert!(
        stderr.starts_with("error: unexpected argument '--bogus-flag' found")
            && stderr.contains("Usage: processor run"),
        "{stderr}"
    );
    let malformed = run_processor(&world, &[], &["--commit-interval-ms", "soon"]);
    assert_eq!(malformed.status.code(), Some(2), "{malformed:?}");

    // Each service unreachable in turn: one line naming it, exit code 1, and nothing created.
    let no_kafka = flags(["--bootstrap-servers", "127.0.0.1:9"], registry);
    let line = one_error_line(&run_processor(
        &world,
        &strs(&no_kafka),
        &[&db[..], &schema[..]].concat(),
    ));
    assert!(
        line.starts_with("error: Kafka at 127.0.0.1:9 is unreachable"),
        "{line}"
    );
    let no_registry = flags(kafka, ["--schema-registry-url", "http://127.0.0.1:9"]);
    let line = one_error_line(&run_processor(
        &world,
        &strs(&no_registry),
        &[&db[..], &schema[..]].concat(),
    ));
    assert!(
        line.starts_with("error: schema registry at http://127.0.0.1:9"),
        "{line}"
    );
    let line = one_error_line(&run_processor(
        &world,
        &strs(&flags(kafka, registry)),
        &[
            &[
                "--database-url",
                "postgres://stockflow:stockflow@127.0.0.1:9/stockflow",
            ][..],
            &schema[..],
        ]
        .concat(),
    ));
    assert_eq!(
        line,
        "error: PostgreSQL at 127.0.0.1:9/stockflow is unreachable: error communicating \
         with database: Connection refused (os error 111)",
        "one line naming the server"
    );

    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&world.database_schema)
            .fetch_one(&world.pg().await)
            .await
            .expect("PostgreSQL answers");
    assert!(
        !schema_exists,
        "no read-model schema {} after failed starts",
        world.database_schema
    );
    let topics = [
        world.topics.orders.as_str(),
        &world.topics.orders_confirmed,
        &world.topics.orders_dlq,
    ];
    let watermarks = testkit::kafka::high_watermarks(&world.bootstrap, &topics);
    assert!(watermarks.is_empty(), "no topics: {watermarks:?}");
    let subjects = schemas::Registry::new(&world.registry_url)
        .expect("a registry client")
        .subjects()
        .await
        .expect("the registry answers");
    assert!(
        !subjects.iter().any(|s| s.starts_with(&world.name)),
        "no subjects: {subjects:?}"
    );
}

#[tokio::test]
async fn instances_starting_together_share_the_read_model_schema() {
    // Two instances of one application start at once and both create and migrate the same
    // schema: neither may fail on the other's CREATE SCHEMA or migration.
    let world = World::new("schema-race").await;
    let connects = (0..4).map(|_| {
        processor::readmodel::postgres::connect(&world.database_url, &world.database_schema)
    });
    for result in futures::future::join_all(connects).await {
        result.expect("every instance connects and migrates");
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&world.database_schema)
    .fetch_one(&world.pg().await)
    .await
    .expect("counts tables");
    assert_eq!(
        tables, 5,
        "inventory, orders, order_lines, sync_progress, _sqlx_migrations"
    );
}
