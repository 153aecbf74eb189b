//! Order end-to-end latency at a fixed rate (created_at to the outcome as a read_committed
//! consumer receives it), and with `--latency-breakdown` each order's latency split into its
//! hops through the topology.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::{Codec, OrderConfirmed, OrderRejected, now_millis};

use crate::Config;
use crate::setup::{PARTITIONS, RunNames, publish, seed, start_instances};

/// What the latency run measured.
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub samples: usize,
    /// With `--latency-breakdown`: per hop, its name, p50, p99 and mean over the slowest 1% of
    /// orders.
    pub hops: Vec<(&'static str, f64, f64, f64)>,
}

/// The hops of a single-line order, for `--latency-breakdown`. Each is read from the Kafka
/// timestamp (CreateTime, set when the record was handed to the producer) of the record that
/// ends it, so each hop includes the previous step's commit, the fetch and the processing.
const HOPS: [&str; 4] = [
    "created_at -> reserve command produced (task A)",
    "-> line result produced (task B)",
    "-> outcome produced (task A)",
    "-> outcome received (read_committed)",
];

/// The value at quantile `p` of sorted `values`.
fn quantile(values: &[f64], p: f64) -> f64 {
    values
        .get(((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Order end-to-end latency at a fixed rate: created_at to receipt by a read_committed consumer.
pub async fn latency(config: &Config) -> Latency {
    latency_on(config, 1, config.latency_rate).await
}

/// [`latency`] with `instances` processors sharing the work, at `rate` orders per second.
pub async fn latency_on(config: &Config, instances: usize, rate: u64) -> Latency {
    let (seconds, breakdown) = (config.latency_seconds, config.latency_breakdown);
    let run = RunNames::new("latency");
    let (prefix, app) = (&run.prefix, &run.app);
    let connection = run.connection(config);
    seed(&connection).await;
    // Every instance ready (its output topics exist) and the group settled before the clock
    // starts.
    let processors = start_instances(config, &run, instances, "exactly_once_v2").await;
    let topics = connection.topics();
    let codec = Codec::new(&config.registry, &topics).expect("codec");
    // Partitions assigned by hand: no group join delays the first outcomes.
    let consumer: StreamConsumer = connection
        .client_config()
        .set("group.id", format!("{prefix}latency"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let (internal, wiring) = processor::topology::describe_wired(app, &topics);
    let commands_topic = internal.sink(wiring.line_commands).to_owned();
    let results_topic = internal.sink(wiring.line_results).to_owned();
    let mut assigned = vec![&topics.orders_confirmed, &topics.orders_rejected];
    if breakdown {
        assigned.extend([&commands_topic, &results_topic]);
    }
    let mut assignment = TopicPartitionList::new();
    for topic in assigned {
        for partition in 0..PARTITIONS.parse::<i32>().expect("a number") {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    // Orders of the first seconds warm caches and connections up; they are not counted.
    let warm_until = now_millis() + 2_000;
    let expected = rate * seconds;
    let publisher = {
        let connection = connection.clone();
        tokio::spawn(async move { publish(&connection, expected, 1, rate, 7).await })
    };
    // Per counted order: created_at, the outcome's timestamp, its receipt, and its id.
    let mut outcomes = Vec::with_capacity(expected as usize);
    // With `breakdown`: when each order's reserve command and line result were produced.
    let mut commands: HashMap<String, i64> = HashMap::new();
    let mut results: HashMap<Vec<u8>, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    let mut warmup = 0u64;
    while (outcomes.len() as u64) + warmup < expected && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        let received = now_millis();
        let produced = m.timestamp().to_millis().unwrap_or_default();
        let payload = m.payload().unwrap_or_default();
        let outcome = if m.topic() == topics.orders_confirmed {
            codec
                .decode::<OrderConfirmed>(payload)
                .await
                .map(|c| (c.created_at, c.order_id))
        } else if m.topic() == topics.orders_rejected {
            codec
                .decode::<OrderRejected>(payload)
                .await
                .map(|r| (r.created_at, r.order_id))
        } else if m.topic() == commands_topic {
            if let Ok(processor::topology::LinesRecord::Command(envelope)) =
                processor::topology::LinesRecord::decode(m.key(), payload)
            {
                let (order_id, _) = envelope.command.order_line();
                commands.entry(order_id.to_owned()).or_insert(produced);
            }
            continue;
        } else {
            results
                .entry(m.key().unwrap_or_default().to_vec())
                .or_insert(produced);
            continue;
        };
        match outcome {
            Ok((created_at, order_id)) if created_at >= warm_until => {
                outcomes.push((created_at, produced, received, order_id))
            }
            Ok(_) => warmup += 1,
            Err(_) => {}
        }
    }
    publisher.await.expect("publisher");
    for (processor, _) in processors {
        processor.process.kill();
    }
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .map(|(created, _, received, _)| (received - created) as f64)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let hops = if breakdown {
        hop_breakdown(&outcomes, &commands, &results)
    } else {
        Vec::new()
    };
    Latency {
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        p999: quantile(&latencies, 0.999),
        samples: latencies.len(),
        hops,
    }
}

/// Splits each order's latency into [`HOPS`]: their p50 and p99, and their mean over the
/// slowest 1% of orders (what the tail is made of). Orders whose command or result was not
/// seen are left out.
fn hop_breakdown(
    outcomes: &[(i64, i64, i64, String)],
    commands: &HashMap<String, i64>,
    results: &HashMap<Vec<u8>, i64>,
) -> Vec<(&'static str, f64, f64, f64)> {
    let mut orders: Vec<[f64; 4]> = outcomes
        .iter()
        .filter_map(|(created, produced, received, id)| {
            let command = *commands.get(id)?;
            let result = *results.get(id.as_bytes())?;
            Some([
                (command - created) as f64,
                (result - command) as f64,
                (produced - result) as f64,
                (received - produced) as f64,
            ])
        })
        .collect();
    orders.sort_by(|a, b| a.iter().sum::<f64>().total_cmp(&b.iter().sum()));
    let tail = &orders[orders.len() - orders.len().div_ceil(100)..];
    HOPS.iter()
        .enumerate()
        .map(|(i, &name)| {
            let mut hop: Vec<f64> = orders.iter().map(|o| o[i]).collect();
            hop.sort_by(f64::total_cmp);
            let tail_mean = tail.iter().map(|o| o[i]).sum::<f64>() / tail.len().max(1) as f64;
            (name, quantile(&hop, 0.5), quantile(&hop, 0.99), tail_mean)
        })
        .collect()
}
