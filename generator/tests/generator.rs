//! The generator against real Kafka and a real schema registry: what it publishes is counted
//! and decoded with a plain rdkafka consumer and the codec.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use generator::app::{run_orders, seed};
use generator::cli::{Cli, Command};
use schemas::{AdjustmentReason, Codec, InventoryAdjusted, OrderCreated};
use testkit::{Isolation, Record, read_at_least, stack, unique};
use tokio_util::sync::CancellationToken;

/// Parses a generator command line against the test stack, with its own topic prefix.
async fn cli(prefix: &str, args: &[&str]) -> Cli {
    let stack = stack().await;
    let mut argv = vec![
        "generator",
        "--bootstrap-servers",
        &stack.bootstrap_servers,
        "--schema-registry-url",
        &stack.schema_registry_url,
        "--topic-prefix",
        prefix,
    ];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).expect("a valid command line")
}

async fn decode_all<C: schemas::Contract>(codec: &Codec, records: &[Record]) -> Vec<C> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        out.push(
            codec
                .decode(record.payload.as_deref().expect("a payload"))
                .await
                .expect("decodes"),
        );
    }
    out
}

#[tokio::test]
async fn seed_then_run_publish_exactly_the_expected_events() {
    let stack = stack().await;
    let prefix = format!("{}-", unique("gen"));
    let seed_cli = cli(
        &prefix,
        &[
            "seed",
            "--synthetic-skus",
            "10",
            "--synthetic-stock",
            "25",
            "--partitions",
            "3",
        ],
    )
    .await;
    let Command::Seed(seed_args) = &seed_cli.command else {
        unreachable!("parsed as seed")
    };
    let delivered = seed(&seed_cli.connection, seed_args).await.expect("seeds");
    assert_eq!(delivered.acknowledged, 14);

    let topics = seed_cli.connection.topics();
    let codec = Codec::new(&stack.schema_registry_url, &topics).expect("codec");
    let deadline = Duration::from_secs(60);
    let records = read_at_least(
        &stack.bootstrap_servers,
        &[topics.inventory_adjustments.as_str()],
        Isolation::ReadCommitted,
        14,
        deadline,
    )
    .await;
    assert_eq!(records.len(), 14, "exactly one adjustment per product");
    let adjustments: Vec<InventoryAdjusted> = decode_all(&codec, &records).await;
    let stock: HashMap<&str, i64> = adjustments
        .iter()
        .map(|a| (a.sku.as_str(), a.quantity))
        .collect();
    assert_eq!(stock["SKU-KEYBOARD"], 0);
    assert_eq!(stock["SKU-USBC-HUB"], 0);
    assert_eq!(stock["SKU-MONITOR-STAND"], 1);
    assert_eq!(stock["SKU-BT-MOUSE"], 2);
    assert_eq!(stock["SKU-000009"], 25);
    assert!(
        adjustments
            .iter()
            .all(|a| a.reason == AdjustmentReason::Initial)
    );
    for record in &records {
        let key = String::from_utf8(record.key.clone().expect("keyed")).expect("utf-8 key");
        assert!(stock.contains_key(key.as_str()), "keyed by sku: {key}");
    }

    let run_cli = cli(
        &prefix,
        &[
            "run",
            "--count",
            "10000",
            "--rate",
            "0",
            "--synthetic-skus",
            "10",
            "--duplicate-rate",
            "0.02",
            "--invalid-rate",
            "0.03",
            "--lines-max",
            "4",
        ],
    )
    .await;
    let Command::Run(run_args) = &run_cli.command else {
        unreachable!("parsed as run")
    };
    let summary = run_orders(&run_cli.connection, run_args, CancellationToken::new())
        .await
        .expect("runs");
    assert_eq!(summary.sent, 10_000);
    assert_eq!(summary.delivered.acknowledged, 10_000);
    assert_eq!(summary.valid + summary.invalid + summary.duplicates, 10_000);
    assert!(
        summary.duplicates > 100 && summary.invalid > 150,
        "{summary}"
    );

    let records = read_at_least(
        &stack.bootstrap_servers,
        &[topics.orders.as_str()],
        Isolation::ReadCommitted,
        10_000,
        deadline,
    )
    .await;
    assert_eq!(records.len(), 10_000, "exactly the orders sent");
    let orders: Vec<OrderCreated> = decode_all(&codec, &records).await;
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (order, record) in orders.iter().zip(&records) {
        assert_eq!(
            record.key.as_deref(),
            Some(order.order_id.as_bytes()),
            "keyed by order id"
        );
        *seen.entry(&order.order_id).or_default() += 1;
    }
    let repeats: u64 = seen.values().map(|n| u64::from(n - 1)).sum();
    assert_eq!(
        repeats, summary.duplicates,
        "every duplicate repeats an earlier id"
    );
    let invalid = orders
        .iter()
        .filter(|o| {
            o.lines.is_empty()
                || o.lines
                    .iter()
                    .any(|l| l.quantity <= 0 || l.unit_price_cents < 0)
        })
        .map(|o| &o.order_id)
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(
        invalid.len() as u64,
        summary.invalid,
        "invalid orders are the ones announced"
    );
}

