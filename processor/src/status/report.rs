//! The pure half of `processor status`: from what was observed (the group's members and their
//! assignments, the input partitions' committed and end offsets, the dead letters, and what
//! each live instance answered) to the [`Report`], and the report as one screen of aligned
//! columns. No Kafka or HTTP in here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{InstanceStatus, MemberName};
use crate::runtime::live::TaskStatus;
use crate::runtime::task::TaskId;
use crate::runtime::topology::Topology;

/// Everything `processor status` observed, before it is put together.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub application_id: String,
    /// The consumer group as the coordinator describes it (`None`: it does not know it).
    pub group: Option<GroupView>,
    /// Every partition of the external input topics that exist.
    pub inputs: Vec<PartitionOffsets>,
    /// External input topics that do not exist.
    pub missing_inputs: Vec<String>,
    /// The dead-letter topic's records (`None`: the topic does not exist).
    pub dead_letters: Option<DeadLetters>,
    /// What each member's status address answered, by address: its status, or why not.
    pub answers: BTreeMap<String, Result<InstanceStatus, String>>,
    /// When the observation was made, ms since the epoch.
    pub now_ms: i64,
}

/// The consumer group.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty`, `Dead`.
    pub state: String,
    /// The assignment strategy (`range`).
    pub protocol: String,
    pub members: Vec<MemberView>,
}

/// One member of the group.
#[derive(Debug, Clone, Default)]
pub struct MemberView {
    pub client_id: String,
    pub host: String,
    /// Its assigned partitions, (topic, partition), from its assignment.
    pub partitions: Vec<(String, i32)>,
}

/// An input partition's offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// The low watermark: where a member without a committed offset starts.
    pub start: i64,
    /// The high watermark.
    pub end: i64,
}

/// The dead-letter topic's records, counted by reading it to its end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetters {
    pub topic: String,
    pub records: u64,
    /// By the `stockflow.error.kind` header.
    pub by_kind: BTreeMap<String, u64>,
}

/// What `processor status` reports (`--json` prints it as it is; README, "processor status").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub application_id: String,
    /// The group's state, or `unknown` when the coordinator does not know the group.
    pub group_state: String,
    pub protocol: String,
    /// One per group member (each engine thread of each instance), by client id.
    pub members: Vec<MemberReport>,
    /// One per instance the members name, by status address.
    pub instances: Vec<InstanceReport>,
    /// Tasks restoring right now, as their instances report them.
    pub restoring: Vec<RestoringTask>,
    /// One per partition of the external input topics, from the group's committed offsets.
    pub lag: Vec<PartitionLag>,
    pub total_lag: i64,
    pub missing_inputs: Vec<String>,
    /// `None`: the dead-letter topic does not exist.
    pub dead_letters: Option<DeadLetters>,
}

/// One group member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    pub client_id: String,
    pub host: String,
    /// From the client id: the instance id, the engine thread, the status address (all
    /// `None` for a member that is not a `processor run` engine).
    pub instance: Option<String>,
    pub thread: Option<String>,
    pub status_addr: Option<String>,
    /// Its assigned partitions, `topic[partition]`, from the group's assignment.
    pub partitions: Vec<String>,
    /// The tasks those partitions make, `<sub-topology>_<partition>`.
    pub tasks: Vec<String>,
    /// Whether its instance answered; if not, `error` says why.
    pub answered: bool,
    pub error: Option<String>,
    /// What its thread reported: tasks with their state and restore progress.
    pub live_tasks: Vec<TaskStatus>,
    /// When its thread last committed, ms since the epoch.
    pub last_commit_ms: Option<i64>,
}

/// One instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub instance: String,
    pub status_addr: String,
    pub answered: bool,
    pub error: Option<String>,
    pub ready: Option<bool>,
    pub threads: Option<usize>,
    /// The read model's sync lag, as the instance measures it: changes not yet in PostgreSQL
    /// and the age of the oldest.
    pub sync_lag_rows: Option<i64>,
    pub sync_lag_seconds: Option<f64>,
}

