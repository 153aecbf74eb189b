//! The processor's command line: one typed config; every flag has a `///` help line and, where
//! a deployment would set it, an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{ArgGroup, Args, Parser, Subcommand};
use plumbing::connection::ConnectionArgs;
use plumbing::process::LogArgs;
use schemas::cli::SchemasCommand;

use crate::runtime::engine::GroupProtocol;
use crate::runtime::guarantee::ProcessingGuarantee;

/// Stockflow's order processor: decides every order against a RocksDB inventory, exactly once.
#[derive(Debug, Clone, Parser)]
#[command(name = "processor", version, about)]
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
    /// Run the processor: join orders against the inventory and decide each one.
    Run(RunArgs),
    /// Reprocess: move the application's input offsets back, delete its internal topics, its
    /// local state and its read model's rows (what kafka-streams-application-reset does).
    Reset(ResetArgs),
    /// Raise the partition count of a stopped application with its state intact: grow the
    /// input topics, re-key every store and the records in flight, recreate the internal
    /// topics (ARCHITECTURE.md, "Repartitioning").
    Repartition(RepartitionArgs),
    /// Follow the outputs (outcomes, stock changes, dead letters), one decoded line each.
    Tail {
        /// Start from the beginning of the topics instead of from now: the history first,
        /// merged across the topics in timestamp order, then records as they arrive.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Check a run against the serial execution of the rules (the clerk): read the inputs and
    /// the outputs up to their end offsets, and list where they differ. Exit code 0: none; 1:
    /// some; 2: the audit could not run.
    Audit(AuditArgs),
    /// One screen on a running (or stopped) application: group members with their partitions
    /// and tasks, restores in progress, last commits, input lag, read-model sync lag, dead
    /// letters. Works with every instance down (from Kafka's metadata only).
    Status(StatusArgs),
    /// Register or check the Avro contracts in the schema registry.
    #[command(subcommand)]
    Schemas(SchemasCommand),
}

/// `processor audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// How many differences to list, one line each (all are counted).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub show: usize,

    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// How long decided orders are remembered: shared by `run` and `audit` (which models it).
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// How long a decided order's id is remembered for deduplication, in event time (its
    /// partition's record timestamps), e.g. 7d or 12h: then the order is deleted from the
    /// store (the read model keeps it) and a record with its id is decided again. `audit`
    /// must be given the value the run had.
    #[arg(long, env = "STOCKFLOW_ORDER_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub order_retention: Duration,
}

/// `processor status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The application id: the consumer group, and the prefix of internal topics.
    #[arg(long, env = "STOCKFLOW_APPLICATION_ID", default_value = "stockflow")]
    pub application_id: String,

    /// Print the report as JSON (one object, its shape in the README) instead of the screen.
    #[arg(long)]
    pub json: bool,

    /// How long to wait for each instance's /status answer, in milliseconds.
    #[arg(long, env = "STOCKFLOW_STATUS_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub instance_timeout_ms: u64,
}

impl StatusArgs {
    pub fn instance_timeout(&self) -> Duration {
        Duration::from_millis(self.instance_timeout_ms)
    }
}

/// Where an application's state lives: shared by `run` and `reset`.
#[derive(Debug, Clone, Args)]
pub struct ApplicationArgs {
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

    /// PostgreSQL for the read model (postgres://user:password@host:port/database).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://stockflow:stockflow@127.0.0.1:5432/stockflow"
    )]
    pub database_url: DatabaseUrl,

    /// The PostgreSQL schema of the read model's tables (created if missing).
    #[arg(long, env = "STOCKFLOW_DATABASE_SCHEMA", default_value = "public", value_parser = parse_schema)]
    pub database_schema: String,
}

