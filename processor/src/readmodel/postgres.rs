//! PostgreSQL: connecting and migrating at start, and the sync loop that upserts the
//! [`Pending`] rows every interval.
//!
//! One sync is one PostgreSQL transaction: `INSERT ... SELECT FROM UNNEST(...)` per table, in
//! chunks of [`CHUNK`] rows sorted by key (so two instances handing a task over never deadlock),
//! each `ON CONFLICT ... DO UPDATE ... WHERE <table>.source_offset < EXCLUDED.source_offset`.
//! A failed sync puts its rows back, counts an error and retries with a doubling backoff; the
//! engine never waits for it.

use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{InventoryRow, OrderRow, Pending};
use crate::metrics::Metrics;
use crate::runtime::store::Applied;

/// The read model's migrations (`migrations/` at the top of the repository).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Rows per statement.
pub const CHUNK: usize = 5_000;

/// The longest wait between retries while PostgreSQL is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long one sync may take before it counts as failed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the last sync at shutdown may keep trying.
const FINAL_SYNC_DEADLINE: Duration = Duration::from_secs(10);

/// Why the read model could not be prepared at start.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    #[error("invalid --database-url: {0}")]
    Url(sqlx::Error),
    #[error("PostgreSQL at {endpoint} is unreachable")]
    Connect {
        endpoint: String,
        source: sqlx::Error,
    },
    #[error("cannot create schema {schema} in PostgreSQL at {endpoint}")]
    Schema {
        schema: String,
        endpoint: String,
        source: sqlx::Error,
    },
    #[error("the read-model migrations failed in schema {schema} (PostgreSQL at {endpoint})")]
    Migrate {
        schema: String,
        endpoint: String,
        source: MigrateError,
    },
    #[error("cannot read or empty the read model in schema {schema} (PostgreSQL at {endpoint})")]
    Reset {
        schema: String,
        endpoint: String,
        source: sqlx::Error,
    },
}

/// One connection with `search_path = schema` (no pool; it creates nothing), its options and
/// the endpoint for messages. The connection is made at once so that an unreachable server is
/// reported with its own error (a pool only says it timed out).
async fn connect_one(
    url: &str,
    schema: &str,
) -> Result<(PgConnection, PgConnectOptions, String), ReadModelError> {
    let options = PgConnectOptions::from_str(url).map_err(ReadModelError::Url)?;
    let endpoint = endpoint_of(&options);
    let options = options
        .options([("search_path", schema)])
        .application_name("stockflow-processor");
    let connection = PgConnection::connect_with(&options)
        .await
        .map_err(|source| ReadModelError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
    Ok((connection, options, endpoint))
}

/// Whether PostgreSQL at `url` answers: connects once and disconnects. Creates nothing (the
/// processor checks every service this way before it creates its schema, topics and subjects).
pub async fn ping(url: &str, schema: &str) -> Result<(), ReadModelError> {
    let (connection, _, _) = connect_one(url, schema).await?;
    let _ = connection.close().await;
    Ok(())
}

/// The read model's tables (what `processor reset` empties).
pub const TABLES: [&str; 4] = ["inventory", "orders", "order_lines", "sync_progress"];

/// How many rows the read model in `schema` holds: `None` if it has no tables yet. Creates
/// nothing.
pub async fn row_count(url: &str, schema: &str) -> Result<Option<i64>, ReadModelError> {
    let (mut connection, _, endpoint) = connect_one(url, schema).await?;
    let failed = |source| ReadModelError::Reset {
        schema: schema.to_owned(),
        endpoint: endpoint.clone(),
        source,
    };
    let exists: bool = sqlx::query_scalar(
        "SELECT count(*) = $1 FROM information_schema.tables \
         WHERE table_schema::text = $2 AND table_name::text = ANY($3)",
    )
    .bind(TABLES.len() as i64)
    .bind(schema)
    .bind(&TABLES[..])
    .fetch_one(&mut connection)
    .await
    .map_err(failed)?;
    let rows = if exists {
        let counts = TABLES
            .map(|t| format!("(SELECT count(*) FROM {})", quote_identifier(t)))
            .join(" + ");
        let rows: i64 = sqlx::query_scalar(&format!("SELECT {counts}"))
            .fetch_one(&mut connection)
            .await
            .map_err(failed)?;
        Some(rows)
    } else {
        None
    };
    let _ = connection.close().await;
    Ok(rows)
}

/// Empties every read-model table in `schema` (one `TRUNCATE`), so that rows rebuilt from
/// recreated changelogs, whose offsets start again at 0, are not refused by the offset guard.
/// Creates the schema and tables first if they are missing.
pub async fn empty(url: &str, schema: &str) -> Result<(), ReadModelError> {
    let pool = connect(url, schema).await?;
    let tables = TABLES.map(quote_identifier).join(", ");
    let result = sqlx::query(&format!("TRUNCATE {tables}"))
        .execute(&pool)
        .await;
    pool.close().await;
    result.map(drop).map_err(|source| ReadModelError::Reset {
        schema: schema.to_owned(),
        endpoint: PgConnectOptions::from_str(url)
            .map_or_else(|_| url.to_owned(), |o| endpoint_of(&o)),
        source,
    })
}

/// `host:port/database`, for messages.
fn endpoint_of(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// Connects to PostgreSQL, creates `schema` if needed and applies the migrations there.
///
/// Every connection of the pool has `search_path = schema`, so the tables (and sqlx's own
/// `_sqlx_migrations`) live in it: one schema per application (or per test).
pub async fn connect(url: &str, schema: &str) -> Result<PgPool, ReadModelError> {
    let (mut first, options, endpoint) = connect_one(url, schema).await?;
    // `CREATE SCHEMA IF NOT EXISTS` is not safe against a concurrent one (two instances
    // starting together): the loser fails on pg_namespace's unique index. A transaction-scoped
    // advisory lock makes them take turns.
    let created = async {
        let mut tx = first.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('stockflow: create schema'))")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_identifier(schema)
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    created.await.map_err(|source| ReadModelError::Schema {
        schema: schema.to_owned(),
        endpoint: endpoint.clone(),
        source,
    })?;
    let _ = first.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| ReadModelError::Migrate {
            schema: schema.to_owned(),
            endpoint,
            source,
        })?;
    Ok(pool)
}

/// `"name"`, with embedded quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Rows written by one sync, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub inventory: u64,
    pub orders: u64,
    pub order_lines: u64,
}

