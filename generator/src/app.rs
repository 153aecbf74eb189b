//! The generator's commands, each a function of its config and a shutdown token, so the
//! binary and the tests run exactly the same code.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use plumbing::connection::ConnectionArgs;
use schemas::cli::run_schemas_command;
use schemas::{OrderCreated, OrderLine, now_millis};
use tokio_util::sync::CancellationToken;

use crate::catalog::{catalog, initial_stock};
use crate::cli::{Cli, Command, OrderArgs, RunArgs, SeedArgs};
use crate::publish::{Delivered, Publisher};
use crate::traffic::{OrderKind, OrderStream, TrafficShape};

/// What `generator run` published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub sent: u64,
    pub valid: u64,
    pub invalid: u64,
    pub duplicates: u64,
    pub delivered: Delivered,
    pub elapsed: Duration,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "orders published: {} (valid {}, invalid {}, duplicates {}) in {:.1}s, {:.0}/s; acknowledged {}, failed {}",
            self.sent,
            self.valid,
            self.invalid,
            self.duplicates,
            secs,
            self.sent as f64 / secs,
            self.delivered.acknowledged,
            self.delivered.failed
        )
    }
}

/// Runs one generator command to completion (or until `shutdown`).
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match &cli.command {
        Command::Schemas(command) => {
            run_schemas_command(
                &cli.connection.schema_registry_url,
                &cli.connection.topics(),
                command,
            )
            .await?
        }
        Command::Seed(args) => {
            let delivered = seed(&cli.connection, args).await?;
            println!("seeded {} products", delivered.acknowledged);
        }
        Command::Run(args) => {
            let summary = run_orders(&cli.connection, args, shutdown).await?;
            println!("{summary}");
        }
        Command::Order(args) => {
            let order = send_order(&cli.connection, args).await?;
            println!(
                "sent order {} with {} line(s)",
                order.order_id,
                order.lines.len()
            );
        }
    }
    Ok(())
}

/// Publishes the initial stock of every catalog product.
pub async fn seed(connection: &ConnectionArgs, args: &SeedArgs) -> anyhow::Result<Delivered> {
    let mut publisher = Publisher::connect(connection, args.catalog.partitions).await?;
    let topic = connection.topics().inventory_adjustments;
    let now = now_millis();
    for product in catalog(args.catalog.synthetic_skus, args.synthetic_stock) {
        publisher
            .send(&topic, &initial_stock(&product, now))
            .await?;
    }
    Ok(publisher.finish().await?)
}

/// Publishes orders until the count, the duration or `shutdown` ends the run.
pub async fn run_orders(
    connection: &ConnectionArgs,
    args: &RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<RunSummary> {
    let shape = TrafficShape {
        seed: args.seed,
        max_lines: args.lines_max,
        max_quantity: args.quantity_max,
        zipf_exponent: args.zipf_exponent,
        duplicate_rate: args.duplicate_rate,
        invalid_rate: args.invalid_rate,
        ..TrafficShape::default()
    };
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "rate must be >= 0, got {}",
        args.rate
    );
    let mut stream = OrderStream::new(catalog(args.catalog.synthetic_skus, 0), shape)?;
    let mut publisher = Publisher::connect(connection, args.catalog.partitions).await?;
    let topic = connection.topics().orders;
    let mut progress = Progress::new();
    let mut summary = RunSummary::default();
    let started = Instant::now();
    loop {
        if args.count.is_some_and(|count| summary.sent >= count)
            || args.duration.is_some_and(|d| started.elapsed() >= d)
            || shutdown.is_cancelled()
        {
            break;
        }
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(summary.sent as f64 / args.rate);
            if due > Instant::now() + Duration::from_millis(1) {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        let (kind, order) = stream.next_order(now_millis());
        publisher.send(&topic, &order).await?;
        summary.sent += 1;
        match kind {
            OrderKind::Valid => summary.valid += 1,
            OrderKind::Invalid => summary.invalid += 1,
            OrderKind::Duplicate => summary.duplicates += 1,
        }
        progress.tick(&summary, &publisher, started);
    }
    summary.delivered = publisher.finish().await?;
    summary.elapsed = started.elapsed();
    progress.done();
    Ok(summary)
}

/// Publishes one order built from the command line.
pub async fn send_order(
    connection: &ConnectionArgs,
    args: &OrderArgs,
) -> anyhow::Result<OrderCreated> {
    let products = catalog(10_000, 0);
    let lines = args
        .lines
        .iter()
        .map(|(sku, quantity, price)| OrderLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_price_cents: price
                .or_else(|| {
                    products
                        .iter()
                        .find(|p| &p.sku == sku)
                        .map(|p| p.unit_price_cents)
                })
                .unwrap_or(0),
        })
        .collect();
    let order = OrderCreated {
        order_id: args
            .id
            .clone()
            .unwrap_or_else(|| format!("order-manual-{}", now_millis())),
        customer_id: args.customer.clone(),
        created_at: now_millis(),
        currency: "EUR".to_owned(),
        lines,
    };
    let mut publisher = Publisher::connect(connection, 6).await?;
    publisher.send(&connection.topics().orders, &order).await?;
    publisher.finish().await.context("publishing the order")?;
    Ok(order)
}

/// A live progress line on a terminal (rate, sent, errors); silent otherwise.
struct Progress {
    on_terminal: bool,
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        Self {
            on_terminal: std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, summary: &RunSummary, publisher: &Publisher, started: Instant) {
        if !self.on_terminal || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let delivered = publisher.delivered();
        let rate = summary.sent as f64 / started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r\x1b[2K{:>10} sent {:>9.0}/s {:>10} acked {:>6} in flight {:>4} errors",
            summary.sent,
            rate,
            delivered.acknowledged,
            publisher.in_flight(),
            delivered.failed
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        if self.on_terminal {
            eprintln!();
        }
    }
}
