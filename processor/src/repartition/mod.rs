//! `processor repartition --partitions N`: raises a stopped application's partition count with
//! its state intact (ARCHITECTURE.md, "Repartitioning").
//!
//! 1. It refuses while the consumer group has live members, as `reset` does.
//! 2. It reads every store's changelog to its end (read_committed: the committed state), the
//!    records of the repartition topics the group has not consumed, and the adjustments it has
//!    not consumed, and places each under the new count ([`rekey`]). Nothing has changed yet;
//!    `--dry-run` prints the plan and stops here.
//! 3. It grows the input topics, checks that no adjustment arrived since the read, deletes the
//!    internal topics and creates them with the new count, writes the re-keyed entries and
//!    records, and moves the group's offsets on the adjustments it copied.
//! 4. It removes this machine's state dir and empties the read model.

pub mod rekey;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plumbing::admin::{ADMIN_TIMEOUT, partition_counts};
use plumbing::connection::ConnectionArgs;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::cli::RepartitionArgs;
use crate::group::{committed_offsets, outside_consumer};
use crate::readmodel::postgres;
use crate::reset::{delete_topics, refuse_live_members};
use crate::runtime::topology::Topology;
use crate::topology::{INVENTORY_STORE, ORDERS_STORE};
use rekey::Destination;

/// How long a read may go without reaching a partition's end (a transaction left open by a
/// killed processor holds it back until the broker aborts it).
const STALL_LIMIT: Duration = Duration::from_secs(90);
/// Records per batch of writes awaited together.
const WRITE_BATCH: usize = 20_000;

/// One record to write.
#[derive(Debug, Clone)]
pub struct Write {
    pub topic: String,
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub timestamp: Option<i64>,
    pub headers: Option<OwnedHeaders>,
}

/// What the plan does to one topic's records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Moved {
    pub topic: String,
    /// Entries (a store's keys) or records read.
    pub read: usize,
    /// Records written (an entry copied to every partition counts once per partition).
    pub written: usize,
    /// Records that land on another partition number than the one they were read from.
    pub moved: usize,
    /// Records dropped (watermarks and their requests, sent again when needed).
    pub dropped: usize,
}

/// What a repartition does (and, with `--dry-run`, all it does is say so).
#[derive(Debug)]
pub struct Plan {
    pub group: String,
    /// The state's partition count (its changelogs'), and the one asked for.
    pub from: i32,
    pub to: i32,
    /// The input topics and their partition counts now.
    pub inputs: Vec<(String, i32)>,
    /// The internal topics, to delete and create with `to` partitions.
    pub internal_topics: Vec<String>,
    /// Per changelog, per repartition topic, and for the adjustments copied.
    pub stores: Vec<Moved>,
    pub in_flight: Vec<Moved>,
    pub adjustments: Moved,
    /// The group's offset on each adjustments partition it copied, and where it moves to.
    pub adjustment_offsets: Vec<(i32, Option<i64>, i64)>,
    pub state_dir: Option<PathBuf>,
    pub database_schema: String,
    pub read_model_rows: Option<i64>,
    /// Everything to write, in order.
    pub writes: Vec<Write>,
}

/// Runs `processor repartition`: prints the plan, then carries it out unless `--dry-run`.
pub async fn repartition(
    connection: &ConnectionArgs,
    args: &RepartitionArgs,
) -> anyhow::Result<()> {
    let config = connection.client_config();
    let topics = connection.topics();
    let (topology, wiring) = crate::topology::describe_wired(&args.app.application_id, &topics);
    let order_lines = topology.sink(wiring.line_commands).to_owned();
    let names = Names {
        order_lines,
        adjustments: topics.inventory_adjustments.clone(),
    };
    let Some(plan) = plan(&config, &topology, &names, args).await? else {
        return Ok(());
    };
    print!("{plan}");
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    apply(&config, &topology, args, &plan).await?;
    println!(
        "done: `processor run --application-id {}` now runs {} tasks per sub-topology",
        plan.group, plan.to
    );
    Ok(())
}

