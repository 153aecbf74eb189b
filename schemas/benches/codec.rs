//! Avro encode and decode of `OrderCreated` with the codec's own writer and reader (the path
//! every record takes once its schema id is known), through the offline codec: no registry,
//! so only the codec's work is measured.
//!
//! `cargo bench -p schemas --bench codec` (figures in BENCHMARKS.md, "Micro-benchmarks").

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schemas::{Codec, OrderCreated, OrderLine, Topics};

/// A 3-line order, as the generator makes them.
fn order() -> OrderCreated {
    OrderCreated {
        order_id: "order-42-0000001187".into(),
        customer_id: "customer-00042".into(),
        created_at: 1_764_000_000_000,
        currency: "EUR".into(),
        lines: (0..3)
            .map(|i| OrderLine {
                sku: format!("SKU-{i:06}"),
                quantity: 1 + i,
                unit_price_cents: 1999,
            })
            .collect(),
    }
}

fn codec(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let codec = Codec::offline(&Topics::default());
    let order = order();
    let bytes = runtime
        .block_on(codec.encode(&order))
        .expect("encodes offline");

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode OrderCreated (3 lines)", |b| {
        b.iter(|| runtime.block_on(codec.encode(black_box(&order))))
    });
    group.bench_function("decode OrderCreated (3 lines)", |b| {
        b.iter(|| runtime.block_on(codec.decode::<OrderCreated>(black_box(&bytes))))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