/// Orders without their send time, in id order, to compare two runs.
fn content(orders: &[OrderCreated]) -> Vec<OrderCreated> {
    let mut out: Vec<OrderCreated> = orders
        .iter()
        .map(|o| OrderCreated {
            created_at: 0,
            ..o.clone()
        })
        .collect();
    out.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    out
}

#[tokio::test]
async fn the_same_seed_publishes_the_same_orders() {
    let stack = stack().await;
    let mut runs = Vec::new();
    for seed in ["7", "7", "8"] {
        let prefix = format!("{}-", unique("gen-seed"));
        let run_cli = cli(
            &prefix,
            &[
                "run",
                "--count",
                "500",
                "--rate",
                "0",
                "--seed",
                seed,
                "--duplicate-rate",
                "0.05",
                "--invalid-rate",
                "0.05",
            ],
        )
        .await;
        let Command::Run(args) = &run_cli.command else {
            unreachable!("parsed as run")
        };
        run_orders(&run_cli.connection, args, CancellationToken::new())
            .await
            .expect("runs");
        let topics = run_cli.connection.topics();
        let codec = Codec::new(&stack.schema_registry_url, &topics).expect("codec");
        let records = read_at_least(
            &stack.bootstrap_servers,
            &[topics.orders.as_str()],
            Isolation::ReadCommitted,
            500,
            Duration::from_secs(60),
        )
        .await;
        runs.push(content(&decode_all::<OrderCreated>(&codec, &records).await));
    }
    assert_eq!(runs[0].len(), 500);
    assert_eq!(runs[0], runs[1], "seed 7 twice gives the same orders");
    assert_ne!(runs[0], runs[2], "seed 8 gives other orders");
}

fn generator_binary(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_generator"))
        .args(args)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .output()
        .expect("the generator binary runs")
}

#[tokio::test]
async fn bad_flags_and_unreachable_services_fail_with_one_clear_line() {
    let stack = stack().await;
    let bad_flag = generator_binary(&["run", "--rate", "fast"]);
    assert!(!bad_flag.status.success());
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("invalid value 'fast'"));

    let bad_share = generator_binary(&[
        "--schema-registry-url",
        &stack.schema_registry_url,
        "--bootstrap-servers",
        &stack.bootstrap_servers,
        "run",
        "--count",
        "1",
        "--invalid-rate",
        "2",
    ]);
    assert!(!bad_share.status.success());
    let stderr = String::from_utf8_lossy(&bad_share.stderr);
    assert!(
        stderr.contains("error: invalid rate must be between 0 and 1, got 2"),
        "{stderr}"
    );

    let no_kafka = generator_binary(&[
        "--schema-registry-url",
        &stack.schema_registry_url,
        "--bootstrap-servers",
        "127.0.0.1:9",
        "seed",
    ]);
    assert!(!no_kafka.status.success());
    let stderr = String::from_utf8_lossy(&no_kafka.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains("Kafka at 127.0.0.1:9 is unreachable"),
        "{stderr}"
    );

    let no_registry = generator_binary(&[
        "--schema-registry-url",
        "http://127.0.0.1:9",
        "--bootstrap-servers",
        &stack.bootstrap_servers,
        "seed",
    ]);
    assert!(!no_registry.status.success());
    let stderr = String::from_utf8_lossy(&no_registry.stderr);
    assert!(
        stderr.contains("error: schema registry at http://127.0.0.1:9 is unreachable"),
        "{stderr}"
    );
}