/// The topics the plan treats apart.
struct Names {
    order_lines: String,
    adjustments: String,
}

/// Reads everything and places it; `None` when there is nothing to do (said on stdout).
async fn plan(
    config: &ClientConfig,
    topology: &Topology,
    names: &Names,
    args: &RepartitionArgs,
) -> anyhow::Result<Option<Plan>> {
    let app = &args.app;
    let group = app.application_id.clone();
    let to = args.partitions;
    let inputs = topology.input_topics();
    let internal = topology.internal_topics();
    let all: Vec<&str> = inputs.iter().chain(internal.iter()).copied().collect();
    // One metadata call first: an unreachable cluster is reported by it, in one line.
    let counts = partition_counts(config, &all)?;
    let consumer = outside_consumer(config, &group)?;
    refuse_live_members(&consumer, &group, "repartitioning")?;

    let mut input_counts = Vec::new();
    for topic in &inputs {
        let Some(&n) = counts.get(*topic) else {
            bail!("input topic {topic} does not exist: there is nothing to repartition");
        };
        if n > to {
            bail!(
                "{topic} has {n} partitions: Kafka cannot shrink a topic, so --partitions must be at least {n}"
            );
        }
        input_counts.push(((*topic).to_owned(), n));
    }
    let changelogs: Vec<(&str, &str)> = topology
        .subs
        .iter()
        .flat_map(|s| &s.stores)
        .map(|s| (s.name, s.changelog.as_str()))
        .collect();
    // The state's partition count is its changelogs'; the inputs may have been grown already
    // (by hand, or by a repartition that stopped after that step).
    let mut from = None;
    for (_, changelog) in &changelogs {
        match (counts.get(*changelog), from) {
            (Some(&n), None) => from = Some(n),
            (Some(&n), Some(f)) if n != f => {
                bail!(
                    "changelog {changelog} has {n} partitions and another {f}: not one application's state"
                )
            }
            _ => {}
        }
    }
    let Some(from) = from else {
        bail!(
            "application {group} has no changelogs: run it once, or create its topics with the partition count you want"
        );
    };
    if from == to && input_counts.iter().all(|(_, n)| *n == to) {
        println!("application {group} already runs {to} partitions: nothing to do");
        return Ok(None);
    }
    if from > to {
        bail!("application {group} runs {from} partitions: --partitions must be at least {from}");
    }

    let mut writes = Vec::new();
    let mut stores = Vec::new();
    for (store, changelog) in &changelogs {
        let entries = read_changelog(&consumer, changelog, from)?;
        let mut moved = Moved {
            topic: (*changelog).to_owned(),
            ..Moved::default()
        };
        for (partition, entries) in entries.into_iter().enumerate() {
            let partition = partition as i32;
            for (key, value) in entries {
                moved.read += 1;
                let destination = match *store {
                    ORDERS_STORE => rekey::orders_entry(&key, value, partition, to)?,
                    INVENTORY_STORE => rekey::inventory_entry(&key, value, partition, to)?,
                    other => bail!("store {other} is not one this build knows how to re-key"),
                };
                let targets = match destination {
                    Destination::One(p, value) => vec![(p, value)],
                    Destination::Every(value) => (0..to).map(|p| (p, value.clone())).collect(),
                };
                for (p, value) in targets {
                    moved.written += 1;
                    moved.moved += usize::from(p != partition);
                    writes.push(Write {
                        topic: (*changelog).to_owned(),
                        partition: p,
                        key: key.clone(),
                        value,
                        timestamp: None,
                        headers: None,
                    });
                }
            }
        }
        stores.push(moved);
    }

    let mut in_flight = Vec::new();
    for topic in topology.sinks.iter().filter(|t| t.internal) {
        let mut moved = Moved {
            topic: topic.name.clone(),
            ..Moved::default()
        };
        let order_lines = topic.name == names.order_lines;
        for record in read_tail(&consumer, &topic.name, from)? {
            moved.read += 1;
            let key = record.key.unwrap_or_default();
            let value = record.value.unwrap_or_default();
            let placed = if order_lines {
                rekey::order_lines_record(&key, &value, to)
            } else {
                rekey::line_results_record(&key, to).map(|p| (p, value))
            };
            let Some((partition, value)) = placed else {
                moved.dropped += 1;
                continue;
            };
            moved.written += 1;
            moved.moved += usize::from(partition != record.partition);
            writes.push(Write {
                topic: topic.name.clone(),
                partition,
                key,
                value,
                timestamp: record.timestamp,
                headers: record.headers,
            });
        }
        in_flight.push(moved);
    }

    let (adjustments, adjustment_offsets, copies) =
        copy_adjustments(&consumer, &names.adjustments, from, to)?;
    writes.extend(copies);

    let state_dir = app.state_dir.join(&group);
    let read_model_rows =
        postgres::row_count(app.database_url.as_str(), &app.database_schema).await?;
    Ok(Some(Plan {
        group,
        from,
        to,
        inputs: input_counts,
        internal_topics: internal
            .iter()
            .filter(|t| counts.contains_key(**t))
            .map(|t| (*t).to_owned())
            .collect(),
        stores,
        in_flight,
        adjustments,
        adjustment_offsets,
        state_dir: state_dir.exists().then_some(state_dir),
        database_schema: app.database_schema.clone(),
        read_model_rows,
        writes,
    }))
}

