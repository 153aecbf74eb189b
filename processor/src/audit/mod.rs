//! `processor audit`: checks a production run against the clerk ([`serial`]). It reads every
//! input record (`orders`, `inventory-adjustments`) and every outcome (`orders-confirmed`,
//! `orders-rejected`, `inventory-updated`) with `read_committed`, from the beginning up to the
//! end offsets the topics had when it started, runs the clerk over the inputs, and lists where
//! the topics say something else: an order with no outcome, with more than one, or with
//! another decision (status, reason, rejected lines); an order id decided again after its
//! retention (`--order-retention`, which must be the run's) has one outcome per decision; an outcome for an order the inputs never
//! held; a sku whose last `available_after` is not the clerk's stock.
//!
//! Reading is the shell (a `BaseConsumer` assigned every partition, polled until each position
//! reaches its end offset, never "until the topic falls silent"); [`compare`] is the pure core.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plumbing::admin::{ADMIN_TIMEOUT, partition_counts};
use plumbing::connection::ConnectionArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use schemas::{
    Codec, CodecError, Contract, InventoryAdjusted, InventoryUpdated, OrderConfirmed, OrderCreated,
    OrderRejected, Registry, RejectedLine, now_millis,
};

use crate::cli::AuditArgs;
use crate::runtime::partitioner::partition_for;
use crate::topology::order::{self, Outcome};
use crate::topology::serial::{self, Decision, Input, InputRecord, SerialResult};

/// How long the reader may go without getting any closer to the end offsets before it gives
/// up (a broker that stopped answering mid-way).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a record is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// What the output topics say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every outcome per order id, with where it is (ordered by topic, partition, offset).
    pub outcomes: BTreeMap<String, Vec<(Decision, Location)>>,
    /// Every sku's `available_after` in its last `InventoryUpdated`.
    pub stock: BTreeMap<String, i64>,
    /// Outcome and stock records that do not decode, with why.
    pub unreadable: Vec<(Location, String)>,
}

/// One way the topics differ from the clerk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The clerk decided the order; the topics have no outcome for it.
    Missing { order_id: String, clerk: Decision },
    /// The topics have more than one outcome for the order.
    Repeated {
        order_id: String,
        clerk: Decision,
        found: Vec<(Decision, Location)>,
    },
    /// One outcome, but not the clerk's decision.
    Differs {
        order_id: String,
        clerk: Decision,
        found: (Decision, Location),
    },
    /// Outcomes for an order id that is in no input record.
    Unknown {
        order_id: String,
        found: Vec<(Decision, Location)>,
    },
    /// A sku's final stock on `inventory-updated` is not the clerk's (`None`: no stock there).
    Stock {
        sku: String,
        clerk: Option<i64>,
        found: Option<i64>,
    },
    /// An outcome or stock record that does not decode.
    Unreadable { at: Location, error: String },
}

/// The kinds of [`Difference`], in the order the report counts them.
pub const KINDS: [&str; 6] = [
    "missing outcome",
    "more than one outcome",
    "different decision",
    "outcome for an unknown order",
    "different final stock",
    "unreadable output record",
];

impl Difference {
    /// Its kind: one of [`KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Difference::Missing { .. } => KINDS[0],
            Difference::Repeated { .. } => KINDS[1],
            Difference::Differs { .. } => KINDS[2],
            Difference::Unknown { .. } => KINDS[3],
            Difference::Stock { .. } => KINDS[4],
            Difference::Unreadable { .. } => KINDS[5],
        }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let found_all = |found: &[(Decision, Location)]| {
            found
                .iter()
                .map(|(d, at)| format!("{} at {at}", describe(d)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        match self {
            Difference::Missing { order_id, clerk } => write!(
                f,
                "order {order_id}: clerk {}; topics: no outcome",
                describe(clerk)
            ),
            Difference::Repeated {
                order_id,
                clerk,
                found,
            } => write!(
                f,
                "order {order_id}: clerk {}; topics: {} outcomes: {}",
                describe(clerk),
                found.len(),
                found_all(found)
            ),
            Difference::Differs {
                order_id,
                clerk,
                found: (decision, at),
            } => write!(
                f,
                "order {order_id}: clerk {}; topics: {} at {at}",
                describe(clerk),
                describe(decision)
            ),
            Difference::Unknown { order_id, found } => write!(
                f,
                "order {order_id}: not in the inputs; topics: {}",
                found_all(found)
            ),
            Difference::Stock { sku, clerk, found } => {
                let stock = |s: &Option<i64>| s.map_or("no stock".to_owned(), |s| s.to_string());
                write!(
                    f,
                    "sku {sku}: clerk {} available; inventory-updated: {}",
                    stock(clerk),
                    stock(found)
                )
            }
            Difference::Unreadable { at, error } => write!(f, "record {at}: {error}"),
        }
    }
}

/// A decision as a person reads it: `CONFIRMED`, or `REJECTED InsufficientStock [B wanted 5,
/// 1 left]`.
pub fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Confirmed => "CONFIRMED".to_owned(),
        Decision::Rejected { reason, lines } => {
            let lines: Vec<String> = lines.iter().map(describe_line).collect();
            format!("REJECTED {reason:?} [{}]", lines.join("; "))
        }
    }
}

