use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use plumbing::process::{exit_code, init_tracing, report_error, shutdown_on_signals};
use processor::cli::{Cli, Command};
use schemas::cli::run_schemas_command;

/// The engine allocates and frees small buffers for every record (keys, store values, Avro
/// and Kafka payloads); with glibc's allocator, `malloc` and `free` were 13% of its time.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing("info,rdkafka=warn", cli.log.log_format);
    let shutdown = shutdown_on_signals();
    match &cli.command {
        Command::Run(args) => exit_code(processor::app::run(&cli.connection, args, shutdown).await),
        Command::Reset(args) => exit_code(processor::reset::reset(&cli.connection, args).await),
        Command::Repartition(args) => {
            exit_code(processor::repartition::repartition(&cli.connection, args).await)
        }
        Command::Tail {
            from_beginning,
            limit,
        } => exit_code(
            processor::tail::tail(&cli.connection, *from_beginning, *limit, shutdown).await,
        ),
        Command::Audit(args) => {
            audit_exit_code(processor::audit::audit(&cli.connection, args).await)
        }
        Command::Status(args) => exit_code(processor::status::status(&cli.connection, args).await),
        Command::Schemas(command) => exit_code(
            run_schemas_command(
                &cli.connection.schema_registry_url,
                &cli.connection.topics(),
                command,
            )
            .await
            .map_err(Into::into),
        ),
    }
}

/// Like diff(1): 0 when the run equals the clerk's, 1 when it differs, 2 (with one line
/// `error: ...`, or one JSON event under `--log-format json`) when the audit could not run.
fn audit_exit_code(result: anyhow::Result<processor::audit::Report>) -> ExitCode {
    match result {
        Ok(report) if report.differences.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            report_error(&error);
            ExitCode::from(2)
        }
    }
}
