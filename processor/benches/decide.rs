//! The pure rules on a 3-line order: the order task taking it in (`on_order_created`), the
//! order task deciding it on its last line result (`on_line_result`), and the inventory task
//! reserving a line (`on_command`). No Kafka, no store: only the decisions.
//!
//! `cargo bench -p processor --bench decide` (figures in BENCHMARKS.md, "Micro-benchmarks").

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use processor::topology::inventory::{SkuRecord, on_command};
use processor::topology::order::{OrderRecord, on_line_result, on_order_created};
use processor::topology::{LineCommand, LineOutcome, LineResult};
use schemas::OrderCreated;
use schemas::events::samples;

const NOW: i64 = 1_764_000_000_000;

/// The 3-line order of every benchmark here.
fn order() -> OrderCreated {
    samples::order_with_lines(3)
}

fn result(line: u32) -> LineResult {
    LineResult {
        order_id: order().order_id,
        line,
        outcome: LineOutcome::Reserved,
    }
}

/// The order's record with lines 0 and 1 answered: the next result decides it.
fn waiting_for_last_line() -> OrderRecord {
    let mut record = on_order_created(None, order(), NOW, NOW)
        .record
        .expect("a valid order is recorded");
    for line in 0..2 {
        record = on_line_result(Some(record), result(line), NOW)
            .record
            .expect("still pending");
    }
    record
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));

    let created = order();
    group.bench_function("on_order_created (3 lines)", |b| {
        b.iter_batched(
            || created.clone(),
            |order| on_order_created(None, black_box(order), NOW, NOW),
            criterion::BatchSize::SmallInput,
        )
    });

    let pending = waiting_for_last_line();
    let decided = on_line_result(Some(pending.clone()), result(2), NOW);
    assert!(
        decided.outcome.is_some(),
        "the last result decides the order"
    );
    group.bench_function("on_line_result (last of 3, confirms)", |b| {
        b.iter_batched(
            || (pending.clone(), result(2)),
            |(record, result)| on_line_result(Some(record), black_box(result), NOW),
            criterion::BatchSize::SmallInput,
        )
    });

    let stock = SkuRecord {
        available: 1_000,
        reserved: 10,
        product_name: Some("Bluetooth Mouse".into()),
        unit_price_cents: Some(1525),
        updated_at: NOW,
    };
    let reserve = LineCommand::Reserve {
        order_id: created.order_id.clone(),
        line: 2,
        sku: "SKU-000002".into(),
        quantity: 3,
    };
    group.bench_function("on_command (reserve a line)", |b| {
        b.iter_batched(
            || reserve.clone(),
            |command| on_command(Some(black_box(&stock)), None, command, NOW),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
