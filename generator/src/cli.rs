//! The generator's command line: one typed config, every flag with an env fallback where a
//! deployment would set it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use plumbing::connection::ConnectionArgs;
use plumbing::process::LogArgs;
use schemas::cli::SchemasCommand;

/// Publishes Stockflow's inputs: the catalog's initial stock and a stream of orders.
#[derive(Debug, Clone, Parser)]
#[command(name = "generator", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Register or check the Avro contracts in the schema registry.
    #[command(subcommand)]
    Schemas(SchemasCommand),
    /// Publish InventoryAdjusted(INITIAL) for the sample products and N synthetic SKUs.
    Seed(SeedArgs),
    /// Publish OrderCreated at a target rate, for a count or a duration.
    Run(RunArgs),
    /// Publish one order with the given lines (for trying things by hand).
    Order(OrderArgs),
}

/// The catalog both `seed` and `run` draw from.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// Synthetic SKUs after the four sample products (SKU-000000, SKU-000001, ...).
    #[arg(long, env = "GENERATOR_SYNTHETIC_SKUS", default_value_t = 100)]
    pub synthetic_skus: u32,

    /// Partitions of the input topics, when the generator creates them.
    #[arg(long, env = "STOCKFLOW_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub partitions: i32,
}

#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,

    /// Initial stock of every synthetic SKU (the sample products have their own).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(0..))]
    pub synthetic_stock: i64,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,

    /// Orders per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Stop after this many orders (duplicates and invalid ones included).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Stop after this long, e.g. `30s`, `5m`, `1h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Lines per order are uniform in 1..=MAX.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub lines_max: u32,

    /// Quantity per line is uniform in 1..=MAX.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub quantity_max: i32,

    /// Seed of the stream: the same seed gives the same orders.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Zipf exponent of SKU popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,

    /// Share of orders that repeat an earlier order id, 0..1.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,

    /// Share of orders that are invalid (no lines, quantity <= 0, negative price), 0..1.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct OrderArgs {
    /// The order id (default: a fresh one).
    #[arg(long)]
    pub id: Option<String>,

    /// The customer.
    #[arg(long, default_value = "customer-000001")]
    pub customer: String,

    /// A line as SKU:QUANTITY[:UNIT_PRICE_CENTS] (repeatable; the price defaults to the
    /// catalog's, or 0 for an unknown SKU).
    #[arg(long = "line", value_name = "SKU:QTY[:PRICE]", value_parser = parse_line, required = true)]
    pub lines: Vec<(String, i32, Option<i64>)>,
}

/// Parses `SKU:QUANTITY[:UNIT_PRICE_CENTS]`.
pub fn parse_line(s: &str) -> Result<(String, i32, Option<i64>), String> {
    let mut parts = s.split(':');
    let (Some(sku), Some(quantity)) = (parts.next(), parts.next()) else {
        return Err(format!("expected SKU:QUANTITY[:PRICE], got `{s}`"));
    };
    let quantity = quantity
        .parse()
        .map_err(|_| format!("quantity `{quantity}` is not a whole number"))?;
    let price = parts
        .next()
        .map(|p| {
            p.parse()
                .map_err(|_| format!("price `{p}` is not a whole number of cents"))
        })
        .transpose()?;
    if sku.is_empty() || parts.next().is_some() {
        return Err(format!("expected SKU:QUANTITY[:PRICE], got `{s}`"));
    }
    Ok((sku.to_owned(), quantity, price))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn lines_parse() {
        assert_eq!(parse_line("SKU-A:2"), Ok(("SKU-A".into(), 2, None)));
        assert_eq!(
            parse_line("SKU-A:-1:500"),
            Ok(("SKU-A".into(), -1, Some(500)))
        );
        assert!(parse_line("SKU-A").is_err());
        assert!(parse_line("SKU-A:x").is_err());
        assert!(parse_line("SKU-A:1:2:3").is_err());
    }

    #[test]
    fn count_and_duration_exclude_each_other() {
        let parsed = Cli::try_parse_from(["generator", "run", "--count", "5", "--duration", "1s"]);
        assert!(parsed.is_err());
        let parsed =
            Cli::try_parse_from(["generator", "run", "--duration", "90s"]).expect("parses");
        match parsed.command {
            Command::Run(run) => assert_eq!(run.duration, Some(Duration::from_secs(90))),
            other => panic!("parsed as {other:?}"),
        }
    }
}
