//! `processor status`: one screen (or `--json`) on an application: the consumer group's
//! members with their partitions and tasks, what each live instance says it is doing
//! (restores and their progress, last commit, the read model's sync lag), the lag of every
//! input partition, and the dead-letter count. It works with every instance down too: the
//! group, the committed offsets and the topics are Kafka's.
//!
//! How it finds the instances: every engine thread's consumer has the client id
//! `stockflow-<instance id>-engine-<n>@<status address>` ([`client_id`]), and the group lists
//! each member's client id, so the command asks each address for `GET /status`
//! ([`InstanceStatus`], served beside `/metrics`). An instance that does not answer is said so
//! in its rows, which then show what the group says only.
//!
//! Layout: this module (the observations: Kafka, HTTP); [`report`] (pure: the observations put
//! together, and the screen); `tests.rs` (the pure part's unit tests).

pub mod report;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use plumbing::admin::{ADMIN_TIMEOUT, partition_counts};
use plumbing::connection::ConnectionArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::cli::StatusArgs;
use crate::group::{committed_offsets, outside_consumer};
use crate::runtime::live::ThreadStatus;
use report::{DeadLetters, GroupView, MemberView, Observed, PartitionOffsets, Report, Screen};

/// The prefix of every engine consumer's client id.
pub const CLIENT_ID_PREFIX: &str = "stockflow-";

/// How long reading the dead-letter topic to its end may take.
const DEAD_LETTER_DEADLINE: Duration = Duration::from_secs(30);

/// What an instance answers on `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub application_id: String,
    /// The instance id kept in its state dir.
    pub instance_id: String,
    /// Whether every engine thread has its assigned tasks restored (what `/ready` says).
    pub ready: bool,
    /// One per engine thread.
    pub threads: Vec<ThreadStatus>,
    pub sync: SyncStatus,
}

/// The read model's sync lag, as the instance measures it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Changes not yet in PostgreSQL.
    pub lag_rows: i64,
    /// Age of the oldest of them, in seconds.
    pub lag_seconds: f64,
}

/// The client id of engine thread `thread` of instance `instance_id`, whose status is served
/// at `status_addr`.
pub fn client_id(instance_id: &str, thread: usize, status_addr: SocketAddr) -> String {
    format!("{CLIENT_ID_PREFIX}{instance_id}-engine-{thread}@{status_addr}")
}

/// What an engine's client id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberName {
    pub instance: String,
    /// `engine-<n>`.
    pub thread: String,
    /// Where it serves `/status`, as it bound it.
    pub addr: SocketAddr,
}

impl MemberName {
    /// `None` for a client id that [`client_id`] did not make.
    pub fn parse(client_id: &str) -> Option<Self> {
        let rest = client_id.strip_prefix(CLIENT_ID_PREFIX)?;
        let (name, addr) = rest.rsplit_once('@')?;
        let (instance, n) = name.rsplit_once("-engine-")?;
        let n: u16 = n.parse().ok()?;
        Some(Self {
            instance: instance.to_owned(),
            thread: format!("engine-{n}"),
            addr: addr.parse().ok()?,
        })
    }

    /// Where to ask: its address, or, if it listens on every interface (0.0.0.0 or ::), the
    /// host the group saw it connect from, on its port.
    pub fn status_addr(&self, group_host: &str) -> String {
        if !self.addr.ip().is_unspecified() {
            return self.addr.to_string();
        }
        let host = group_host.trim_start_matches('/');
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.addr.port()).to_string(),
            Err(_) => format!("{host}:{}", self.addr.port()),
        }
    }
}

/// Runs `processor status`: observes, then prints the screen or the JSON report.
pub async fn status(connection: &ConnectionArgs, args: &StatusArgs) -> anyhow::Result<Report> {
    let config = connection.client_config();
    let group = args.application_id.clone();
    let topology = crate::topology::describe(&group, &connection.topics());
    let observed = {
        let (config, topology, group) = (config.clone(), topology.clone(), group.clone());
        tokio::task::spawn_blocking(move || observe_kafka(&config, &topology, &group))
            .await
            .context("the Kafka observation panicked")??
    };
    let mut observed = observed;
    observed.answers = ask_instances(&observed, args.instance_timeout()).await;
    observed.now_ms = schemas::now_millis();
    let report = report::build(&observed, &topology);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot write the report as JSON")?
        );
    } else {
        print!(
            "{}",
            Screen {
                report: &report,
                now_ms: observed.now_ms
            }
        );
    }
    Ok(report)
}

/// What Kafka knows: the group, the input offsets, the dead letters.
fn observe_kafka(
    config: &ClientConfig,
    topology: &crate::runtime::topology::Topology,
    group: &str,
) -> anyhow::Result<Observed> {
    let inputs = topology.input_topics();
    let dead_letters = topology.dead_letters.as_str();
    let names: Vec<&str> = inputs.iter().copied().chain([dead_letters]).collect();
    // One metadata call first: an unreachable cluster is reported by it, in one line.
    let counts = partition_counts(config, &names)?;
    // Reads the group's offsets without joining it; read_uncommitted, so that a transaction
    // in flight does not hold the answer back (its offsets are not committed yet anyway).
    let consumer = outside_consumer(
        config.clone().set("isolation.level", "read_uncommitted"),
        group,
    )?;
    let group_view = describe_group(&consumer, group)?;
    let mut observed = Observed {
        application_id: group.to_owned(),
        group: group_view,
        ..Observed::default()
    };
    for topic in inputs {
        match counts.get(topic) {
            Some(&partitions) => observed
                .inputs
                .extend(input_offsets(&consumer, topic, partitions)?),
            None => observed.missing_inputs.push(topic.to_owned()),
        }
    }
    if let Some(&partitions) = counts.get(dead_letters) {
        observed.dead_letters = Some(count_dead_letters(config, dead_letters, partitions)?);
    }
    Ok(observed)
}

