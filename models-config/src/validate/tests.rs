//! One test per validation rule, each pinning the exact path and message reported, plus the
//! parse-level rejections (unknown fields, duplicate keys, bad JSON).

use std::collections::BTreeMap;

use super::*;
use crate::ConfigError;
use crate::spec::{
    EndpointSpec, FallbackSpec, LbPolicy, ModelSpec, RetryCondition, RouteSpec, ShadowSpec,
    WeightedEndpointSpec,
};

/// DESIGN §10's rule set: valid, with two clusters, routes and models, one experiment and one
/// objective (`ContinueWatchingRanking`, rules[0] on the experiment, rules[1] a split).
const MINIMAL: &str = include_str!("../../examples/minimal.json");
const OBJECTIVE: &str = "ContinueWatchingRanking";

fn base() -> RuleSet {
    serde_json::from_str(MINIMAL).expect("the minimal example deserializes")
}

/// Every error, rendered as `path: message`.
#[track_caller]
fn errors(rules: &RuleSet) -> Vec<String> {
    match validate(rules) {
        Ok(warnings) => panic!("expected errors, got none (warnings: {warnings:?})"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

#[track_caller]
fn assert_errors(rules: &RuleSet, expected: &[&str]) {
    assert_eq!(errors(rules), expected);
}

/// Every warning of a valid rule set, rendered as `path: message`.
#[track_caller]
fn warnings(rules: &RuleSet) -> Vec<String> {
    match validate(rules) {
        Ok(warnings) => warnings.iter().map(ToString::to_string).collect(),
        Err(errors) => panic!("expected a valid rule set, got:\n{errors}"),
    }
}

/// The message of the parse error `json` must produce.
#[track_caller]
fn parse_error(json: &str) -> String {
    match crate::parse(json) {
        Err(ConfigError::Parse { message }) => message,
        other => panic!("expected a parse error, got {other:?}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn weights(items: &[(&str, u32)]) -> BTreeMap<String, u32> {
    items.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn cluster<'a>(rules: &'a mut RuleSet, name: &str) -> &'a mut ClusterSpec {
    rules.clusters.get_mut(name).expect("cluster exists")
}

fn route<'a>(rules: &'a mut RuleSet, key: &str) -> &'a mut RouteSpec {
    rules.routes.get_mut(key).expect("route exists")
}

fn objective(rules: &mut RuleSet) -> &mut ObjectiveSpec {
    rules
        .objectives
        .get_mut(OBJECTIVE)
        .expect("objective exists")
}

fn rule(rules: &mut RuleSet, i: usize) -> &mut RuleSpec {
    &mut objective(rules).rules[i]
}

fn experiment(rules: &mut RuleSet) -> &mut ExperimentSpec {
    rules
        .experiments
        .get_mut("exp-ranker")
        .expect("experiment exists")
}

fn endpoints(addresses: &[&str]) -> Vec<EndpointSpec> {
    addresses
        .iter()
        .map(|a| EndpointSpec::Address((*a).to_owned()))
        .collect()
}

fn weighted(address: &str, weight: u32) -> EndpointSpec {
    EndpointSpec::Weighted(WeightedEndpointSpec {
        address: address.to_owned(),
        weight,
    })
}

fn rule_with(when: MatchSpec, model: &str) -> RuleSpec {
    RuleSpec {
        when,
        model: Some(model.to_owned()),
        split: None,
    }
}

// === the baseline ===

#[test]
fn design_example_is_valid_without_warnings() {
    assert_eq!(warnings(&base()), Vec::<String>::new());
    assert_eq!(*crate::parse(MINIMAL).expect("valid"), base());
}

// === names ===

#[test]
fn name_with_a_disallowed_character_is_rejected() {
    let mut rules = base();
    let spec = rules.clusters["ranker-v1"].clone();
    rules.clusters.insert("ranker v3".to_owned(), spec);
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker v3"]: invalid cluster name "ranker v3": character ' ' is not allowed (use A-Z a-z 0-9 . _ : / -)"#,
        ],
    );
}

#[test]
fn name_must_start_with_a_letter_or_digit() {
    let mut rules = base();
    let spec = rules.routes["ranker-v1"].clone();
    rules.routes.insert("-ranker".to_owned(), spec);
    assert_errors(
        &rules,
        &[
            r#"$.routes["-ranker"]: invalid routing key name "-ranker": must start with a letter or digit, not '-'"#,
        ],
    );
}

#[test]
fn name_longer_than_128_characters_is_rejected() {
    let mut rules = base();
    let long = "m".repeat(129);
    let spec = rules.models["ranker-v1"].clone();
    rules.models.insert(long.clone(), spec);
    assert_errors(
        &rules,
        &[&format!(
            r#"$.models["{long}"]: invalid model name "{long}": 129 characters, at most 128 are allowed"#
        )],
    );
}

#[test]
fn empty_name_is_rejected() {
    let mut rules = base();
    let spec = rules.objectives[OBJECTIVE].clone();
    rules.objectives.insert(String::new(), spec);
    assert_errors(
        &rules,
        &[r#"$.objectives[""]: invalid objective name "": must not be empty"#],
    );
}

#[test]
fn experiment_and_cell_names_are_checked() {
    let mut rules = base();
    let spec = rules.experiments["exp-ranker"].clone();
    rules.experiments.insert("exp ranker".to_owned(), spec);
    experiment(&mut rules).cells = weights(&[("control", 50), ("treatment", 25), ("hold out", 25)]);
    assert_errors(
        &rules,
        &[
            r#"$.experiments["exp ranker"]: invalid experiment name "exp ranker": character ' ' is not allowed (use A-Z a-z 0-9 . _ : / -)"#,
            r#"$.experiments["exp-ranker"].cells["hold out"]: invalid cell name "hold out": character ' ' is not allowed (use A-Z a-z 0-9 . _ : / -)"#,
        ],
    );
}

#[test]
fn names_may_use_every_allowed_character_up_to_128() {
    let mut rules = base();
    let name = format!("A9._:/-{}", "z".repeat(121));
    assert_eq!(name.len(), 128);
    let spec = rules.clusters["ranker-v1"].clone();
    rules.clusters.insert(name, spec);
    assert_eq!(warnings(&rules), Vec::<String>::new());
}

// === clusters ===

#[test]
fn cluster_without_endpoints_is_rejected() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v2").endpoints.clear();
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v2"].endpoints: cluster has no endpoints, at least one is required"#,
        ],
    );
}

