//! Throughput: a processor deciding pre-published orders, timed from the moment it is ready,
//! and the raw pass-through baseline that does the same Kafka reads and writes per order with
//! no state and no decisions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use plumbing::admin::{TopicSpec, ensure_topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use testkit::prometheus::{is_ready, scrape};

use crate::Config;
use crate::machine::{StackCpu, busy_since, machine_ticks, usage};
use crate::setup::{DECIDED, RunNames, publish, seed, start_processor};

pub struct Row {
    pub name: String,
    pub orders: u64,
    /// Orders decided during `seconds` (all of them unless decided before the processor was
    /// ready): the rate's numerator.
    pub measured: u64,
    /// From the moment it could start (the processor reports ready: partitions assigned, state
    /// restored; the baseline reads its first record) to the last decision.
    pub seconds: f64,
    /// From the process start (the baseline's thread start) to that moment.
    pub startup: f64,
    /// The share of the whole machine's CPU (every process, both cores) busy during `seconds`.
    pub machine_busy: f64,
    /// Seconds spent committing (flushing, offsets, commit; the processor's stores too).
    pub commit_seconds: f64,
    /// Time spent processing records (decode to outputs), summed over engine threads.
    pub process_seconds: f64,
    pub cpu: f64,
    pub rss_mb: f64,
    /// CPU seconds of the local stack's broker and PostgreSQL during `seconds` (None when the
    /// stack is not the local one of `scripts/stack.sh`).
    pub stack_cpu: Option<StackCpu>,
    /// Rows the read-model sync wrote per second, from the processor's start until the read
    /// model held every decision.
    pub sync_rows_per_second: f64,
    /// The largest `stockflow_sync_lag_seconds` sampled during the run.
    pub sync_max_lag: f64,
    /// How long after the last decision the read model held it (the sync's lag at the end).
    pub sync_catch_up: f64,
}

