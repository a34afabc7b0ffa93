//! The `config_api_body` fuzz target: see `fuzz::config_api_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::config_api_body::run(data));
