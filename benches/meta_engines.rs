//! redb vs sled behind the MetaStore trait, same workload in one run:
//! inserts (batched transactions, as manifest commits do, and one key per
//! transaction), point gets, space on disk relative to the raw key/value
//! bytes, and time to reopen. Prints a table; run with
//! `cargo bench --bench meta_engines` (STRATO_BENCH_KEYS to change the size).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Instant;

use rand::{Rng, SeedableRng};
use strato::store::meta::{self, Engine, Table};

fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::metadata(p) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(std::result::Result::ok)
                .map(|e| dir_size(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`:
    // then only check that the workload runs, on a tiny size.
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("STRATO_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 500_000 } else { 2_000 });
    let singles = (n / 50).max(100);
    let keys: Vec<[u8; 32]> = (0..n as u64)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    let value = [7u8; 24]; // about a ChunkState record
    let raw = (n + singles) as f64 * (33.0 + value.len() as f64);
    println!("{n} keys of 32 bytes with 24-byte values (chunk-state records), plus {singles} single-key commits");
    println!(
        "{:<6} {:>16} {:>18} {:>12} {:>10} {:>10}",
        "engine", "batched ins/s", "1-key commits/s", "gets/s", "space", "reopen"
    );
    for engine in [Engine::Redb, Engine::Sled] {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = meta::open(engine, None, dir.path()).expect("open");
        let t = Instant::now();
        for batch in keys.chunks(1000) {
            m.write(&mut |tx| {
                for k in batch {
                    tx.put(Table::Chunks, k, &value)?;
                }
                Ok(())
            })
            .expect("write");
        }
        let batched = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in 0..singles as u64 {
            let k = *blake3::hash(&(u64::MAX - i).to_le_bytes()).as_bytes();
            m.write(&mut |tx| tx.put(Table::Chunks, &k, &value))
                .expect("write");
        }
        let single = singles as f64 / t.elapsed().as_secs_f64();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let gets = 200_000.min(n * 2);
        let t = Instant::now();
        let mut found = 0;
        for _ in 0..gets {
            let k = &keys[rng.gen_range(0..n)];
            found += m.get(Table::Chunks, k).expect("get").is_some() as usize;
        }
        let gets_s = gets as f64 / t.elapsed().as_secs_f64();
        assert_eq!(found, gets);
        drop(m);
        let space = dir_size(dir.path()) as f64 / raw;
        let t = Instant::now();
        let m = meta::open(engine, None, dir.path()).expect("reopen");
        let _ = m.get(Table::Chunks, &keys[0]).expect("get");
        let reopen = t.elapsed();
        println!(
            "{:<6} {:>16.0} {:>18.0} {:>12.0} {:>9.1}x {:>9.2}s",
            m.engine(),
            batched,
            single,
            gets_s,
            space,
            reopen.as_secs_f64()
        );
    }
}
