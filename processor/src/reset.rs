//! `processor reset`: what kafka-streams-application-reset does, and the rest of a Stockflow
//! application's state, so that `processor run` reprocesses from a point in the input topics.
//!
//! 1. It refuses while the consumer group (the application id) has live members.
//! 2. It moves the group's committed offsets on the input topics (orders, inventory
//!    adjustments) to their earliest offsets, or to the first record at or after a time.
//! 3. It deletes the internal topics (repartition and changelog); `processor run` creates them
//!    again, empty, so every task starts from an empty store. A compacted changelog cannot be
//!    truncated (Kafka refuses DeleteRecords on it), hence deletion. The group's offsets on
//!    them go with them.
//! 4. It removes this machine's state dir, `<state-dir>/<application-id>` (refused while a
//!    processor holds its lock).
//! 5. It empties the read model's tables: their offset guard would refuse the rows rebuilt from
//!    the recreated changelogs, whose offsets start at 0 again.
//!
//! Output topics are left alone: the reprocessed outcomes are appended to them again.
//! `--dry-run` prints the same plan and changes nothing.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use plumbing::admin::{ADMIN_TIMEOUT, partition_counts};
use plumbing::connection::ConnectionArgs;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::cli::{ResetArgs, ResetPosition};
use crate::group::{committed_offsets, outside_consumer};
use crate::readmodel::postgres;

/// How long to wait for deleted topics to leave the cluster's metadata.
const DELETE_WAIT: Duration = Duration::from_secs(30);

/// What a reset does (and, with `--dry-run`, all it does is say so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub group: String,
    pub position: ResetPosition,
    /// Every partition of the input topics that exist.
    pub offsets: Vec<InputOffset>,
    /// Input topics that do not exist (nothing to reset there).
    pub missing_inputs: Vec<String>,
    /// The internal topics that exist, to delete.
    pub internal_topics: Vec<String>,
    /// This machine's state dir of the application, if it exists.
    pub state_dir: Option<PathBuf>,
    pub database_schema: String,
    /// Rows in the read model's tables (`None`: no tables yet).
    pub read_model_rows: Option<i64>,
}

/// One input partition's committed offset, and where the reset puts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputOffset {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub target: i64,
}

/// Runs `processor reset`: prints the plan, then carries it out unless `--dry-run`.
pub async fn reset(connection: &ConnectionArgs, args: &ResetArgs) -> anyhow::Result<()> {
    let config = connection.client_config();
    let plan = plan(connection, &config, args).await?;
    print!("{plan}");
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    apply(&config, args, &plan).await?;
    println!(
        "done: `processor run --application-id {}` now reprocesses from there",
        plan.group
    );
    Ok(())
}

async fn plan(
    connection: &ConnectionArgs,
    config: &ClientConfig,
    args: &ResetArgs,
) -> anyhow::Result<Plan> {
    let app = &args.app;
    let group = app.application_id.clone();
    let topology = crate::topology::describe(&group, &connection.topics());
    let inputs = topology.input_topics();
    let internal = topology.internal_topics();
    let names: Vec<&str> = inputs.iter().chain(internal.iter()).copied().collect();
    // One metadata call first: an unreachable cluster is reported by it, in one line.
    let counts = partition_counts(config, &names)?;
    let consumer = outside_consumer(config, &group)?;
    refuse_live_members(&consumer, &group, "resetting")?;

    let position = args.position(SystemTime::now());
    let mut offsets = Vec::new();
    let mut missing_inputs = Vec::new();
    for topic in inputs {
        let Some(&partitions) = counts.get(topic) else {
            missing_inputs.push(topic.to_owned());
            continue;
        };
        offsets.extend(input_offsets(&consumer, topic, partitions, position)?);
    }
    let state_dir = app.state_dir.join(&group);
    let read_model_rows =
        postgres::row_count(app.database_url.as_str(), &app.database_schema).await?;
    Ok(Plan {
        position,
        offsets,
        missing_inputs,
        internal_topics: internal
            .iter()
            .filter(|t| counts.contains_key(**t))
            .map(|t| (*t).to_owned())
            .collect(),
        state_dir: state_dir.exists().then_some(state_dir),
        database_schema: app.database_schema.clone(),
        read_model_rows,
        group,
    })
}

/// Fails, naming them, if `group` has live members: a member's commits would race `doing`.
pub(crate) fn refuse_live_members(
    consumer: &BaseConsumer,
    group: &str,
    doing: &str,
) -> anyhow::Result<()> {
    let groups = consumer
        .fetch_group_list(Some(group), ADMIN_TIMEOUT)
        .with_context(|| format!("cannot describe consumer group {group}"))?;
    let Some(found) = groups.groups().iter().find(|g| g.name() == group) else {
        return Ok(());
    };
    let members = found.members();
    if !members.is_empty() {
        let who: Vec<String> = members
            .iter()
            .map(|m| format!("{} on {}", m.client_id(), m.client_host()))
            .collect();
        bail!(
            "application {group} has {} live member(s) ({}); stop every `processor run` of it \
             before {doing}",
            members.len(),
            who.join(", ")
        );
    }
    Ok(())
}