#[test]
fn malformed_endpoint_addresses_are_rejected() {
    let cases = [
        ("", "address is empty"),
        ("127.0.0.1", "missing :port"),
        ("127.0.0.1:", "port is missing"),
        ("127.0.0.1:0", "port 0 is out of range 1..=65535"),
        ("127.0.0.1:65536", "port 65536 is out of range 1..=65535"),
        ("127.0.0.1:http", r#"port "http" is not a number"#),
        ("127.0.0.1:+80", r#"port "+80" is not a number"#),
        (":9001", "host is empty"),
        (
            "256.0.0.1:9001",
            r#""256.0.0.1" is not a valid IPv4 address"#,
        ),
        ("10.0.1:9001", r#""10.0.1" is not a valid IPv4 address"#),
        (
            "::1:9001",
            "an IPv6 address must be in brackets, as in [::1]:8080",
        ),
        ("[::1:9001", "missing ']' after the IPv6 address"),
        ("[::g]:9001", r#""::g" is not an IPv6 address"#),
        ("[::1]9001", "missing :port"),
        ("http://ranker:9001", "expected host:port without a scheme"),
        (
            "-ranker.svc:9001",
            r#"label "-ranker" of host name "-ranker.svc" starts or ends with '-'"#,
        ),
        (
            "ranker_1.svc:9001",
            r#"character '_' is not allowed in host name "ranker_1.svc""#,
        ),
        (
            "ranker..svc:9001",
            r#"host name "ranker..svc" has an empty label"#,
        ),
    ];
    for (address, reason) in cases {
        let mut rules = base();
        cluster(&mut rules, "ranker-v2").endpoints = endpoints(&[address]);
        assert_errors(
            &rules,
            &[&format!(
                r#"$.clusters["ranker-v2"].endpoints[0]: invalid endpoint address {address:?}: {reason}"#
            )],
        );
    }
}

#[test]
fn well_formed_endpoint_addresses_are_accepted() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v2").endpoints = endpoints(&[
        "127.0.0.1:19001",
        "[::1]:19001",
        "[2001:db8::7]:65535",
        "ranker-v2.models.svc.cluster.local:1",
        "LOCALHOST:8080",
        "a1b2:443",
    ]);
    assert_eq!(warnings(&rules), Vec::<String>::new());
}

#[test]
fn duplicate_endpoint_address_in_a_cluster_is_rejected() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v1").endpoints = endpoints(&[
        "127.0.0.1:9001",
        "Ranker.svc:80",
        "127.0.0.1:9001",
        "ranker.SVC:080",
        "[::1]:80",
        "[0:0::1]:80",
    ]);
    cluster(&mut rules, "ranker-v2").endpoints = endpoints(&["127.0.0.1:9001"]);
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v1"].endpoints[2]: duplicate endpoint address "127.0.0.1:9001" (first at endpoints[0])"#,
            r#"$.clusters["ranker-v1"].endpoints[3]: duplicate endpoint address "ranker.SVC:080" (first at endpoints[1])"#,
            r#"$.clusters["ranker-v1"].endpoints[5]: duplicate endpoint address "[0:0::1]:80" (first at endpoints[4])"#,
        ],
    );
}

#[test]
fn endpoint_weight_must_be_between_1_and_1000() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v1").endpoints = vec![
        weighted("127.0.0.1:9001", 0),
        weighted("127.0.0.1:9002", 1000),
        weighted("127.0.0.1:9003", 1001),
        weighted("127.0.0.1", 1),
    ];
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v1"].endpoints[0].weight: weight 0 is out of range 1..=1000"#,
            r#"$.clusters["ranker-v1"].endpoints[2].weight: weight 1001 is out of range 1..=1000"#,
            r#"$.clusters["ranker-v1"].endpoints[3].address: invalid endpoint address "127.0.0.1": missing :port"#,
        ],
    );
}

#[test]
fn hash_header_is_required_by_ring_hash_and_maglev() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v1").lb_policy = LbPolicy::RingHash;
    cluster(&mut rules, "ranker-v2").lb_policy = LbPolicy::Maglev;
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v1"].hash_header: hash_header is required by lb_policy ring_hash"#,
            r#"$.clusters["ranker-v2"].hash_header: hash_header is required by lb_policy maglev"#,
        ],
    );
}

#[test]
fn hash_header_is_not_allowed_with_other_policies() {
    let mut rules = base();
    let c = cluster(&mut rules, "ranker-v1");
    c.lb_policy = LbPolicy::LeastRequest;
    c.hash_header = Some("x-user-id".to_owned());
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v1"].hash_header: hash_header "x-user-id" is not allowed with lb_policy least_request, only with ring_hash and maglev"#,
        ],
    );
}

#[test]
fn hash_header_must_be_a_valid_header_name() {
    let mut rules = base();
    let c = cluster(&mut rules, "ranker-v1");
    c.lb_policy = LbPolicy::RingHash;
    c.hash_header = Some("x user".to_owned());
    let c = cluster(&mut rules, "ranker-v2");
    c.lb_policy = LbPolicy::Maglev;
    c.hash_header = Some(String::new());
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v1"].hash_header: invalid hash_header "x user": character ' ' is not allowed in a header name"#,
            r#"$.clusters["ranker-v2"].hash_header: invalid hash_header "": must not be empty"#,
        ],
    );

    // Upper case is fine: header names are compared lowercased.
    let mut rules = base();
    let c = cluster(&mut rules, "ranker-v1");
    c.lb_policy = LbPolicy::Maglev;
    c.hash_header = Some("X-Session-Id".to_owned());
    assert_eq!(warnings(&rules), Vec::<String>::new());
}

#[test]
fn connect_timeout_must_be_between_1_ms_and_a_minute() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v1").connect_timeout_ms = 0;
    cluster(&mut rules, "ranker-v2").connect_timeout_ms = 60_001;
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v1"].connect_timeout_ms: connect_timeout_ms 0 is out of range 1..=60000"#,
            r#"$.clusters["ranker-v2"].connect_timeout_ms: connect_timeout_ms 60001 is out of range 1..=60000"#,
        ],
    );
}

#[test]
fn request_timeout_must_be_between_1_ms_and_an_hour() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v1").request_timeout_ms = 0;
    cluster(&mut rules, "ranker-v2").request_timeout_ms = 3_600_001;
    assert_errors(
        &rules,
        &[
            r#"$.clusters["ranker-v1"].request_timeout_ms: request_timeout_ms 0 is out of range 1..=3600000"#,
            r#"$.clusters["ranker-v2"].request_timeout_ms: request_timeout_ms 3600001 is out of range 1..=3600000"#,
        ],
    );
}

// === routes ===