/// A task restoring its stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoringTask {
    pub task: String,
    pub client_id: String,
    pub restored: u64,
    pub to_restore: u64,
}

/// One input partition's lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub end: i64,
    /// Records from the committed offset (or the start, if none) to the end.
    pub lag: i64,
    /// The client id of the member that owns it, if any.
    pub owner: Option<String>,
}

/// Parses a classic consumer protocol assignment (`ConsumerProtocolAssignment`): an i16
/// version, an array of (topic string, i32 array of partitions), then user data, all
/// big-endian with i16-prefixed strings and i32-prefixed arrays. `None` if it is malformed.
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut reader = Reader(bytes);
    let _version = reader.i16()?;
    let topics = reader.i32()?;
    let mut partitions = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(reader.i16()?).ok()?;
        let topic = String::from_utf8(reader.take(len)?.to_vec()).ok()?;
        let count = reader.i32()?;
        for _ in 0..count.max(0) {
            partitions.push((topic.clone(), reader.i32()?));
        }
    }
    Some(partitions)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// Puts the observations together.
pub fn build(observed: &Observed, topology: &Topology) -> Report {
    let (group_state, protocol, members) = match &observed.group {
        Some(group) => (
            group.state.clone(),
            group.protocol.clone(),
            group.members.as_slice(),
        ),
        None => ("unknown".to_owned(), String::new(), &[][..]),
    };
    let mut owners: BTreeMap<(String, i32), String> = BTreeMap::new();
    let mut member_reports: Vec<MemberReport> = members
        .iter()
        .map(|m| {
            for p in &m.partitions {
                owners.insert(p.clone(), m.client_id.clone());
            }
            member_report(m, observed, topology)
        })
        .collect();
    member_reports.sort_by(|a, b| a.client_id.cmp(&b.client_id));

    let mut instances: BTreeMap<String, InstanceReport> = BTreeMap::new();
    for m in &member_reports {
        let (Some(instance), Some(addr)) = (&m.instance, &m.status_addr) else {
            continue;
        };
        instances
            .entry(addr.clone())
            .or_insert_with(|| instance_report(instance, addr, observed));
    }

    let restoring = member_reports
        .iter()
        .flat_map(|m| {
            m.live_tasks
                .iter()
                .filter(|t| t.state == "restoring")
                .map(|t| RestoringTask {
                    task: t.task.clone(),
                    client_id: m.client_id.clone(),
                    restored: t.restored,
                    to_restore: t.to_restore,
                })
        })
        .collect();

    let lag: Vec<PartitionLag> = observed
        .inputs
        .iter()
        .map(|p| PartitionLag {
            topic: p.topic.clone(),
            partition: p.partition,
            committed: p.committed,
            end: p.end,
            lag: (p.end - p.committed.unwrap_or(p.start)).max(0),
            owner: owners.get(&(p.topic.clone(), p.partition)).cloned(),
        })
        .collect();
    Report {
        application_id: observed.application_id.clone(),
        group_state,
        protocol,
        members: member_reports,
        instances: instances.into_values().collect(),
        restoring,
        total_lag: lag.iter().map(|l| l.lag).sum(),
        lag,
        missing_inputs: observed.missing_inputs.clone(),
        dead_letters: observed.dead_letters.clone(),
    }
}

/// The tasks `partitions` make: every partition of a sub-topology's sources is its task of
/// that partition number.
fn tasks_of(topology: &Topology, partitions: &[(String, i32)]) -> Vec<String> {
    let ids: BTreeSet<TaskId> = partitions
        .iter()
        .filter_map(|(topic, partition)| {
            let (sub, _) = topology.source(topic)?;
            Some(TaskId {
                sub,
                partition: *partition,
            })
        })
        .collect();
    ids.iter().map(TaskId::to_string).collect()
}

