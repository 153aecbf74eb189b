//! The invariants, checked once the faults have stopped and the orders are decided. Each is
//! a [`Check`], PASS or FAIL with what was found; none panics, so the report shows them all.
//!
//! - `processor audit` (the serial clerk) finds no difference: one outcome per order with
//!   the clerk's decision, every sku's last stock the clerk's.
//! - Every order sent has exactly one outcome under read_committed.
//! - No `InventoryUpdated` shows negative available or reserved stock.
//! - Units are conserved per sku: initial + adjustments - confirmed = final available.
//! - Every poison record is on the dead-letter topic, and nothing else is.
//! - The read model equals the topics: each inventory row the processor's state (the last
//!   record of its changelog), each order row its outcome, no other rows.
//!
//! The topics are read up to their high watermarks (read_committed), record by record,
//! without holding them: a 30-minute run has millions of them.

use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use processor::runtime::format;
use processor::topology::inventory::{SkuRecord, keys};
use schemas::{
    AdjustmentMode, AdjustmentReason, Codec, InventoryAdjusted, InventoryUpdated, OrderConfirmed,
    OrderRejected,
};
use testkit::Record;
use testkit::kafka::{Isolation, scan_to_end};

use super::world::{World, processor_binary};

/// How long reading a topic may take.
const READ_DEADLINE: Duration = Duration::from_secs(900);
/// How long the audit, the stock and the read model may take to settle (the releases of the
/// last rejected orders, the last sync).
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);

/// One invariant's result.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, problems: &[String], ok: String) -> Self {
        Self {
            name,
            passed: problems.is_empty(),
            detail: if problems.is_empty() {
                ok
            } else {
                format!(
                    "{} problem(s), first: {}",
                    problems.len(),
                    problems[..problems.len().min(5)].join("; ")
                )
            },
        }
    }
}

/// An order's outcome as the topics hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub status: &'static str,
    pub reason: Option<String>,
    /// How many outcome records it has.
    pub records: usize,
}

/// What the checks read, for the report.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub confirmed: usize,
    pub rejected: usize,
    pub rejected_by_reason: HashMap<String, usize>,
    pub inventory_updates: usize,
    pub dead_letters: usize,
}

/// Every check, in the report's order, and the totals they read.
pub async fn run(world: &World, expected: usize, poison: u64) -> (Vec<Check>, Totals) {
    let mut checks = Vec::new();
    let mut totals = Totals::default();
    checks.push(audit(world).await);
    let outcomes = outcomes(world, &mut totals).await;
    checks.push(one_outcome_per_order(&outcomes, expected));
    let (negative, conservation) = stock(world, &outcomes, &mut totals).await;
    checks.push(negative);
    checks.push(conservation);
    checks.push(dead_letters(world, poison, &mut totals).await);
    checks.push(read_model(world, &outcomes).await);
    (checks, totals)
}