/// The adjustments the group has not consumed on the state's `from` partitions, copied to
/// their key's partition among `to`; and where the group's offsets move.
#[allow(clippy::type_complexity)]
fn copy_adjustments(
    consumer: &BaseConsumer,
    topic: &str,
    from: i32,
    to: i32,
) -> anyhow::Result<(Moved, Vec<(i32, Option<i64>, i64)>, Vec<Write>)> {
    let committed = committed_offsets(consumer, topic, from)?;
    let mut ranges = Vec::new();
    let mut offsets = Vec::new();
    for (partition, committed) in (0..from).zip(committed) {
        let (low, high) = watermarks(consumer, topic, partition)?;
        let start = committed.unwrap_or(low).max(low);
        ranges.push((partition, start, high));
        offsets.push((partition, committed, high));
    }
    let mut moved = Moved {
        topic: topic.to_owned(),
        ..Moved::default()
    };
    let mut writes = Vec::new();
    for record in read_ranges(consumer, topic, &ranges)? {
        let partition = match &record.key {
            Some(key) if !key.is_empty() => crate::runtime::partitioner::partition_for(key, to),
            _ => record.partition,
        };
        moved.read += 1;
        moved.written += 1;
        moved.moved += usize::from(partition != record.partition);
        writes.push(Write {
            topic: topic.to_owned(),
            partition,
            key: record.key.unwrap_or_default(),
            value: record.value.unwrap_or_default(),
            timestamp: record.timestamp,
            headers: record.headers,
        });
    }
    Ok((moved, offsets, writes))
}

async fn apply(
    config: &ClientConfig,
    topology: &Topology,
    args: &RepartitionArgs,
    plan: &Plan,
) -> anyhow::Result<()> {
    // Refuse before changing anything if a processor on this machine holds the state dir.
    let lock = match &plan.state_dir {
        Some(dir) => Some(crate::state_dir::lock(dir)?),
        None => None,
    };
    grow_inputs(config, &plan.inputs, plan.to).await?;
    // The point of no return is next: an adjustment that arrived since the read would be
    // skipped by the offsets the plan commits.
    let consumer = outside_consumer(config, &plan.group)?;
    let adjustments_topic = &plan.adjustments.topic;
    for &(partition, _, end) in &plan.adjustment_offsets {
        let (_, now) = watermarks(&consumer, adjustments_topic, partition)?;
        if now != end {
            bail!(
                "{adjustments_topic}[{partition}] grew from {end} to {now} records while the repartition read it: \
                 stop the producers of adjustments and run it again (the inputs now have {} \
                 partitions; nothing else changed)",
                plan.to
            );
        }
    }
    delete_topics(config, &plan.internal_topics).await?;
    let lost = || {
        format!(
            "the internal topics of {} were deleted and not all of the state was written back: \
             the application must be reset (`processor reset`)",
            plan.group
        )
    };
    crate::runtime::topics::ensure(topology, config, plan.to)
        .await
        .with_context(lost)?;
    write(config, &plan.writes).await.with_context(lost)?;
    if !plan.adjustment_offsets.is_empty() {
        let mut offsets = TopicPartitionList::new();
        for &(partition, _, end) in &plan.adjustment_offsets {
            offsets.add_partition_offset(adjustments_topic, partition, Offset::Offset(end))?;
        }
        consumer
            .commit(&offsets, CommitMode::Sync)
            .with_context(|| format!("cannot move the offsets of group {}", plan.group))?;
    }
    if let Some(dir) = &plan.state_dir {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the state dir {}", dir.display()))?;
    }
    drop(lock);
    postgres::empty(args.app.database_url.as_str(), &plan.database_schema).await?;
    Ok(())
}