/// The committed offset and the reset's target for every partition of `topic`.
fn input_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    position: ResetPosition,
) -> anyhow::Result<Vec<InputOffset>> {
    let committed = committed_offsets(consumer, topic, partitions)?;
    let by_time = match position {
        ResetPosition::Earliest => None,
        ResetPosition::Time(millis) => {
            let mut times = TopicPartitionList::new();
            for partition in 0..partitions {
                times.add_partition_offset(topic, partition, Offset::Offset(millis))?;
            }
            Some(
                consumer
                    .offsets_for_times(times, ADMIN_TIMEOUT)
                    .with_context(|| format!("cannot look up offsets by time in {topic}"))?,
            )
        }
    };
    (0..partitions)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
                .with_context(|| format!("cannot read the offsets of {topic}[{partition}]"))?;
            let found = by_time
                .as_ref()
                .and_then(|t| t.find_partition(topic, partition))
                .map(|e| e.offset());
            let target = match found {
                None => low,
                Some(Offset::Offset(offset)) => offset,
                // No record at or after that time: reprocess nothing of this partition.
                Some(_) => high,
            };
            Ok(InputOffset {
                topic: topic.to_owned(),
                partition,
                committed: committed[partition as usize],
                target,
            })
        })
        .collect()
}

async fn apply(config: &ClientConfig, args: &ResetArgs, plan: &Plan) -> anyhow::Result<()> {
    // Refuse before changing anything if a processor on this machine holds the state dir.
    let lock = match &plan.state_dir {
        Some(dir) => Some(crate::state_dir::lock(dir)?),
        None => None,
    };
    if !plan.offsets.is_empty() {
        let mut offsets = TopicPartitionList::new();
        for o in &plan.offsets {
            offsets.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.target))?;
        }
        outside_consumer(config, &plan.group)?
            .commit(&offsets, CommitMode::Sync)
            .with_context(|| {
                format!(
                    "cannot move the offsets of group {} (did a processor start meanwhile?)",
                    plan.group
                )
            })?;
    }
    delete_topics(config, &plan.internal_topics).await?;
    if let Some(dir) = &plan.state_dir {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the state dir {}", dir.display()))?;
    }
    drop(lock);
    postgres::empty(args.app.database_url.as_str(), &plan.database_schema).await?;
    Ok(())
}

/// Deletes `topics` and waits until the cluster no longer lists them, so that a processor
/// started right after creates them afresh.
pub(crate) async fn delete_topics(config: &ClientConfig, topics: &[String]) -> anyhow::Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .context("cannot create a Kafka admin client")?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .delete_topics(&names, &options)
        .await
        .context("cannot delete the internal topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => bail!("cannot delete topic {topic}: {code}"),
        }
    }
    let deadline = Instant::now() + DELETE_WAIT;
    while !partition_counts(config, &names)?.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "the deleted topics {} are still listed after {DELETE_WAIT:?}",
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match self.position {
            ResetPosition::Earliest => "the earliest offsets".to_owned(),
            ResetPosition::Time(millis) => {
                let time = SystemTime::UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
                format!(
                    "the first records at or after {}",
                    humantime::format_rfc3339_millis(time)
                )
            }
        };
        writeln!(
            f,
            "reset of application {} (consumer group {}) to {to}:",
            self.group, self.group
        )?;
        writeln!(f, "  input offsets (committed -> after the reset):")?;
        for o in &self.offsets {
            let committed = o.committed.map_or("none".to_owned(), |c| c.to_string());
            writeln!(
                f,
                "    {}[{}]: {committed} -> {}",
                o.topic, o.partition, o.target
            )?;
        }
        for topic in &self.missing_inputs {
            writeln!(f, "    {topic}: does not exist, nothing to reset")?;
        }
        let internal = if self.internal_topics.is_empty() {
            "none exist".to_owned()
        } else {
            self.internal_topics.join(", ")
        };
        writeln!(f, "  internal topics to delete: {internal}")?;
        cleanup_lines(
            f,
            self.state_dir.as_deref(),
            "run this with each one's --state-dir, or remove those dirs",
            self.read_model_rows,
            &self.database_schema,
        )
    }
}

/// The plan's lines on local state and the read model (`reset` and `repartition` both remove
/// this machine's state dir and empty the read model); `others` says what other instances need.
pub(crate) fn cleanup_lines(
    f: &mut fmt::Formatter<'_>,
    state_dir: Option<&std::path::Path>,
    others: &str,
    read_model_rows: Option<i64>,
    database_schema: &str,
) -> fmt::Result {
    match state_dir {
        Some(dir) => writeln!(f, "  local state to remove: {}", dir.display())?,
        None => writeln!(f, "  local state to remove: none on this machine")?,
    }
    writeln!(f, "  other instances: {others}")?;
    match read_model_rows {
        Some(rows) => writeln!(
            f,
            "  read model to empty: {} ({rows} rows) in schema {database_schema}",
            postgres::TABLES.join(", "),
        ),
        None => writeln!(
            f,
            "  read model to empty: no tables yet in schema {database_schema}"
        ),
    }
}
