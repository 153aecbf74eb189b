//! Every metric the processor exports, in one place: names and labels are constants,
//! registered once on an explicit [`Registry`] that is passed in (tests get a fresh one).
//! Labels are low-cardinality only: topic, partition, outcome, reason, kind, table; never a
//! sku or an order id.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every `outcome`, `reason` pair of `stockflow_order_outcomes_total`.
pub const ORDER_OUTCOMES: [(&str, &str); 4] = [
    ("confirmed", "none"),
    ("rejected", "insufficient_stock"),
    ("rejected", "unknown_sku"),
    ("rejected", "invalid_order"),
];
/// Every `outcome` of `stockflow_transactions_total`: `indefinite` is a commit whose outcome
/// was unknown, after which every task started again from what the broker had.
pub const TRANSACTION_OUTCOMES: [&str; 3] = ["committed", "aborted", "indefinite"];
/// Every `table` of `stockflow_sync_rows_total`: the read model's tables.
pub const SYNC_TABLES: [&str; 3] = ["inventory", "orders", "order_lines"];
/// Every `kind` of `stockflow_rebalances_total`.
pub const REBALANCE_KINDS: [&str; 2] = ["assigned", "revoked"];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The processor's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Records read from each input partition.
    pub records_consumed: IntCounterVec,
    /// Records written to each output, internal and changelog topic.
    pub records_produced: IntCounterVec,
    /// Orders decided, by outcome (`confirmed`, `rejected`) and reason.
    pub order_outcomes: IntCounterVec,
    /// Orders whose id had been seen before.
    pub duplicate_orders: IntCounter,
    /// Orders read on a partition other than their id's, re-produced to their id's partition.
    pub rerouted_orders: IntCounter,
    /// Decided orders removed from the `orders` store once their retention passed.
    pub expired_orders: IntCounter,
    /// Event-time mode: input records that arrived after their partition's time had moved
    /// past their timestamp because the partition was idle (decided where they arrived).
    pub late_records: IntCounter,
    /// Event-time mode: reserves and adjustments that waited for other orders' holds.
    pub waits: IntCounter,
    /// Records whose processing failed for a reason that may pass (the registry was down), so
    /// that their partition was paused and the record will be taken again.
    pub processing_retries: IntCounter,
    /// Source partitions paused until such a retry.
    pub paused_partitions: IntGauge,
    /// Records sent to the dead-letter topic, by source topic.
    pub dlq_records: IntCounterVec,
    /// Time to process one polled record, decode to outputs.
    pub processing_latency: Histogram,
    /// From an order's `created_at` to the moment its outcome is produced.
    pub order_e2e_latency: Histogram,
    /// From a commit's start to its end (the engine processes meanwhile).
    pub commit_latency: Histogram,
    /// Transactions (or at-least-once commits), by outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Rebalances, by kind (`assigned`, `revoked`).
    pub rebalances: IntCounterVec,
    /// Tasks this instance owns.
    pub assigned_tasks: IntGauge,
    /// Changelog records replayed into local state.
    pub restored_records: IntCounter,
    /// Changelog records still to replay.
    pub restore_remaining: IntGauge,
    /// Records between the consumer's position and the end of each input partition.
    pub consumer_lag: IntGaugeVec,
    pub rocksdb_block_cache_usage: IntGauge,
    pub rocksdb_memtable_usage: IntGauge,
    /// Rows written to PostgreSQL, by table.
    pub sync_rows: IntCounterVec,
    pub sync_duration: Histogram,
    /// Age of the oldest change not yet in PostgreSQL.
    pub sync_lag_seconds: Gauge,
    /// Changes not yet in PostgreSQL.
    pub sync_lag_rows: IntGauge,
    pub sync_errors: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("invariant: valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("invariant: each metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("invariant: valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("invariant: each metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("invariant: valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("invariant: each metric registered once");
    metric
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let metric = Gauge::new(name, help).expect("invariant: valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("invariant: each metric registered once");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let metric = Histogram::with_opts(opts).expect("invariant: valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("invariant: each metric registered once");
    metric
}

impl Metrics {
    /// Registers every metric on `registry`, plus the process collector (CPU, RSS).
    pub fn new(registry: Registry) -> Self {
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let r = &registry;
        let lag = IntGaugeVec::new(
            Opts::new(
                "stockflow_consumer_lag_records",
                "Records between position and end, per input partition.",
            ),
            &["topic", "partition"],
        )
        .expect("invariant: valid metric definition");
        r.register(Box::new(lag.clone()))
            .expect("invariant: each metric registered once");
        Self {
            records_consumed: counter_vec(
                r,
                "stockflow_records_consumed_total",
                "Records read, per input partition.",
                &["topic", "partition"],
            ),
            records_produced: counter_vec(
                r,
                "stockflow_records_produced_total",
                "Records written, per topic.",
                &["topic"],
            ),
            order_outcomes: counter_vec(
                r,
                "stockflow_order_outcomes_total",
                "Orders decided.",
                &["outcome", "reason"],
            ),
            duplicate_orders: counter(
                r,
                "stockflow_duplicate_orders_total",
                "Orders whose id was seen before.",
            ),
            rerouted_orders: counter(
                r,
                "stockflow_rerouted_orders_total",
                "Orders read on a partition other than their id's (a producer that did not key orders by order id), re-produced to their id's partition.",
            ),
            expired_orders: counter(
                r,
                "stockflow_expired_orders_total",
                "Decided orders removed from the orders store once their retention passed.",
            ),
            late_records: counter(
                r,
                "stockflow_late_records_total",
                "Records that arrived after their idle partition's time passed their timestamp.",
            ),
            waits: counter(
                r,
                "stockflow_hold_waits_total",
                "Reserves and adjustments that waited for earlier orders' holds to settle.",
            ),
            dlq_records: counter_vec(
                r,
                "stockflow_dlq_records_total",
                "Records dead-lettered, per source topic.",
                &["topic"],
            ),
            processing_latency: histogram(
                r,
                "stockflow_processing_latency_seconds",
                "Time to process one record.",
            ),
            processing_retries: counter(
                r,
                "stockflow_processing_retries_total",
                "Records that could not be processed for a reason that may pass (the schema registry was unreachable): their partition was paused, the record is taken again after a backoff.",
            ),
            paused_partitions: gauge(
                r,
                "stockflow_paused_partitions",
                "Source partitions paused until a retry (the other partitions go on).",
            ),
            order_e2e_latency: histogram(
                r,
                "stockflow_order_e2e_latency_seconds",
                "Order created_at to outcome produced.",
            ),
            commit_latency: histogram(
                r,
                "stockflow_commit_latency_seconds",
                "From a commit's start to its end: outputs acknowledged, offsets and transaction committed, state handed to the store writer (the engine processes the next records meanwhile).",
            ),
            transactions: counter_vec(
                r,
                "stockflow_transactions_total",
                "Commits, by outcome.",
                &["outcome"],
            ),
            rebalances: counter_vec(
                r,
                "stockflow_rebalances_total",
                "Rebalances, by kind.",
                &["kind"],
            ),
            assigned_tasks: gauge(
                r,
                "stockflow_assigned_tasks",
                "Tasks owned by this instance.",
            ),
            restored_records: counter(
                r,
                "stockflow_restored_records_total",
                "Changelog records restored.",
            ),
            restore_remaining: gauge(
                r,
                "stockflow_restore_remaining_records",
                "Changelog records left to restore.",
            ),
            consumer_lag: lag,
            rocksdb_block_cache_usage: gauge(
                r,
                "stockflow_rocksdb_block_cache_usage_bytes",
                "Shared RocksDB block cache usage.",
            ),
            rocksdb_memtable_usage: gauge(
                r,
                "stockflow_rocksdb_memtable_usage_bytes",
                "Shared RocksDB write buffer usage.",
            ),
            sync_rows: counter_vec(
                r,
                "stockflow_sync_rows_total",
                "Rows upserted into PostgreSQL, per table.",
                &["table"],
            ),
            sync_duration: histogram(
                r,
                "stockflow_sync_duration_seconds",
                "Duration of one sync to PostgreSQL.",
            ),
            sync_lag_seconds: float_gauge(
                r,
                "stockflow_sync_lag_seconds",
                "Age of the oldest change not yet synced.",
            ),
            sync_lag_rows: gauge(r, "stockflow_sync_lag_rows", "Changes not yet synced."),
            sync_errors: counter(r, "stockflow_sync_errors_total", "Failed syncs."),
            registry,
        }
    }

    /// Exports every known label combination at zero from the start, so dashboards show a
    /// flat line rather than no data before the first event of a kind.
    pub fn initialize_labels(&self, input_topics: &[&str]) {
        for (outcome, reason) in ORDER_OUTCOMES {
            self.order_outcomes.with_label_values(&[outcome, reason]);
        }
        for outcome in TRANSACTION_OUTCOMES {
            self.transactions.with_label_values(&[outcome]);
        }
        for table in SYNC_TABLES {
            self.sync_rows.with_label_values(&[table]);
        }
        for kind in REBALANCE_KINDS {
            self.rebalances.with_label_values(&[kind]);
        }
        for topic in input_topics {
            self.dlq_records.with_label_values(&[topic]);
        }
    }

    /// Orders decided so far, every outcome and reason.
    pub fn orders_decided(&self) -> u64 {
        ORDER_OUTCOMES
            .iter()
            .map(|&(outcome, reason)| {
                self.order_outcomes
                    .with_label_values(&[outcome, reason])
                    .get()
            })
            .sum()
    }

    /// Rows written to the read model so far, every table.
    pub fn sync_rows_written(&self) -> u64 {
        SYNC_TABLES
            .iter()
            .map(|&table| self.sync_rows.with_label_values(&[table]).get())
            .sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buffer = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("invariant: text encoding of gathered metrics cannot fail");
        String::from_utf8(buffer).expect("invariant: the text format is UTF-8")
    }
}
