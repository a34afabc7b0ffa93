//! `rule_set`: arbitrary bytes through the rule-set parser and validator
//! ([`models_config::parse_slice`]).
//!
//! Properties, beside "never panics":
//! - the answer is the same when asked twice (both steps are pure);
//! - an error names at least one problem, and every problem has a `$`-rooted path;
//! - an accepted rule set round-trips: serialized (as the config API's `GET /v1/config` and
//!   the store write it) and parsed again, it is accepted, equal, with the same warnings;
//! - the two steps taken one at a time (plain `serde_json` into [`RuleSet`], then
//!   [`models_config::validate`]) agree with `parse_slice`: the same documents parse, and
//!   the same rule sets fail validation with the same problems.

use models_config::spec::RuleSet;
use models_config::{ConfigError, ValidRuleSet};

/// Runs one input.
pub fn run(data: &[u8]) {
    let first = models_config::parse_slice(data);
    let again = models_config::parse_slice(data);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(**a, **b, "parsing is deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "errors are deterministic"),
        _ => panic!("parsing the same bytes twice gave different answers"),
    }
    // The same two steps, one at a time.
    match (serde_json::from_slice::<RuleSet>(data), &first) {
        (Ok(spec), Ok(rules)) => {
            assert_eq!(spec, **rules, "both parsers read the same rule set");
        }
        (Ok(spec), Err(ConfigError::Invalid(errors))) => {
            // `ValidRuleSet::new` parses endpoint addresses and header names again; validation
            // is meant to have refused every value those fail on.
            let alone = models_config::validate(&spec)
                .expect_err("validate() refuses what ValidRuleSet::new refuses");
            assert_eq!(alone, *errors, "validation alone finds the same problems");
        }
        (Err(_), Err(ConfigError::Parse { .. })) => {}
        (spec, first) => panic!(
            "serde_json alone and parse_slice disagree: {:?} vs {:?}",
            spec.map(|_| "parsed"),
            first.as_ref().map(|_| "accepted")
        ),
    }
    match first {
        Ok(rules) => accepted(&rules),
        Err(err) => rejected(&err),
    }
}

fn accepted(rules: &ValidRuleSet) {
    // What the API and the store write, and read back on the next start.
    let json = serde_json::to_vec(&**rules).expect("a rule set always serializes");
    let back = match models_config::parse_slice(&json) {
        Ok(back) => back,
        Err(err) => panic!(
            "an accepted rule set, serialized, is refused: {err}\n{}",
            String::from_utf8_lossy(&json)
        ),
    };
    assert_eq!(**rules, *back, "the rule set survives a round trip");
    assert_eq!(rules.warnings(), back.warnings(), "so do its warnings");
    let pretty = serde_json::to_vec_pretty(&**rules).expect("a rule set always serializes");
    assert_eq!(
        *models_config::parse_slice(&pretty).expect("pretty JSON is the same document"),
        **rules
    );
    // Validation alone agrees with the parse step (and is as pure).
    let warnings = models_config::validate(rules).expect("an accepted rule set validates");
    assert_eq!(warnings.as_slice(), rules.warnings());
    // Every cluster and route has its parsed forms.
    for name in rules.clusters.keys() {
        let cluster = rules.cluster(name).expect("every cluster has parsed forms");
        assert_eq!(
            cluster.endpoints.len(),
            rules.clusters[name].endpoints.len()
        );
    }
}

fn rejected(err: &ConfigError) {
    let issues = err.issues();
    assert!(!issues.is_empty(), "an error names a problem: {err}");
    for issue in &issues {
        assert!(
            issue.path.starts_with('$'),
            "a problem's path is rooted at $: {issue}"
        );
    }
    // Rendering never panics.
    let _ = err.to_string();
}