/// Grows each input topic to `to` partitions (those already there are left alone).
async fn grow_inputs(
    config: &ClientConfig,
    inputs: &[(String, i32)],
    to: i32,
) -> anyhow::Result<()> {
    let grow: Vec<NewPartitions> = inputs
        .iter()
        .filter(|(_, n)| *n < to)
        .map(|(topic, _)| NewPartitions::new(topic, to as usize))
        .collect();
    if grow.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .context("cannot create a Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for result in admin
        .create_partitions(&grow, &options)
        .await
        .context("cannot grow the input topics")?
    {
        if let Err((topic, code)) = result {
            bail!("cannot grow {topic} to {to} partitions: {code}");
        }
    }
    Ok(())
}

/// Writes `writes` with an idempotent producer, checking every delivery.
async fn write(config: &ClientConfig, writes: &[Write]) -> anyhow::Result<()> {
    let producer: FutureProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .context("cannot create a Kafka producer")?;
    for batch in writes.chunks(WRITE_BATCH) {
        let sends = batch.iter().map(|w| {
            let mut record = FutureRecord::to(&w.topic)
                .partition(w.partition)
                .key(&w.key)
                .payload(&w.value);
            if let Some(time) = w.timestamp {
                record = record.timestamp(time);
            }
            if let Some(headers) = &w.headers {
                record = record.headers(headers.clone());
            }
            producer.send(record, ADMIN_TIMEOUT)
        });
        for (result, w) in futures::future::join_all(sends)
            .await
            .into_iter()
            .zip(batch)
        {
            if let Err((error, _)) = result {
                bail!("cannot write to {}[{}]: {error}", w.topic, w.partition);
            }
        }
    }
    Ok(())
}

/// One record read.
struct Read {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
    headers: Option<OwnedHeaders>,
}

fn watermarks(consumer: &BaseConsumer, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
    consumer
        .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot read the offsets of {topic}[{partition}]"))
}

/// The committed state of a changelog: per partition, the last value of each key.
fn read_changelog(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<BTreeMap<Vec<u8>, Vec<u8>>>> {
    let mut ranges = Vec::new();
    for partition in 0..partitions {
        let (low, high) = watermarks(consumer, topic, partition)?;
        ranges.push((partition, low, high));
    }
    let mut state = vec![BTreeMap::new(); partitions as usize];
    for record in read_ranges(consumer, topic, &ranges)? {
        let entries = &mut state[record.partition as usize];
        let key = record.key.unwrap_or_default();
        match record.value {
            Some(value) => entries.insert(key, value),
            None => entries.remove(&key),
        };
    }
    Ok(state)
}

/// The records of a repartition topic the group has not consumed.
fn read_tail(consumer: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<Vec<Read>> {
    let committed = committed_offsets(consumer, topic, partitions)?;
    let mut ranges = Vec::new();
    for (partition, committed) in (0..partitions).zip(committed) {
        let (low, high) = watermarks(consumer, topic, partition)?;
        ranges.push((partition, committed.unwrap_or(low).max(low), high));
    }
    read_ranges(consumer, topic, &ranges)
}

/// The committed records of `topic` in each `(partition, from, to)` range, in offset order per
/// partition.
fn read_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, i64, i64)],
) -> anyhow::Result<Vec<Read>> {
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for &(partition, from, to) in ranges.iter().filter(|(_, from, to)| from < to) {
        assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
        ends.insert(partition, (from, to));
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot read {topic}"))?;
    let mut progressed = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.topic() == topic => {
                let partition = message.partition();
                let Some(&(_, to)) = ends.get(&partition) else {
                    continue;
                };
                if message.offset() < to {
                    let owned = message.detach();
                    records.push(Read {
                        partition,
                        key: owned.key().map(<[u8]>::to_vec),
                        value: owned.payload().map(<[u8]>::to_vec),
                        timestamp: owned.timestamp().to_millis(),
                        headers: owned.headers().cloned(),
                    });
                    progressed = Instant::now();
                }
                if message.offset() + 1 >= to {
                    ends.remove(&partition);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => tracing::debug!(topic, %error, "repartition read"),
            None => {}
        }
        // Transaction markers are never delivered: a partition ending in one is done when the
        // consumer's position passes its end.
        let positions = consumer
            .position()
            .context("cannot read the consumer's position")?;
        ends.retain(|&partition, (_, to)| {
            !matches!(
                positions.find_partition(topic, partition).map(|e| e.offset()),
                Some(Offset::Offset(p)) if p >= *to
            )
        });
        if progressed.elapsed() > STALL_LIMIT {
            let waiting: Vec<String> = ends.keys().map(|p| format!("{topic}[{p}]")).collect();
            bail!(
                "{} did not reach its end within {STALL_LIMIT:?}: a transaction left open by a \
                 killed processor holds it back until the broker aborts it; run this again later",
                waiting.join(", ")
            );
        }
    }
    consumer.unassign().context("cannot stop reading")?;
    Ok(records)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "repartition of application {} from {} to {} partitions:",
            self.group, self.from, self.to
        )?;
        for (topic, n) in &self.inputs {
            if *n < self.to {
                writeln!(f, "  grow {topic}: {n} -> {} partitions", self.to)?;
            } else {
                writeln!(f, "  {topic}: already {n} partitions")?;
            }
        }
        let internal = if self.internal_topics.is_empty() {
            "none exist".to_owned()
        } else {
            self.internal_topics.join(", ")
        };
        writeln!(
            f,
            "  internal topics to recreate with {} partitions: {internal}",
            self.to
        )?;
        writeln!(f, "  state, re-keyed from the changelogs:")?;
        for m in &self.stores {
            writeln!(
                f,
                "    {}: {} entries read, {} written, {} on another partition",
                m.topic, m.read, m.written, m.moved
            )?;
        }
        writeln!(f, "  records in flight (not yet consumed), re-keyed:")?;
        for m in &self.in_flight {
            writeln!(
                f,
                "    {}: {} read, {} written, {} on another partition, {} dropped (watermarks, sent again)",
                m.topic, m.read, m.written, m.moved, m.dropped
            )?;
        }
        let m = &self.adjustments;
        writeln!(
            f,
            "    {}: {} copied to their sku's partition, {} of them to another one",
            m.topic, m.written, m.moved
        )?;
        writeln!(
            f,
            "  group offsets on {} (committed -> after):",
            self.adjustments.topic
        )?;
        for (partition, committed, end) in &self.adjustment_offsets {
            let committed = committed.map_or("none".to_owned(), |c| c.to_string());
            writeln!(
                f,
                "    {}[{partition}]: {committed} -> {end}",
                self.adjustments.topic
            )?;
        }
        writeln!(
            f,
            "  orders: left in place (read where they are, rerouted to their id's partition)"
        )?;
        crate::reset::cleanup_lines(
            f,
            self.state_dir.as_deref(),
            "their stores see the new partition count and restore from scratch",
            self.read_model_rows,
            &self.database_schema,
        )
    }
}