/// Upserts `batch` in one transaction. Rows older than what a table holds are left alone.
pub async fn write(pool: &PgPool, batch: &Pending) -> Result<Written, sqlx::Error> {
    write_in_chunks(pool, batch, CHUNK).await
}

/// [`write`] with `rows_per_statement` (the benchmark compares it with one row per statement).
pub async fn write_in_chunks(
    pool: &PgPool,
    batch: &Pending,
    rows_per_statement: usize,
) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut written = Written::default();

    let mut inventory: Vec<&InventoryRow> = batch.inventory.values().collect();
    inventory.sort_unstable_by(|a, b| a.sku.cmp(&b.sku));
    for chunk in inventory.chunks(rows_per_statement) {
        written.inventory += upsert_inventory(&mut tx, chunk).await?;
    }

    let mut orders: Vec<&OrderRow> = batch.orders.values().collect();
    orders.sort_unstable_by(|a, b| a.order_id.cmp(&b.order_id));
    for chunk in orders.chunks(rows_per_statement) {
        written.orders += upsert_orders(&mut tx, chunk).await?;
        written.order_lines += insert_lines(&mut tx, chunk).await?;
    }

    let mut progress: Vec<_> = batch.progress.iter().collect();
    progress.sort_unstable();
    sqlx::query(
        "INSERT INTO sync_progress AS t (task, store, source_partition, source_offset)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[])
         ON CONFLICT (task) DO UPDATE SET
             source_offset = EXCLUDED.source_offset, synced_at = now()
         WHERE t.source_offset <= EXCLUDED.source_offset",
    )
    .bind(column(&progress, |((task, _), _)| task.to_string()))
    .bind(column(&progress, |((_, store), _)| store.to_string()))
    .bind(column(&progress, |((task, _), _)| task.partition))
    .bind(column(&progress, |(_, offset)| **offset))
    .execute(&mut *tx)
    .await?;

    tx.commit().await?;
    Ok(written)
}

