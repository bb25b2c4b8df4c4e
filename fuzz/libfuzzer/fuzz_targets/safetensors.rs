#![no_main]
//! `cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer safetensors`: see `fuzz/README.md`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rlhf_fuzz::safetensors(data));