#[test]
fn route_to_unknown_cluster_is_rejected() {
    let mut rules = base();
    route(&mut rules, "ranker-v2").cluster = "ranker-v9".to_owned();
    assert_errors(
        &rules,
        &[r#"$.routes["ranker-v2"].cluster: unknown cluster "ranker-v9""#],
    );
}

#[test]
fn route_fallback_to_unknown_cluster_is_rejected() {
    let mut rules = base();
    route(&mut rules, "ranker-v2").fallback = Some(FallbackSpec::One("ranker-v9".to_owned()));
    assert_errors(
        &rules,
        &[r#"$.routes["ranker-v2"].fallback: unknown cluster "ranker-v9""#],
    );
}

#[test]
fn route_fallback_must_differ_from_its_cluster() {
    let mut rules = base();
    route(&mut rules, "ranker-v2").fallback = Some(FallbackSpec::One("ranker-v2".to_owned()));
    assert_errors(
        &rules,
        &[r#"$.routes["ranker-v2"].fallback: fallback "ranker-v2" is the primary cluster itself"#],
    );
}

#[test]
fn route_split_must_not_be_empty() {
    let mut rules = base();
    route(&mut rules, "ranker-v1").split = Some(BTreeMap::new());
    assert_errors(
        &rules,
        &[r#"$.routes["ranker-v1"].split: split is empty, at least one cluster is required"#],
    );
}

#[test]
fn route_split_to_unknown_cluster_is_rejected() {
    let mut rules = base();
    route(&mut rules, "ranker-v1").split = Some(weights(&[("ranker-v1", 90), ("ranker-v9", 10)]));
    assert_errors(
        &rules,
        &[r#"$.routes["ranker-v1"].split["ranker-v9"]: unknown cluster "ranker-v9""#],
    );
}

#[test]
fn route_split_weights_must_be_between_1_and_100() {
    let mut rules = base();
    route(&mut rules, "ranker-v1").split = Some(weights(&[("ranker-v1", 100), ("ranker-v2", 0)]));
    assert_errors(
        &rules,
        &[r#"$.routes["ranker-v1"].split["ranker-v2"]: weight 0 is out of range 1..=100"#],
    );
}

#[test]
fn route_split_weights_must_sum_to_100() {
    let mut rules = base();
    route(&mut rules, "ranker-v1").split = Some(weights(&[("ranker-v1", 80), ("ranker-v2", 10)]));
    route(&mut rules, "ranker-v2").split = Some(weights(&[("ranker-v1", 80), ("ranker-v2", 30)]));
    assert_errors(
        &rules,
        &[
            r#"$.routes["ranker-v1"].split: weights sum to 90, expected 100"#,
            r#"$.routes["ranker-v2"].split: weights sum to 110, expected 100"#,
        ],
    );
}

#[test]
fn route_split_must_include_the_primary_cluster() {
    let mut rules = base();
    route(&mut rules, "ranker-v1").split = Some(weights(&[("ranker-v2", 100)]));
    assert_errors(
        &rules,
        &[r#"$.routes["ranker-v1"].split: split does not include the primary cluster "ranker-v1""#],
    );
}

#[test]
fn route_timeout_must_be_between_1_ms_and_an_hour() {
    let mut rules = base();
    route(&mut rules, "ranker-v1").timeout_ms = Some(0);
    route(&mut rules, "ranker-v2").timeout_ms = Some(3_600_001);
    assert_errors(
        &rules,
        &[
            r#"$.routes["ranker-v1"].timeout_ms: timeout_ms 0 is out of range 1..=3600000"#,
            r#"$.routes["ranker-v2"].timeout_ms: timeout_ms 3600001 is out of range 1..=3600000"#,
        ],
    );
}

// === models ===

#[test]
fn model_with_unknown_routing_key_is_rejected() {
    let mut rules = base();
    rules.models.insert(
        "ranker-v3".to_owned(),
        ModelSpec {
            routing_key: "ranker-v3".to_owned(),
            version: "3".to_owned(),
            input_type: String::new(),
            parameters: BTreeMap::new(),
            metadata: BTreeMap::new(),
        },
    );
    assert_errors(
        &rules,
        &[r#"$.models["ranker-v3"].routing_key: unknown routing key "ranker-v3""#],
    );
}

// === experiments ===

#[test]
fn experiment_without_cells_is_rejected() {
    let mut rules = base();
    experiment(&mut rules).cells.clear();
    // The rule that names a cell of it fails too.
    assert_errors(
        &rules,
        &[
            r#"$.experiments["exp-ranker"].cells: experiment has no cells, at least one is required"#,
            r#"$.objectives["ContinueWatchingRanking"].rules[0].when.cell: unknown cell "treatment" of experiment "exp-ranker""#,
        ],
    );
}

#[test]
fn experiment_cells_must_sum_to_100() {
    let mut rules = base();
    experiment(&mut rules).cells = weights(&[("control", 50), ("treatment", 40)]);
    assert_errors(
        &rules,
        &[r#"$.experiments["exp-ranker"].cells: percentages sum to 90, expected 100"#],
    );
}

#[test]
fn experiment_cell_percentages_must_be_between_1_and_100() {
    let mut rules = base();
    experiment(&mut rules).cells = weights(&[("control", 0), ("treatment", 100)]);
    assert_errors(
        &rules,
        &[r#"$.experiments["exp-ranker"].cells["control"]: percentage 0 is out of range 1..=100"#],
    );
}

#[test]
fn experiment_salt_must_not_be_empty() {
    let mut rules = base();
    experiment(&mut rules).salt = Some(String::new());
    assert_errors(
        &rules,
        &[
            r#"$.experiments["exp-ranker"].salt: salt is empty, leave it out to use the experiment id"#,
        ],
    );
}

// === objectives ===

#[test]
fn objective_default_must_be_a_known_model() {
    let mut rules = base();
    objective(&mut rules).default = "ranker-v9".to_owned();
    assert_errors(
        &rules,
        &[r#"$.objectives["ContinueWatchingRanking"].default: unknown model "ranker-v9""#],
    );
}

#[test]
fn rule_with_both_model_and_split_is_rejected() {
    let mut rules = base();
    rule(&mut rules, 1).model = Some("ranker-v1".to_owned());
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[1]: rule has both model and split, expected exactly one"#,
        ],
    );
}

#[test]
fn rule_with_neither_model_nor_split_is_rejected() {
    let mut rules = base();
    rule(&mut rules, 0).model = None;
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[0]: rule has neither model nor split, expected exactly one"#,
        ],
    );
}

#[test]
fn rule_model_must_be_known() {
    let mut rules = base();
    rule(&mut rules, 0).model = Some("ranker-v9".to_owned());
    assert_errors(
        &rules,
        &[r#"$.objectives["ContinueWatchingRanking"].rules[0].model: unknown model "ranker-v9""#],
    );
}

#[test]
fn rule_split_models_must_be_known() {
    let mut rules = base();
    rule(&mut rules, 1).split = Some(weights(&[("ranker-v1", 90), ("ranker-v9", 10)]));
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[1].split["ranker-v9"]: unknown model "ranker-v9""#,
        ],
    );
}

#[test]
fn rule_split_must_not_be_empty() {
    let mut rules = base();
    rule(&mut rules, 1).split = Some(BTreeMap::new());
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[1].split: split is empty, at least one model is required"#,
        ],
    );
}

#[test]
fn rule_split_weights_must_be_between_1_and_100_and_sum_to_100() {
    let mut rules = base();
    rule(&mut rules, 1).split = Some(weights(&[("ranker-v1", 101), ("ranker-v2", 0)]));
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[1].split["ranker-v1"]: weight 101 is out of range 1..=100"#,
            r#"$.objectives["ContinueWatchingRanking"].rules[1].split["ranker-v2"]: weight 0 is out of range 1..=100"#,
            r#"$.objectives["ContinueWatchingRanking"].rules[1].split: weights sum to 101, expected 100"#,
        ],
    );
}

#[test]
fn rule_experiment_and_cell_come_together() {
    let mut rules = base();
    rule(&mut rules, 0).when.cell = None;
    rule(&mut rules, 1).when.cell = Some("control".to_owned());
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[0].when: experiment "exp-ranker" is given without a cell"#,
            r#"$.objectives["ContinueWatchingRanking"].rules[1].when: cell "control" is given without an experiment"#,
        ],
    );
}

