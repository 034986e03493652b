//! Sender throughput on one core: a QEMU-format migration stream (mixed
//! data pages, repeated pages and zero pages) through the tokenizer, page
//! ids (BLAKE3) and batch encoding, with and without zstd. The figure to
//! compare with the WAN is bytes of stream per second.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strato::qemu::stream::{Token, Tokenizer, PAGE_SIZE};
use strato::store::ChunkId;

const PAGES: usize = 16 * 1024; // 64 MiB of page records

/// A RAM section in QEMU's layout: every 4th page zero, every 3rd a repeat
/// of an earlier one, the rest pseudo-random bytes half-compressible.
fn stream() -> Vec<u8> {
    let mut s = Vec::with_capacity(PAGES * (PAGE_SIZE + 16));
    s.extend_from_slice(b"QEVM\0\0\0\x03");
    s.push(0x07);
    s.extend_from_slice(&4u32.to_be_bytes());
    s.extend_from_slice(b"pc-x");
    s.push(0x01);
    s.extend_from_slice(&2u32.to_be_bytes());
    s.push(3);
    s.extend_from_slice(b"ram");
    s.extend_from_slice(&0u32.to_be_bytes());
    s.extend_from_slice(&4u32.to_be_bytes());
    let total = (PAGES * PAGE_SIZE) as u64;
    s.extend_from_slice(&(total | 0x04).to_be_bytes());
    s.push(6);
    s.extend_from_slice(b"pc.ram");
    s.extend_from_slice(&total.to_be_bytes());
    s.extend_from_slice(&0x10u64.to_be_bytes());
    s.push(0x03);
    s.extend_from_slice(&2u32.to_be_bytes());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut page = vec![0u8; PAGE_SIZE];
    for i in 0..PAGES {
        let addr = (i * PAGE_SIZE) as u64;
        let cont = if i == 0 { 0 } else { 0x20 };
        if i % 4 == 0 {
            s.extend_from_slice(&(addr | 0x02 | cont).to_be_bytes());
            if i == 0 {
                s.push(6);
                s.extend_from_slice(b"pc.ram");
            }
            s.push(0);
            continue;
        }
        s.extend_from_slice(&(addr | 0x08 | cont).to_be_bytes());
        if i % 3 != 0 {
            for (j, b) in page.iter_mut().enumerate() {
                if j % 2 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                } else {
                    *b = 0;
                }
            }
        }
        s.extend_from_slice(&page);
    }
    s.extend_from_slice(&0x10u64.to_be_bytes());
    s
}

/// Feed the stream in 256 KiB reads like the sender's reader thread and
/// hand each read's tokens to `sink`, which drops them (as the sender does
/// once a batch is sent), so memory is reused as in the agent.
fn pipeline(data: &[u8], mut sink: impl FnMut(Vec<Token>) -> usize) -> usize {
    let mut t = Tokenizer::new();
    let mut n = 0;
    for chunk in data.chunks(256 << 10) {
        let mut out = Vec::new();
        t.feed(chunk, &mut out);
        n += sink(out);
    }
    let mut out = Vec::new();
    t.finish(&mut out);
    n + sink(out)
}

fn sender(c: &mut Criterion) {
    let data = stream();
    let mut g = c.benchmark_group("migrate_sender");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("tokenize", |b| {
        b.iter(|| black_box(pipeline(&data, |t| t.len())))
    });
    g.bench_function("tokenize+blake3", |b| {
        b.iter(|| {
            black_box(pipeline(&data, |tokens| {
                tokens
                    .iter()
                    .map(|t| match t {
                        Token::Page(p) => ChunkId::of(p).0[0] as usize,
                        Token::Literal(_) => 0,
                    })
                    .sum()
            }))
        })
    });
    for level in [None, Some(1), Some(3)] {
        let name = match level {
            None => "tokenize+blake3+batch".to_string(),
            Some(l) => format!("tokenize+blake3+batch+zstd{l}"),
        };
        g.bench_function(&name, |b| {
            let mut blob = Vec::with_capacity(4 << 20);
            b.iter(|| {
                black_box(pipeline(&data, |tokens| {
                    let mut out = 0usize;
                    for t in &tokens {
                        match t {
                            Token::Literal(l) => blob.extend_from_slice(l),
                            Token::Page(p) => {
                                out += ChunkId::of(p).0[0] as usize;
                                blob.extend_from_slice(p);
                            }
                        }
                    }
                    if blob.len() >= 2 << 20 {
                        out += match level {
                            Some(l) => zstd::bulk::compress(&blob, l).map(|z| z.len()).unwrap_or(0),
                            None => blob.len(),
                        };
                        blob.clear();
                    }
                    out
                }))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sender);
criterion_main!(benches);
