//! The `resolve_request` fuzz target: see `fuzz::resolve_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::resolve_request::run(data));
