//! The harnesses behind the fuzz targets in `fuzz_targets/`, one module each, as plain
//! functions from bytes to nothing that panic on a bug. The targets only hand libFuzzer's
//! inputs to them, so the same functions replay a corpus or a crash in an ordinary test
//! (`tests/corpus.rs`). See README.md.

pub mod config_api_body;
pub mod head;
pub mod resolve_request;
pub mod router_head;
pub mod rule_set;

/// A harness: runs one input, panics on a bug.
pub type Harness = fn(&[u8]);

/// The targets, by name, with their harness.
pub const TARGETS: [(&str, Harness); 4] = [
    ("rule_set", rule_set::run),
    ("router_head", router_head::run),
    ("config_api_body", config_api_body::run),
    ("resolve_request", resolve_request::run),
];
