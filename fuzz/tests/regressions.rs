//! Every fuzz target on stable: over each input kept in
//! `regressions/TARGET/` (crashes found by the fuzzer, once fixed, and seed
//! inputs) and over random bytes. A panic in any of them fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use proptest::prelude::*;
use strato_fuzz::TARGETS;

#[test]
fn kept_inputs_pass_every_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut ran = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        inputs.sort();
        assert!(
            !inputs.is_empty(),
            "no kept inputs for {name} in {}",
            dir.display()
        );
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            target(&data);
            ran += 1;
        }
        // The empty input, always.
        target(&[]);
    }
    assert!(ran >= TARGETS.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_bytes_pass_every_target(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for (_, target) in TARGETS {
            target(&data);
        }
    }
}
