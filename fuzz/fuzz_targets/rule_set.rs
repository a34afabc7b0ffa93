//! The `rule_set` fuzz target: see `fuzz::rule_set`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::rule_set::run(data));
