//! The faults: each kind, how it is injected and healed, and the deck they are dealt from.
//! The deck holds every kind the run allows once, shuffled with the run's seed; when it is
//! empty it is shuffled again, so every kind comes up about as often as the others. Faults
//! never overlap: each one heals before the next is injected.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rdkafka::producer::{FutureProducer, FutureRecord};
use testkit::proxy::{
    ADD_PARTITIONS_TO_TXN, END_TXN, Fault, FaultProxy, PROXIED_LISTENER, PROXY_ADDRESS,
    TXN_OFFSET_COMMIT,
};

use super::report::FaultRecord;
use super::world::World;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum FaultKind {
    /// A processor instance killed with SIGKILL, started again on its state 3 s later.
    ProcessorSigkill,
    /// A processor instance frozen with SIGSTOP for 8 to 16 s (past its 6 s session), then
    /// resumed with SIGCONT.
    ProcessorSigstop,
    /// The broker stopped with SIGTERM (a clean shutdown), started again 5 s after it exited.
    BrokerSigterm,
    /// The broker killed with SIGKILL, started again 10 s later.
    BrokerSigkill,
    /// The schema registry stopped for 20 s.
    RegistryOutage,
    /// PostgreSQL stopped for 20 s.
    PostgresOutage,
    /// EndTxn requests swallowed and their connections cut, for 20 s.
    ProxyEndTxnRequests,
    /// EndTxn responses dropped and their connections cut (the broker committed), for 15 s.
    ProxyEndTxnResponses,
    /// EndTxn responses held back 12 s (beyond the transaction timeout), for 15 s.
    ProxyEndTxnDelay,
    /// TxnOffsetCommit responses dropped and their connections cut, for 15 s.
    ProxyTxnOffsetCommitResponses,
    /// AddPartitionsToTxn requests swallowed and their connections cut, for 15 s.
    ProxyAddPartitionsRequests,
    /// Undecodable records on both input topics: an empty value, a tombstone and garbage
    /// on `orders`, garbage on `inventory-adjustments`.
    Poison,
}

impl FaultKind {
    pub fn all() -> Vec<FaultKind> {
        use clap::ValueEnum;
        FaultKind::value_variants().to_vec()
    }

    /// Its name on the command line and in the report.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// The proxy fault of a proxy kind, and how long it lasts.
    fn proxy_fault(self) -> Option<(Fault, Duration)> {
        let secs = Duration::from_secs;
        Some(match self {
            FaultKind::ProxyEndTxnRequests => (Fault::CutOnRequest(END_TXN), secs(20)),
            FaultKind::ProxyEndTxnResponses => (Fault::CutOnResponse(END_TXN), secs(15)),
            FaultKind::ProxyEndTxnDelay => (Fault::DelayResponses(END_TXN, secs(12)), secs(15)),
            FaultKind::ProxyTxnOffsetCommitResponses => {
                (Fault::CutOnResponse(TXN_OFFSET_COMMIT), secs(15))
            }
            FaultKind::ProxyAddPartitionsRequests => {
                (Fault::CutOnRequest(ADD_PARTITIONS_TO_TXN), secs(15))
            }
            _ => return None,
        })
    }
}

/// Deals the faults and injects them.
pub struct Injector {
    kinds: Vec<FaultKind>,
    deck: Vec<FaultKind>,
    rng: StdRng,
    /// Every processor reaches the broker through it, the whole run.
    proxy: FaultProxy,
    producer: FutureProducer,
    /// Poison records sent so far.
    poison: u64,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("kinds", &self.kinds)
            .field("deck", &self.deck)
            .field("poison", &self.poison)
            .finish_non_exhaustive()
    }
}

impl Injector {
    pub async fn new(world: &World, kinds: Vec<FaultKind>, rng: StdRng) -> Self {
        Self {
            kinds,
            deck: Vec::new(),
            rng,
            proxy: start_proxy().await,
            producer: world
                .connection
                .client_config()
                .set("partitioner", plumbing::admin::PARTITIONER)
                .create()
                .expect("a producer for poison records"),
            poison: 0,
        }
    }

    /// Poison records sent so far (each must reach the dead-letter topic).
    pub fn poison_sent(&self) -> u64 {
        self.poison
    }