/// One column of `rows`, as the array UNNEST takes.
fn column<R, T>(rows: &[R], value: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

fn timestamp(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

async fn upsert_inventory(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&InventoryRow],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO inventory AS t (sku, available, reserved, product_name, unit_price_cents,
                                     updated_at, source_partition, source_offset)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[],
                              $6::timestamptz[], $7::int4[], $8::int8[])
         ON CONFLICT (sku) DO UPDATE SET
             available = EXCLUDED.available,
             reserved = EXCLUDED.reserved,
             product_name = EXCLUDED.product_name,
             unit_price_cents = EXCLUDED.unit_price_cents,
             updated_at = EXCLUDED.updated_at,
             source_partition = EXCLUDED.source_partition,
             source_offset = EXCLUDED.source_offset,
             synced_at = now()
         WHERE t.source_offset < EXCLUDED.source_offset",
    )
    .bind(column(rows, |r| r.sku.as_str()))
    .bind(column(rows, |r| r.record.available))
    .bind(column(rows, |r| r.record.reserved))
    .bind(column(rows, |r| r.record.product_name.as_deref()))
    .bind(column(rows, |r| r.record.unit_price_cents))
    .bind(column(rows, |r| timestamp(r.record.updated_at)))
    .bind(column(rows, |r| r.source.partition))
    .bind(column(rows, |r| r.source.offset))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

async fn upsert_orders(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&OrderRow],
) -> Result<u64, sqlx::Error> {
    let reasons: Vec<_> = rows.iter().map(|r| r.reason()).collect();
    let done = sqlx::query(
        "INSERT INTO orders AS t (order_id, customer_id, status, reason, message, total_cents,
                                  currency, created_at, decided_at, source_partition, source_offset)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::int8[], $7::text[], $8::timestamptz[], $9::timestamptz[],
                              $10::int4[], $11::int8[])
         ON CONFLICT (order_id) DO UPDATE SET
             customer_id = EXCLUDED.customer_id,
             status = EXCLUDED.status,
             reason = EXCLUDED.reason,
             message = EXCLUDED.message,
             total_cents = EXCLUDED.total_cents,
             currency = EXCLUDED.currency,
             created_at = EXCLUDED.created_at,
             decided_at = EXCLUDED.decided_at,
             source_partition = EXCLUDED.source_partition,
             source_offset = EXCLUDED.source_offset,
             synced_at = now()
         WHERE t.source_offset < EXCLUDED.source_offset",
    )
    .bind(column(rows, |r| r.order_id.as_str()))
    .bind(column(rows, |r| r.record.customer_id.as_str()))
    .bind(column(rows, |r| r.status()))
    .bind(column(&reasons, |(reason, _)| *reason))
    .bind(column(&reasons, |(_, message)| *message))
    .bind(column(rows, |r| r.record.total_cents))
    .bind(column(rows, |r| r.record.currency.as_str()))
    .bind(column(rows, |r| timestamp(r.record.created_at)))
    .bind(column(rows, |r| timestamp(r.decided_at)))
    .bind(column(rows, |r| r.source.partition))
    .bind(column(rows, |r| r.source.offset))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// An order's lines never change: each is inserted once.
async fn insert_lines(
    tx: &mut Transaction<'_, Postgres>,
    orders: &[&OrderRow],
) -> Result<u64, sqlx::Error> {
    let lines: Vec<(&str, i32, &schemas::OrderLine)> = orders
        .iter()
        .flat_map(|o| {
            o.record
                .lines
                .iter()
                .enumerate()
                .map(|(i, line)| (o.order_id.as_str(), i as i32, line))
        })
        .collect();
    let done = sqlx::query(
        "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_cents)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::int4[], $5::int8[])
         ON CONFLICT (order_id, line_no) DO NOTHING",
    )
    .bind(column(&lines, |(id, _, _)| *id))
    .bind(column(&lines, |(_, no, _)| *no))
    .bind(column(&lines, |(_, _, l)| l.sku.as_str()))
    .bind(column(&lines, |(_, _, l)| l.quantity))
    .bind(column(&lines, |(_, _, l)| l.unit_price_cents))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// The retry schedule while syncs fail: the interval, doubling up to [`MAX_BACKOFF`].
#[derive(Debug)]
struct Backoff {
    base: Duration,
    failures: u32,
    next_attempt: Option<Instant>,
}

impl Backoff {
    fn new(base: Duration) -> Self {
        Self {
            base,
            failures: 0,
            next_attempt: None,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|at| now >= at)
    }

    /// Records a failure; returns the wait before the next attempt.
    fn failed(&mut self, now: Instant) -> Duration {
        self.failures += 1;
        let wait = self
            .base
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF);
        self.next_attempt = Some(now + wait);
        wait
    }

    /// Records a success; returns how many failures preceded it.
    fn succeeded(&mut self) -> u32 {
        self.next_attempt = None;
        std::mem::take(&mut self.failures)
    }
}