/// `processor run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub app: ApplicationArgs,

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

    /// Where to serve /metrics, /health, /ready and /status (port 0 picks a free one). Other
    /// machines running `processor status` ask this address (0.0.0.0: the host Kafka sees).
    #[arg(long, env = "STOCKFLOW_METRICS_ADDR", default_value = "127.0.0.1:9400")]
    pub metrics_addr: SocketAddr,

    /// Partitions for topics the processor creates because they are missing.
    #[arg(long, env = "STOCKFLOW_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub partitions: i32,

    /// RocksDB block cache shared by every store, in MiB (a quarter may hold memtables).
    #[arg(long, env = "STOCKFLOW_CACHE_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(8..))]
    pub cache_mb: u64,

    /// Engine threads, each with its own consumer and transactional producer, sharing the
    /// tasks (Kafka Streams' num.stream.threads). One thread commits while another processes.
    #[arg(long, env = "STOCKFLOW_NUM_STREAM_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub num_stream_threads: u16,

    /// Static group membership (Kafka's group.instance.id, `<id>-<thread>` per engine
    /// thread): a name that stays the same across restarts, e.g. the pod name. An instance
    /// restarted within the session timeout gets its partitions back and nothing moves; one
    /// that stops keeps its partitions until the session timeout ends (it does not leave).
    #[arg(long, env = "STOCKFLOW_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    /// The consumer group protocol: classic (eager `range`: every rebalance stops every task)
    /// or consumer (KIP-848 with the broker's `range` assignor: a rebalance moves only the
    /// tasks that change owner; the session timeout is the broker's,
    /// group.consumer.session.timeout.ms, and `-X session.timeout.ms` is refused).
    #[arg(
        long,
        env = "STOCKFLOW_GROUP_PROTOCOL",
        value_enum,
        default_value = "classic"
    )]
    pub group_protocol: GroupProtocol,

    /// /health fails when an engine thread goes this long without progress (its loop going
    /// round, or a restore writing a batch), e.g. 2m: a wedged engine shows as unhealthy.
    #[arg(long, env = "STOCKFLOW_STALL_TIMEOUT", default_value = "2m", value_parser = parse_interval)]
    pub stall_timeout: Duration,

    /// Once the processor is stopping (a signal, or a failure), how long its engine threads
    /// get to commit and leave the group before it exits without them (exit 1), e.g. 60s.
    #[arg(long, env = "STOCKFLOW_SHUTDOWN_TIMEOUT", default_value = "60s", value_parser = parse_interval)]
    pub shutdown_timeout: Duration,

    /// How often each task syncs its changed rows to PostgreSQL, e.g. 1s or 500ms.
    #[arg(long, env = "STOCKFLOW_SYNC_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub sync_interval: Duration,

    /// In which order orders are decided: event-time (every order decided as one clerk taking
    /// the inputs in timestamp order would: reproducible, no order rejected for stock that
    /// was only held for a moment; needs exactly_once_v2) or arrival (as records arrive;
    /// README, "Decision order"). Default: event-time, or arrival under at_least_once.
    #[arg(long, env = "STOCKFLOW_DECISION_ORDER", value_enum)]
    pub decision_order: Option<DecisionOrderArg>,

    /// Event-time mode: how long a partition with nothing to read may hold the others back,
    /// in milliseconds (Kafka Streams' max.task.idle.ms). A record that arrives later than
    /// this after its timestamp is decided where it arrived.
    #[arg(long, env = "STOCKFLOW_MAX_TASK_IDLE_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub max_task_idle_ms: u64,

    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// `--decision-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionOrderArg {
    EventTime,
    Arrival,
}

/// `processor reset`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("position").args(["to_earliest", "to_datetime", "by_duration"])))]
pub struct ResetArgs {
    #[command(flatten)]
    pub app: ApplicationArgs,

    /// Reprocess the input topics from their beginning (the default).
    #[arg(long)]
    pub to_earliest: bool,

    /// Reprocess from the first record at or after this time (RFC 3339, UTC unless an offset is
    /// given), e.g. 2026-11-22T10:00:00Z.
    #[arg(long, value_parser = parse_datetime)]
    pub to_datetime: Option<SystemTime>,

    /// Reprocess the records of the last DURATION, e.g. 1h or 30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub by_duration: Option<Duration>,

    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `processor repartition`.
#[derive(Debug, Clone, Args)]
pub struct RepartitionArgs {
    #[command(flatten)]
    pub app: ApplicationArgs,

