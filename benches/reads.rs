//! 64 KiB random ranged reads through the store vs `pread` on the same bytes
//! kept as a plain file, in one run (both from the page cache).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::Cursor;
use std::os::unix::fs::FileExt;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use strato::store::{Store, StoreConfig};

const RANGE: u64 = 64 << 10;

fn ranged_reads(c: &mut Criterion) {
    // Under `cargo test --all-targets` (no `--bench`) run on a small object.
    let benching = std::env::args().any(|a| a == "--bench");
    let size: usize = if benching { 256 << 20 } else { 4 << 20 };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(9).fill(&mut data[..]);
    let plain = dir.path().join("plain.bin");
    std::fs::write(&plain, &data).expect("write");
    let file = std::fs::File::open(&plain).expect("open");
    let mut g = c.benchmark_group("64 KiB random ranged reads");
    g.throughput(Throughput::Bytes(RANGE));
    let offsets: Vec<u64> = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        (0..4096)
            .map(|_| rng.gen_range(0..size as u64 - RANGE))
            .collect()
    };
    let mut buf = vec![0u8; RANGE as usize];
    let mut i = 0;
    g.bench_function("baseline: pread on the plain file", |b| {
        b.iter(|| {
            i = (i + 1) % offsets.len();
            file.read_exact_at(&mut buf, offsets[i]).expect("read");
            buf[0]
        })
    });
    for (profile, verify) in [
        ("cdc", true),
        ("block", true),
        ("fixed:65536", true),
        ("cdc", false),
    ] {
        let sdir = dir.path().join(format!("store-{profile}-{verify}"));
        let store = Store::open(
            &sdir,
            StoreConfig {
                verify_reads: verify,
                ..Default::default()
            },
        )
        .expect("store");
        store.create_bucket("bench", "me").expect("bucket");
        store
            .put_reader(
                "bench",
                "o",
                Cursor::new(&data),
                profile.parse().expect("profile"),
                vec![],
                |_| {},
            )
            .expect("put");
        let name = format!(
            "store, {profile}, {}",
            if verify { "verified" } else { "unverified" }
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % offsets.len();
                let mut n = 0;
                for piece in store
                    .read("bench", "o", Some(offsets[i]..offsets[i] + RANGE))
                    .expect("read")
                {
                    n += piece.expect("piece").len();
                }
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ranged_reads);
criterion_main!(benches);