fn describe_line(line: &RejectedLine) -> String {
    match line.available {
        Some(available) => format!("{} wanted {}, {available} left", line.sku, line.requested),
        None => format!("{} wanted {}, unknown sku", line.sku, line.requested),
    }
}

/// Every difference between the clerk's `serial` result and what the topics say: orders by
/// id, then outcomes for unknown orders, then skus, then unreadable records.
pub fn compare(serial: &SerialResult, observed: &Observed) -> Vec<Difference> {
    let mut differences = Vec::new();
    for (order_id, decisions) in &serial.decisions {
        let found = observed
            .outcomes
            .get(order_id)
            .map_or(&[][..], Vec::as_slice);
        if found.len() > decisions.len() {
            differences.push(Difference::Repeated {
                order_id: order_id.clone(),
                clerk: decisions[decisions.len() - 1].clone(),
                found: found.to_vec(),
            });
            continue;
        }
        // An id decided more than once (retention) is compared decision for decision, in any
        // order: the outcome topics are two, so their offsets do not order the decisions.
        let mut unmatched: Vec<&(Decision, Location)> = found.iter().collect();
        let mut missed = Vec::new();
        for clerk in decisions {
            match unmatched.iter().position(|(decision, _)| decision == clerk) {
                Some(i) => {
                    unmatched.remove(i);
                }
                None => missed.push(clerk),
            }
        }
        let mut unmatched = unmatched.into_iter();
        for clerk in missed {
            let order_id = order_id.clone();
            let clerk = clerk.clone();
            differences.push(match unmatched.next() {
                Some(found) => Difference::Differs {
                    order_id,
                    clerk,
                    found: found.clone(),
                },
                None => Difference::Missing { order_id, clerk },
            });
        }
    }
    for (order_id, found) in &observed.outcomes {
        if !serial.decisions.contains_key(order_id) {
            differences.push(Difference::Unknown {
                order_id: order_id.clone(),
                found: found.clone(),
            });
        }
    }
    let mut skus: Vec<&String> = serial.stock.keys().chain(observed.stock.keys()).collect();
    skus.sort();
    skus.dedup();
    for sku in skus {
        let clerk = serial.stock.get(sku).copied();
        let found = observed.stock.get(sku).copied();
        if clerk != found {
            differences.push(Difference::Stock {
                sku: sku.clone(),
                clerk,
                found,
            });
        }
    }
    for (at, error) in &observed.unreadable {
        differences.push(Difference::Unreadable {
            at: at.clone(),
            error: error.clone(),
        });
    }
    differences
}

/// What an audit found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Records read per topic, in the order the topics are named.
    pub records: Vec<(String, usize)>,
    /// Output topics that do not exist (read as empty).
    pub missing: Vec<String>,
    /// Input records that do not decode (dead letters: the clerk skips them).
    pub poison: usize,
    /// Decisions the clerk made (an order id decided again after its retention counts again).
    pub orders: usize,
    /// Input records of an order id seen before (the clerk ignores them).
    pub duplicates: u64,
    /// Orders on another partition than their id's: decided at their copies on their id's
    /// partition, which the processor re-produces.
    pub rerouted: usize,
    pub differences: Vec<Difference>,
}

impl Report {
    /// The report for people: counts, then the first `show` differences, one line each.
    pub fn render(&self, show: usize) -> String {
        let mut out = String::new();
        let records: Vec<String> = self
            .records
            .iter()
            .map(|(topic, n)| {
                if self.missing.contains(topic) {
                    format!("{topic} {n} (no such topic)")
                } else {
                    format!("{topic} {n}")
                }
            })
            .collect();
        let _ = writeln!(out, "records read: {}", records.join(", "));
        let _ = writeln!(
            out,
            "orders compared: {} ({} undecodable input records, {} repeated order ids ignored, \
             {} on another partition than their id's, decided at their copies)",
            self.orders, self.poison, self.duplicates, self.rerouted
        );
        let _ = writeln!(out, "differences: {}", self.differences.len());
        for kind in KINDS {
            let n = self.differences.iter().filter(|d| d.kind() == kind).count();
            let _ = writeln!(out, "  {kind}: {n}");
        }
        if !self.differences.is_empty() && show > 0 {
            let shown = show.min(self.differences.len());
            let _ = writeln!(out, "first {shown}:");
            for difference in &self.differences[..shown] {
                let _ = writeln!(out, "  {difference}");
            }
        }
        out
    }
}

