#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| strato_fuzz::swarm_wire(data));
