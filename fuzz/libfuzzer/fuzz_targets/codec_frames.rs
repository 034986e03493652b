#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| strato_fuzz::codec_frames(data));
