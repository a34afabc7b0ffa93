//! The `router_head` fuzz target: see `fuzz::router_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::router_head::run(data));
