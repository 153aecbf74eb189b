//! Process plumbing every Stockflow binary shares: logging set-up, the one shutdown path
//! (SIGINT/SIGTERM cancel a root token so work drains; a second signal exits at once), and
//! mapping a run's result to an exit code with one clear line on failure.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Logs to stderr, filtered by `RUST_LOG`, else by `default` (e.g. `info,rdkafka=off`); in
/// colour only on a terminal (and not with `NO_COLOR`), so that a log redirected to a file or
/// a pipe is plain text that `grep ' ERROR '` finds.
pub fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// A root token cancelled by the first SIGINT or SIGTERM; the second one exits at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing the work in hand (signal again to exit at once)");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Success, or one line `error: ...` (with its causes) and exit code 1.
pub fn exit_code<T>(result: anyhow::Result<T>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: some libraries' messages already end
/// with their cause's (sqlx does), which `{:#}` would print twice.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("connection refused")]
        struct Refused;
        #[derive(Debug, thiserror::Error)]
        #[error("error communicating with database: connection refused")]
        struct Io(#[source] Refused);
        let error = anyhow::Error::new(Io(Refused)).context("PostgreSQL at db:5432 is unreachable");
        assert_eq!(
            one_line(&error),
            "PostgreSQL at db:5432 is unreachable: error communicating with database: connection refused"
        );
        let plain = anyhow::anyhow!("root").context("outer");
        assert_eq!(one_line(&plain), "outer: root");
    }
}