fn member_report(member: &MemberView, observed: &Observed, topology: &Topology) -> MemberReport {
    let name = MemberName::parse(&member.client_id);
    let mut partitions = member.partitions.clone();
    partitions.sort();
    let mut report = MemberReport {
        client_id: member.client_id.clone(),
        host: member.host.trim_start_matches('/').to_owned(),
        instance: name.as_ref().map(|n| n.instance.clone()),
        thread: name.as_ref().map(|n| n.thread.clone()),
        status_addr: name.as_ref().map(|n| n.status_addr(&member.host)),
        partitions: partitions
            .iter()
            .map(|(t, p)| format!("{t}[{p}]"))
            .collect(),
        tasks: tasks_of(topology, &partitions),
        answered: false,
        error: None,
        live_tasks: Vec::new(),
        last_commit_ms: None,
    };
    match report.status_addr.as_ref().map(|a| observed.answers.get(a)) {
        None => report.error = Some("not a processor engine: no status address".to_owned()),
        Some(None) => report.error = Some("not asked".to_owned()),
        Some(Some(Err(error))) => report.error = Some(error.clone()),
        Some(Some(Ok(instance))) => {
            match instance
                .threads
                .iter()
                .find(|t| t.client_id == member.client_id)
            {
                Some(thread) => {
                    report.answered = true;
                    report.live_tasks = thread.tasks.clone();
                    report.last_commit_ms = thread.last_commit_ms;
                }
                None => {
                    report.error = Some(format!(
                        "its instance answered but has no thread with this client id (restarted? \
                         it runs {})",
                        instance.instance_id
                    ))
                }
            }
        }
    }
    report
}

fn instance_report(instance: &str, addr: &str, observed: &Observed) -> InstanceReport {
    let mut report = InstanceReport {
        instance: instance.to_owned(),
        status_addr: addr.to_owned(),
        answered: false,
        error: None,
        ready: None,
        threads: None,
        sync_lag_rows: None,
        sync_lag_seconds: None,
    };
    match observed.answers.get(addr) {
        None => report.error = Some("not asked".to_owned()),
        Some(Err(error)) => report.error = Some(error.clone()),
        Some(Ok(status)) => {
            report.answered = true;
            report.ready = Some(status.ready);
            report.threads = Some(status.threads.len());
            report.sync_lag_rows = Some(status.sync.lag_rows);
            report.sync_lag_seconds = Some(status.sync.lag_seconds);
        }
    }
    report
}

/// A table of left-aligned columns, two spaces apart.
fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

/// How long ago `then_ms` was, for people.
fn ago(now_ms: i64, then_ms: Option<i64>) -> String {
    match then_ms {
        Some(then) => format!("{:.1} s ago", (now_ms - then).max(0) as f64 / 1000.0),
        None => "never".to_owned(),
    }
}

/// The report with the time it was made, to say how long ago things happened.
#[derive(Debug, Clone, Copy)]
pub struct Screen<'a> {
    pub report: &'a Report,
    pub now_ms: i64,
}

