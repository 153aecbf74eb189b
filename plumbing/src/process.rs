//! Process plumbing every Stockflow binary shares: logging set-up (text or JSON lines), the
//! one shutdown path (SIGINT/SIGTERM cancel a root token so work drains; a second signal exits
//! at once), and mapping a run's result to an exit code with one clear line on failure.

use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::Subscriber;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line for log shippers: `timestamp`, `level`, `target`, `message`,
    /// the event's fields, and the spans it happened in.
    Json,
}

/// The logging flags every Stockflow binary shares.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format on stderr: `text`, or `json` (one object per line, for log shippers). The
    /// filter is `RUST_LOG` (e.g. `info,processor=debug`).
    #[arg(
        long,
        env = "STOCKFLOW_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// The format [`init_tracing`] set up, for [`exit_code`]'s last line.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Logs to stderr in `format`, filtered by `RUST_LOG`, else by `default` (e.g.
/// `info,rdkafka=off`). Text is in colour only on a terminal (and not with `NO_COLOR`), so that
/// a log redirected to a file or a pipe is plain text that `grep ' ERROR '` finds; JSON never
/// has colour codes.
pub fn init_tracing(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = FORMAT.set(format);
    subscriber(filter, format, colour, std::io::stderr).init();
}

/// The subscriber [`init_tracing`] installs, writing to `writer` (tests give it a buffer).
fn subscriber<W>(
    filter: tracing_subscriber::EnvFilter,
    format: LogFormat,
    colour: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(colour).finish()),
        LogFormat::Json => Box::new(
            builder
                .with_ansi(false)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
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
            report_error(&error);
            ExitCode::FAILURE
        }
    }
}

/// Says why a command failed, on one line of stderr: `error: ...`, or under
/// [`LogFormat::Json`] a JSON log event at level ERROR, so that every line of a JSON log parses.
pub fn report_error(error: &anyhow::Error) {
    let line = one_line(error);
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::error!(target: "stockflow", "error: {line}"),
        _ => eprintln!("error: {line}"),
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

    /// A writer into a shared buffer, for the subscriber under test.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("the buffer lock")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `format` writes for one event with fields, inside a span.
    fn logged(format: LogFormat, colour: bool) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(
            tracing_subscriber::EnvFilter::new("info"),
            format,
            colour,
            move || writer.clone(),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("task", task = "0_1");
            let _entered = span.enter();
            tracing::info!(topic = "orders", partition = 3, "partitions assigned");
            tracing::debug!("filtered out");
        });
        let bytes = buffer.0.lock().expect("the buffer lock").clone();
        String::from_utf8(bytes).expect("UTF-8 log")
    }

    #[test]
    fn json_lines_parse_with_their_fields() {
        let log = logged(LogFormat::Json, true);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "one event passes the filter: {log}");
        let event: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON object");
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["message"], "partitions assigned");
        assert_eq!(event["topic"], "orders");
        assert_eq!(event["partition"], 3);
        assert_eq!(event["span"]["task"], "0_1");
        assert!(event["timestamp"].is_string(), "{event}");
        assert!(!log.contains('\u{1b}'), "no colour codes in JSON: {log:?}");
    }

    #[test]
    fn text_has_colour_only_when_asked() {
        let plain = logged(LogFormat::Text, false);
        assert!(plain.contains(" INFO ") && plain.contains("partitions assigned"));
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        assert!(logged(LogFormat::Text, true).contains('\u{1b}'));
    }

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