/// Runs `processor audit`: reads, runs the clerk, compares and prints the report.
pub async fn audit(connection: &ConnectionArgs, args: &AuditArgs) -> anyhow::Result<Report> {
    let topics = connection.topics();
    let config = connection.client_config();
    let names = [
        topics.orders.as_str(),
        topics.inventory_adjustments.as_str(),
        topics.orders_confirmed.as_str(),
        topics.orders_rejected.as_str(),
        topics.inventory_updated.as_str(),
    ];
    // One metadata call first: an unreachable cluster is reported by it, in one line.
    let counts = partition_counts(&config, &names)?;
    // Without inputs there is nothing to audit (a wrong --topic-prefix, most likely); missing
    // outputs are read as empty (no processor has run): every order then lacks its outcome.
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !counts.contains_key(**n))
        .map(|n| (*n).to_owned())
        .collect();
    let missing_inputs: Vec<&str> = names[..2]
        .iter()
        .filter(|n| !counts.contains_key(**n))
        .copied()
        .collect();
    if !missing_inputs.is_empty() {
        bail!(
            "input topic(s) {} do not exist (is --topic-prefix right?)",
            missing_inputs.join(", ")
        );
    }
    let registry = Registry::new(&connection.schema_registry_url)?;
    registry.ping().await?;
    let codec = Codec::new(&connection.schema_registry_url, &topics)?;

    let read = |topic: &str| {
        let config = config.clone();
        let topic = topic.to_owned();
        let partitions = counts.get(&topic).copied().unwrap_or(0);
        async move {
            tokio::task::spawn_blocking(move || read_to_end(&config, &topic, partitions))
                .await
                .context("the reader's thread panicked")?
        }
    };
    let orders = read(&topics.orders).await?;
    let adjustments = read(&topics.inventory_adjustments).await?;
    let confirmed = read(&topics.orders_confirmed).await?;
    let rejected = read(&topics.orders_rejected).await?;
    let updated = read(&topics.inventory_updated).await?;
    let records = vec![
        (topics.orders.clone(), orders.len()),
        (topics.inventory_adjustments.clone(), adjustments.len()),
        (topics.orders_confirmed.clone(), confirmed.len()),
        (topics.orders_rejected.clone(), rejected.len()),
        (topics.inventory_updated.clone(), updated.len()),
    ];

    let mut inputs = Vec::with_capacity(orders.len() + adjustments.len());
    let order_partitions = counts.get(&topics.orders).copied().unwrap_or(0);
    let mut rerouted = 0;
    for record in orders {
        let input = match decode_input::<OrderCreated>(&codec, &record).await? {
            None => Input::Poison,
            // Decided where its copy is (the processor re-produces it there), as the tasks do;
            // an oversized one is dead-lettered where it is, whatever its partition.
            Some(order)
                if order::oversized(&order).is_none()
                    && partition_for(order.order_id.as_bytes(), order_partitions)
                        != record.partition =>
            {
                rerouted += 1;
                Input::Rerouted
            }
            Some(order) => Input::Order(order),
        };
        inputs.push(record.into_input(input));
    }
    for record in adjustments {
        let input = decode_input::<InventoryAdjusted>(&codec, &record)
            .await?
            .map_or(Input::Poison, Input::Adjustment);
        inputs.push(record.into_input(input));
    }
    let poison = inputs
        .iter()
        .filter(|r| matches!(r.input, Input::Poison))
        .count();

    let mut observed = Observed::default();
    for record in &confirmed {
        match decode_output::<OrderConfirmed>(&codec, record).await? {
            Ok(c) => observed
                .outcomes
                .entry(c.order_id.clone())
                .or_default()
                .push((Decision::from(&Outcome::Confirmed(c)), record.at())),
            Err(error) => observed.unreadable.push((record.at(), error)),
        }
    }
    for record in &rejected {
        match decode_output::<OrderRejected>(&codec, record).await? {
            Ok(r) => observed
                .outcomes
                .entry(r.order_id.clone())
                .or_default()
                .push((Decision::from(&Outcome::Rejected(r)), record.at())),
            Err(error) => observed.unreadable.push((record.at(), error)),
        }
    }
    // The topic is keyed by sku: a sku's last record in offset order holds its final stock.
    let mut updated = updated;
    updated.sort_unstable_by_key(|r| (r.partition, r.offset));
    for record in &updated {
        match decode_output::<InventoryUpdated>(&codec, record).await? {
            Ok(u) => {
                observed.stock.insert(u.sku, u.available_after);
            }
            Err(error) => observed.unreadable.push((record.at(), error)),
        }
    }

    for found in observed.outcomes.values_mut() {
        found.sort_by(|a, b| a.1.cmp(&b.1));
    }

    let retention = args.retention.order_retention;
    let serial = tokio::task::spawn_blocking(move || serial::run(inputs, retention))
        .await
        .context("the clerk's thread panicked")?;
    let report = Report {
        records,
        missing,
        poison,
        rerouted,
        orders: serial.decisions.values().map(Vec::len).sum(),
        duplicates: serial.duplicates,
        differences: compare(&serial, &observed),
    };
    print!("{}", report.render(args.show));
    Ok(report)
}