/// The group as Kafka describes it: its state, protocol, and each member with its assignment.
pub(crate) fn describe_group(
    consumer: &BaseConsumer,
    group: &str,
) -> anyhow::Result<Option<GroupView>> {
    let groups = consumer
        .fetch_group_list(Some(group), ADMIN_TIMEOUT)
        .with_context(|| format!("cannot describe consumer group {group}"))?;
    let Some(found) = groups.groups().iter().find(|g| g.name() == group) else {
        return Ok(None);
    };
    let members = found
        .members()
        .iter()
        .map(|m| MemberView {
            client_id: m.client_id().to_owned(),
            host: m.client_host().to_owned(),
            partitions: m
                .assignment()
                .and_then(report::parse_assignment)
                .unwrap_or_default(),
        })
        .collect();
    Ok(Some(GroupView {
        state: found.state().to_owned(),
        protocol: found.protocol().to_owned(),
        members,
    }))
}

/// The group's committed offset and the watermarks of every partition of `topic`.
fn input_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<PartitionOffsets>> {
    let committed = committed_offsets(consumer, topic, partitions)?;
    (0..partitions)
        .map(|partition| {
            let (start, end) = consumer
                .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
                .with_context(|| format!("cannot read the offsets of {topic}[{partition}]"))?;
            Ok(PartitionOffsets {
                topic: topic.to_owned(),
                partition,
                committed: committed[partition as usize],
                start,
                end,
            })
        })
        .collect()
}

/// Reads the dead-letter topic from its start to its end (read_committed: the records of
/// committed transactions, never their markers or aborted ones) and counts its records, by
/// the kind of error their header names.
fn count_dead_letters(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<DeadLetters> {
    let kafka = |e: KafkaError| anyhow::anyhow!("cannot read the dead-letter topic {topic}: {e}");
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "stockflow-status")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(kafka)?;
    let mut counted = DeadLetters {
        topic: topic.to_owned(),
        ..DeadLetters::default()
    };
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..partitions {
        // Under read_committed, the end is the last stable offset.
        let (start, end) = consumer
            .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
            .map_err(kafka)?;
        if end > start {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(kafka)?;
            ends.insert(partition, end);
        }
    }
    if ends.is_empty() {
        return Ok(counted);
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let started = Instant::now();
    while !ends.is_empty() {
        anyhow::ensure!(
            started.elapsed() < DEAD_LETTER_DEADLINE,
            "cannot read the dead-letter topic {topic} to its end in {DEAD_LETTER_DEADLINE:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if ends
                    .get(&partition)
                    .is_some_and(|end| message.offset() < *end)
                {
                    counted.records += 1;
                    let kind = message
                        .headers()
                        .and_then(|h| {
                            h.iter()
                                .find(|h| h.key == "stockflow.error.kind")
                                .and_then(|h| h.value)
                        })
                        .map_or("unknown".to_owned(), |v| {
                            String::from_utf8_lossy(v).into_owned()
                        });
                    *counted.by_kind.entry(kind).or_default() += 1;
                }
            }
            Some(Err(error)) => tracing::debug!(%error, "dead-letter read"),
            None => {}
        }
        // Transaction markers are never handed out: the position says where each partition is.
        let positions = consumer.position().map_err(kafka)?;
        ends.retain(|partition, end| {
            let position = positions
                .find_partition(topic, *partition)
                .and_then(|p| p.offset().to_raw());
            position.is_none_or(|p| p < *end)
        });
    }
    Ok(counted)
}

/// Asks every status address the members name for `GET /status`, at once.
async fn ask_instances(
    observed: &Observed,
    timeout: Duration,
) -> BTreeMap<String, Result<InstanceStatus, String>> {
    let addrs: std::collections::BTreeSet<String> = observed
        .group
        .iter()
        .flat_map(|g| &g.members)
        .filter_map(|m| MemberName::parse(&m.client_id).map(|n| n.status_addr(&m.host)))
        .collect();
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(client) => client,
        Err(error) => {
            let error = format!("cannot make an HTTP client: {error}");
            return addrs.into_iter().map(|a| (a, Err(error.clone()))).collect();
        }
    };
    let asks = addrs.into_iter().map(|addr| {
        let client = client.clone();
        async move {
            let answer = ask(&client, &addr).await;
            (addr, answer)
        }
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

async fn ask(client: &reqwest::Client, addr: &str) -> Result<InstanceStatus, String> {
    let response = client
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "connection refused".to_owned()
            } else {
                e.to_string()
            }
        })?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    response
        .json::<InstanceStatus>()
        .await
        .map_err(|e| format!("answered something else than a status: {e}"))
}
