//! Pins the allocation hash: `fixtures/allocation_vectors.json` lists subjects with their
//! hash, bucket and cell, generated once by this crate. If the function changes, every
//! subject in every running experiment would move, so any difference fails here.
//!
//! The file is the reference for other implementations (client libraries in other
//! languages, offline analysis) too. To regenerate it after a deliberate change of the
//! algorithm (which reshuffles every experiment):
//! `UPDATE_VECTORS=1 cargo nextest run -p lightbulb --test allocation_vectors`.

use std::collections::BTreeMap;

use lightbulb::allocation::{self, Layout};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/allocation_vectors.json");

/// The cell `subject` lands in, with `cells` laid out in name order as an experiment does.
fn cell(cells: &BTreeMap<String, u32>, salt: &str, subject: &str) -> String {
    let layout = Layout::new(cells.iter().map(|(name, &percent)| (percent, name)))
        .expect("fixture percentages sum to 100");
    (*layout.pick(salt, subject)).clone()
}

fn cells(value: &Value) -> BTreeMap<String, u32> {
    serde_json::from_value(value.clone()).expect("cells are name → percent")
}

#[test]
fn allocation_matches_the_checked_in_vectors() {
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    let vectors = fixture["vectors"].as_array().expect("vectors is a list");
    assert!(vectors.len() >= 100, "only {} vectors", vectors.len());
    for v in vectors {
        let salt = v["salt"].as_str().unwrap();
        let subject = v["subject"].as_str().unwrap();
        let what = format!("salt {salt:?}, subject {subject:?}");
        assert_eq!(
            format!("{:016x}", allocation::hash(salt, subject)),
            v["hash"].as_str().unwrap(),
            "hash of {what}"
        );
        assert_eq!(
            u64::from(allocation::bucket(salt, subject)),
            v["bucket"].as_u64().unwrap(),
            "bucket of {what}"
        );
        assert_eq!(
            cell(&cells(&v["cells"]), salt, subject),
            v["cell"].as_str().unwrap(),
            "cell of {what}"
        );
    }
}

/// Rebuilds the vectors from the same subjects: the fixture must be exactly what this crate
/// produces. With `UPDATE_VECTORS=1` it rewrites the fixture instead (only after a
/// deliberate change of the algorithm).
#[test]
fn the_fixture_is_what_this_crate_generates() {
    let experiments: [(&str, Value); 5] = [
        (
            "exp-ranker-2025-01",
            json!({ "control": 50, "treatment": 50 }),
        ),
        (
            "exp-llm-size",
            json!({ "small": 80, "large": 15, "holdout": 5 }),
        ),
        (
            "ContinueWatchingRanking",
            json!({ "ranker-v1": 90, "ranker-v2": 10 }),
        ),
        ("a", json!({ "only": 100 })),
        (
            "salt with spaces/ünïcode",
            json!({ "a": 1, "b": 1, "c": 98 }),
        ),
    ];
    let mut subjects: Vec<String> = vec![
        String::new(),
        "0".to_owned(),
        "user-1".to_owned(),
        "USER-1".to_owned(),
        "ü🙂".to_owned(),
        "a".repeat(300),
    ];
    subjects.extend((0..20).map(|i| format!("user-{i:04}")));
    subjects.extend((0..4).map(|i| format!("{:08x}-acct", i * 7_919)));

    let mut vectors = Vec::new();
    for (salt, cells_json) in &experiments {
        let cells_map = cells(cells_json);
        // Probe subjects until every cell, however small, has two vectors of its own.
        let mut chosen = subjects.clone();
        for name in cells_map.keys() {
            chosen.extend(
                (0..)
                    .map(|i| format!("probe-{i}"))
                    .filter(|s| cell(&cells_map, salt, s) == *name)
                    .take(2),
            );
        }
        for subject in &chosen {
            vectors.push(json!({
                "salt": salt,
                "subject": subject,
                "cells": cells_json,
                "hash": format!("{:016x}", allocation::hash(salt, subject)),
                "bucket": allocation::bucket(salt, subject),
                "cell": cell(&cells(cells_json), salt, subject),
            }));
        }
    }
    let fixture = json!({
        "description": "lightbulb allocation vectors: hash = fmix64(fnv1a64(salt ++ 0x00 ++ subject)) as 16 hex digits, bucket = hash % 10000, cell = the cell whose range (cells in ascending name order, percent x 100 buckets each) holds the bucket. See models-config/src/allocation.rs.",
        "vectors": vectors,
    });
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/allocation_vectors.json"
    );
    let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(path, text).expect("write the fixture");
        return;
    }
    let checked_in: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
    assert!(
        checked_in == fixture,
        "the fixture differs from what this crate generates; if the algorithm changed on \
         purpose, rerun with UPDATE_VECTORS=1"
    );
}