#[test]
fn rule_experiment_must_be_known() {
    let mut rules = base();
    rule(&mut rules, 0).when.experiment = Some("exp-ranker-9".to_owned());
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[0].when.experiment: unknown experiment "exp-ranker-9""#,
        ],
    );
}

#[test]
fn rule_cell_must_be_a_cell_of_its_experiment() {
    let mut rules = base();
    rule(&mut rules, 0).when.cell = Some("treatment-2".to_owned());
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[0].when.cell: unknown cell "treatment-2" of experiment "exp-ranker""#,
        ],
    );
}

#[test]
fn rule_attribute_must_list_values() {
    let mut rules = base();
    let when = &mut rule(&mut rules, 1).when;
    when.attributes.insert("device".to_owned(), Vec::new());
    when.attributes.insert(String::new(), strings(&["x"]));
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].rules[1].when.attributes[""]: attribute name is empty"#,
            r#"$.objectives["ContinueWatchingRanking"].rules[1].when.attributes["device"]: attribute "device" lists no values, at least one is required"#,
        ],
    );
}

#[test]
fn rule_tenant_must_not_be_empty() {
    let mut rules = base();
    rule(&mut rules, 1).when.tenants = strings(&["kids", ""]);
    assert_errors(
        &rules,
        &[r#"$.objectives["ContinueWatchingRanking"].rules[1].when.tenants[1]: tenant is empty"#],
    );
}

#[test]
fn shadow_model_must_be_known_and_listed_once() {
    let mut rules = base();
    objective(&mut rules).shadow = vec![
        ShadowSpec {
            model: "ranker-v9".to_owned(),
            sample_percent: 1.0,
        },
        ShadowSpec {
            model: "ranker-v2".to_owned(),
            sample_percent: 1.0,
        },
        ShadowSpec {
            model: "ranker-v2".to_owned(),
            sample_percent: 2.0,
        },
    ];
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].shadow[0].model: unknown model "ranker-v9""#,
            r#"$.objectives["ContinueWatchingRanking"].shadow[2].model: duplicate shadow model "ranker-v2" (first at shadow[1])"#,
        ],
    );
}

#[test]
fn shadow_sample_percent_must_be_finite_and_between_0_and_100() {
    let mut rules = base();
    let percents = [0.0, 100.0, 100.5, -1.0, f64::NAN, f64::INFINITY];
    // One model per shadow entry, so that only the percentages are wrong.
    let spec = rules.models["ranker-v1"].clone();
    for i in 0..percents.len() {
        rules.models.insert(format!("shadow-{i}"), spec.clone());
    }
    objective(&mut rules).shadow = percents
        .into_iter()
        .enumerate()
        .map(|(i, sample_percent)| ShadowSpec {
            model: format!("shadow-{i}"),
            sample_percent,
        })
        .collect();
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].shadow[2].sample_percent: sample_percent 100.5 is out of range 0..=100"#,
            r#"$.objectives["ContinueWatchingRanking"].shadow[3].sample_percent: sample_percent -1 is out of range 0..=100"#,
            r#"$.objectives["ContinueWatchingRanking"].shadow[4].sample_percent: sample_percent NaN is out of range 0..=100"#,
            r#"$.objectives["ContinueWatchingRanking"].shadow[5].sample_percent: sample_percent inf is out of range 0..=100"#,
        ],
    );
}

#[test]
fn cache_ttl_must_be_at_most_a_day() {
    let mut rules = base();
    objective(&mut rules).cache_ttl_ms = 86_400_001;
    assert_errors(
        &rules,
        &[
            r#"$.objectives["ContinueWatchingRanking"].cache_ttl_ms: cache_ttl_ms 86400001 is out of range 0..=86400000"#,
        ],
    );
    objective(&mut rules).cache_ttl_ms = 0;
    assert_eq!(warnings(&rules), Vec::<String>::new());
}

// === warnings ===

#[test]
fn rule_after_an_empty_when_is_unreachable() {
    let mut rules = base();
    objective(&mut rules)
        .rules
        .insert(1, rule_with(MatchSpec::default(), "ranker-v1"));
    assert_eq!(
        warnings(&rules),
        [
            r#"$.objectives["ContinueWatchingRanking"].rules[2]: rule can never match: rules[1] has an empty when and matches every request"#
        ]
    );
}

#[test]
fn rule_after_an_identical_when_is_unreachable() {
    let mut rules = base();
    let when = MatchSpec {
        tenants: strings(&["kids", "family"]),
        attributes: [("country".to_owned(), strings(&["CA", "US"]))].into(),
        ..MatchSpec::default()
    };
    // The same condition, with its lists in another order and a repeat.
    let same = MatchSpec {
        tenants: strings(&["family", "kids", "kids"]),
        attributes: [("country".to_owned(), strings(&["US", "CA"]))].into(),
        ..MatchSpec::default()
    };
    objective(&mut rules).rules = vec![rule_with(when, "ranker-v1"), rule_with(same, "ranker-v2")];
    assert_eq!(
        warnings(&rules),
        [
            r#"$.objectives["ContinueWatchingRanking"].rules[1]: rule can never match: rules[0] has the same when"#
        ]
    );
}

#[test]
fn rule_narrower_than_an_earlier_rule_is_unreachable() {
    let mut rules = base();
    let broad = MatchSpec {
        attributes: [("country".to_owned(), strings(&["CA", "US"]))].into(),
        ..MatchSpec::default()
    };
    let narrow = MatchSpec {
        traffic_class: Some(TrafficClass::Live),
        attributes: [
            ("country".to_owned(), strings(&["CA"])),
            ("device".to_owned(), strings(&["tv"])),
        ]
        .into(),
        ..MatchSpec::default()
    };
    objective(&mut rules).rules = vec![
        rule_with(broad, "ranker-v1"),
        rule_with(narrow, "ranker-v2"),
    ];
    assert_eq!(
        warnings(&rules),
        [
            r#"$.objectives["ContinueWatchingRanking"].rules[1]: rule can never match: rules[0] matches every request this rule matches"#
        ]
    );
}

#[test]
fn rules_that_can_each_match_give_no_warning() {
    let mut rules = base();
    let country = |values: &[&str]| MatchSpec {
        attributes: [("country".to_owned(), strings(values))].into(),
        ..MatchSpec::default()
    };
    let tenant = MatchSpec {
        tenants: strings(&["kids"]),
        ..MatchSpec::default()
    };
    let synthetic = MatchSpec {
        traffic_class: Some(TrafficClass::Synthetic),
        ..MatchSpec::default()
    };
    let control = MatchSpec {
        experiment: Some("exp-ranker".to_owned()),
        cell: Some("control".to_owned()),
        ..MatchSpec::default()
    };
    objective(&mut rules).rules = vec![
        rule_with(country(&["CA"]), "ranker-v1"),
        rule_with(country(&["CA", "US"]), "ranker-v2"),
        rule_with(tenant, "ranker-v1"),
        rule_with(synthetic, "ranker-v1"),
        rule_with(control, "ranker-v1"),
        rule_with(MatchSpec::default(), "ranker-v2"),
    ];
    assert_eq!(warnings(&rules), Vec::<String>::new());
}

