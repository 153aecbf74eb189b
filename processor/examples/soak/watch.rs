//! A read_committed reader of the two outcome topics that runs for the whole soak, on a
//! thread of its own, and keeps two times of every outcome: its timestamp (when its producer
//! wrote it) and when this reader received it (once its transaction had committed). It says
//! when outcomes flow again after a fault, when every order is decided, and at the end the
//! times give the longest gaps between outcomes. Through a broker outage it
//! simply waits: librdkafka reconnects and it reads on from where it was.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::world::{PARTITIONS, World};

/// How many new confirmations show that outcomes flow again. Confirmations, not any outcome:
/// an invalid order is rejected by its order task alone, so rejections can flow while no
/// stock is decided (the recorded 30-minute run's failure hid behind them).
const RESUMED_AFTER: usize = 50;

#[derive(Debug)]
pub struct OutcomeWatch {
    stop: Arc<AtomicBool>,
    /// Every outcome's timestamp and its arrival here (milliseconds since the epoch), in the
    /// order read.
    seen: Arc<Mutex<Vec<(i64, i64)>>>,
    /// Confirmations read so far.
    confirmed: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

impl OutcomeWatch {
    /// Starts reading both outcome topics from their beginning (they exist once an instance
    /// is ready).
    pub fn start(world: &World) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &world.stack.bootstrap_servers)
            .set("group.id", testkit::unique("soak-watch"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("a consumer");
        let mut assignment = TopicPartitionList::new();
        for topic in [
            &world.topics.orders_confirmed,
            &world.topics.orders_rejected,
        ] {
            for partition in 0..PARTITIONS {
                assignment
                    .add_partition_offset(topic, partition, Offset::Beginning)
                    .expect("a partition to assign");
            }
        }
        consumer
            .assign(&assignment)
            .expect("the outcome partitions");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let confirmed = Arc::new(AtomicUsize::new(0));
        let confirmations = world.topics.orders_confirmed.clone();
        let thread = {
            let (stop, seen, confirmed) = (stop.clone(), seen.clone(), confirmed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Errors (a broker away) are librdkafka's to recover from: read on.
                    if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                        let timestamp = message.timestamp().to_millis().unwrap_or(0);
                        let arrived = schemas::now_millis();
                        if message.topic() == confirmations {
                            confirmed.fetch_add(1, Ordering::Relaxed);
                        }
                        seen.lock()
                            .expect("the watch's lock")
                            .push((timestamp, arrived));
                    }
                }
            })
        };
        Self {
            stop,
            seen,
            confirmed,
            thread,
        }
    }

    /// Outcomes read so far.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("the watch's lock").len()
    }

    /// Waits until stock decisions flow again ([`RESUMED_AFTER`] new confirmations): how
    /// long that took, or `None` at `deadline`. Also returns (with the time waited) once
    /// `done` says no more orders are coming.
    pub async fn resumed(&self, deadline: Duration, done: impl Fn() -> bool) -> Option<Duration> {
        let started = Instant::now();
        let confirmed = || self.confirmed.load(Ordering::Relaxed);
        let from = confirmed();
        loop {
            if confirmed() >= from + RESUMED_AFTER || done() {
                return Some(started.elapsed());
            }
            if started.elapsed() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until at least `expected` outcomes have been read; false at `deadline`.
    pub async fn wait_for(&self, expected: usize, deadline: Duration) -> bool {
        let started = Instant::now();
        while self.count() < expected {
            if started.elapsed() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        true
    }

    /// Stops reading: every outcome's timestamp, and every outcome's arrival, each sorted.
    pub fn finish(self) -> (Vec<i64>, Vec<i64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("the watch's thread does not panic");
        let seen = std::mem::take(&mut *self.seen.lock().expect("the watch's lock"));
        let (mut written, mut arrived): (Vec<i64>, Vec<i64>) = seen.into_iter().unzip();
        written.sort_unstable();
        arrived.sort_unstable();
        (written, arrived)
    }
}
