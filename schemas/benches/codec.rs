//! Avro encode and decode of `OrderCreated` with the codec's own writer and reader (the path
//! every record takes once its schema id is known), through the offline codec: no registry,
//! so only the codec's work is measured.
//!
//! `cargo bench -p schemas --bench codec` (figures in BENCHMARKS.md, "Micro-benchmarks").

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schemas::events::samples;
use schemas::{Codec, OrderCreated, Topics};

fn codec(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let codec = Codec::offline(&Topics::default());
    let order = samples::order_with_lines(3);
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
