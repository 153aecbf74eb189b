use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use plumbing::process::{exit_code, init_tracing, shutdown_on_signals};
use processor::cli::{Cli, Command};
use schemas::cli::run_schemas_command;

/// The engine allocates and frees small buffers for every record (keys, store values, Avro
/// and Kafka payloads); with glibc's allocator, `malloc` and `free` were 13% of its time.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing("info,rdkafka=warn");
    let shutdown = shutdown_on_signals();
    exit_code(match &cli.command {
        Command::Run(args) => processor::app::run(&cli.connection, args, shutdown).await,
        Command::Reset(args) => processor::reset::reset(&cli.connection, args).await,
        Command::Tail {
            from_beginning,
            limit,
        } => processor::tail::tail(&cli.connection, *from_beginning, *limit, shutdown).await,
        Command::Schemas(command) => run_schemas_command(
            &cli.connection.schema_registry_url,
            &cli.connection.topics(),
            command,
        )
        .await
        .map_err(Into::into),
    })
}
