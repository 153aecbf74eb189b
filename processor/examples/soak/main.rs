//! The soak: two processor instances decide a stream of orders with restocks for a long while
//! (`--duration`), while a fault is injected every `--fault-every`: a processor killed
//! (SIGKILL) or frozen (SIGSTOP, then SIGCONT), the broker stopped (SIGTERM) or killed
//! (SIGKILL) and started again, the schema registry or PostgreSQL stopped and started again,
//! transactional requests cut or held back by the test kit's fault proxy, poison records.
//! Then it waits for every order to be decided, checks the invariants and prints a report:
//! orders, outcomes, faults by kind, the longest gap between outcomes, and each invariant
//! PASS or FAIL. It exits 1 if any invariant fails.
//!
//! Run it with `scripts/soak.sh` (which starts the local stack and builds), or, with the
//! stack's environment set, `$CARGO_TARGET_DIR/release/examples/soak --duration 30m`.
//! `processor/tests/soak.rs` runs a 3-minute version of it in the tests. It needs the local
//! stack (`scripts/stack.sh`): it stops and starts the shared broker, registry and database.
//!
//! Layout:
//! - `main.rs`: the configuration ([`Config`]) and the sequence: set up, inject, drain, check.
//! - `world`: the run's names and topics, the seeded catalog, the processor instances.
//! - `faults`: the fault kinds, the shuffled deck they are dealt from, and each injection.
//! - `watch`: a read_committed reader of the outcome topics that runs the whole time.
//! - `checks`: the invariants over what the topics and the read model hold at the end.
//! - `report`: the report.

mod checks;
mod faults;
mod report;
mod watch;
mod world;

use std::time::{Duration, Instant};

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

use self::faults::{FaultKind, Injector};
use self::report::{FaultRecord, Report};
use self::watch::OutcomeWatch;
use self::world::World;

/// How long the outcomes may take to resume after a fault has healed before the soak says so.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(180);
/// How long the last orders may take to be decided once the generator has finished.
const DRAIN_DEADLINE: Duration = Duration::from_secs(300);

/// The soak's flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "soak", about = "A soak of the processor under random faults")]
pub struct Config {
    /// How long orders flow and faults are injected, e.g. `3m`, `30m`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3m")]
    pub duration: Duration,
    /// Orders per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seed of the fault schedule and of the order stream (default: from the clock; printed,
    /// so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Pause between one fault's recovery (outcomes flowing again) and the next fault.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub fault_every: Duration,
    /// The fault kinds to deal from, comma-separated (default: every kind).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Synthetic SKUs in the catalog (the orders draw from them with Zipf popularity).
    #[arg(long, default_value_t = 100)]
    pub skus: u32,
    /// Initial stock of every synthetic SKU.
    #[arg(long, default_value_t = 1000)]
    pub stock: i64,
    /// Restock period of the generator (`generator run --restock-every`).
    #[arg(long, default_value = "5s")]
    pub restock_every: String,
    /// Where the processors' logs go, one file per instance start (default: a directory
    /// named after the run under the system's temporary directory).
    #[arg(long)]
    pub log_dir: Option<std::path::PathBuf>,
}

// Four workers: the stack's start and stop commands block the one that runs them (for up to a
// minute), and the generator must keep its rate meanwhile.
#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let config = Config::parse();
    let report = run(config).await;
    println!("{report}");
    std::process::exit(if report.passed() { 0 } else { 1 });
}

/// The whole soak: set-up, the faults while orders flow, the drain, the checks.
pub async fn run(config: Config) -> Report {
    let seed = config.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let kinds = if config.faults.is_empty() {
        FaultKind::all()
    } else {
        config.faults.clone()
    };
    let mut world = World::new(&config, seed).await;
    eprintln!(
        "soak {}: seed {seed}, {} orders/s for {}, a fault every {} from {} kinds; processor logs in {}",
        world.name,
        config.rate,
        humantime::format_duration(config.duration),
        humantime::format_duration(config.fault_every),
        kinds.len(),
        world.log_dir.display()
    );
    world.seed_catalog().await;
    // The proxy first: the instances reach the broker through it.
    let mut injector = Injector::new(&world, kinds, StdRng::seed_from_u64(seed)).await;
    world.start_instances().await;
    let watch = OutcomeWatch::start(&world);

    let started = Instant::now();
    let started_at_ms = schemas::now_millis();
    let generator = world.spawn_generator();
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut exits = Vec::new();
    let mut late_at_fault = 0.0;
    while started.elapsed() + config.fault_every < config.duration {
        tokio::time::sleep(config.fault_every).await;
        world.scrape_counters().await;
        attribute_late_records(&mut faults, &world, late_at_fault);
        exits.extend(world.restart_exited(started));
        late_at_fault = world.late_records();
        let mut record = injector.inject(&mut world, started).await;
        record.recovered_after = watch
            .resumed(RECOVERY_DEADLINE, || generator.is_finished())
            .await;
        eprintln!("soak: {record}");
        faults.push(record);
        exits.extend(world.restart_exited(started));
    }

    let summary = generator.await.expect("the generator task does not panic");
    let generated = Instant::now();
    match &summary {
        Ok(summary) => eprintln!("soak: the generator finished: {summary}"),
        Err(e) => eprintln!("soak: the generator failed: {e:#}"),
    }
    let expected = summary
        .as_ref()
        .map_or(0, |s| (s.valid + s.invalid) as usize);
    let drained = watch.wait_for(expected, DRAIN_DEADLINE).await;
    exits.extend(world.restart_exited(started));
    let (outcome_times, arrival_times) = watch.finish();
    eprintln!("soak: checking the invariants");
    let (checks, totals) = checks::run(&world, expected, injector.poison_sent()).await;
    world.scrape_counters().await;
    attribute_late_records(&mut faults, &world, late_at_fault);
    let stopped = world.stop_instances().await;
    Report {
        name: world.name.clone(),
        seed,
        config,
        started_at_ms,
        elapsed: started.elapsed(),
        generator: summary.map_err(|e| format!("{e:#}")),
        expected,
        drained: drained.then(|| generated.elapsed()),
        outcome_times,
        arrival_times,
        faults,
        exits,
        checks,
        totals,
        counters: world.counter_totals(),
        stopped,
        log_dir: world.log_dir.clone(),
    }
}

/// Gives the last fault the late records counted since it was injected (when there were
/// `at_fault`) up to now: the records its disturbance made late.
fn attribute_late_records(faults: &mut [FaultRecord], world: &World, at_fault: f64) {
    if let Some(last) = faults.last_mut() {
        last.late_records = world.late_records() - at_fault;
    }
}