    /// The next kind from the deck.
    fn deal(&mut self) -> FaultKind {
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.deck.shuffle(&mut self.rng);
        }
        self.deck
            .pop()
            .expect("invariant: the run has at least one fault kind")
    }

    /// Deals a fault, injects it and heals it (times are since `started`).
    pub async fn inject(&mut self, world: &mut World, started: Instant) -> FaultRecord {
        let kind = self.deal();
        let at = started.elapsed();
        eprintln!("soak: {:>7.1}s injecting {}", at.as_secs_f64(), kind.name());
        let detail = match kind {
            FaultKind::ProcessorSigkill => {
                let i = self.rng.random_range(0..world.instances.len());
                world.scrape_counters().await;
                if let Some(process) = world.instances[i].process.take() {
                    process.kill();
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                world.start(i);
                format!("instance {} killed, started again", world.instances[i].name)
            }
            FaultKind::ProcessorSigstop => {
                let i = self.rng.random_range(0..world.instances.len());
                let hold = Duration::from_millis(self.rng.random_range(8_000..=16_000));
                let instance = &world.instances[i];
                match instance.process() {
                    Some(process) => {
                        process.signal("STOP");
                        tokio::time::sleep(hold).await;
                        process.signal("CONT");
                        format!("instance {} frozen {hold:.1?}", instance.name)
                    }
                    None => format!("instance {} was not running", instance.name),
                }
            }
            FaultKind::BrokerSigterm => {
                stack_sh(&["stop", "kafka"]).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                let down = started.elapsed() - at;
                let tries = stack_sh(&["start", "kafka"]).await;
                format!(
                    "down {down:.1?}, back after {:.1?}{tries}",
                    started.elapsed() - at
                )
            }
            FaultKind::BrokerSigkill => {
                stack_sh(&["crash", "kafka"]).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                let tries = stack_sh(&["start", "kafka"]).await;
                format!("back after {:.1?}{tries}", started.elapsed() - at)
            }
            FaultKind::RegistryOutage => {
                stack_sh(&["stop", "registry"]).await;
                tokio::time::sleep(Duration::from_secs(20)).await;
                let tries = stack_sh(&["start", "registry"]).await;
                format!("back after {:.1?}{tries}", started.elapsed() - at)
            }
            FaultKind::PostgresOutage => {
                stack_sh(&["stop", "postgres"]).await;
                tokio::time::sleep(Duration::from_secs(20)).await;
                let tries = stack_sh(&["start", "postgres"]).await;
                format!("back after {:.1?}{tries}", started.elapsed() - at)
            }
            FaultKind::Poison => {
                let sent = self.send_poison(world).await;
                format!("{sent} records")
            }
            proxied => {
                let (fault, lasting) = proxied
                    .proxy_fault()
                    .expect("invariant: every other kind is a proxy fault");
                let before = self.proxy.hits();
                self.proxy.set(Some(fault));
                tokio::time::sleep(lasting).await;
                self.proxy.set(None);
                format!(
                    "{fault:?} for {lasting:?}: acted {} times",
                    self.proxy.hits() - before
                )
            }
        };
        FaultRecord {
            kind,
            at,
            healed_at: started.elapsed(),
            detail,
            recovered_after: None,
            late_records: 0.0,
        }
    }

    /// Sends undecodable records to both input topics; how many.
    async fn send_poison(&mut self, world: &World) -> u64 {
        let n = self.poison;
        let garbage = format!("\u{ff}not avro {n}").into_bytes();
        let records: [(&str, String, Option<&[u8]>); 4] = [
            (&world.topics.orders, format!("poison-empty-{n}"), Some(b"")),
            (&world.topics.orders, format!("poison-null-{n}"), None),
            (
                &world.topics.orders,
                format!("poison-garbage-{n}"),
                Some(&garbage),
            ),
            (
                &world.topics.inventory_adjustments,
                format!("SKU-POISON-{n}"),
                Some(&garbage),
            ),
        ];
        for (topic, key, value) in records {
            let mut record = FutureRecord::<str, [u8]>::to(topic).key(&key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("a poison record is delivered: {e}"));
            self.poison += 1;
        }
        self.poison - n
    }
}

/// The fault proxy, which every processor uses to reach the broker.
async fn start_proxy() -> FaultProxy {
    FaultProxy::start(PROXY_ADDRESS, PROXIED_LISTENER)
        .await
        .unwrap_or_else(|e| panic!("the fault proxy listens on {PROXY_ADDRESS}: {e}"))
}

/// How many times `scripts/stack.sh start` is tried before the soak gives up.
const START_TRIES: u32 = 3;

/// Runs `scripts/stack.sh ARGS` (the soak needs the local stack). A `start` that fails is
/// tried again, up to [`START_TRIES`] times: on two loaded cores a service can fail its own
/// start (the registry's database pool has timed out while starting). Returns a note for the
/// fault's detail when it took more than one try; panics if it never worked, for the soak
/// cannot go on without the service.
async fn stack_sh(args: &[&str]) -> String {
    // The crate's directory is a sibling of scripts/ (at run time under cargo test; else
    // where this was built).
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let script = format!("{crate_dir}/../scripts/stack.sh");
    let tries = if args.first() == Some(&"start") {
        START_TRIES
    } else {
        1
    };
    let mut failures = Vec::new();
    for _ in 0..tries {
        let status = tokio::process::Command::new(&script)
            .args(args)
            .status()
            .await
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        if status.success() {
            return if failures.is_empty() {
                String::new()
            } else {
                format!(
                    "; `stack.sh {}` failed first: {}",
                    args.join(" "),
                    failures.join(", ")
                )
            };
        }
        eprintln!("soak: {script} {} failed ({status})", args.join(" "));
        failures.push(status.to_string());
    }
    panic!(
        "{script} {} failed {tries} times ({}): the soak cannot go on",
        args.join(" "),
        failures.join(", ")
    );
}
