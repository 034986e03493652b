//! Chunk + hash throughput per profile, and the in-memory index insert rate
//! for 4 KiB pages. Baseline in the same run: BLAKE3 alone over the buffer
//! (the floor any profile pays) — compare each profile to it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use strato::store::chunker::{Chunker, Piece, ProfileChoice};
use strato::store::id::ChunkId;
use strato::store::index::{ChunkIndex, Loc};

fn data(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(1).fill(&mut v[..]);
    v
}

/// Under `cargo test --all-targets` (no `--bench`) benches run once each:
/// keep the inputs small there.
fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn chunk_and_hash(c: &mut Criterion) {
    let buf = data(if benching() { 64 << 20 } else { 1 << 20 });
    let mut g = c.benchmark_group("chunk+hash");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.sample_size(10);
    g.bench_function("baseline: blake3 over 64 KiB blocks", |b| {
        b.iter(|| {
            buf.chunks(65536)
                .map(|c| ChunkId::of(c).0[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    for profile in [
        "block:16384",
        "block:65536",
        "cdc:16384:65536:262144",
        "fixed:4096",
        "fixed:65536",
    ] {
        let choice: ProfileChoice = profile.parse().unwrap();
        g.bench_with_input(
            BenchmarkId::from_parameter(profile),
            &choice,
            |b, choice| {
                b.iter(|| {
                    let mut ch = Chunker::new(*choice);
                    let mut out = Vec::new();
                    let mut n = 0u8;
                    for part in buf.chunks(1 << 20) {
                        ch.feed(part, &mut out);
                        for p in out.drain(..) {
                            if let Piece::Data(d) = p {
                                n ^= ChunkId::of(&d).0[0];
                            }
                        }
                    }
                    ch.finish(&mut out);
                    n
                })
            },
        );
    }
    g.finish();
}

fn index_inserts(c: &mut Criterion) {
    // 1 Mi page ids = 4 GiB of 4 KiB pages
    let n: usize = if benching() { 1 << 20 } else { 1 << 12 };
    let ids: Vec<ChunkId> = (0..n as u64)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("insert page ids (batches of 256)", |b| {
        b.iter(|| {
            let idx = ChunkIndex::default();
            for (k, batch) in ids.chunks(256).enumerate() {
                idx.insert_many(batch.iter().enumerate().map(|(i, id)| {
                    (
                        *id,
                        Loc {
                            segment: 1,
                            len: 4096,
                            offset: ((k * 256 + i) as u64) * 4144,
                        },
                    )
                }));
            }
            idx.len()
        })
    });
    g.finish();
}

criterion_group!(benches, chunk_and_hash, index_inserts);
criterion_main!(benches);