    /// The new partition count of the input topics and of every task-owned topic (at least
    /// the current one: Kafka cannot shrink a topic).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,

    /// Read everything, print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where `processor reset` moves the input offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPosition {
    Earliest,
    /// The first record whose timestamp is at or after this time (ms since the epoch).
    Time(i64),
}

impl ResetArgs {
    /// The position asked for, with `--by-duration` counted back from `now`.
    pub fn position(&self, now: SystemTime) -> ResetPosition {
        let millis = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        };
        match (self.to_datetime, self.by_duration) {
            (Some(time), _) => ResetPosition::Time(millis(time)),
            (None, Some(ago)) => ResetPosition::Time(millis(now - ago)),
            (None, None) => ResetPosition::Earliest,
        }
    }
}

fn parse_datetime(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e} (expected e.g. 2026-11-22T10:00:00Z)"))
}

/// A database URL whose password never reaches a log (`Debug` masks it).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(Self(s.to_owned()))
        } else {
            Err("expected postgres://user:password@host:port/database".to_owned())
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // postgres://user:secret@host -> postgres://user:***@host
        let masked = match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &self.0[scheme + 3..at];
                match credentials.find(':') {
                    Some(colon) => format!(
                        "{}{}:***{}",
                        &self.0[..scheme + 3],
                        &credentials[..colon],
                        &self.0[at..]
                    ),
                    None => self.0.clone(),
                }
            }
            _ => self.0.clone(),
        };
        f.write_str(&masked)
    }
}

/// A schema name that needs no quoting: lower-case letters, digits and `_`, at most 63 bytes.
fn parse_schema(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(s.to_owned())
    } else {
        Err("use lower-case letters, digits and _ (at most 63, not starting with a digit)".into())
    }
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    let retention = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if retention < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(retention)
}

/// An instance id: 1 to 200 letters, digits, `.`, `_` or `-`.
fn parse_instance_id(s: &str) -> Result<String, String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > 200 || !s.chars().all(valid) {
        return Err("must be 1 to 200 letters, digits, '.', '_' or '-'".into());
    }
    Ok(s.to_owned())
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(interval)
}

impl RunArgs {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// The decision order asked for, or the guarantee's default: event-time under
    /// exactly-once, arrival under at-least-once, which event-time refuses. (At least once, a
    /// reserve read again after a crash can wait in the merge buffer while its order's
    /// release, sent after the first reading's result, applies first: its units would stay
    /// reserved. Exactly once, a reserve's decision and its result commit together.)
    pub fn decision_order(&self) -> Result<crate::topology::DecisionOrder, UnsupportedOrder> {
        let exactly_once = self.processing_guarantee == ProcessingGuarantee::ExactlyOnceV2;
        let asked = self.decision_order.unwrap_or(if exactly_once {
            DecisionOrderArg::EventTime
        } else {
            DecisionOrderArg::Arrival
        });
        match asked {
            DecisionOrderArg::Arrival => Ok(crate::topology::DecisionOrder::Arrival),
            DecisionOrderArg::EventTime if !exactly_once => Err(UnsupportedOrder),
            DecisionOrderArg::EventTime => Ok(crate::topology::DecisionOrder::EventTime {
                max_idle_ms: self.max_task_idle_ms as i64,
            }),
        }
    }
}

