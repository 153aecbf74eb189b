//! The generator's commands, each a function of its config and a shutdown token, so the
//! binary and the tests run exactly the same code.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use plumbing::connection::ConnectionArgs;
use schemas::cli::run_schemas_command;
use schemas::{AdjustmentMode, InventoryAdjusted, OrderCreated, OrderLine, now_millis};
use tokio_util::sync::CancellationToken;

use crate::catalog::{adjustment, catalog, initial_stock};
use crate::cli::{AdjustArgs, Cli, Command, OrderArgs, RunArgs, SeedArgs};
use crate::publish::{Delivered, Publisher};
use crate::restock::Restocker;
use crate::traffic::{OrderKind, OrderStream, TrafficShape};

/// Partitions of the input topics when `order` or `adjust` creates them (the processor's
/// default).
const PARTITIONS: i32 = 6;

/// What `generator run` published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub sent: u64,
    pub valid: u64,
    pub invalid: u64,
    pub duplicates: u64,
    /// Restock adjustments published (`--restock-every`), and the units they brought.
    pub restocks: u64,
    pub restocked_units: u64,
    pub delivered: Delivered,
    pub elapsed: Duration,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "orders published: {} (valid {}, invalid {}, duplicates {}) in {:.1}s, {:.0}/s; ",
            self.sent,
            self.valid,
            self.invalid,
            self.duplicates,
            secs,
            self.sent as f64 / secs,
        )?;
        if self.restocks > 0 {
            write!(
                f,
                "restocks published: {} ({} units); ",
                self.restocks, self.restocked_units
            )?;
        }
        write!(
            f,
            "acknowledged {}, failed {}",
            self.delivered.acknowledged, self.delivered.failed
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
        Command::Adjust(args) => {
            let adjusted = adjust(&cli.connection, args).await?;
            let change = match adjusted.mode {
                AdjustmentMode::Delta => format!("by {:+}", adjusted.quantity),
                AdjustmentMode::Absolute => format!("to {}", adjusted.quantity),
            };
            println!(
                "adjusted {} {change} ({:?}), adjustment id {}",
                adjusted.sku, adjusted.reason, adjusted.adjustment_id
            );
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
    let products = catalog(args.catalog.synthetic_skus, 0);
    // Planned before connecting, so that a bad factor needs no Kafka to be refused.
    let mut restocks = match args.restock_every {
        Some(every) => Some(Restocks {
            every,
            next: Instant::now() + every, // from the run's start, below
            orders_before: 0,
            restocker: Restocker::new(
                products.clone(),
                &shape,
                args.restock_factor,
                format!("{}-{}", args.seed, now_millis()),
            )?,
        }),
        None => None,
    };
    let mut stream = OrderStream::new(products, shape)?;
    let mut publisher = Publisher::connect(connection, args.catalog.partitions).await?;
    let topics = connection.topics();
    let topic = topics.orders;
    let mut progress = Progress::new();
    let mut summary = RunSummary::default();
    let started = Instant::now();
    if let Some(restocks) = &mut restocks {
        restocks.next = started + restocks.every;
    }
    loop {
        if args.count.is_some_and(|count| summary.sent >= count)
            || args.duration.is_some_and(|d| started.elapsed() >= d)
            || shutdown.is_cancelled()
        {
            break;
        }
        if let Some(restocks) = restocks.as_mut().filter(|r| r.next <= Instant::now()) {
            let orders = summary.sent - restocks.orders_before;
            restocks.orders_before = summary.sent;
            for restock in restocks.restocker.restock(orders, now_millis()) {
                publisher
                    .send(&topics.inventory_adjustments, &restock)
                    .await?;
                summary.restocks += 1;
                summary.restocked_units += u64::try_from(restock.quantity).unwrap_or(0);
            }
            // A period missed (a stalled broker) is skipped: the next restock owes its orders.
            while restocks.next <= Instant::now() {
                restocks.next += restocks.every;
            }
            continue;
        }
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(summary.sent as f64 / args.rate);
            let wake = restocks.as_ref().map_or(due, |r| due.min(r.next));
            if wake > Instant::now() + Duration::from_millis(1) {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
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

/// When `run` restocks next, and what.
struct Restocks {
    every: Duration,
    next: Instant,
    /// Orders sent before the last restock.
    orders_before: u64,
    restocker: Restocker,
}

/// Publishes one adjustment built from the command line, and returns it.
pub async fn adjust(
    connection: &ConnectionArgs,
    args: &AdjustArgs,
) -> anyhow::Result<InventoryAdjusted> {
    let now = now_millis();
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("adjust-{}-{now}-{:08x}", args.sku, rand::random::<u32>()));
    // Checked before connecting: a slip needs no Kafka to be refused.
    let adjusted = adjustment(id, &args.sku, args.change(), args.reason(), now)?;
    let mut publisher = Publisher::connect(connection, PARTITIONS).await?;
    publisher
        .send(&connection.topics().inventory_adjustments, &adjusted)
        .await?;
    publisher
        .finish()
        .await
        .context("publishing the adjustment")?;
    Ok(adjusted)
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
    let mut publisher = Publisher::connect(connection, PARTITIONS).await?;
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