// === totality ===

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let mut rules = base();
    cluster(&mut rules, "ranker-v1").endpoints = endpoints(&["127.0.0.1:9001", "127.0.0.1:0"]);
    cluster(&mut rules, "ranker-v2").lb_policy = LbPolicy::Maglev;
    route(&mut rules, "ranker-v2").fallback = Some(FallbackSpec::One("ranker-v9".to_owned()));
    rules
        .models
        .get_mut("ranker-v1")
        .expect("model")
        .routing_key = "ranker-v8".to_owned();
    experiment(&mut rules).cells = weights(&[("control", 50), ("treatment", 49)]);
    rule(&mut rules, 0).when.cell = Some("treatment-2".to_owned());
    rule(&mut rules, 1).split = Some(weights(&[("ranker-v1", 90), ("ranker-v7", 10)]));
    objective(&mut rules).cache_ttl_ms = u64::MAX;

    let found = errors(&rules);
    let expected = [
        r#"$.clusters["ranker-v1"].endpoints[1]: invalid endpoint address "127.0.0.1:0": port 0 is out of range 1..=65535"#,
        r#"$.clusters["ranker-v2"].hash_header: hash_header is required by lb_policy maglev"#,
        r#"$.routes["ranker-v2"].fallback: unknown cluster "ranker-v9""#,
        r#"$.models["ranker-v1"].routing_key: unknown routing key "ranker-v8""#,
        r#"$.experiments["exp-ranker"].cells: percentages sum to 99, expected 100"#,
        r#"$.objectives["ContinueWatchingRanking"].rules[0].when.cell: unknown cell "treatment-2" of experiment "exp-ranker""#,
        r#"$.objectives["ContinueWatchingRanking"].rules[1].split["ranker-v7"]: unknown model "ranker-v7""#,
        r#"$.objectives["ContinueWatchingRanking"].cache_ttl_ms: cache_ttl_ms 18446744073709551615 is out of range 0..=86400000"#,
    ];
    assert_eq!(found, expected);

    // The same list comes back through parse, and ConfigError lists it too.
    let json = serde_json::to_string(&rules).expect("serializes");
    let err = crate::parse(&json).expect_err("invalid");
    let issues: Vec<String> = err.issues().iter().map(ToString::to_string).collect();
    assert_eq!(issues, expected);
    let display = err.to_string();
    assert!(
        display.starts_with("invalid rule set, 8 problems:\n"),
        "{display}"
    );
    assert_eq!(display.lines().count(), 9, "{display}");
}

// === parsing ===

