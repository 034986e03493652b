use super::*;
use rand::{Rng, SeedableRng};

fn configs() -> Vec<CodecConfig> {
    let mut v = Vec::new();
    for cbr in [false, true] {
        for delta in [false, true] {
            for zstd_level in [None, Some(3)] {
                v.push(CodecConfig {
                    cbr,
                    delta,
                    zstd_level,
                    cache_bytes: 64 * 1024, // small: exercises eviction
                    delta_history_bytes: 8 * 4096,
                    ..CodecConfig::default()
                });
            }
        }
    }
    v
}

/// Random mix of fresh, duplicated, slightly edited and zero pages.
fn stream(seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut mem: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; 4096]).collect();
    let mut out = Vec::new();
    for _ in 0..600 {
        let p = rng.gen_range(0..32usize);
        match rng.gen_range(0..4) {
            0 => rng.fill(&mut mem[p][..]),
            1 => {
                let q = rng.gen_range(0..32usize);
                mem[p] = mem[q].clone();
            }
            2 => {
                let off = rng.gen_range(0..4000);
                rng.fill(&mut mem[p][off..off + 64]);
            }
            _ => {
                let b = rng.gen_range(0..4) * 1024;
                mem[p][b..b + 1024].fill(0);
            }
        }
        out.push((p as u64, mem[p].clone()));
    }
    out
}

#[test]
fn every_combination_reconstructs() {
    for cfg in configs() {
        let mut enc = PageEncoder::new(cfg.clone(), 1).unwrap();
        let mut dec = PageDecoder::new(cfg.clone(), 1).unwrap();
        let mut dst: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; 4096]).collect();
        let mut frame = Vec::new();
        let mut wire = 0;
        let mut raw = 0;
        for (p, page) in stream(7) {
            let o = enc.encode(p, &page, &mut frame).unwrap();
            wire += o.frame_len;
            raw += 4096;
            dec.decode(&frame, &mut dst[p as usize]).unwrap();
            assert_eq!(dst[p as usize], page, "{cfg:?}");
        }
        if cfg.cbr || cfg.delta || cfg.zstd_level.is_some() {
            assert!(wire < raw, "{cfg:?}: {wire} >= {raw}");
        }
    }
}

/// The live receiver holds no guest memory: its keyed decoder keeps
/// its own page history, mirrored from the encoder's (same bound, same
/// FIFO rule), and rebuilds every page exactly.
#[test]
fn keyed_decoder_mirrors_the_history() {
    for cfg in configs() {
        let mut enc = PageEncoder::new(cfg.clone(), 3).unwrap();
        let mut dec = PageDecoder::new_keyed(cfg.clone(), 3).unwrap();
        let mut frame = Vec::new();
        let mut deltas = 0;
        for (p, page) in stream(11) {
            let o = enc.encode(p, &page, &mut frame).unwrap();
            deltas += u32::from(o.kind == FrameKind::Delta);
            assert_eq!(dec.decode_keyed(p, &frame).unwrap(), &page[..], "{cfg:?}");
        }
        assert_eq!(deltas > 0, cfg.delta, "{cfg:?}");
    }
}

#[test]
fn keyed_delta_for_an_unknown_page_is_refused() {
    let cfg = CodecConfig {
        cbr: false,
        ..CodecConfig::default()
    };
    let mut enc = PageEncoder::new(cfg.clone(), 1).unwrap();
    let mut dec = PageDecoder::new_keyed(cfg, 1).unwrap();
    let mut page = vec![3u8; 4096];
    let mut f = Vec::new();
    enc.encode(5, &page, &mut f).unwrap();
    // The receiver never got that first version.
    page[10] = 4;
    assert_eq!(enc.encode(5, &page, &mut f).unwrap().kind, FrameKind::Delta);
    assert!(matches!(
        dec.decode_keyed(5, &f),
        Err(CodecError::DeltaBaseMissing(5))
    ));
    assert!(matches!(dec.decode_keyed(6, &f), Err(CodecError::Poisoned)));
}

