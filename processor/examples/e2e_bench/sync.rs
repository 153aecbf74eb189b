//! The read model's sync alone, without Kafka: its batched write against one upsert per
//! statement, and the sync loop fed decided orders at a fixed rate.

use std::time::{Duration, Instant};

use schemas::now_millis;
use testkit::unique;

use crate::setup::bench_schema;

/// Committed changes as the engine hands them to the sync: orders `first..first + n` (1-3
/// lines each, decided) of an orders task, or skus `first..first + n` of an inventory task.
fn bench_changes(
    store: &'static str,
    first: u64,
    n: u64,
    offset: i64,
) -> processor::runtime::store::Applied {
    use processor::runtime::store::Store;
    use processor::runtime::task::TaskId;
    use processor::topology::ORDERS_STORE;
    use processor::topology::inventory::{SkuRecord, keys};
    use processor::topology::order::{OrderRecord, OrderStatus};
    use schemas::OrderLine;

    let entries = (first..first + n)
        .map(|i| match store {
            ORDERS_STORE => (
                format!("bench-order-{i:08}").into_bytes(),
                Store::encode(&OrderRecord {
                    customer_id: format!("customer-{}", i % 5000),
                    currency: "EUR".into(),
                    created_at: now_millis(),
                    lines: (0..1 + i % 3)
                        .map(|l| OrderLine {
                            sku: format!("SKU-{:06}", (i + l) % 1000),
                            quantity: 1 + (l as i32),
                            unit_price_cents: 1999,
                        })
                        .collect(),
                    total_cents: 1999,
                    status: OrderStatus::Confirmed,
                    decided_at: Some(now_millis()),
                    time: Some(now_millis()),
                }),
            ),
            _ => (
                keys::sku(&format!("SKU-{:06}", i % 1000)).into_bytes(),
                Store::encode(&SkuRecord {
                    available: 100,
                    reserved: 5,
                    product_name: Some(format!("Product {i}")),
                    unit_price_cents: Some(1999),
                    updated_at: now_millis(),
                }),
            ),
        })
        .collect();
    let sub = if store == ORDERS_STORE { 0 } else { 1 };
    processor::runtime::store::Applied {
        task: TaskId { sub, partition: 0 },
        store,
        changelog_offset: offset,
        entries,
        committed_at: Instant::now(),
    }
}

/// The sync's write alone: `orders` orders of 1-3 lines and 1,000 skus, upserted by the
/// read model's batched write into a fresh schema; then the same rows again (every one refused
/// by the offset guard); and, as the baseline, the same upserts one row per statement for a
/// tenth of the orders. Returns (rows, seconds) for each.
pub async fn sync_write(database_url: &str, orders: u64) -> [(u64, f64); 3] {
    use processor::readmodel::Pending;
    use processor::readmodel::postgres::{CHUNK, Written, connect, write_in_chunks};
    use processor::topology::{INVENTORY_STORE, ORDERS_STORE};

    let batch = |n: u64, offset: i64| {
        let mut pending = Pending::default();
        pending.add(bench_changes(ORDERS_STORE, 0, n, offset));
        pending.add(bench_changes(INVENTORY_STORE, 0, 1000, offset));
        pending
    };
    let rows = |w: Written| w.inventory + w.orders + w.order_lines;

    let schema = bench_schema(&unique("sync-write"));
    let pool = connect(database_url, &schema)
        .await
        .expect("the read model");
    let pending = batch(orders, 10);
    let started = Instant::now();
    let written = write_in_chunks(&pool, &pending, CHUNK)
        .await
        .expect("writes");
    let batched = (rows(written), started.elapsed().as_secs_f64());
    let started = Instant::now();
    write_in_chunks(&pool, &pending, CHUNK)
        .await
        .expect("writes");
    let guarded = (batched.0, started.elapsed().as_secs_f64());

    let schema = bench_schema(&unique("sync-write-one-by-one"));
    let pool = connect(database_url, &schema)
        .await
        .expect("the read model");
    let pending = batch(orders / 10, 10);
    let started = Instant::now();
    let written = write_in_chunks(&pool, &pending, 1).await.expect("writes");
    let one_by_one = (rows(written), started.elapsed().as_secs_f64());
    [batched, guarded, one_by_one]
}

/// The sync loop itself at `rate` decided orders/s (1-3 lines each, every 100 ms a commit's
/// worth, plus the skus they touched) for `seconds`, with a 1 s sync interval: the largest
/// `stockflow_sync_lag_seconds` sampled, and the rows written per second.
pub async fn sync_lag_at(database_url: &str, rate: u64, seconds: u64) -> (f64, f64) {
    use processor::readmodel::postgres::{connect, run_sync};
    use processor::topology::{INVENTORY_STORE, ORDERS_STORE};

    let schema = bench_schema(&unique("sync-lag"));
    let pool = connect(database_url, &schema)
        .await
        .expect("the read model");
    let metrics = processor::metrics::Metrics::new(prometheus::Registry::new());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let sync = tokio::spawn(run_sync(
        pool,
        receiver,
        Duration::from_secs(1),
        metrics.clone(),
    ));
    let per_commit = rate / 10;
    let started = Instant::now();
    let mut max_lag: f64 = 0.0;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    for commit in 0..seconds * 10 {
        ticker.tick().await;
        let offset = commit as i64 * 10 + 10;
        let first = commit * per_commit;
        sender
            .send(bench_changes(ORDERS_STORE, first, per_commit, offset))
            .expect("the sync runs");
        sender
            .send(bench_changes(
                INVENTORY_STORE,
                first,
                per_commit.min(1000),
                offset,
            ))
            .expect("the sync runs");
        max_lag = max_lag.max(metrics.sync_lag_seconds.get());
    }
    while metrics.sync_lag_rows.get() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        max_lag = max_lag.max(metrics.sync_lag_seconds.get());
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(sender);
    sync.await.expect("the sync ends");
    let rows = metrics.sync_rows_written();
    (max_lag, rows as f64 / elapsed)
}