/// Pre-publishes the orders, then times one processor deciding them all.
pub async fn throughput(
    config: &Config,
    name: &str,
    lines_max: u32,
    guarantee: &str,
) -> (Row, RunNames) {
    let orders = config.orders;
    let run = RunNames::new("bench");
    let connection = run.connection(config);
    seed(&connection).await;
    let summary = if config.publish_after_ready {
        None
    } else {
        Some(publish(&connection, orders, lines_max, 0, 42).await)
    };
    let state = tempfile::tempdir().expect("state dir");
    let launched = Instant::now();
    let processor = start_processor(config, &run, state.path(), guarantee, None);
    while !is_ready(processor.metrics).await {
        assert!(
            launched.elapsed() < Duration::from_secs(120),
            "{name}: not ready in 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let startup = launched.elapsed().as_secs_f64();
    let started = Instant::now();
    let ticks = machine_ticks();
    let stack_before = StackCpu::now();
    // With several engine threads, the first may decide pre-published orders before the last
    // has joined the group and restored (the local broker has no initial rebalance delay):
    // only what is decided once all are ready counts.
    let decided_before = scrape(processor.metrics)
        .await
        .unwrap_or_default()
        .sum(DECIDED);
    // Published now, the orders are all decided within the clock, and the publishing
    // competes with the processor for the CPU meanwhile.
    let summary = match summary {
        Some(summary) => summary,
        None => publish(&connection, orders, lines_max, 0, 42).await,
    };
    let target = (summary.valid + summary.invalid) as f64;
    let mut sync_max_lag: f64 = 0.0;
    loop {
        let page = scrape(processor.metrics).await.unwrap_or_default();
        sync_max_lag = sync_max_lag.max(page.sum("stockflow_sync_lag_seconds"));
        if page.sum(DECIDED) >= target {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{name}: not done in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Time spent committing (Kafka and stores) and processing, from the processor's own
    // histograms: the rest of an engine's time is spent polling and waiting for records.
    let page = scrape(processor.metrics).await.unwrap_or_default();
    let commit_seconds = page.sum("stockflow_commit_latency_seconds_sum");
    let process_seconds = page.sum("stockflow_processing_latency_seconds_sum");
    let machine_busy = busy_since(ticks);
    let stack_cpu = stack_before.zip(StackCpu::now()).map(|(b, a)| a.since(&b));
    let (cpu, rss_mb) = usage(processor.process.id());
    // The read model holds every decision once the sync has nothing waiting and has written
    // the decided orders (one row each in `orders`).
    let sync_rows = loop {
        let page = scrape(processor.metrics).await.unwrap_or_default();
        let orders = page.sum_where("stockflow_sync_rows_total", "table", "orders");
        let waiting = page.sum("stockflow_sync_lag_rows");
        if orders >= target && waiting == 0.0 {
            break page.sum("stockflow_sync_rows_total");
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{name}: the read model never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sync_seconds = started.elapsed().as_secs_f64();
    processor.process.kill();
    (
        Row {
            name: name.to_owned(),
            orders,
            measured: orders - decided_before as u64,
            seconds,
            startup,
            machine_busy,
            commit_seconds,
            process_seconds,
            cpu,
            rss_mb,
            stack_cpu,
            sync_rows_per_second: sync_rows / sync_seconds,
            sync_max_lag,
            sync_catch_up: sync_seconds - seconds,
        },
        run,
    )
}

/// The raw pass-through baseline: 3 reads and 8 writes per order, transactional, no state.
pub async fn baseline(config: &Config) -> Row {
    let orders = config.orders;
    let run = RunNames::new("baseline");
    let prefix = &run.prefix;
    let connection = run.connection(config);
    publish(&connection, orders, 1, 0, 42).await;
    let topics = connection.topics();
    let (hop1, hop2, sink) = (
        format!("{prefix}hop1"),
        format!("{prefix}hop2"),
        format!("{prefix}sink"),
    );
    let config = connection.client_config();
    ensure_topics(
        &config,
        &[
            TopicSpec::new(&hop1, 4),
            TopicSpec::new(&hop2, 4),
            TopicSpec::new(&sink, 4),
        ],
    )
    .await
    .expect("baseline topics");
    let (input, hop1_t, hop2_t, sink_t) = (
        topics.orders.clone(),
        hop1.clone(),
        hop2.clone(),
        sink.clone(),
    );
    let launched = Instant::now();
    let cpu_before = usage(std::process::id()).0;
    let handle = std::thread::spawn(move || {
        let consumer: BaseConsumer = config
            .clone()
            .set("group.id", format!("{input}-baseline"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            .create()
            .expect("consumer");
        let producer: BaseProducer = config
            .clone()
            .set("transactional.id", format!("{input}-baseline"))
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init transactions");
        consumer
            .subscribe(&[&input, &hop1_t, &hop2_t])
            .expect("subscribe");
        let mut finished = 0u64;
        let mut in_txn = false;
        let mut positions: HashMap<(String, i32), i64> = HashMap::new();
        let mut last_commit = Instant::now();
        let mut committing = Duration::ZERO;
        let mut first_record = None;
        let send = |topic: &str, key: &[u8], payload: &[u8]| {
            let mut record = BaseRecord::to(topic).key(key).payload(payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
        };
        while finished < orders {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                first_record
                    .get_or_insert_with(|| (Instant::now(), machine_ticks(), StackCpu::now()));
                if !in_txn {
                    producer.begin_transaction().expect("begin");
                    in_txn = true;
                }
                let (key, payload) = (m.key().unwrap_or_default(), m.payload().unwrap_or_default());
                let topic = m.topic();
                if topic == input {
                    send(&hop1_t, key, payload);
                    send(&sink_t, key, payload);
                } else if topic == hop1_t {
                    send(&hop2_t, key, payload);
                    for _ in 0..3 {
                        send(&sink_t, key, payload);
                    }
                } else {
                    send(&sink_t, key, payload);
                    send(&sink_t, key, payload);
                    finished += 1;
                }
                positions.insert((topic.to_owned(), m.partition()), m.offset() + 1);
            }
            producer.poll(Duration::ZERO);
            if in_txn && last_commit.elapsed() >= Duration::from_millis(100) {
                let commit_started = Instant::now();
                while producer.in_flight_count() > 0 {
                    producer.poll(Duration::from_millis(1));
                }
                let mut tpl = TopicPartitionList::new();
                for ((t, p), o) in &positions {
                    tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                        .expect("offset");
                }
                let group = consumer.group_metadata().expect("group metadata");
                producer
                    .send_offsets_to_transaction(&tpl, &group, Duration::from_secs(30))
                    .expect("offsets");
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .expect("commit");
                in_txn = false;
                last_commit = Instant::now();
                committing += last_commit - commit_started;
            }
        }
        let (started, ticks, stack) = first_record.expect("records were read");
        (started, ticks, stack, committing.as_secs_f64())
    });
    let (started, ticks, stack_before, commit_seconds) = handle.join().expect("baseline loop");
    let seconds = started.elapsed().as_secs_f64();
    let machine_busy = busy_since(ticks);
    let stack_cpu = stack_before.zip(StackCpu::now()).map(|(b, a)| a.since(&b));
    let startup = (started - launched).as_secs_f64();
    let (cpu_after, rss_mb) = usage(std::process::id());
    Row {
        name: "raw pass-through baseline (3 reads, 8 writes / order)".into(),
        orders,
        measured: orders,
        seconds,
        startup,
        machine_busy,
        commit_seconds,
        process_seconds: 0.0,
        cpu: cpu_after - cpu_before,
        rss_mb,
        stack_cpu,
        sync_rows_per_second: 0.0,
        sync_max_lag: 0.0,
        sync_catch_up: 0.0,
    }
}
