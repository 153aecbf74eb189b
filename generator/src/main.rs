use std::process::ExitCode;

use clap::Parser;
use generator::cli::Cli;
use plumbing::process::{exit_code, init_tracing, shutdown_on_signals};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(
        "warn,generator=info,schemas=info,rdkafka=off",
        cli.log.log_format,
    );
    let shutdown = shutdown_on_signals();
    exit_code(generator::app::run(cli, shutdown).await)
}
