use std::sync::Arc;

use super::*;
use crate::runtime::topology::{SinkId, StoreId, TaskContext, TopologyBuilder};

/// A test processor: counts records per key in its store, forwards each to a sink
/// through a repartition topic, and sums what comes back.
struct Counter {
    input: SourceId,
    store: StoreId,
    hop: SinkId,
}

impl Processor for Counter {
    fn process(
        &mut self,
        ctx: &mut dyn TaskContext,
        record: &Record<'_>,
    ) -> Result<(), ProcessError> {
        let key = record.key.unwrap_or_default();
        let seen = ctx.get(self.store, key)?.map_or(0, |v| v[0]);
        ctx.put(self.store, key, vec![seen + 1]);
        if record.source == self.input {
            ctx.send(self.hop, key, record.value.unwrap_or_default(), None)?;
        }
        Ok(())
    }
}

fn topology() -> Topology {
    let mut builder = TopologyBuilder::new("t", "dlq");
    let hop = builder.repartition("hop");
    let mut a = builder.sub_topology("a");
    let input = a.source("in");
    let from_hop = a.repartition_source("hop");
    let store = a.store("counts");
    assert_ne!(input, from_hop);
    builder.processors(
        0,
        Arc::new(move |_: TaskId| -> Box<dyn Processor> {
            Box::new(Counter { input, store, hop })
        }),
    );
    builder.build()
}

fn counts(driver: &TopologyTestDriver) -> BTreeMap<Vec<u8>, u8> {
    let mut total = BTreeMap::new();
    for task in driver.tasks() {
        for (k, v) in driver.store(task, "counts") {
            *total.entry(k).or_insert(0) += v[0];
        }
    }
    total
}

#[test]
fn crashes_lose_nothing_committed_and_repeat_nothing() {
    for seed in 0..20 {
        let config = DriverConfig {
            default_partitions: 3,
            seed,
            commit_probability: 0.2,
            crash_probability: 0.05,
            max_crashes: 10,
            ..DriverConfig::default()
        };
        let mut driver = TopologyTestDriver::new(topology(), config).expect("opens");
        for i in 0..50u8 {
            let key = [b'k', i % 7];
            driver.pipe("in", Some(&key), &[i], i64::from(i));
        }
        assert!(driver.run(100_000).expect("runs"), "seed {seed} settles");
        // Every record counted once in "in" and once back from the hop: 2 per record.
        let counted: u32 = counts(&driver).values().map(|&v| u32::from(v)).sum();
        assert_eq!(counted, 100, "seed {seed}: {:?}", driver.stats());
        let hop = driver.read("t-hop-repartition");
        assert_eq!(hop.len(), 50, "seed {seed}: each forwarded once, committed");
    }
}

#[test]
fn an_open_transaction_holds_back_readers_and_an_abort_hides_its_records() {
    let mut driver = TopologyTestDriver::new(topology(), DriverConfig::default()).expect("opens");
    driver.pipe("in", Some(b"k"), b"1", 1);
    let task = TaskId {
        sub: 0,
        partition: 0,
    };
    driver.process(task, 0, 0).expect("processes");
    assert!(
        driver.readable().is_empty(),
        "the hop's record is not readable before the commit"
    );
    driver.crash(task).expect("restarts");
    assert!(driver.read("t-hop-repartition").is_empty(), "aborted");
    assert_eq!(driver.readable(), vec![(task, 0, 0)], "read again");
    driver.process(task, 0, 0).expect("processes");
    driver.commit(task);
    assert_eq!(
        driver.readable(),
        vec![(task, 1, 1)],
        "past the aborted record"
    );
}

/// Dead-letters from `init`, where there is no record to dead-letter.
struct DeadLettersInInit;

impl Processor for DeadLettersInInit {
    fn init(&mut self, ctx: &mut dyn TaskContext) -> Result<(), ProcessError> {
        ctx.dead_letter("bug", "no record")
    }

    fn process(&mut self, _: &mut dyn TaskContext, _: &Record<'_>) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[test]
fn a_dead_letter_with_no_record_stops_the_run_as_in_the_engine() {
    let mut builder = TopologyBuilder::new("t", "dlq");
    builder.sub_topology("a").source("in");
    builder.processors(
        0,
        Arc::new(|_: TaskId| -> Box<dyn Processor> { Box::new(DeadLettersInInit) }),
    );
    let error = TopologyTestDriver::new(builder.build(), DriverConfig::default())
        .expect_err("a fatal error, not a restart");
    assert!(
        matches!(&error.source, ProcessError::Fatal(e) if e.to_string().contains("dead_letter")),
        "{error}"
    );
}
