//! The processor's command line: one typed config; every flag has a `///` help line and, where
//! a deployment would set it, an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use schemas::cli::{ConnectionArgs, SchemasCommand};

use crate::runtime::guarantee::ProcessingGuarantee;

/// Stockflow's order processor: decides every order against a RocksDB inventory, exactly once.
#[derive(Debug, Clone, Parser)]
#[command(name = "processor", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the processor: join orders against the inventory and decide each one.
    Run(RunArgs),
    /// Follow the outputs (outcomes, stock changes, dead letters), one decoded line each.
    Tail {
        /// Start from the beginning of the topics instead of from now.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Register or check the Avro contracts in the schema registry.
    #[command(subcommand)]
    Schemas(SchemasCommand),
}

/// `processor run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The application id: the consumer group, and the prefix of internal topics.
    #[arg(long, env = "STOCKFLOW_APPLICATION_ID", default_value = "stockflow")]
    pub application_id: String,

    /// Where task state lives (`<state-dir>/<application-id>/<task>`). One per instance.
    #[arg(
        long,
        env = "STOCKFLOW_STATE_DIR",
        default_value = "/tmp/stockflow-state"
    )]
    pub state_dir: PathBuf,

    /// exactly_once_v2 or at_least_once.
    #[arg(
        long,
        env = "STOCKFLOW_PROCESSING_GUARANTEE",
        value_enum,
        default_value = "exactly_once_v2"
    )]
    pub processing_guarantee: ProcessingGuarantee,

    /// How often to commit (transaction, offsets, state), in milliseconds.
    #[arg(long, env = "STOCKFLOW_COMMIT_INTERVAL_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub commit_interval_ms: u64,

    /// Where to serve /metrics, /health and /ready (port 0 picks a free one).
    #[arg(long, env = "STOCKFLOW_METRICS_ADDR", default_value = "127.0.0.1:9400")]
    pub metrics_addr: SocketAddr,

    /// Partitions for topics the processor creates because they are missing.
    #[arg(long, env = "STOCKFLOW_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub partitions: i32,

    /// RocksDB block cache shared by every store, in MiB (a quarter may hold memtables).
    #[arg(long, env = "STOCKFLOW_CACHE_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(8..))]
    pub cache_mb: u64,
}

impl RunArgs {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }
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
    fn guarantees_parse_by_their_kafka_streams_names() {
        let cli = Cli::try_parse_from([
            "processor",
            "run",
            "--processing-guarantee",
            "at_least_once",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("parsed as run")
        };
        assert_eq!(run.processing_guarantee, ProcessingGuarantee::AtLeastOnce);
        assert!(
            Cli::try_parse_from(["processor", "run", "--processing-guarantee", "maybe"]).is_err()
        );
        assert!(Cli::try_parse_from(["processor", "run", "--commit-interval-ms", "0"]).is_err());
    }
}
