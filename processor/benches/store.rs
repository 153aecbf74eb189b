//! A task's store in a temporary directory: an uncommitted write, and reads served by the
//! pending layer, the committing layer and RocksDB (a hit, and a miss the bloom filter
//! answers). RocksDB is filled beforehand through the `rocksdb` crate itself, as a restore
//! would leave it, so the benchmark needs no Kafka.
//!
//! `cargo bench -p processor --bench store` (figures in BENCHMARKS.md, "Micro-benchmarks").

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use processor::runtime::store::{SharedMemory, Store};

/// Keys in RocksDB, and distinct keys written to the pending layer.
const KEYS: usize = 100_000;

fn key(i: usize) -> Vec<u8> {
    format!("s/SKU-{i:06}").into_bytes()
}

/// A value the size of an encoded sku record.
fn value(i: usize) -> Vec<u8> {
    format!("{i:032}").into_bytes()
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("0_0");
    {
        let db = rocksdb::DB::open_default(&path).expect("a RocksDB");
        for i in 0..KEYS {
            db.put(key(i), value(i)).expect("put");
        }
        db.flush().expect("flush");
    }
    let memory = SharedMemory::new(64 << 20);
    let mut store = Store::open(&path, &memory).expect("opens the store");
    // Built beforehand: a write takes its key and value by value, so each iteration clones
    // one of them (as the engine hands over a new buffer per record).
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let values: Vec<Vec<u8>> = (0..KEYS).map(value).collect();

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));

    let mut i = 0;
    group.bench_function("write (pending layer)", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            store.write(keys[i].clone(), Some(values[i].clone()));
        })
    });
    store.rollback();

    for i in 0..1_000 {
        store.write(keys[i].clone(), Some(values[i].clone()));
    }
    let pending = &keys[500];
    group.bench_function("get (pending layer)", |b| {
        b.iter(|| store.get(black_box(pending)).expect("reads"))
    });
    store.freeze();
    group.bench_function("get (committing layer)", |b| {
        b.iter(|| store.get(black_box(pending)).expect("reads"))
    });
    store.rollback();

    let mut i = 0;
    group.bench_function("get (RocksDB, hit)", |b| {
        b.iter(|| {
            i = (i + 7_919) % KEYS;
            store.get(black_box(&keys[i])).expect("reads")
        })
    });
    let absent = b"s/SKU-NOT-THERE".to_vec();
    group.bench_function("get (RocksDB, miss)", |b| {
        b.iter(|| store.get(black_box(&absent)).expect("reads"))
    });
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
