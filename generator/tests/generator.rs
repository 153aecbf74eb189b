//! The generator against real Kafka and a real schema registry: what it publishes is counted
//! and decoded with a plain rdkafka consumer and the codec.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use generator::app::{adjust, run_orders, seed};
use generator::cli::{Cli, Command};
use schemas::Topics;
use schemas::{AdjustmentMode, AdjustmentReason, Codec, InventoryAdjusted, OrderCreated};
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

/// Runs `generator run` with `args` (after the prefix) to its end; its summary.
async fn run(prefix: &str, args: &[&str]) -> generator::app::RunSummary {
    let run_cli = cli(prefix, args).await;
    let Command::Run(run_args) = &run_cli.command else {
        unreachable!("parsed as run")
    };
    run_orders(&run_cli.connection, run_args, CancellationToken::new())
        .await
        .expect("runs")
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

    let summary = run(
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

#[tokio::test]
async fn adjust_publishes_exactly_one_adjustment() {
    let stack = stack().await;
    let prefix = format!("{}-", unique("gen-adjust"));
    let mut published = Vec::new();
    for args in [
        &["adjust", "--sku", "SKU-BT-MOUSE", "--delta", "5"][..],
        &[
            "adjust",
            "--sku",
            "SKU-NEW-THING",
            "--set",
            "3",
            "--id",
            "count-2026-12-01",
        ][..],
    ] {
        let adjust_cli = cli(&prefix, args).await;
        let Command::Adjust(adjust_args) = &adjust_cli.command else {
            unreachable!("parsed as adjust")
        };
        published.push(
            adjust(&adjust_cli.connection, adjust_args)
                .await
                .expect("adjusts"),
        );
    }
    let topics = Topics::with_prefix(&prefix);
    let codec = Codec::new(&stack.schema_registry_url, &topics).expect("codec");
    let records = read_at_least(
        &stack.bootstrap_servers,
        &[topics.inventory_adjustments.as_str()],
        Isolation::ReadCommitted,
        2,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(records.len(), 2, "one record per adjust");
    let mut read: Vec<InventoryAdjusted> = decode_all(&codec, &records).await;
    read.sort_by(|a, b| a.sku.cmp(&b.sku));
    let (restock, count) = (&read[0], &read[1]);
    assert_eq!(
        restock, &published[0],
        "the record is the adjustment announced"
    );
    assert_eq!(
        (restock.sku.as_str(), restock.mode, restock.quantity),
        ("SKU-BT-MOUSE", AdjustmentMode::Delta, 5)
    );
    assert_eq!(restock.reason, AdjustmentReason::Restock);
    assert!(
        restock.adjustment_id.starts_with("adjust-SKU-BT-MOUSE-"),
        "{}",
        restock.adjustment_id
    );
    assert_eq!(restock.product_name.as_deref(), Some("Bluetooth Mouse"));
    assert_eq!(restock.unit_price_cents, Some(1525));
    assert_eq!(count, &published[1]);
    assert_eq!(
        (
            count.adjustment_id.as_str(),
            count.mode,
            count.quantity,
            count.reason
        ),
        (
            "count-2026-12-01",
            AdjustmentMode::Absolute,
            3,
            AdjustmentReason::Correction
        )
    );
    assert_eq!(
        (count.product_name.as_ref(), count.unit_price_cents),
        (None, None)
    );
    for (record, adjusted) in records
        .iter()
        .zip(decode_all::<InventoryAdjusted>(&codec, &records).await)
    {
        assert_eq!(
            record.key.as_deref(),
            Some(adjusted.sku.as_bytes()),
            "keyed by sku"
        );
    }
}

#[tokio::test]
async fn run_restocks_every_period_while_orders_flow() {
    let stack = stack().await;
    let prefix = format!("{}-", unique("gen-restock"));
    let summary = run(
        &prefix,
        &[
            "run",
            "--rate",
            "400",
            "--duration",
            "3500ms",
            "--synthetic-skus",
            "20",
            "--restock-every",
            "1s",
            "--restock-factor",
            "0.8",
        ],
    )
    .await;
    eprintln!("{summary}");
    assert!(summary.restocks > 0, "{summary}");
    assert_eq!(
        summary.delivered.acknowledged,
        summary.sent + summary.restocks,
        "orders and restocks acknowledged"
    );

    let topics = Topics::with_prefix(&prefix);
    let codec = Codec::new(&stack.schema_registry_url, &topics).expect("codec");
    let deadline = Duration::from_secs(60);
    let records = read_at_least(
        &stack.bootstrap_servers,
        &[topics.inventory_adjustments.as_str()],
        Isolation::ReadCommitted,
        summary.restocks as usize,
        deadline,
    )
    .await;
    assert_eq!(
        records.len() as u64,
        summary.restocks,
        "exactly the restocks announced, read up to the high watermarks"
    );
    let restocks: Vec<InventoryAdjusted> = decode_all(&codec, &records).await;
    let mut rounds = std::collections::BTreeSet::new();
    let mut ids = std::collections::HashSet::new();
    let mut units = 0;
    for (record, restock) in records.iter().zip(&restocks) {
        assert_eq!(record.key.as_deref(), Some(restock.sku.as_bytes()));
        assert_eq!(
            (restock.mode, restock.reason),
            (AdjustmentMode::Delta, AdjustmentReason::Restock)
        );
        assert!(restock.quantity > 0, "{restock:?}");
        assert!(restock.product_name.is_some() && restock.unit_price_cents.is_some());
        assert!(ids.insert(restock.adjustment_id.clone()), "unique ids");
        // restock-<seed>-<run start>-<round>-<sku>
        let round = restock.adjustment_id.split('-').nth(3).expect("a round");
        rounds.insert(round.to_owned());
        units += restock.quantity;
    }
    assert_eq!(units as u64, summary.restocked_units);
    // One round a second for 3.5 s, numbered in turn; a round whose second sent no order
    // (a slow broker) owes nothing and writes no record, so only the last one is certain.
    assert!(
        !rounds.is_empty() && rounds.iter().all(|r| r.as_str() <= "000003"),
        "rounds 1 to 3: {rounds:?}"
    );
    assert_eq!(
        rounds.last().map(String::as_str),
        Some("000003"),
        "the third round, at 3 s, ran: {rounds:?}"
    );
    assert!(
        restocks.iter().any(|r| r.sku == "SKU-KEYBOARD"),
        "the most popular product is restocked"
    );

    // What the restocks brought is about 0.8 of what the orders before the last one asked for.
    let orders = read_at_least(
        &stack.bootstrap_servers,
        &[topics.orders.as_str()],
        Isolation::ReadCommitted,
        summary.sent as usize,
        deadline,
    )
    .await;
    let orders: Vec<OrderCreated> = decode_all(&codec, &orders).await;
    let last_restock = restocks
        .iter()
        .map(|r| r.adjusted_at)
        .max()
        .expect("restocks");
    let asked: i64 = orders
        .iter()
        .filter(|o| o.created_at < last_restock)
        .flat_map(|o| &o.lines)
        .map(|l| i64::from(l.quantity))
        .sum();
    let share = units as f64 / asked as f64;
    eprintln!("restocked {units} units for {asked} asked: {share:.2}");
    assert!(
        (0.6..1.0).contains(&share),
        "{units} restocked, {asked} asked"
    );
}

fn generator_binary(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_generator"))
        .args(args)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .output()
        .expect("the generator binary runs")
}

#[tokio::test]
async fn usage_errors_exit_2_and_failures_exit_1_with_one_clear_line() {
    let stack = stack().await;
    // Usage errors (found while parsing) exit 2 with clap's message and usage.
    let bad_flag = generator_binary(&["run", "--rate", "fast"]);
    assert_eq!(bad_flag.status.code(), Some(2), "{bad_flag:?}");
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("invalid value 'fast'"));
    let bogus = generator_binary(&["run", "--bogus-flag"]);
    let stderr = String::from_utf8_lossy(&bogus.stderr);
    assert_eq!(bogus.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: unexpected argument '--bogus-flag' found")
            && stderr.contains("Usage: generator run"),
        "{stderr}"
    );

    // Values that parse but make no sense are runtime failures: one line, exit code 1.

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
    assert_eq!(bad_share.status.code(), Some(1), "{bad_share:?}");
    let stderr = String::from_utf8_lossy(&bad_share.stderr);
    assert!(
        stderr.contains("error: invalid rate must be between 0 and 1, got 2"),
        "{stderr}"
    );

    // Adjustments that are surely slips are refused before connecting to anything.
    for (args, expected) in [
        (
            &["adjust", "--sku", "SKU-A", "--delta", "0"][..],
            "error: --delta 0 changes nothing",
        ),
        (
            &["adjust", "--sku", "SKU-A", "--delta", "-2"][..],
            "error: a restock adds stock: --delta must be positive, got -2",
        ),
        (
            &["adjust", "--sku", "SKU-A", "--set", "-1"][..],
            "error: --set must be 0 or more, got -1",
        ),
    ] {
        let refused = generator_binary(args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
    }
    for (args, expected) in [
        (
            &["adjust", "--sku", "SKU-A", "--delta", "1", "--set", "2"][..],
            "cannot be used with",
        ),
        (&["adjust", "--sku", "SKU-A"][..], "--delta <N>|--set <N>"),
        (
            &["run", "--restock-every", "0s"][..],
            "the period must be longer than 0",
        ),
    ] {
        let usage = generator_binary(args);
        assert_eq!(usage.status.code(), Some(2), "{args:?}: {usage:?}");
        let stderr = String::from_utf8_lossy(&usage.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }

    let no_kafka = generator_binary(&[
        "--schema-registry-url",
        &stack.schema_registry_url,
        "--bootstrap-servers",
        "127.0.0.1:9",
        "seed",
    ]);
    assert_eq!(no_kafka.status.code(), Some(1), "{no_kafka:?}");
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
    assert_eq!(no_registry.status.code(), Some(1), "{no_registry:?}");
    let stderr = String::from_utf8_lossy(&no_registry.stderr);
    assert!(
        stderr.contains("error: schema registry at http://127.0.0.1:9 is unreachable"),
        "{stderr}"
    );
}