/// Runs `processor audit` until it finds no difference, or [`SETTLE_DEADLINE`].
async fn audit(world: &World) -> Check {
    let started = Instant::now();
    loop {
        let output = tokio::process::Command::new(processor_binary())
            .args(world.connection_flags())
            .args(["audit", "--show", "10"])
            .output()
            .await;
        let (passed, text) = match &output {
            Ok(output) => (output.status.success(), text(output)),
            Err(e) => (false, format!("the audit did not run: {e}")),
        };
        if passed || started.elapsed() > SETTLE_DEADLINE {
            return Check {
                name: "processor audit: every decision and every sku as the serial clerk's",
                passed,
                detail: text.trim_end().replace('\n', "\n      "),
            };
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Reads `topics` up to their ends, handing each record to `each` on a blocking thread (where
/// `each` may block on the codec).
async fn scan(
    world: &World,
    topics: &[&str],
    each: impl FnMut(Record) + Send + 'static,
) -> Result<usize, String> {
    let bootstrap = world.stack.bootstrap_servers.clone();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        scan_to_end(
            &bootstrap,
            &topics,
            Isolation::ReadCommitted,
            READ_DEADLINE,
            each,
        )
    })
    .await
    .map_err(|e| format!("the reader's thread: {e}"))?
}

/// Decodes `payload` with `codec`, from a blocking thread.
fn decode<C: schemas::Contract>(
    runtime: &tokio::runtime::Handle,
    codec: &Codec,
    payload: Option<&[u8]>,
) -> Result<C, String> {
    let payload = payload.ok_or("a record without a value")?;
    runtime
        .block_on(codec.decode(payload))
        .map_err(|e| e.to_string())
}

/// Every order's outcome records (read_committed), and the confirmed units per sku.
pub struct Outcomes {
    pub orders: HashMap<String, Decided>,
    pub confirmed_units: HashMap<String, i64>,
    pub problems: Vec<String>,
}

async fn outcomes(world: &World, totals: &mut Totals) -> Outcomes {
    let codec = world.codec.clone();
    let confirmed_topic = world.topics.orders_confirmed.clone();
    let runtime = tokio::runtime::Handle::current();
    let result = std::sync::Arc::new(std::sync::Mutex::new(Outcomes {
        orders: HashMap::new(),
        confirmed_units: HashMap::new(),
        problems: Vec::new(),
    }));
    let sink = result.clone();
    let scanned = scan(
        world,
        &[
            &world.topics.orders_confirmed,
            &world.topics.orders_rejected,
        ],
        move |record| {
            let mut out = sink.lock().expect("the outcomes' lock");
            let decided = if record.topic == confirmed_topic {
                decode::<OrderConfirmed>(&runtime, &codec, record.payload.as_deref()).map(|c| {
                    for line in &c.lines {
                        *out.confirmed_units.entry(line.sku.clone()).or_default() +=
                            i64::from(line.quantity);
                    }
                    (c.order_id, "CONFIRMED", None)
                })
            } else {
                decode::<OrderRejected>(&runtime, &codec, record.payload.as_deref()).map(|r| {
                    let reason = processor::readmodel::reason_name(r.reason).to_owned();
                    (r.order_id, "REJECTED", Some(reason))
                })
            };
            match decided {
                Ok((id, status, reason)) => {
                    let entry = out.orders.entry(id).or_insert(Decided {
                        status,
                        reason,
                        records: 0,
                    });
                    entry.records += 1;
                }
                Err(e) => out.problems.push(format!(
                    "{}[{}]@{} does not decode: {e}",
                    record.topic, record.partition, record.offset
                )),
            }
        },
    )
    .await;
    let mut outcomes = std::mem::replace(
        &mut *result.lock().expect("the outcomes' lock"),
        Outcomes {
            orders: HashMap::new(),
            confirmed_units: HashMap::new(),
            problems: Vec::new(),
        },
    );
    if let Err(e) = scanned {
        outcomes.problems.push(e);
    }
    for decided in outcomes.orders.values() {
        if decided.status == "CONFIRMED" {
            totals.confirmed += decided.records;
        } else {
            totals.rejected += decided.records;
            let reason = decided.reason.clone().unwrap_or_default();
            *totals.rejected_by_reason.entry(reason).or_default() += decided.records;
        }
    }
    outcomes
}

fn one_outcome_per_order(outcomes: &Outcomes, expected: usize) -> Check {
    let mut problems = outcomes.problems.clone();
    let repeated: Vec<String> = outcomes
        .orders
        .iter()
        .filter(|(_, d)| d.records > 1)
        .map(|(id, d)| format!("{id} has {} outcomes", d.records))
        .collect();
    problems.extend(repeated);
    if outcomes.orders.len() != expected {
        problems.push(format!(
            "{} orders decided, {expected} sent (distinct ids)",
            outcomes.orders.len()
        ));
    }
    Check::new(
        "every order sent has exactly one outcome (read_committed)",
        &problems,
        format!("{} orders, one outcome each", outcomes.orders.len()),
    )
}

/// No negative stock in any update; initial + adjustments - confirmed = final, per sku
/// (waiting up to [`SETTLE_DEADLINE`] for the last releases).
async fn stock(world: &World, outcomes: &Outcomes, totals: &mut Totals) -> (Check, Check) {
    let runtime = tokio::runtime::Handle::current();
    // Initial levels and restocks, from the adjustments topic.
    let codec = world.codec.clone();
    let levels = std::sync::Arc::new(std::sync::Mutex::new((
        HashMap::<String, i64>::new(),
        Vec::<String>::new(),
    )));
    let sink = levels.clone();
    let handle = runtime.clone();
    let scanned = scan(
        world,
        &[&world.topics.inventory_adjustments],
        move |record| {
            let mut sink = sink.lock().expect("the levels' lock");
            // Poison records (this soak's own) are not adjustments.
            let Ok(adjusted) =
                decode::<InventoryAdjusted>(&handle, &codec, record.payload.as_deref())
            else {
                return;
            };
            let (levels, problems) = &mut *sink;
            let level = levels.entry(adjusted.sku.clone()).or_default();
            match (adjusted.mode, adjusted.reason) {
                (AdjustmentMode::Delta, _) => *level += adjusted.quantity,
                (AdjustmentMode::Absolute, AdjustmentReason::Initial) if *level == 0 => {
                    *level = adjusted.quantity
                }
                _ => problems.push(format!(
                    "{}: an absolute adjustment after the start cannot be checked",
                    adjusted.sku
                )),
            }
        },
    )
    .await;
    let (levels, mut conservation_problems) =
        std::mem::take(&mut *levels.lock().expect("the levels' lock"));
    if let Err(e) = scanned {
        conservation_problems.push(e);
    }

    let started = Instant::now();
    loop {
        let codec = world.codec.clone();
        let handle = runtime.clone();
        let seen = std::sync::Arc::new(std::sync::Mutex::new((
            HashMap::<String, i64>::new(),
            Vec::<String>::new(),
            0usize,
        )));
        let sink = seen.clone();
        let scanned = scan(world, &[&world.topics.inventory_updated], move |record| {
            let mut sink = sink.lock().expect("the updates' lock");
            let (last, negative, count) = &mut *sink;
            *count += 1;
            match decode::<InventoryUpdated>(&handle, &codec, record.payload.as_deref()) {
                Ok(u) => {
                    if u.available_after < 0 || u.reserved_after < 0 {
                        negative.push(format!(
                            "{}: available {} reserved {} at {}[{}]@{}",
                            u.sku,
                            u.available_after,
                            u.reserved_after,
                            record.topic,
                            record.partition,
                            record.offset
                        ));
                    }
                    last.insert(u.sku, u.available_after);
                }
                Err(e) => negative.push(format!(
                    "{}[{}]@{} does not decode: {e}",
                    record.topic, record.partition, record.offset
                )),
            }
        })
        .await;
        let (last, mut negative, count) =
            std::mem::take(&mut *seen.lock().expect("the updates' lock"));
        if let Err(e) = scanned {
            negative.push(e);
        }
        totals.inventory_updates = count;
        let mut problems = conservation_problems.clone();
        for (sku, level) in &levels {
            let confirmed = outcomes.confirmed_units.get(sku).copied().unwrap_or(0);
            let expected = level - confirmed;
            let found = last.get(sku).copied().unwrap_or(*level);
            if found != expected {
                problems.push(format!(
                    "{sku}: {found} available, {expected} expected ({level} in - {confirmed} confirmed)"
                ));
            }
        }
        if problems.is_empty() || started.elapsed() > SETTLE_DEADLINE {
            let units: i64 = outcomes.confirmed_units.values().sum();
            return (
                Check::new(
                    "no negative stock in any InventoryUpdated",
                    &negative,
                    format!("{count} updates, none negative"),
                ),
                Check::new(
                    "units conserved per sku: initial + restocks - confirmed = final",
                    &problems,
                    format!(
                        "{} skus, {} units in, {units} confirmed",
                        levels.len(),
                        levels.values().sum::<i64>()
                    ),
                ),
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The dead-letter topic holds exactly the poison records.
async fn dead_letters(world: &World, poison: u64, totals: &mut Totals) -> Check {
    let keys = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = keys.clone();
    let scanned = scan(world, &[&world.topics.orders_dlq], move |record| {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        sink.lock().expect("the keys' lock").push(key);
    })
    .await;
    let keys = std::mem::take(&mut *keys.lock().expect("the keys' lock"));
    totals.dead_letters = keys.len();
    let mut problems: Vec<String> = keys
        .iter()
        .filter(|k| !k.starts_with("poison-") && !k.starts_with("SKU-POISON-"))
        .map(|k| format!("{k} was dead-lettered"))
        .collect();
    if keys.len() as u64 != poison {
        problems.push(format!(
            "{} dead letters, {poison} poison records sent",
            keys.len()
        ));
    }
    if let Err(e) = scanned {
        problems.push(e);
    }
    Check::new(
        "every poison record dead-lettered, nothing else",
        &problems,
        format!("{poison} poison records, {} dead letters", keys.len()),
    )
}

/// The processor's inventory: the last committed value of every sku in the inventory
/// store's changelog.
async fn processor_inventory(world: &World) -> Result<HashMap<String, (i64, i64)>, String> {
    let topology = processor::topology::describe(&world.application_id, &world.topics);
    let changelog = topology
        .changelog(processor::topology::INVENTORY_STORE)
        .ok_or("the inventory store has no changelog")?
        .to_owned();
    let stock = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let sink = stock.clone();
    scan(world, &[&changelog], move |record| {
        // Event-time keeps its merge buffer and holds beside the skus.
        let Some(sku) = record
            .key
            .as_deref()
            .and_then(|k| k.strip_prefix(keys::SKU_PREFIX.as_bytes()))
        else {
            return;
        };
        let sku = String::from_utf8_lossy(sku).into_owned();
        if let Some(value) = record
            .payload
            .as_deref()
            .and_then(|p| format::decode::<SkuRecord>(p).ok())
        {
            sink.lock()
                .expect("the stock's lock")
                .insert(sku, (value.available, value.reserved));
        }
    })
    .await?;
    Ok(std::mem::take(
        &mut *stock.lock().expect("the stock's lock"),
    ))
}

/// The read model shows the processor's state and the outcomes, within [`SETTLE_DEADLINE`].
async fn read_model(world: &World, outcomes: &Outcomes) -> Check {
    const NAME: &str = "the read model equals the topics (inventory and orders)";
    let inventory = match processor_inventory(world).await {
        Ok(inventory) => inventory,
        Err(e) => return Check::new(NAME, &[e], String::new()),
    };
    let pool = testkit::postgres::pool(&world.stack.database_url, &world.database_schema).await;
    let started = Instant::now();
    loop {
        let problems = read_model_differences(&pool, &inventory, outcomes).await;
        if problems.is_empty() || started.elapsed() > SETTLE_DEADLINE {
            return Check::new(
                NAME,
                &problems,
                format!(
                    "{} skus and {} orders match",
                    inventory.len(),
                    outcomes.orders.len()
                ),
            );
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn read_model_differences(
    pool: &sqlx::PgPool,
    inventory: &HashMap<String, (i64, i64)>,
    outcomes: &Outcomes,
) -> Vec<String> {
    let rows: Result<Vec<(String, i64, i64)>, _> =
        sqlx::query_as("SELECT sku, available, reserved FROM inventory")
            .fetch_all(pool)
            .await;
    let order_rows: Result<Vec<(String, String, Option<String>)>, _> =
        sqlx::query_as("SELECT order_id, status, reason FROM orders")
            .fetch_all(pool)
            .await;
    let (rows, order_rows) = match (rows, order_rows) {
        (Ok(rows), Ok(order_rows)) => (rows, order_rows),
        (Err(e), _) | (_, Err(e)) => return vec![format!("PostgreSQL: {e}")],
    };
    let in_pg: HashMap<String, (i64, i64)> =
        rows.into_iter().map(|(s, a, r)| (s, (a, r))).collect();
    let mut problems = Vec::new();
    for (sku, state) in inventory {
        if in_pg.get(sku) != Some(state) {
            problems.push(format!(
                "inventory {sku}: processor {state:?}, PostgreSQL {:?}",
                in_pg.get(sku)
            ));
        }
    }
    if in_pg.len() != inventory.len() {
        problems.push(format!(
            "{} inventory rows, {} skus in the processor",
            in_pg.len(),
            inventory.len()
        ));
    }
    let mut matched = 0;
    for (id, status, reason) in &order_rows {
        match outcomes.orders.get(id) {
            Some(d) if d.status == status && &d.reason == reason => matched += 1,
            Some(d) => problems.push(format!(
                "order {id}: outcome {} {:?}, PostgreSQL {status} {reason:?}",
                d.status, d.reason
            )),
            None => problems.push(format!("order {id} in PostgreSQL has no outcome")),
        }
    }
    if matched != outcomes.orders.len() {
        problems.push(format!(
            "{} orders decided, {matched} of them in PostgreSQL",
            outcomes.orders.len()
        ));
    }
    problems
}