#[test]
fn unknown_field_is_rejected_with_its_name_and_path() {
    let message = parse_error(r#"{ "clusterz": {} }"#);
    assert!(
        message.starts_with("unknown field `clusterz`, expected one of"),
        "{message}"
    );
    assert!(
        message.ends_with(" at $.clusterz, line 1 column 12"),
        "{message}"
    );

    let message = parse_error(
        r#"{
  "clusters": {
    "a": { "endpoints": [{ "address": "127.0.0.1:19001", "wieght": 2 }] }
  }
}"#,
    );
    assert_eq!(
        message,
        r#"unknown field `wieght`, expected `address` or `weight` at $.clusters["a"].endpoints[0].wieght, line 3 column 65"#
    );

    let message = parse_error(
        r#"{ "objectives": { "o": { "default": "m", "rules": [{ "when": { "country": ["CA"] }, "model": "m" }] } } }"#,
    );
    assert!(
        message.starts_with("unknown field `country`, expected one of"),
        "{message}"
    );
    assert!(
        message.contains(r#" at $.objectives["o"].rules[0].when.country, line 1 column"#),
        "{message}"
    );
}

#[test]
fn duplicate_map_key_is_rejected() {
    let message = parse_error(
        r#"{
  "clusters": {
    "ranker-v1": { "endpoints": ["127.0.0.1:19001"] },
    "ranker-v1": { "endpoints": ["127.0.0.1:19002"] }
  }
}"#,
    );
    assert_eq!(
        message,
        r#"duplicate key "ranker-v1" at $.clusters, line 4 column 15"#
    );

    // Plain maps of the spec (splits, cells, attributes, metadata) reject them too.
    let message =
        parse_error(r#"{ "experiments": { "e": { "cells": { "a": 50, "b": 50, "a": 50 } } } }"#);
    assert!(
        message.starts_with(r#"duplicate key "a" at $.experiments["e"].cells, line 1 column"#),
        "{message}"
    );
    let message =
        parse_error(r#"{ "routes": { "r": { "cluster": "c", "split": { "c": 50, "c": 50 } } } }"#);
    assert!(
        message.starts_with(r#"duplicate key "c" at $.routes["r"].split, line 1 column"#),
        "{message}"
    );
}

#[test]
fn json_syntax_error_is_reported_with_its_position() {
    let message = parse_error("{\n  \"clusters\": {\n    \"a\": { \"endpoints\": [] },\n  }\n}");
    assert_eq!(message, r#"trailing comma at $.clusters, line 4 column 3"#);

    let message = parse_error(r#"{ "version": 1 } x"#);
    assert_eq!(message, "trailing characters at line 1 column 18");

    let message = parse_error("");
    assert_eq!(message, "EOF while parsing a value at line 1 column 0");
}

#[test]
fn wrong_type_is_reported_with_its_path() {
    let message = parse_error(
        r#"{ "clusters": { "a": { "endpoints": [{ "address": "127.0.0.1:19001", "weight": "3" }] } } }"#,
    );
    assert!(
        message.starts_with(
            r#"invalid type: string "3", expected u32 at $.clusters["a"].endpoints[0].weight, line 1 column"#
        ),
        "{message}"
    );

    let message = parse_error(r#"{ "clusters": { "a": { "endpoints": [7] } } }"#);
    assert!(
        message.starts_with(
            r#"invalid type: integer `7`, expected an endpoint: "host:port" or {"address": "host:port", "weight": N} at $.clusters["a"].endpoints[0], line 1 column"#
        ),
        "{message}"
    );

    let message = parse_error(r#"{ "routes": { "r": {} } }"#);
    assert!(
        message.starts_with(r#"missing field `cluster` at $.routes["r"], line 1 column"#),
        "{message}"
    );
}

#[test]
fn parse_error_is_one_issue_at_the_document_root() {
    let err = crate::parse("{").expect_err("not JSON");
    let issues = err.issues();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].path, "$");
    assert_eq!(
        issues[0].message,
        "EOF while parsing an object at line 1 column 1"
    );
    assert_eq!(
        err.to_string(),
        "cannot parse rule set: EOF while parsing an object at line 1 column 1"
    );
}

#[test]
fn unreadable_file_is_an_io_error_naming_the_file() {
    let path = std::path::Path::new("/nonexistent/models-config/rules.json");
    let err = crate::load(path).expect_err("no such file");
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("cannot read rule set /nonexistent/models-config/rules.json: "),
        "{message}"
    );
    assert_eq!(err.issues()[0].path, "$");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn defaults_are_filled_in_and_empty_rule_set_is_valid() {
    let rules = crate::parse("{}").expect("an empty rule set is valid");
    assert_eq!(*rules, RuleSet::default());

    let rules = crate::parse_slice(MINIMAL.as_bytes()).expect("valid");
    let c = &rules.clusters["ranker-v1"];
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.connect_timeout_ms, 1_000);
    assert_eq!(c.request_timeout_ms, 30_000);
    assert_eq!(c.endpoints[0].weight(), 1);
    assert_eq!(rules.objectives[OBJECTIVE].cache_ttl_ms, 60_000);
}

// === resilience blocks (DESIGN §11) ===

/// The minimal rule set with `json` merged into cluster `ranker-v1`.
fn with_cluster_fields(json: serde_json::Value) -> RuleSet {
    let mut value: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
    let cluster = value["clusters"]["ranker-v1"].as_object_mut().unwrap();
    for (k, v) in json.as_object().unwrap() {
        cluster.insert(k.clone(), v.clone());
    }
    serde_json::from_value(value).expect("the spec deserializes")
}

#[test]
fn resilience_blocks_with_defaults_are_valid() {
    let rules = with_cluster_fields(serde_json::json!({
        "health_check": { "http_path": "/v2/health/ready" },
        "outlier_detection": {},
        "circuit_breaker": {}
    }));
    assert!(validate(&rules).is_ok());
    let cluster = &rules.clusters["ranker-v1"];
    let check = cluster.health_check.as_ref().unwrap();
    assert_eq!(
        (
            check.interval_ms,
            check.timeout_ms(),
            check.unhealthy_threshold
        ),
        (1000, 500, 2)
    );
    let outlier = cluster.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (outlier.consecutive_5xx, outlier.max_ejection_ms()),
        (5, 300_000)
    );
    assert_eq!(cluster.circuit_breaker.as_ref().unwrap().max_pending, 1024);
}

#[test]
fn health_check_limits_are_checked() {
    let rules = with_cluster_fields(serde_json::json!({
        "health_check": {
            "http_path": "v2/health", "interval_ms": 100, "timeout_ms": 100,
            "unhealthy_threshold": 0, "healthy_threshold": 101, "expected_statuses": [200, 700, 200]
        }
    }));
    let p = r#"$.clusters["ranker-v1"].health_check"#;
    assert_errors(
        &rules,
        &[
            &format!(r#"{p}.http_path: http_path "v2/health" must start with '/'"#),
            &format!("{p}.expected_statuses[1]: status 700 is out of range 100..=599"),
            &format!("{p}.expected_statuses[2]: duplicate status 200"),
            &format!("{p}.timeout_ms: timeout_ms 100 must be less than interval_ms 100"),
            &format!("{p}.unhealthy_threshold: unhealthy_threshold 0 is out of range 1..=100"),
            &format!("{p}.healthy_threshold: healthy_threshold 101 is out of range 1..=100"),
        ],
    );
}

#[test]
fn health_check_needs_exactly_one_kind() {
    let both = with_cluster_fields(serde_json::json!({
        "health_check": { "http_path": "/", "grpc_service": "" }
    }));
    assert_errors(
        &both,
        &[
            r#"$.clusters["ranker-v1"].health_check: health_check has both http_path and grpc_service, expected exactly one"#,
        ],
    );
    let neither = with_cluster_fields(serde_json::json!({ "health_check": { "interval_ms": 50 } }));
    assert_errors(
        &neither,
        &[
            r#"$.clusters["ranker-v1"].health_check: health_check has neither http_path nor grpc_service, expected exactly one"#,
        ],
    );
    let grpc = with_cluster_fields(serde_json::json!({
        "health_check": { "grpc_service": "", "expected_statuses": [200] }
    }));
    assert_errors(
        &grpc,
        &[
            r#"$.clusters["ranker-v1"].health_check.expected_statuses: expected_statuses applies to http_path checks only"#,
        ],
    );
}

#[test]
fn outlier_detection_and_circuit_breaker_limits_are_checked() {
    let rules = with_cluster_fields(serde_json::json!({
        "outlier_detection": {
            "consecutive_5xx": 0, "base_ejection_ms": 1000, "max_ejection_ms": 10,
            "max_ejection_percent": 101
        },
        "circuit_breaker": { "max_requests": 0 }
    }));
    let p = r#"$.clusters["ranker-v1"]"#;
    assert_errors(
        &rules,
        &[
            &format!(
                "{p}.outlier_detection.consecutive_5xx: consecutive_5xx 0 is out of range 1..=10000"
            ),
            &format!(
                "{p}.outlier_detection.max_ejection_ms: max_ejection_ms 10 is less than base_ejection_ms 1000"
            ),
            &format!(
                "{p}.outlier_detection.max_ejection_percent: max_ejection_percent 101 is out of range 0..=100"
            ),
            &format!(
                "{p}.circuit_breaker.max_requests: max_requests 0 is out of range 1..=1000000"
            ),
        ],
    );
}

#[test]
fn clusters_sharing_an_endpoint_must_check_it_the_same_way() {
    let mut value: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
    value["clusters"]["ranker-v1"]["health_check"] = serde_json::json!({ "http_path": "/a" });
    value["clusters"]["ranker-v2"] = serde_json::json!({
        "endpoints": ["127.0.0.1:9001"], "health_check": { "http_path": "/b" }
    });
    let rules: RuleSet = serde_json::from_value(value).unwrap();
    let errors = errors(&rules);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(r#"$.clusters["ranker-v2"].health_check: endpoint "127.0.0.1:9001" is also in cluster "ranker-v1" with a different health_check"#),
        "{errors:?}"
    );
}

#[test]
fn fallback_chains_resolve_and_never_loop() {
    let mut rules = base();
    route(&mut rules, "ranker-v2").fallback = Some(FallbackSpec::Chain(vec![
        "ranker-v1".to_owned(),
        "ranker-v9".to_owned(),
        "ranker-v2".to_owned(),
        "ranker-v1".to_owned(),
    ]));
    let p = r#"$.routes["ranker-v2"].fallback"#;
    assert_errors(
        &rules,
        &[
            &format!(r#"{p}[1]: unknown cluster "ranker-v9""#),
            &format!(r#"{p}[2]: fallback "ranker-v2" is the primary cluster itself"#),
            &format!(
                r#"{p}[3]: fallback "ranker-v1" comes twice in the chain (first at fallback[0])"#
            ),
        ],
    );
    route(&mut rules, "ranker-v2").fallback = Some(FallbackSpec::Chain(Vec::new()));
    assert_errors(
        &rules,
        &[&format!(
            "{p}: fallback list is empty, leave it out or name at least one cluster"
        )],
    );
}

#[test]
fn fallback_reads_a_name_or_a_list() {
    let one: RouteSpec = serde_json::from_str(r#"{"cluster":"a","fallback":"b"}"#).unwrap();
    assert_eq!(one.fallback.as_ref().unwrap().clusters(), ["b"]);
    let chain: RouteSpec = serde_json::from_str(r#"{"cluster":"a","fallback":["b","c"]}"#).unwrap();
    assert_eq!(chain.fallback.as_ref().unwrap().clusters(), ["b", "c"]);
    assert_eq!(
        serde_json::to_string(&chain).unwrap(),
        r#"{"cluster":"a","fallback":["b","c"]}"#
    );
    assert!(serde_json::from_str::<RouteSpec>(r#"{"cluster":"a","fallback":3}"#).is_err());
}

// === retry, mirror, sticky splits (DESIGN §11) ===

/// The minimal rule set with `json` merged into route `ranker-v2` and a `shadow` cluster.
fn with_route_fields(json: serde_json::Value) -> RuleSet {
    let mut value: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
    value["clusters"]["shadow"] = serde_json::json!({ "endpoints": ["127.0.0.1:9100"] });
    let route = value["routes"]["ranker-v2"].as_object_mut().unwrap();
    for (k, v) in json.as_object().unwrap() {
        route.insert(k.clone(), v.clone());
    }
    serde_json::from_value(value).expect("the spec deserializes")
}

#[test]
fn retry_and_mirror_with_defaults_are_valid() {
    let rules = with_route_fields(serde_json::json!({
        "retry": {}, "mirror": { "cluster": "shadow" }
    }));
    assert!(validate(&rules).is_ok());
    let route = &rules.routes["ranker-v2"];
    let retry = route.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.replay_buffer_bytes, retry.on.len()),
        (2, 4 << 20, 2)
    );
    let mirror = route.mirror.as_ref().unwrap();
    assert_eq!((mirror.sample_percent, mirror.max_in_flight), (100.0, 64));
}

#[test]
fn retry_limits_and_conditions_are_checked() {
    let rules = with_route_fields(serde_json::json!({
        "retry": {
            "attempts": 11, "on": ["reset", "teapot", "503", "5xx", "unavailable", "reset"],
            "budget_percent": 101, "replay_buffer_bytes": 1073741825u64
        }
    }));
    let p = r#"$.routes["ranker-v2"].retry"#;
    let errors = errors(&rules);
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert_eq!(
        errors[0],
        format!("{p}.attempts: attempts 11 is out of range 1..=10")
    );
    assert!(errors[1].starts_with(&format!(r#"{p}.on[1]: unknown retry condition "teapot""#)));
    assert_eq!(
        errors[2],
        format!(r#"{p}.on[5]: duplicate retry condition "reset""#)
    );
    assert_eq!(
        errors[3],
        format!("{p}.budget_percent: budget_percent 101 is out of range 0..=100")
    );
    assert_eq!(
        errors[4],
        format!(
            "{p}.replay_buffer_bytes: replay_buffer_bytes 1073741825 is out of range 0..=1073741824"
        )
    );
}

#[test]
fn retry_conditions_parse() {
    assert_eq!(
        RetryCondition::parse("503"),
        Ok(RetryCondition::Status(503))
    );
    assert_eq!(
        RetryCondition::parse("5xx"),
        Ok(RetryCondition::StatusClass(5))
    );
    assert_eq!(
        RetryCondition::parse("resource_exhausted"),
        Ok(RetryCondition::Grpc(8))
    );
    assert_eq!(
        RetryCondition::parse("timeout"),
        Ok(RetryCondition::Timeout)
    );
    assert!(RetryCondition::parse("600").is_err());
    assert!(RetryCondition::parse("6xx").is_err());
    assert!(RetryCondition::parse("UNAVAILABLE").is_err());
}

#[test]
fn mirror_needs_another_existing_cluster() {
    let p = r#"$.routes["ranker-v2"]"#;
    let own = with_route_fields(serde_json::json!({ "mirror": { "cluster": "ranker-v2" } }));
    assert_errors(
        &own,
        &[&format!(
            r#"{p}.mirror.cluster: mirror cluster "ranker-v2" is one the route itself sends to"#
        )],
    );
    let unknown = with_route_fields(serde_json::json!({
        "mirror": { "cluster": "nope", "sample_percent": 150, "max_in_flight": 0 }
    }));
    assert_errors(
        &unknown,
        &[
            &format!(r#"{p}.mirror.cluster: unknown cluster "nope""#),
            &format!("{p}.mirror.sample_percent: sample_percent 150 is out of range 0..=100"),
            &format!("{p}.mirror.max_in_flight: max_in_flight 0 is out of range 1..=100000"),
        ],
    );
}

#[test]
fn sticky_header_needs_a_split_or_a_mirror() {
    let p = r#"$.routes["ranker-v2"]"#;
    let alone = with_route_fields(serde_json::json!({ "sticky_header": "x-subject-id" }));
    assert_errors(
        &alone,
        &[&format!(
            "{p}.sticky_header: sticky_header needs a split or a mirror to act on"
        )],
    );
    let bad = with_route_fields(serde_json::json!({
        "sticky_header": "x subject", "mirror": { "cluster": "shadow" }
    }));
    assert_errors(
        &bad,
        &[&format!(
            r#"{p}.sticky_header: invalid sticky_header "x subject": character ' ' is not allowed in a header name"#
        )],
    );
    let valid = crate::ValidRuleSet::new(with_route_fields(serde_json::json!({
        "sticky_header": "X-Subject-Id", "mirror": { "cluster": "shadow" }, "retry": { "on": ["5xx"] }
    })))
    .expect("valid");
    let route = valid.route("ranker-v2").unwrap();
    assert_eq!(
        route.sticky_header.as_ref().unwrap().as_str(),
        "x-subject-id"
    );
    assert_eq!(route.retry_on, [RetryCondition::StatusClass(5)]);
}

// === tenants and traffic provenance (DESIGN §11) ===

#[test]
fn tenants_are_declared_and_their_limits_checked() {
    let mut value: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
    value["tenants"] = serde_json::json!({
        "search": { "max_concurrent": 0, "requests_per_second": 0.0001 },
        "batch": { "burst": 5 },
        "home": { "requests_per_second": 0.5 }
    });
    value["routes"]["ranker-v1"]["tenants"] = serde_json::json!(["search", "nope", "search"]);
    value["routes"]["ranker-v1"]["synthetic_cluster"] = serde_json::json!("ranker-v1");
    value["routes"]["ranker-v2"]["synthetic_cluster"] = serde_json::json!("missing");
    value["objectives"]["ContinueWatchingRanking"]["rules"][0]["when"]["tenants"] =
        serde_json::json!(["kids"]);
    let rules: RuleSet = serde_json::from_value(value).unwrap();
    assert_eq!(rules.tenants["home"].burst(), Some(1));
    let r1 = r#"$.routes["ranker-v1"]"#;
    let r2 = r#"$.routes["ranker-v2"]"#;
    assert_errors(
        &rules,
        &[
            &format!(
                r#"{r1}.tenants[1]: unknown tenant "nope": declare it in the top-level tenants"#
            ),
            &format!(r#"{r1}.tenants[2]: duplicate tenant "search""#),
            &format!(
                r#"{r1}.synthetic_cluster: synthetic_cluster "ranker-v1" is a live cluster of the route"#
            ),
            &format!(r#"{r2}.synthetic_cluster: unknown cluster "missing""#),
            r#"$.objectives["ContinueWatchingRanking"].rules[0].when.tenants[0]: unknown tenant "kids": declare it in the top-level tenants"#,
            r#"$.tenants["batch"].burst: burst applies with requests_per_second only"#,
            r#"$.tenants["search"].max_concurrent: max_concurrent 0 is out of range 1..=10000000"#,
            r#"$.tenants["search"].requests_per_second: requests_per_second 0.0001 is out of range 0.001..=10000000"#,
        ],
    );
}

#[test]
fn max_request_body_bytes_is_in_range() {
    let mut value: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
    value["routes"]["ranker-v1"]["max_request_body_bytes"] = serde_json::json!(0);
    value["routes"]["ranker-v2"]["max_request_body_bytes"] = serde_json::json!(1u64 << 41);
    let rules: RuleSet = serde_json::from_value(value.clone()).unwrap();
    assert_errors(
        &rules,
        &[
            r#"$.routes["ranker-v1"].max_request_body_bytes: max_request_body_bytes 0 is out of range 1..=1099511627776"#,
            r#"$.routes["ranker-v2"].max_request_body_bytes: max_request_body_bytes 2199023255552 is out of range 1..=1099511627776"#,
        ],
    );
    value["routes"]["ranker-v1"]["max_request_body_bytes"] = serde_json::json!(1);
    value["routes"]["ranker-v2"]["max_request_body_bytes"] = serde_json::json!(1u64 << 40);
    let rules: RuleSet = serde_json::from_value(value).unwrap();
    warnings(&rules);
}

// === upstream TLS (DESIGN §11 `tls`, §12) ===

#[test]
fn tls_with_only_a_ca_file_is_valid_and_the_files_are_not_read() {
    let rules = with_cluster_fields(serde_json::json!({
        "tls": { "ca_file": "/nonexistent/ca.pem" }
    }));
    assert_eq!(warnings(&rules), Vec::<String>::new());
    let full = with_cluster_fields(serde_json::json!({
        "protocol": "http2",
        "tls": { "ca_file": "ca.pem", "server_name": "fraud.internal",
                 "cert_file": "client.pem", "key_file": "client.key" }
    }));
    assert!(validate(&full).is_ok());
}

#[test]
fn tls_client_certificate_and_key_come_together() {
    let p = r#"$.clusters["ranker-v1"].tls"#;
    let cert_only = with_cluster_fields(serde_json::json!({
        "tls": { "ca_file": "ca.pem", "cert_file": "client.pem" }
    }));
    assert_errors(
        &cert_only,
        &[&format!(
            "{p}: tls has cert_file without key_file; a client certificate needs both"
        )],
    );
    let key_only = with_cluster_fields(serde_json::json!({
        "tls": { "ca_file": "ca.pem", "key_file": "client.key" }
    }));
    assert_errors(
        &key_only,
        &[&format!(
            "{p}: tls has key_file without cert_file; a client certificate needs both"
        )],
    );
}

#[test]
fn tls_file_paths_must_not_be_empty() {
    let rules = with_cluster_fields(serde_json::json!({
        "tls": { "ca_file": "", "cert_file": "", "key_file": "a\u{0}b" }
    }));
    let p = r#"$.clusters["ranker-v1"].tls"#;
    assert_errors(
        &rules,
        &[
            &format!("{p}.ca_file: ca_file is empty"),
            &format!("{p}.cert_file: cert_file is empty"),
            &format!(r#"{p}.key_file: key_file "a\0b" contains a NUL character"#),
        ],
    );
}

#[test]
fn tls_server_name_is_a_dns_name_or_an_ip_address() {
    for good in [
        "fraud.internal",
        "Model-1.example.com",
        "10.0.0.1",
        "::1",
        "fe80::1",
    ] {
        let rules = with_cluster_fields(serde_json::json!({
            "tls": { "ca_file": "ca.pem", "server_name": good }
        }));
        assert!(validate(&rules).is_ok(), "{good} is a valid server_name");
    }
    let p = r#"$.clusters["ranker-v1"].tls.server_name"#;
    for (bad, reason) in [
        ("", "host is empty"),
        (
            "*.example.com",
            r#"character '*' is not allowed in host name "*.example.com""#,
        ),
        (
            "fraud.internal:443",
            r#"character ':' is not allowed in host name "fraud.internal:443""#,
        ),
        ("[::1]", "write an IPv6 address without brackets"),
        ("10.0.0.300", r#""10.0.0.300" is not a valid IPv4 address"#),
        ("a..b", r#"host name "a..b" has an empty label"#),
    ] {
        let rules = with_cluster_fields(serde_json::json!({
            "tls": { "ca_file": "ca.pem", "server_name": bad }
        }));
        assert_errors(
            &rules,
            &[&format!("{p}: invalid server_name {bad:?}: {reason}")],
        );
    }
}

#[test]
fn tls_block_denies_unknown_fields() {
    let message = parse_error(
        r#"{ "clusters": { "a": { "endpoints": ["127.0.0.1:1"], "tls": { "ca_file": "ca.pem", "ca": "x" } } } }"#,
    );
    assert!(
        message.starts_with("unknown field `ca`, expected one of"),
        "{message}"
    );
    assert!(
        message.contains(r#" at $.clusters["a"].tls.ca, line 1 column"#),
        "{message}"
    );
    let message = parse_error(
        r#"{ "clusters": { "a": { "endpoints": ["127.0.0.1:1"], "tls": { "server_name": "x" } } } }"#,
    );
    assert!(message.starts_with("missing field `ca_file`"), "{message}");
}

#[test]
fn clusters_sharing_an_endpoint_must_reach_it_with_the_same_tls() {
    let mut value: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
    value["clusters"]["ranker-v1"]["tls"] = serde_json::json!({ "ca_file": "ca.pem" });
    value["clusters"]["ranker-v2"] = serde_json::json!({ "endpoints": ["127.0.0.1:9001"] });
    value["clusters"]["ranker-v3"] = serde_json::json!({
        "endpoints": ["127.0.0.1:9001"], "tls": { "ca_file": "ca.pem" }
    });
    let rules: RuleSet = serde_json::from_value(value).unwrap();
    let errors = errors(&rules);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(r#"$.clusters["ranker-v2"].tls: endpoint "127.0.0.1:9001" is also in cluster "ranker-v1" with a different tls block"#),
        "{errors:?}"
    );
}
