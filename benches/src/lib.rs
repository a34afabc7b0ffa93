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

/// A rule set with `objectives` objectives, each with four rules (an experiment cell, a
/// tenant, a country split and a device match) over eight models on four routes.
pub fn objectives_rule_set_json(objectives: usize) -> Value {
    let mut base = rule_set_json(4, 20_000);
    let mut models = Map::new();
    for m in 0..8 {
        models.insert(
            format!("model-{m}"),
            json!({ "routing_key": format!("key-{}", m % 4), "version": format!("{m}"),
                    "input_type": "triton_v2", "metadata": { "team": "ranking" } }),
        );
    }
    let mut experiments = Map::new();
    let mut objs = Map::new();
    for o in 0..objectives {
        experiments.insert(
            format!("exp-{o}"),
            json!({ "cells": { "control": 90, "treatment": 10 } }),
        );
        objs.insert(
            format!("objective-{o}"),
            json!({
                "rules": [
                    { "when": { "experiment": format!("exp-{o}"), "cell": "treatment" }, "model": "model-1" },
                    { "when": { "tenants": ["tenant-b"] }, "model": "model-2" },
                    { "when": { "attributes": { "country": ["CA", "MX"] } },
                      "split": { "model-3": 90, "model-4": 10 } },
                    { "when": { "attributes": { "device": ["tv"], "surface": ["home"] } }, "model": "model-5" },
                ],
                "default": "model-0",
            }),
        );
    }
    base["models"] = Value::Object(models);
    base["experiments"] = Value::Object(experiments);
    base["objectives"] = Value::Object(objs);
    base
}