#[test]
fn hash_collision_cannot_fool_the_cache() {
    let mut c = BlockCache::new(16, 4);
    c.insert(42, &[1u8; 16]);
    // Same (forced) hash, other bytes: a miss, not a hit.
    assert_eq!(c.lookup(42, &[2u8; 16]), None);
    assert_eq!(c.lookup(42, &[1u8; 16]), Some(0));
}

#[test]
fn receiver_reset_alone_is_detected_then_both_reset_resyncs() {
    let cfg = CodecConfig::default();
    let mut enc = PageEncoder::new(cfg.clone(), 1).unwrap();
    let mut dec = PageDecoder::new(cfg.clone(), 1).unwrap();
    let page = vec![9u8; 4096];
    let mut dst = vec![0u8; 4096];
    let mut f = Vec::new();
    enc.encode(0, &page, &mut f).unwrap();
    dec.decode(&f, &mut dst).unwrap();
    // The receiver restarts with an empty cache at generation 2; the
    // sender still thinks generation 1 and would send a cache hit.
    dec.reset(2);
    enc.encode(1, &page, &mut f).unwrap();
    let mut dst2 = vec![0u8; 4096];
    assert!(matches!(
        dec.decode(&f, &mut dst2),
        Err(CodecError::GenerationMismatch { frame: 1, ours: 2 })
    ));
    assert!(matches!(
        dec.decode(&f, &mut dst2),
        Err(CodecError::Poisoned)
    ));
    enc.reset(2);
    dec.reset(2);
    enc.encode(1, &page, &mut f).unwrap();
    dec.decode(&f, &mut dst2).unwrap();
    assert_eq!(dst2, page);
}

#[test]
fn delta_on_a_different_base_is_refused() {
    let cfg = CodecConfig {
        cbr: false,
        ..CodecConfig::default()
    };
    let mut enc = PageEncoder::new(cfg.clone(), 1).unwrap();
    let mut dec = PageDecoder::new(cfg, 1).unwrap();
    let mut page = vec![3u8; 4096];
    let mut dst = vec![0u8; 4096];
    let mut f = Vec::new();
    enc.encode(5, &page, &mut f).unwrap();
    dec.decode(&f, &mut dst).unwrap();
    page[10] = 4;
    let o = enc.encode(5, &page, &mut f).unwrap();
    assert_eq!(o.kind, FrameKind::Delta);
    dst[0] ^= 1; // receiver's copy is not what the sender believes
    assert!(matches!(
        dec.decode(&f, &mut dst),
        Err(CodecError::DeltaBaseMismatch)
    ));
}

#[test]
fn bad_frames_are_errors() {
    let cfg = CodecConfig::default();
    let mut dst = vec![0u8; 4096];
    for f in [
        &[][..],
        &[0, 1, 0, 0, 0, 1, 2][..],
        &[9, 1, 0, 0, 0][..],
        &[1, 1, 0, 0, 0, 0, 9, 0, 0, 0][..],
    ] {
        let mut dec = PageDecoder::new(cfg.clone(), 1).unwrap();
        assert!(dec.decode(f, &mut dst).is_err(), "{f:?}");
    }
}

#[test]
fn bad_config_is_rejected() {
    for cfg in [
        CodecConfig {
            blocks_per_page: 3,
            ..CodecConfig::default()
        },
        CodecConfig {
            blocks_per_page: 512,
            ..CodecConfig::default()
        },
        CodecConfig {
            delta_threshold: 0,
            ..CodecConfig::default()
        },
        CodecConfig {
            zstd_level: Some(40),
            ..CodecConfig::default()
        },
        CodecConfig {
            cache_bytes: 10,
            ..CodecConfig::default()
        },
    ] {
        assert!(PageEncoder::new(cfg, 0).is_err());
    }
}
