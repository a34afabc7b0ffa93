//! Every rule set in `examples/` parses and validates with no errors and no warnings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use models_config::spec::LbPolicy;

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_parses_and_validates_without_warnings() {
    let files = example_files();
    for name in ["minimal.json", "routing-only.json", "full.json"] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "examples/{name} is missing"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        match models_config::load(file) {
            Err(err) => failures.push(format!("{}: {err}", file.display())),
            Ok(rules) => {
                let warnings = models_config::validate(&rules).expect("load validated it");
                for warning in warnings {
                    failures.push(format!("{}: warning {warning}", file.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn routing_only_example_uses_every_lb_policy_and_no_resolver_parts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/routing-only.json");
    let rules = models_config::load(&path).expect("routing-only.json is valid");
    let used: BTreeSet<&str> = rules
        .clusters
        .values()
        .map(|c| c.lb_policy.as_str())
        .collect();
    let all: BTreeSet<&str> = [
        LbPolicy::RoundRobin,
        LbPolicy::WeightedRoundRobin,
        LbPolicy::Random,
        LbPolicy::LeastRequest,
        LbPolicy::RingHash,
        LbPolicy::Maglev,
    ]
    .into_iter()
    .map(LbPolicy::as_str)
    .collect();
    assert_eq!(used, all);
    assert!(rules.models.is_empty() && rules.experiments.is_empty() && rules.objectives.is_empty());
}

#[test]
fn examples_round_trip_through_serialization() {
    for file in example_files() {
        let rules = models_config::load(&file).expect("example is valid");
        let json = serde_json::to_string(&rules).expect("serializes");
        let again = models_config::parse(&json)
            .unwrap_or_else(|e| panic!("{} does not round-trip: {e}", file.display()));
        assert_eq!(again, rules, "{} does not round-trip", file.display());
    }
}