/// The sync loop: takes in the engine's changes as they come, and every `interval` upserts
/// what is pending. It ends when the engine drops its end of `changes` (after its last
/// commit), with one last sync that may retry for [`FINAL_SYNC_DEADLINE`].
pub async fn run_sync(
    pool: PgPool,
    mut changes: UnboundedReceiver<Applied>,
    interval: Duration,
    metrics: Metrics,
) {
    let mut pending = Pending::default();
    let mut backoff = Backoff::new(interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = changes.recv() => match received {
                Some(received) => {
                    take_in(&mut pending, received, &metrics);
                    continue;
                }
                None => break,
            },
            _ = ticker.tick() => {}
        }
        while let Ok(received) = changes.try_recv() {
            take_in(&mut pending, received, &metrics);
        }
        report_lag(&pending, &metrics);
        if !pending.is_empty() && backoff.due(Instant::now()) {
            sync_once(&pool, &mut pending, &mut backoff, &metrics).await;
            report_lag(&pending, &metrics);
        }
    }
    // The engine has committed for the last time: sync what is left, retrying for a while.
    let deadline = Instant::now() + FINAL_SYNC_DEADLINE;
    while !pending.is_empty() {
        if sync_once(&pool, &mut pending, &mut backoff, &metrics).await {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                rows = pending.rows(),
                "PostgreSQL is unreachable at shutdown: the read model catches up when the \
                 processor starts again (each task re-syncs what it owns on assignment)"
            );
            break;
        }
        tokio::time::sleep(interval.min(Duration::from_secs(1))).await;
    }
    report_lag(&pending, &metrics);
    pool.close().await;
}

fn take_in(pending: &mut Pending, changes: Applied, metrics: &Metrics) {
    for corrupt in pending.add(changes) {
        // A broken invariant of the store, not of the read model: the row is left out and
        // counted, and the sync goes on with the others.
        tracing::error!(error = %corrupt, "a store value does not decode; its row is not synced");
        metrics.sync_errors.inc();
    }
}

fn report_lag(pending: &Pending, metrics: &Metrics) {
    metrics.sync_lag_rows.set(pending.rows() as i64);
    metrics.sync_lag_seconds.set(
        pending
            .oldest
            .filter(|_| pending.rows() > 0)
            .map_or(0.0, |oldest| oldest.elapsed().as_secs_f64()),
    );
}

/// One sync: true if everything pending was written.
async fn sync_once(
    pool: &PgPool,
    pending: &mut Pending,
    backoff: &mut Backoff,
    metrics: &Metrics,
) -> bool {
    let batch = pending.take();
    let started = Instant::now();
    let result = match tokio::time::timeout(SYNC_TIMEOUT, write(pool, &batch)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("timed out after {SYNC_TIMEOUT:?}")),
    };
    match result {
        Ok(written) => {
            let elapsed = started.elapsed();
            metrics.sync_duration.observe(elapsed.as_secs_f64());
            for (table, rows) in [
                ("inventory", written.inventory),
                ("orders", written.orders),
                ("order_lines", written.order_lines),
            ] {
                metrics.sync_rows.with_label_values(&[table]).inc_by(rows);
            }
            let failures = backoff.succeeded();
            if failures > 0 {
                tracing::info!(
                    failures,
                    rows = batch.rows(),
                    "PostgreSQL is back: the read model caught up"
                );
            }
            tracing::debug!(
                rows = batch.rows(),
                elapsed_ms = elapsed.as_millis() as u64,
                "synced"
            );
            true
        }
        Err(error) => {
            metrics.sync_errors.inc();
            let retry_in = backoff.failed(Instant::now());
            tracing::warn!(
                %error,
                rows = batch.rows(),
                retry_in_ms = retry_in.as_millis() as u64,
                "sync to PostgreSQL failed; stream processing goes on, the sync retries"
            );
            pending.restore(batch);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_ceiling_and_resets_on_success() {
        let now = Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(1));
        assert!(backoff.due(now));
        assert_eq!(backoff.failed(now), Duration::from_secs(2));
        assert!(!backoff.due(now));
        assert!(backoff.due(now + Duration::from_secs(2)));
        assert_eq!(backoff.failed(now), Duration::from_secs(4));
        for _ in 0..10 {
            backoff.failed(now);
        }
        assert_eq!(backoff.failed(now), MAX_BACKOFF);
        assert_eq!(backoff.succeeded(), 13);
        assert!(backoff.due(now));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("read_model"), "\"read_model\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
