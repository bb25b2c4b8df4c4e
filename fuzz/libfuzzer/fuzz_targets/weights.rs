#![no_main]
//! `cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer weights`: see `fuzz/README.md`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| rlhf_fuzz::weights(data));
