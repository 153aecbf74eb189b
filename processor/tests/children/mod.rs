//! Shared by the tests that run the `processor` binary as child processes and signal it
//! (SIGKILL, SIGTERM, SIGSTOP and SIGCONT), and that read topics up to their high watermarks
//! to compare what read_committed and read_uncommitted readers see, record by record.
//!
//! (recovery.rs has its own, smaller copies of the child helpers; these add signals, the
//! child's log and exit status, labelled metrics and high-watermark reads.)
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::{InventoryUpdated, OrderConfirmed, OrderRejected};
use testkit::{Isolation, unique};

use crate::support::World;

pub const MINUTE: Duration = Duration::from_secs(60);

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The processor binary: `STOCKFLOW_PROCESSOR_BIN` if set, else cargo's. (Worktrees that
/// share one target dir overwrite each other's `target/release/processor`; a copy of this
/// worktree's binary, named by that variable, keeps a run on its own build.)
fn binary() -> String {
    std::env::var("STOCKFLOW_PROCESSOR_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_processor").to_owned())
}

/// A `processor run` child process, its metrics address and what it wrote to stderr.
pub struct Processor {
    pub name: String,
    child: Child,
    pub metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
}

impl Processor {
    /// Starts `processor run` for `world` on `state_dir`, with a 6 s session timeout (so a
    /// dead or stopped instance is noticed quickly) and `extra` flags.
    pub fn spawn(world: &World, name: &str, state_dir: &Path, extra: &[&str]) -> Self {
        let metrics = free_addr();
        let mut args = vec!["-X", "session.timeout.ms=6000"];
        args.extend_from_slice(extra);
        let mut child = Command::new(binary())
            .args(world.child_args(state_dir, metrics, &args))
            .env("RUST_LOG", "warn,processor=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the processor binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("a piped stderr");
        let (lines, prefix) = (log.clone(), name.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{prefix}] {line}");
                lines.lock().expect("log lock").push(line);
            }
        });
        Self {
            name: name.to_owned(),
            child,
            metrics,
            log,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -s {signal} {} failed", self.pid());
    }

    /// SIGKILL: no chance to commit, flush or leave the group. Waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, if the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits up to `deadline` for the process to end.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.exit_status()
    }

    /// The stderr lines so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// One metric's value, summed over its label sets.
    pub async fn scrape(&self, name: &str) -> Option<f64> {
        let series = self.series(name).await?;
        (!series.is_empty()).then(|| series.values().sum())
    }

    /// One metric's series: labels (`{...}` or empty) -> value.
    pub async fn series(&self, name: &str) -> Option<HashMap<String, f64>> {
        let body = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            body.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series[name.len()..].to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// `stockflow_records_consumed_total` per (topic, partition).
    pub async fn consumed(&self) -> HashMap<(String, i32), i64> {
        let series = self
            .series("stockflow_records_consumed_total")
            .await
            .expect("the metrics answer");
        series
            .into_iter()
            .map(|(labels, value)| {
                let topic = label(&labels, "topic").expect("a topic label");
                let partition = label(&labels, "partition")
                    .and_then(|p| p.parse().ok())
                    .expect("a partition label");
                ((topic, partition), value as i64)
            })
            .collect()
    }

    /// Waits until /ready answers 200 (every assigned task restored).
    pub async fn wait_ready(&mut self, deadline: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("http://{}/ready", self.metrics)).await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self.exit_status() {
                panic!("{} exited ({status}) before it was ready", self.name);
            }
            assert!(
                started.elapsed() < deadline,
                "{} was not ready in {deadline:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the metric `name` reaches `value` (a gauge such as the assigned tasks).
    pub async fn wait_metric(&self, name: &str, value: f64, deadline: Duration) {
        let started = Instant::now();
        loop {
            let now = self.scrape(name).await;
            if now == Some(value) {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "{}: {name} is {now:?}, not {value}, after {deadline:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Processor {
    /// A failing test must not leave processors running (or stopped) behind it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name="..."` in a Prometheus label set.
fn label(labels: &str, name: &str) -> Option<String> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(labels[start..end].to_owned())
}

/// One record read back, with where it was.
#[derive(Debug, Clone)]
pub struct Raw {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Reads every partition of `topics` from the beginning up to the end it had when the read
/// began: the high watermark for read_uncommitted, the last stable offset for read_committed
/// (librdkafka's ListOffsets carries the isolation level), so a transaction still open is
/// never waited for, and never read by read_committed. Panics after `deadline`. Blocking:
/// call it from `spawn_blocking` or through [`read_to_end`].
pub fn read_to_end_blocking(
    bootstrap: &str,
    topics: &[String],
    isolation: Isolation,
    deadline: Duration,
) -> Vec<Raw> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("hwm-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            match isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        )
        .create()
        .expect("a reader");
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        assert!(partitions > 0, "{topic} exists");
        for partition in 0..partitions as i32 {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            if high > low {
                ends.insert((topic.clone(), partition), high);
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(low))
                    .expect("assignment");
            }
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let mut done: HashSet<(String, i32)> = HashSet::new();
    while done.len() < ends.len() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => records.push(Raw {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            }),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => eprintln!("reader: {e}"),
        }
        // Transaction markers and aborted records are never delivered: the position says
        // whether the reader is past them.
        let positions = consumer.position().expect("positions");
        for element in positions.elements() {
            let key = (element.topic().to_owned(), element.partition());
            if let (Offset::Offset(p), Some(end)) = (element.offset(), ends.get(&key))
                && p >= *end
            {
                done.insert(key);
            }
        }
        // The last record read also proves a partition done.
        if let Some(last) = records.last() {
            let key = (last.topic.clone(), last.partition);
            if ends.get(&key).is_some_and(|end| last.offset + 1 >= *end) {
                done.insert(key);
            }
        }
        if started.elapsed() > deadline {
            let missing: Vec<_> = ends.keys().filter(|k| !done.contains(*k)).collect();
            panic!(
                "reading {topics:?} ({isolation:?}) to its end took over {deadline:?}; not \
                 done: {missing:?}"
            );
        }
    }
    records
}

/// Per partition of `topic`: its end as an `isolation` reader sees it (the high watermark, or
/// the last stable offset: below it every transaction is decided).
pub fn ends(world: &World, topic: &str, isolation: Isolation) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &world.bootstrap)
        .set(
            "isolation.level",
            match isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        )
        .create()
        .expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    (0..partitions)
        .map(|p| {
            let (_, end) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, end)
        })
        .collect()
}

