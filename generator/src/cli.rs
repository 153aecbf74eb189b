//! The generator's command line: one typed config, every flag with an env fallback where a
//! deployment would set it.

use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use plumbing::connection::ConnectionArgs;
use plumbing::process::LogArgs;
use schemas::AdjustmentReason;
use schemas::cli::SchemasCommand;

use crate::catalog::StockChange;

/// Publishes Stockflow's inputs: the catalog's initial stock, a stream of orders, and stock
/// adjustments.
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
    /// Publish one InventoryAdjusted for a SKU: add stock (`--delta`) or set it (`--set`).
    Adjust(AdjustArgs),
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

    /// Restock while orders flow: every DURATION (e.g. `5s`), each SKU gets RESTOCK_FACTOR
    /// times the units the orders sent meanwhile are expected to take from it. Off by default.
    #[arg(long, value_name = "DURATION", value_parser = parse_period)]
    pub restock_every: Option<Duration>,

    /// Share of the expected demand each restock brings: below 1, popular SKUs sell out shortly
    /// before each restock (a mix of confirmations and rejections); 1 or more, they never do.
    #[arg(
        long,
        value_name = "FACTOR",
        default_value_t = 0.9,
        requires = "restock_every"
    )]
    pub restock_factor: f64,
}

/// Parses a restock period: a humantime duration longer than zero.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let period = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if period.is_zero() {
        return Err("the period must be longer than 0".to_owned());
    }
    Ok(period)
}

/// `generator adjust`: exactly one of `--delta` and `--set`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("change").required(true).args(["delta", "set"])))]
pub struct AdjustArgs {
    /// The SKU to adjust, e.g. `SKU-BT-MOUSE` or `SKU-000042` (any other SKU is a new product).
    #[arg(long)]
    pub sku: String,

    /// Add N units to the available stock (a DELTA adjustment; negative takes units away, down
    /// to zero, and needs `--reason correction`).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub delta: Option<i64>,

    /// Set the available stock to N units, N >= 0 (an ABSOLUTE adjustment).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub set: Option<i64>,

    /// Why: `restock` (goods arrived) or `correction` (a count was wrong). Default: restock
    /// with `--delta`, correction with `--set`.
    #[arg(long, value_enum)]
    pub reason: Option<ReasonArg>,

    /// The adjustment id (default: a fresh one). The processor applies a repeated id once.
    #[arg(long)]
    pub id: Option<String>,
}

impl AdjustArgs {
    /// The change asked for (clap's group guarantees one of the two).
    pub fn change(&self) -> StockChange {
        match (self.delta, self.set) {
            (Some(delta), _) => StockChange::Delta(delta),
            (None, Some(level)) => StockChange::Set(level),
            (None, None) => unreachable!("invariant: clap requires --delta or --set"),
        }
    }

    /// The reason given, or the default for the change.
    pub fn reason(&self) -> AdjustmentReason {
        match (self.reason, self.change()) {
            (Some(ReasonArg::Restock), _) | (None, StockChange::Delta(_)) => {
                AdjustmentReason::Restock
            }
            (Some(ReasonArg::Correction), _) | (None, StockChange::Set(_)) => {
                AdjustmentReason::Correction
            }
        }
    }
}

/// The reasons an adjustment by hand can give (INITIAL is `seed`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReasonArg {
    /// Goods arrived.
    Restock,
    /// A count was wrong.
    Correction,
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

    fn adjust(args: &[&str]) -> Result<AdjustArgs, clap::Error> {
        let mut argv = vec!["generator", "adjust"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Adjust(adjust) => adjust,
            other => panic!("parsed as {other:?}"),
        })
    }

    #[test]
    fn adjust_takes_exactly_one_of_delta_and_set() {
        let delta = adjust(&["--sku", "SKU-A", "--delta", "-3", "--reason", "correction"])
            .expect("a negative delta parses");
        assert_eq!(delta.change(), StockChange::Delta(-3));
        assert_eq!(delta.reason(), AdjustmentReason::Correction);
        let restock = adjust(&["--sku", "SKU-A", "--delta", "5"]).expect("parses");
        assert_eq!(restock.reason(), AdjustmentReason::Restock);
        let count = adjust(&["--sku", "SKU-A", "--set", "0"]).expect("parses");
        assert_eq!(
            (count.change(), count.reason()),
            (StockChange::Set(0), AdjustmentReason::Correction)
        );
        let both = adjust(&["--sku", "SKU-A", "--delta", "1", "--set", "2"]).expect_err("both");
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let neither = adjust(&["--sku", "SKU-A"]).expect_err("neither");
        assert_eq!(
            neither.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let reason = adjust(&["--sku", "S", "--set", "1", "--reason", "initial"]).expect_err("");
        assert_eq!(reason.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn restock_flags_parse() {
        let parsed =
            Cli::try_parse_from(["generator", "run", "--restock-every", "1500ms"]).expect("parses");
        match parsed.command {
            Command::Run(run) => {
                assert_eq!(run.restock_every, Some(Duration::from_millis(1500)));
                assert_eq!(run.restock_factor, 0.9);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["generator", "run", "--restock-every", "0s"]).is_err());
        assert!(Cli::try_parse_from(["generator", "run", "--restock-every", "soon"]).is_err());
        assert!(
            Cli::try_parse_from(["generator", "run", "--restock-factor", "0.5"]).is_err(),
            "a factor without a period"
        );
    }
}