/// A record read, not yet decoded.
#[derive(Debug)]
struct RawRecord {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: i64,
    payload: Option<Vec<u8>>,
}

impl RawRecord {
    fn at(&self) -> Location {
        Location {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    fn into_input(self, input: Input) -> InputRecord {
        InputRecord {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            input,
        }
    }
}

/// An input record's value, or `None` if it does not decode (poison, as the processor sees
/// it). A registry that stops answering fails the audit.
async fn decode_input<C: Contract>(codec: &Codec, record: &RawRecord) -> anyhow::Result<Option<C>> {
    match decode_output(codec, record).await? {
        Ok(value) => Ok(Some(value)),
        Err(_) => Ok(None),
    }
}

/// An output record's value, or why it does not decode. A registry that stops answering fails
/// the audit.
async fn decode_output<C: Contract>(
    codec: &Codec,
    record: &RawRecord,
) -> anyhow::Result<Result<C, String>> {
    let Some(payload) = record.payload.as_deref() else {
        return Ok(Err("no value".to_owned()));
    };
    match codec.decode::<C>(payload).await {
        Ok(value) => Ok(Ok(value)),
        Err(error @ CodecError::RegistryUnavailable(_)) => {
            Err(error).with_context(|| format!("cannot decode {}", record.at()))
        }
        Err(error) => Ok(Err(error.to_string())),
    }
}

/// One partition's end offset (read_committed: the last stable offset) and how far the reader
/// has got.
#[derive(Debug, Clone, Copy)]
struct Progress {
    end: i64,
    position: i64,
}

/// Every record of the `partitions` partitions of `topic`, read_committed, from the beginning
/// up to the end offsets they have when it starts.
fn read_to_end(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<Vec<RawRecord>> {
    if partitions == 0 {
        return Ok(Vec::new());
    }
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", format!("stockflow-audit-{}", now_millis()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .context("cannot create a Kafka consumer")?;
    // Under read_committed the broker answers with the last stable offset: every transaction
    // below it is decided, so the reader never waits for one still open.
    let mut progress = Vec::with_capacity(partitions as usize);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (low, end) = consumer
            .fetch_watermarks(topic, partition, ADMIN_TIMEOUT)
            .with_context(|| format!("cannot read the end offsets of {topic}[{partition}]"))?;
        progress.push(Progress { end, position: low });
        assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot read {topic}"))?;
    let expected: i64 = progress.iter().map(|p| (p.end - p.position).max(0)).sum();
    let mut records = Vec::with_capacity(expected as usize);
    let reached = |progress: &[Progress]| progress.iter().all(|p| p.position >= p.end);
    let mut last_step = Instant::now();
    let mut last_error = None;
    while !reached(&progress) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let partition = m.partition();
                let Some(p) = progress.get_mut(partition as usize) else {
                    bail!("{topic}[{partition}] was not assigned");
                };
                if m.offset() < p.end {
                    records.push(RawRecord {
                        topic: topic.to_owned(),
                        partition,
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis().unwrap_or(0),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                }
                p.position = p.position.max(m.offset() + 1);
                last_step = Instant::now();
            }
            // Nothing more fetched for now. Transaction markers and aborted records are never
            // delivered: the consumer's position says how far it got past them. (No partition
            // EOF events: librdkafka also reports them as global errors, which would be logged.)
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let (Offset::Offset(at), Some(p)) = (
                            element.offset(),
                            progress.get_mut(element.partition() as usize),
                        ) && at > p.position
                        {
                            p.position = at;
                            last_step = Instant::now();
                        }
                    }
                }
            }
            Some(Err(error)) => last_error = Some(error),
        }
        if last_step.elapsed() > STALL_TIMEOUT {
            let behind: Vec<String> = progress
                .iter()
                .enumerate()
                .filter(|(_, p)| p.position < p.end)
                .map(|(i, p)| format!("{topic}[{i}] at {} of {}", p.position, p.end))
                .collect();
            bail!(
                "reading {topic} made no progress for {STALL_TIMEOUT:?} ({}){}",
                behind.join(", "),
                last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests;
