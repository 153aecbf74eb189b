//! The engine on a topology of its own, against the real broker: what the runtime guarantees
//! whatever the processors do, apart from the order topology.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use processor::metrics::Metrics;
use processor::runtime::engine::{EngineConfig, EngineError, run_engine};
use processor::runtime::guarantee::ProcessingGuarantee;
use processor::runtime::live::EngineStatus;
use processor::runtime::store::SharedMemory;
use processor::runtime::task::TaskId;
use processor::runtime::topics;
use processor::runtime::topology::{
    ProcessError, Processor, Record, StoreId, TaskContext, Topology, TopologyBuilder,
};
use testkit::{Isolation, read_to_end, stack, unique};
use tokio_util::sync::CancellationToken;

/// How often the ticking processor writes its store.
const TICK: Duration = Duration::from_millis(50);

/// How long a stalling ticker's punctuation blocks its engine, once.
const STALL: Duration = Duration::from_millis(1500);
/// The stall timeout the tests judge the engine's health by.
const STALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Writes its store from a punctuation, and never reads a record or sends one: the store write
/// alone must open a transaction. With `stall_at`, that tick blocks the engine for [`STALL`].
struct Ticker {
    store: StoreId,
    ticks: u64,
    stall_at: Option<u64>,
}

impl Processor for Ticker {
    fn init(&mut self, ctx: &mut dyn TaskContext) -> Result<(), ProcessError> {
        ctx.schedule(TICK);
        Ok(())
    }

    fn process(&mut self, _: &mut dyn TaskContext, _: &Record<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut dyn TaskContext, _now: i64) -> Result<(), ProcessError> {
        self.ticks += 1;
        if self.stall_at == Some(self.ticks) {
            std::thread::sleep(STALL);
        }
        ctx.put(self.store, b"ticks", self.ticks.to_be_bytes().to_vec());
        Ok(())
    }
}

fn ticking_topology(name: &str, stall_at: Option<u64>) -> Topology {
    let mut builder = TopologyBuilder::new(&format!("{name}-app"), &format!("{name}-dlq"));
    let mut sub = builder.sub_topology("ticks");
    sub.source(&format!("{name}-input"));
    let store = sub.store("ticks");
    builder.processors(
        0,
        Arc::new(move |_: TaskId| -> Box<dyn Processor> {
            Box::new(Ticker {
                store,
                ticks: 0,
                stall_at,
            })
        }),
    );
    builder.build()
}

/// What a ticker run gave: how the engine stopped, the ticks its changelog holds, and its
/// health (by [`STALL_TIMEOUT`]) sampled every 50 ms while it ticked.
struct Ticked {
    stopped: Result<(), EngineError>,
    ticks: Vec<u64>,
    health: Vec<Result<(), String>>,
}

/// Runs the ticking topology on one engine for a few commit intervals after it is assigned its
/// partitions (a few more if a tick stalls), then stops it.
async fn run_ticker(guarantee: ProcessingGuarantee, stall_at: Option<u64>) -> Ticked {
    let stack = stack().await;
    let name = unique("engine-ticks");
    let topology = Arc::new(ticking_topology(&name, stall_at));
    let client = plumbing::admin::client_config(&stack.bootstrap_servers, &[]);
    let partitions = topics::ensure(&topology, &client, 2)
        .await
        .expect("the topics are created");
    let state = tempfile::tempdir().expect("a state dir");
    let config = EngineConfig {
        application_id: topology.application_id.clone(),
        guarantee,
        commit_interval: Duration::from_millis(100),
        state_dir: state.path().join(&topology.application_id),
        client,
        instance_id: unique("ticker"),
        group_instance_id: None,
        group_protocol: Default::default(),
        memory: SharedMemory::new(8 << 20),
        topology: topology.clone(),
        partitions: Arc::new(partitions),
        subscription: None,
        client_id: None,
        status: EngineStatus::new("engine-0", ""),
        queryable: Default::default(),
    };
    let status = config.status.clone();
    let metrics = Metrics::new(prometheus::Registry::new());
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    let engine = {
        let (ready, shutdown) = (ready.clone(), shutdown.clone());
        std::thread::spawn(move || run_engine(config, metrics, ready, shutdown))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.load(Ordering::Acquire) && !engine.is_finished() {
        assert!(Instant::now() < deadline, "the engine was never assigned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ten commit intervals of ticks (and the stalls' time), unless the engine stops first.
    let ticking = Instant::now();
    let window = Duration::from_secs(1)
        + if stall_at.is_some() {
            3 * STALL
        } else {
            Duration::ZERO
        };
    let mut health = Vec::new();
    while ticking.elapsed() < window && !engine.is_finished() {
        health.push(status.health(schemas::now_millis(), STALL_TIMEOUT));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let stopping = Instant::now();
    while !engine.is_finished() {
        // (A store commit started over an unfinished one panics, and the consumer's close
        // panics again inside the panic: the thread never ends.)
        assert!(
            stopping.elapsed() < Duration::from_secs(60),
            "the engine did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = engine.join().expect("the engine thread did not panic");
    let changelog = topology.subs[0].stores[0].changelog.clone();
    let records = read_to_end(
        &stack.bootstrap_servers,
        &[&changelog],
        Isolation::ReadCommitted,
    )
    .await;
    let ticks = records
        .iter()
        .map(|r| {
            let payload = r.payload.as_deref().expect("a tick value");
            u64::from_be_bytes(payload.try_into().expect("eight bytes"))
        })
        .collect();
    Ticked {
        stopped,
        ticks,
        health,
    }
}

/// Each of the two tasks wrote its store about twenty times: the changelog (read_committed)
/// has at least a few commits' worth of ticks, so they were committed, in transactions.
fn assert_committed(ticked: &Ticked) {
    if let Err(error) = &ticked.stopped {
        panic!("the engine stopped on a store written by a punctuation alone: {error}");
    }
    assert!(
        ticked.ticks.len() >= 4,
        "the ticks were committed to the changelog: {:?}",
        ticked.ticks
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_written_by_a_punctuation_alone_is_committed_exactly_once() {
    let ticked = run_ticker(ProcessingGuarantee::ExactlyOnceV2, None).await;
    assert_committed(&ticked);
    // An engine going about its work beats often enough for a stall timeout of 500 ms.
    assert!(
        ticked.health.iter().all(Result::is_ok),
        "{:?}",
        ticked.health
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_written_by_a_punctuation_alone_is_committed_at_least_once() {
    let ticked = run_ticker(ProcessingGuarantee::AtLeastOnce, None).await;
    assert_committed(&ticked);
}

/// A processor that blocks its engine for longer than the stall timeout makes the engine's
/// health fail while it blocks (what `/health` answers), and healthy again after.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_that_makes_no_progress_is_unhealthy_until_it_does() {
    let ticked = run_ticker(ProcessingGuarantee::ExactlyOnceV2, Some(5)).await;
    assert_committed(&ticked);
    let stalled = ticked.health.iter().position(|h| {
        h.as_ref()
            .is_err_and(|why| why.contains("has made no progress for"))
    });
    let stalled = stalled.unwrap_or_else(|| panic!("the stall shows: {:?}", ticked.health));
    assert!(
        ticked.health[..stalled].iter().all(Result::is_ok),
        "healthy before the stall: {:?}",
        ticked.health
    );
    assert!(
        ticked.health.last().is_some_and(Result::is_ok),
        "healthy again once it goes round: {:?}",
        ticked.health
    );
}