/// [`read_to_end_blocking`] off the async runtime.
pub async fn read_to_end(
    world: &World,
    topics: &[&str],
    isolation: Isolation,
    deadline: Duration,
) -> Vec<Raw> {
    let bootstrap = world.bootstrap.clone();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        read_to_end_blocking(&bootstrap, &topics, isolation, deadline)
    })
    .await
    .expect("the reader ran")
}

/// An outcome record: which order, confirmed or not, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutcomeAt {
    pub order_id: String,
    pub confirmed: bool,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Every outcome record of `world` (both outcome topics) up to their high watermarks.
pub async fn outcomes_at(world: &World, isolation: Isolation) -> Vec<OutcomeAt> {
    let topics = [
        world.topics.orders_confirmed.as_str(),
        world.topics.orders_rejected.as_str(),
    ];
    let records = read_to_end(world, &topics, isolation, 2 * MINUTE).await;
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let payload = record.payload.as_deref().expect("a payload");
        let confirmed = record.topic == world.topics.orders_confirmed;
        let order_id = if confirmed {
            let c: OrderConfirmed = world.codec.decode(payload).await.expect("decodes");
            c.order_id
        } else {
            let r: OrderRejected = world.codec.decode(payload).await.expect("decodes");
            r.order_id
        };
        out.push(OutcomeAt {
            order_id,
            confirmed,
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        });
    }
    out
}

/// How many outcomes each order got.
pub fn per_order(outcomes: &[OutcomeAt]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for o in outcomes {
        *counts.entry(o.order_id.clone()).or_insert(0) += 1;
    }
    counts
}

/// Every InventoryUpdated up to the high watermark (read_committed).
pub async fn inventory_updates(world: &World) -> Vec<InventoryUpdated> {
    let records = read_to_end(
        world,
        &[world.topics.inventory_updated.as_str()],
        Isolation::ReadCommitted,
        2 * MINUTE,
    )
    .await;
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let payload = record.payload.as_deref().expect("a payload");
        out.push(world.codec.decode(payload).await.expect("decodes"));
    }
    out
}

/// Records in the application's changelogs that a read_committed reader sees (what a restore
/// from scratch replays).
pub async fn committed_changelog_records(world: &World) -> usize {
    let topology = processor::topology::describe(&world.application_id, &world.topics);
    let changelogs = topology.changelogs();
    let changelogs: Vec<&str> = changelogs.iter().map(String::as_str).collect();
    read_to_end(world, &changelogs, Isolation::ReadCommitted, 2 * MINUTE)
        .await
        .len()
}

/// The group's committed offset on every partition of `topic` (absent: none committed).
pub fn committed_offsets(world: &World, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = world
        .connection
        .client_config()
        .set("group.id", &world.application_id)
        .create()
        .expect("a consumer");
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(query, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The initial stock of the generator's catalog with `synthetic` skus of `stock` each.
pub fn initial_stock(synthetic: u32, stock: i64) -> HashMap<String, i64> {
    generator::catalog::catalog(synthetic, stock)
        .into_iter()
        .map(|p| (p.sku, p.initial_stock))
        .collect()
}