impl fmt::Display for Screen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        let answered = r.instances.iter().filter(|i| i.answered).count();
        writeln!(
            f,
            "application {}: group {}, {} member(s){}; {} of {} instance(s) answered",
            r.application_id,
            r.group_state,
            r.members.len(),
            if r.protocol.is_empty() {
                String::new()
            } else {
                format!(" ({} assignment)", r.protocol)
            },
            answered,
            r.instances.len()
        )?;
        if r.members.is_empty() {
            writeln!(
                f,
                "no instance is running: what follows is from Kafka's metadata only"
            )?;
        }

        writeln!(f, "\nMEMBERS")?;
        let mut rows = vec![vec![
            "CLIENT ID".to_owned(),
            "HOST".to_owned(),
            "PARTITIONS".to_owned(),
            "TASKS".to_owned(),
            "LAST COMMIT".to_owned(),
            "STATE".to_owned(),
        ]];
        for m in &r.members {
            let restoring = m
                .live_tasks
                .iter()
                .filter(|t| t.state == "restoring")
                .count();
            let (commit, state) = match (m.answered, restoring) {
                (true, 0) => (ago(self.now_ms, m.last_commit_ms), "running".to_owned()),
                (true, n) => (
                    ago(self.now_ms, m.last_commit_ms),
                    format!("restoring {n} task(s)"),
                ),
                (false, _) => (
                    "-".to_owned(),
                    format!("no answer: {}", m.error.as_deref().unwrap_or("?")),
                ),
            };
            let tasks = if m.tasks.is_empty() {
                "-".to_owned()
            } else {
                m.tasks.join(" ")
            };
            rows.push(vec![
                m.client_id.clone(),
                m.host.clone(),
                m.partitions.len().to_string(),
                tasks,
                commit,
                state,
            ]);
        }
        if r.members.is_empty() {
            writeln!(f, "(none)")?;
        } else {
            table(f, &rows)?;
        }

        writeln!(f, "\nINSTANCES")?;
        let mut rows = vec![vec![
            "INSTANCE".to_owned(),
            "STATUS AT".to_owned(),
            "THREADS".to_owned(),
            "READY".to_owned(),
            "SYNC LAG".to_owned(),
        ]];
        for i in &r.instances {
            let (threads, ready, sync) = if i.answered {
                (
                    i.threads.map_or("-".to_owned(), |t| t.to_string()),
                    match i.ready {
                        Some(true) => "yes".to_owned(),
                        _ => "no".to_owned(),
                    },
                    format!(
                        "{} row(s), {:.1} s",
                        i.sync_lag_rows.unwrap_or(0),
                        i.sync_lag_seconds.unwrap_or(0.0)
                    ),
                )
            } else {
                (
                    "-".to_owned(),
                    "-".to_owned(),
                    format!("no answer: {}", i.error.as_deref().unwrap_or("?")),
                )
            };
            rows.push(vec![
                i.instance.clone(),
                i.status_addr.clone(),
                threads,
                ready,
                sync,
            ]);
        }
        if r.instances.is_empty() {
            writeln!(f, "(none)")?;
        } else {
            table(f, &rows)?;
        }

        writeln!(f, "\nRESTORING")?;
        if r.restoring.is_empty() {
            writeln!(f, "(none)")?;
        }
        for t in &r.restoring {
            let percent = if t.to_restore == 0 {
                0.0
            } else {
                100.0 * t.restored as f64 / t.to_restore as f64
            };
            writeln!(
                f,
                "{} on {}: {} of {} changelog offsets ({percent:.0}%)",
                t.task, t.client_id, t.restored, t.to_restore
            )?;
        }

        writeln!(f, "\nINPUT LAG")?;
        let mut rows = vec![vec![
            "TOPIC".to_owned(),
            "PARTITION".to_owned(),
            "COMMITTED".to_owned(),
            "END".to_owned(),
            "LAG".to_owned(),
            "OWNER".to_owned(),
        ]];
        for l in &r.lag {
            rows.push(vec![
                l.topic.clone(),
                l.partition.to_string(),
                l.committed.map_or("-".to_owned(), |c| c.to_string()),
                l.end.to_string(),
                l.lag.to_string(),
                l.owner.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        table(f, &rows)?;
        for topic in &r.missing_inputs {
            writeln!(f, "{topic}: does not exist")?;
        }
        writeln!(f, "total lag: {}", r.total_lag)?;

        writeln!(f, "\nDEAD LETTERS")?;
        match &r.dead_letters {
            None => writeln!(f, "the dead-letter topic does not exist yet"),
            Some(d) => {
                let kinds: Vec<String> =
                    d.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
                writeln!(
                    f,
                    "{}: {} record(s){}",
                    d.topic,
                    d.records,
                    if kinds.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", kinds.join(", "))
                    }
                )
            }
        }
    }
}