/// `--decision-order event-time` with `--processing-guarantee at_least_once`.
#[derive(Debug, thiserror::Error)]
#[error(
    "--decision-order event-time needs --processing-guarantee exactly_once_v2 (at least once, \
     a reserve read again after a crash can be decided after its order's release); use \
     --decision-order arrival"
)]
pub struct UnsupportedOrder;

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

    #[test]
    fn the_decision_order_defaults_by_guarantee_and_event_time_needs_exactly_once() {
        use crate::topology::DecisionOrder;
        let order = |flags: &[&str]| {
            let mut argv = vec!["processor", "run"];
            argv.extend_from_slice(flags);
            let Command::Run(run) = Cli::try_parse_from(argv).expect("parses").command else {
                panic!("parsed as run")
            };
            run.decision_order().ok()
        };
        let event_time = Some(DecisionOrder::EventTime { max_idle_ms: 100 });
        assert_eq!(order(&[]), event_time);
        assert_eq!(
            order(&["--processing-guarantee", "at_least_once"]),
            Some(DecisionOrder::Arrival)
        );
        assert_eq!(
            order(&["--decision-order", "arrival"]),
            Some(DecisionOrder::Arrival)
        );
        assert_eq!(
            order(&[
                "--processing-guarantee",
                "at_least_once",
                "--decision-order",
                "event-time"
            ]),
            None,
            "refused"
        );
    }

    #[test]
    fn the_database_password_never_shows_in_debug_output() {
        let url: DatabaseUrl = "postgres://stockflow:s3cret@db:5432/stockflow"
            .parse()
            .expect("parses");
        let shown = format!("{url:?}");
        assert_eq!(shown, "postgres://stockflow:***@db:5432/stockflow");
        assert!("mysql://x@y/z".parse::<DatabaseUrl>().is_err());
    }

    #[test]
    fn sync_flags_are_checked() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["processor", "run"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv)
        };
        let cli = parse(&[
            "--sync-interval",
            "250ms",
            "--database-schema",
            "read_model_2",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("parsed as run")
        };
        assert_eq!(run.sync_interval, Duration::from_millis(250));
        assert_eq!(run.app.database_schema, "read_model_2");
        assert!(parse(&["--sync-interval", "1ms"]).is_err());
        assert!(parse(&["--database-schema", "Robert'); DROP TABLE orders;--"]).is_err());
        assert!(parse(&["--database-schema", "2fast"]).is_err());
    }

    #[test]
    fn audit_shows_twenty_differences_unless_told() {
        let show = |flags: &[&str]| {
            let mut argv = vec!["processor", "audit"];
            argv.extend_from_slice(flags);
            match Cli::try_parse_from(argv).expect("parses").command {
                Command::Audit(audit) => audit.show,
                other => panic!("parsed as {other:?}"),
            }
        };
        assert_eq!(show(&[]), 20);
        assert_eq!(show(&["--show", "3"]), 3);
        assert!(Cli::try_parse_from(["processor", "audit", "--show", "-1"]).is_err());
    }

    #[test]
    fn order_retention_defaults_to_seven_days_in_run_and_audit() {
        let retention = |argv: &[&str]| {
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Run(run) => run.retention.order_retention,
                Command::Audit(audit) => audit.retention.order_retention,
                other => panic!("parsed as {other:?}"),
            })
        };
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(retention(&["processor", "run"]).ok(), Some(week));
        assert_eq!(retention(&["processor", "audit"]).ok(), Some(week));
        let two = ["processor", "audit", "--order-retention", "2s"];
        assert_eq!(retention(&two).ok(), Some(Duration::from_secs(2)));
        assert!(retention(&["processor", "run", "--order-retention", "0s"]).is_err());
        assert!(retention(&["processor", "run", "--order-retention", "soon"]).is_err());
    }

    #[test]
    fn reset_positions_are_exclusive_and_parsed() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["processor", "reset"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Reset(reset) => reset,
                other => panic!("parsed as {other:?}"),
            })
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let position = |flags: &[&str]| parse(flags).expect("parses").position(now);
        assert_eq!(position(&[]), ResetPosition::Earliest);
        assert_eq!(position(&["--to-earliest"]), ResetPosition::Earliest);
        assert_eq!(
            position(&["--to-datetime", "1970-01-01T00:00:05Z"]),
            ResetPosition::Time(5_000)
        );
        assert_eq!(
            position(&["--by-duration", "1h"]),
            ResetPosition::Time(10_000_000 - 3_600_000)
        );
        assert!(parse(&["--to-earliest", "--by-duration", "1h"]).is_err());
        assert!(parse(&["--to-datetime", "yesterday"]).is_err());
        assert!(parse(&["--dry-run"]).expect("parses").dry_run);
    }
}
