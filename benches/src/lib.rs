//! Shared fixtures of the benchmarks: rule sets of a given size.

use serde_json::{Map, Value, json};

/// A rule set with `keys` routes (`key-0` …) spread over four clusters of two endpoints on
/// `base_port..`, as JSON.
pub fn rule_set_json(keys: usize, base_port: u16) -> Value {
    let mut clusters = Map::new();
    for c in 0..4u16 {
        clusters.insert(
            format!("cluster-{c}"),
            json!({ "endpoints": [
                format!("127.0.0.1:{}", base_port + 2 * c),
                format!("127.0.0.1:{}", base_port + 2 * c + 1),
            ]}),
        );
    }
    let mut routes = Map::new();
    for k in 0..keys {
        routes.insert(
            format!("key-{k}"),
            json!({ "cluster": format!("cluster-{}", k % 4) }),
        );
    }
    json!({ "clusters": clusters, "routes": routes })
}
