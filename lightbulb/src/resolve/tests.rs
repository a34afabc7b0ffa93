use std::collections::HashMap;

use super::*;
use crate::error::ErrorCode;

/// A rule set with four models, two experiments and one objective `Obj` whose `rules` are
/// the JSON given, plus objective `Plain` with no rules.
fn engine(rules: &str) -> Engine {
    let json = format!(
        r#"{{
        "version": 7,
        "clusters": {{ "c": {{ "endpoints": ["127.0.0.1:19001"] }} }},
        "routes": {{
            "r-a": {{ "cluster": "c" }}, "r-b": {{ "cluster": "c" }},
            "r-c": {{ "cluster": "c" }}, "r-d": {{ "cluster": "c" }}
        }},
        "models": {{
            "a": {{
                "routing_key": "r-a", "version": "1.0", "input_type": "triton_v2",
                "parameters": {{ "max_candidates": "500" }},
                "metadata": {{ "owner": "ranking" }}
            }},
            "b": {{ "routing_key": "r-b", "version": "2.0" }},
            "c": {{ "routing_key": "r-c" }},
            "d": {{ "routing_key": "r-d" }}
        }},
        "experiments": {{
            "exp": {{ "salt": "exp-salt", "cells": {{ "control": 50, "treatment": 50 }} }},
            "three": {{ "cells": {{ "small": 80, "large": 15, "holdout": 5 }} }}
        }},
        "objectives": {{
            "Obj": {{
                "rules": {rules},
                "default": "a",
                "shadow": [{{ "model": "d", "sample_percent": 2.5 }}],
                "cache_ttl_ms": 30000
            }},
            "Plain": {{ "default": "b" }}
        }}
    }}"#
    );
    let rules = models_config::parse(&json).expect("test rule set is valid");
    Engine::new(&rules)
}

fn ctx(objective: &str) -> RequestContext {
    RequestContext {
        objective: objective.to_owned(),
        ..RequestContext::default()
    }
}

fn with_tenant(mut ctx: RequestContext, tenant: &str) -> RequestContext {
    ctx.tenant = Some(tenant.to_owned());
    ctx
}

fn with_subject(mut ctx: RequestContext, subject: &str) -> RequestContext {
    ctx.subject_id = Some(subject.to_owned());
    ctx
}

fn with_attr(mut ctx: RequestContext, name: &str, value: &str) -> RequestContext {
    ctx.attributes.insert(name.to_owned(), value.to_owned());
    ctx
}

fn with_alloc(mut ctx: RequestContext, experiment: &str, cell: &str) -> RequestContext {
    ctx.experiment_allocations
        .insert(experiment.to_owned(), cell.to_owned());
    ctx
}

/// The model id `ctx` resolves to.
fn model(engine: &Engine, ctx: &RequestContext) -> String {
    engine
        .resolve(ctx)
        .expect("resolves")
        .config
        .model_id
        .to_string()
}

/// A subject id that experiment `exp` (salt `exp-salt`) hashes into `cell`.
fn subject_in(cell: &str) -> String {
    let layout = Layout::new([(50, "control"), (50, "treatment")]).unwrap();
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|s| *layout.pick("exp-salt", s) == cell)
        .expect("some subject lands in every cell")
}

#[test]
fn first_matching_rule_wins() {
    let engine = engine(
        r#"[
        { "when": { "attributes": { "country": ["CA"] } }, "model": "b" },
        { "when": { "tenants": ["kids"] }, "model": "c" },
        { "when": {}, "model": "d" }
    ]"#,
    );
    let both = with_attr(with_tenant(ctx("Obj"), "kids"), "country", "CA");
    assert_eq!(model(&engine, &both), "b");
    let r = engine.resolve(&both).unwrap();
    assert_eq!(r.matched_rule, Some(0));

    let second = with_tenant(ctx("Obj"), "kids");
    assert_eq!(model(&engine, &second), "c");
    assert_eq!(engine.resolve(&second).unwrap().matched_rule, Some(1));

    // The empty condition catches everything else, before the default.
    assert_eq!(model(&engine, &ctx("Obj")), "d");
    assert_eq!(engine.resolve(&ctx("Obj")).unwrap().matched_rule, Some(2));
}

#[test]
fn no_matching_rule_selects_the_default() {
    let engine = engine(r#"[{ "when": { "tenants": ["kids"] }, "model": "b" }]"#);
    let r = engine.resolve(&with_tenant(ctx("Obj"), "adults")).unwrap();
    assert_eq!(&*r.config.model_id, "a");
    assert_eq!(r.matched_rule, None);
    assert_eq!(r.config.experiment, None);

    // An objective without rules always resolves to its default.
    assert_eq!(model(&engine, &ctx("Plain")), "b");
}

#[test]
fn answer_carries_model_objective_and_rule_set_details() {
    let engine = engine("[]");
    let r = engine.resolve(&ctx("Obj")).unwrap();
    assert_eq!(&*r.routing_key, "r-a");
    assert_eq!(&*r.config.objective, "Obj");
    assert_eq!(&*r.config.model_id, "a");
    assert_eq!(&*r.config.model_version, "1.0");
    assert_eq!(&*r.config.input_type, "triton_v2");
    assert_eq!(r.config.parameters.get("max_candidates").unwrap(), "500");
    assert_eq!(r.config.metadata.get("owner").unwrap(), "ranking");
    assert_eq!(
        &*r.shadows,
        [ShadowTarget {
            model_id: "d".into(),
            routing_key: "r-d".into(),
            sample_percent: 2.5,
        }]
    );
    assert_eq!(r.cache_ttl, Duration::from_secs(30));
    assert_eq!(r.rule_set_version, 7);
    assert_eq!(engine.version(), 7);

    // Defaults of the rule-set format: empty strings and maps, TTL 60 s, no shadows.
    let plain = engine.resolve(&ctx("Plain")).unwrap();
    assert_eq!(&*plain.config.input_type, "");
    assert!(plain.config.parameters.is_empty());
    assert!(plain.shadows.is_empty());
    assert_eq!(plain.cache_ttl, Duration::from_secs(60));

    let mut names: Vec<&str> = engine.objectives().collect();
    names.sort_unstable();
    assert_eq!(names, ["Obj", "Plain"]);
}

#[test]
fn tenant_matcher() {
    let engine = engine(r#"[{ "when": { "tenants": ["kids", "family"] }, "model": "b" }]"#);
    assert_eq!(model(&engine, &with_tenant(ctx("Obj"), "kids")), "b");
    assert_eq!(model(&engine, &with_tenant(ctx("Obj"), "family")), "b");
    assert_eq!(model(&engine, &with_tenant(ctx("Obj"), "adults")), "a");
    assert_eq!(model(&engine, &with_tenant(ctx("Obj"), "")), "a");
    assert_eq!(model(&engine, &ctx("Obj")), "a");
}

#[test]
fn traffic_class_matcher() {
    let synthetic_rule = engine(r#"[{ "when": { "traffic_class": "synthetic" }, "model": "b" }]"#);
    let live_rule = engine(r#"[{ "when": { "traffic_class": "live" }, "model": "c" }]"#);
    let mut synthetic = ctx("Obj");
    synthetic.traffic_class = TrafficClass::Synthetic;
    assert_eq!(model(&synthetic_rule, &synthetic), "b");
    assert_eq!(model(&synthetic_rule, &ctx("Obj")), "a");
    assert_eq!(model(&live_rule, &ctx("Obj")), "c");
    assert_eq!(model(&live_rule, &synthetic), "a");
}

#[test]
fn attribute_matcher_needs_every_listed_attribute() {
    let engine = engine(
        r#"[{
        "when": { "attributes": { "country": ["CA", "US"], "device": ["tv"] } },
        "model": "b"
    }]"#,
    );
    let ca_tv = with_attr(with_attr(ctx("Obj"), "country", "CA"), "device", "tv");
    assert_eq!(model(&engine, &ca_tv), "b");
    let us_tv = with_attr(with_attr(ctx("Obj"), "country", "US"), "device", "tv");
    assert_eq!(model(&engine, &us_tv), "b");
    // Extra attributes are ignored.
    assert_eq!(model(&engine, &with_attr(ca_tv, "surface", "home")), "b");
    // A value outside the list, or a missing attribute, does not match.
    let fr_tv = with_attr(with_attr(ctx("Obj"), "country", "FR"), "device", "tv");
    assert_eq!(model(&engine, &fr_tv), "a");
    assert_eq!(model(&engine, &with_attr(ctx("Obj"), "country", "CA")), "a");
    assert_eq!(model(&engine, &with_attr(ctx("Obj"), "device", "tv")), "a");
    // Values compare exactly.
    let lower = with_attr(with_attr(ctx("Obj"), "country", "ca"), "device", "tv");
    assert_eq!(model(&engine, &lower), "a");
}

#[test]
fn conditions_of_one_rule_must_all_hold() {
    let engine = engine(
        r#"[{
        "when": {
            "tenants": ["kids"], "traffic_class": "live",
            "attributes": { "device": ["tv"] },
            "experiment": "exp", "cell": "treatment"
        },
        "model": "b"
    }]"#,
    );
    let all = with_subject(
        with_attr(with_tenant(ctx("Obj"), "kids"), "device", "tv"),
        &subject_in("treatment"),
    );
    assert_eq!(model(&engine, &all), "b");

    let mut synthetic = all.clone();
    synthetic.traffic_class = TrafficClass::Synthetic;
    assert_eq!(model(&engine, &synthetic), "a");
    assert_eq!(model(&engine, &with_tenant(all.clone(), "adults")), "a");
    assert_eq!(
        model(&engine, &with_attr(all.clone(), "device", "phone")),
        "a"
    );
    assert_eq!(
        model(&engine, &with_subject(all, &subject_in("control"))),
        "a"
    );
}

#[test]
fn experiment_matcher_uses_the_hashed_cell() {
    let engine =
        engine(r#"[{ "when": { "experiment": "exp", "cell": "treatment" }, "model": "b" }]"#);
    let treated = subject_in("treatment");
    let control = subject_in("control");

    let r = engine.resolve(&with_subject(ctx("Obj"), &treated)).unwrap();
    assert_eq!(&*r.config.model_id, "b");
    assert_eq!(
        r.config.experiment,
        Some(ExperimentCell {
            experiment: "exp".into(),
            cell: "treatment".into(),
        })
    );

    let r = engine.resolve(&with_subject(ctx("Obj"), &control)).unwrap();
    assert_eq!(&*r.config.model_id, "a");
    // The default took no experiment into account.
    assert_eq!(r.config.experiment, None);
}

#[test]
fn experiment_salt_defaults_to_the_experiment_id() {
    let engine =
        engine(r#"[{ "when": { "experiment": "three", "cell": "large" }, "model": "b" }]"#);
    let layout = Layout::new([(5, "holdout"), (15, "large"), (80, "small")]).unwrap();
    for i in 0..200 {
        let subject = format!("s{i}");
        let expected = if *layout.pick("three", &subject) == "large" {
            "b"
        } else {
            "a"
        };
        assert_eq!(
            model(&engine, &with_subject(ctx("Obj"), &subject)),
            expected
        );
    }
}

#[test]
fn experiment_rule_without_subject_or_allocation_does_not_match() {
    let engine = engine(
        r#"[
        { "when": { "experiment": "exp", "cell": "treatment" }, "model": "b" },
        { "when": { "experiment": "exp", "cell": "control" }, "model": "c" }
    ]"#,
    );
    assert_eq!(model(&engine, &ctx("Obj")), "a");
    assert_eq!(model(&engine, &with_subject(ctx("Obj"), "")), "a");
}

#[test]
fn explicit_allocation_overrides_hashing() {
    let engine =
        engine(r#"[{ "when": { "experiment": "exp", "cell": "treatment" }, "model": "b" }]"#);
    let control = with_subject(ctx("Obj"), &subject_in("control"));
    let treated = with_subject(ctx("Obj"), &subject_in("treatment"));
    assert_eq!(model(&engine, &control), "a");
    assert_eq!(
        model(&engine, &with_alloc(control, "exp", "treatment")),
        "b"
    );
    assert_eq!(model(&engine, &treated), "b");
    assert_eq!(model(&engine, &with_alloc(treated, "exp", "control")), "a");

    // No subject needed when the allocation is explicit.
    let r = engine
        .resolve(&with_alloc(ctx("Obj"), "exp", "treatment"))
        .unwrap();
    assert_eq!(&*r.config.model_id, "b");
    assert_eq!(&*r.config.experiment.unwrap().cell, "treatment");
}

#[test]
fn explicit_allocation_to_an_unknown_cell_is_invalid() {
    let engine = engine(
        r#"[
        { "when": { "tenants": ["kids"] }, "model": "c" },
        { "when": { "experiment": "exp", "cell": "treatment" }, "model": "b" }
    ]"#,
    );
    let err = engine
        .resolve(&with_alloc(ctx("Obj"), "exp", "treatmnet"))
        .unwrap_err();
    assert_eq!(
        err,
        ResolveError::UnknownCell {
            experiment: "exp".into(),
            cell: "treatmnet".to_owned(),
        }
    );
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(err.as_label(), "unknown_cell");
    assert_eq!(
        err.to_string(),
        r#"experiment "exp" has no cell "treatmnet""#
    );
    // Checked even when an earlier rule would have matched, so the error does not depend on
    // which rule wins.
    let kids = with_alloc(with_tenant(ctx("Obj"), "kids"), "exp", "bogus");
    assert!(engine.resolve(&kids).is_err());

    // Allocations for experiments this objective does not use, or that do not exist, are
    // ignored.
    let other = with_alloc(with_alloc(ctx("Obj"), "three", "bogus"), "nope", "x");
    assert_eq!(model(&engine, &other), "a");
}

#[test]
fn split_is_sticky_on_the_subject_and_salted_with_the_objective() {
    let engine = engine(r#"[{ "when": {}, "split": { "b": 30, "c": 70 } }]"#);
    let layout = Layout::new([(30, "b"), (70, "c")]).unwrap();
    for i in 0..500 {
        let subject = format!("user-{i}");
        let ctx = with_subject(ctx("Obj"), &subject);
        let first = model(&engine, &ctx);
        assert_eq!(first, *layout.pick("Obj", &subject));
        assert_eq!(model(&engine, &ctx), first);
        let r = engine.resolve(&ctx).unwrap();
        assert_eq!(r.matched_rule, Some(0));
        assert_eq!(r.config.experiment, None);
    }
}

#[test]
fn split_rule_without_subject_does_not_match() {
    let engine = engine(
        r#"[
        { "when": {}, "split": { "b": 50, "c": 50 } },
        { "when": {}, "model": "d" }
    ]"#,
    );
    assert_eq!(model(&engine, &ctx("Obj")), "d");
    assert_eq!(model(&engine, &with_subject(ctx("Obj"), "")), "d");
}

#[test]
fn split_behind_an_experiment_reports_the_experiment() {
    let engine = engine(
        r#"[{
        "when": { "experiment": "exp", "cell": "treatment" },
        "split": { "b": 50, "c": 50 }
    }]"#,
    );
    let r = engine
        .resolve(&with_subject(ctx("Obj"), &subject_in("treatment")))
        .unwrap();
    assert!(matches!(&*r.config.model_id, "b" | "c"));
    assert_eq!(&*r.config.experiment.unwrap().experiment, "exp");
    // An explicit allocation without a subject passes the condition, but the split still
    // needs a subject.
    assert_eq!(
        model(&engine, &with_alloc(ctx("Obj"), "exp", "treatment")),
        "a"
    );
}

/// Whether `count` out of `n` is within 5 standard deviations of the share `percent`.
fn within_bounds(count: usize, n: usize, percent: f64) -> bool {
    let p = percent / 100.0;
    let expected = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (count as f64 - expected).abs() <= 5.0 * sd
}

#[test]
fn split_proportions_follow_the_weights() {
    let engine = engine(r#"[{ "when": {}, "split": { "b": 90, "c": 7, "d": 3 } }]"#);
    let n = 100_000;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        *counts
            .entry(model(
                &engine,
                &with_subject(ctx("Obj"), &format!("subject-{i}")),
            ))
            .or_default() += 1;
    }
    for (m, percent) in [("b", 90.0), ("c", 7.0), ("d", 3.0)] {
        let count = counts[m];
        assert!(within_bounds(count, n, percent), "{m}: {count} of {n}");
    }
}

#[test]
fn cell_proportions_follow_the_percentages() {
    let engine = engine(
        r#"[
        { "when": { "experiment": "three", "cell": "large" }, "model": "b" },
        { "when": { "experiment": "three", "cell": "holdout" }, "model": "c" },
        { "when": { "experiment": "three", "cell": "small" }, "model": "d" }
    ]"#,
    );
    let n = 100_000;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..n {
        let r = engine
            .resolve(&with_subject(ctx("Obj"), &format!("subject-{i}")))
            .unwrap();
        *counts
            .entry(r.config.experiment.unwrap().cell.to_string())
            .or_default() += 1;
    }
    for (cell, percent) in [("large", 15.0), ("holdout", 5.0), ("small", 80.0)] {
        let count = counts[cell];
        assert!(within_bounds(count, n, percent), "{cell}: {count} of {n}");
    }
}

#[test]
fn experiment_and_split_allocations_are_independent() {
    // Different salts: the split share within each experiment cell is still about 50 %.
    let engine = engine(
        r#"[
        { "when": { "experiment": "exp", "cell": "treatment" }, "split": { "b": 50, "c": 50 } }
    ]"#,
    );
    let mut in_treatment = 0;
    let mut b = 0;
    for i in 0..20_000 {
        let r = engine
            .resolve(&with_subject(ctx("Obj"), &format!("subject-{i}")))
            .unwrap();
        if r.matched_rule.is_some() {
            in_treatment += 1;
            b += usize::from(&*r.config.model_id == "b");
        }
    }
    assert!(within_bounds(in_treatment, 20_000, 50.0), "{in_treatment}");
    assert!(
        within_bounds(b, in_treatment, 50.0),
        "{b} of {in_treatment}"
    );
}

#[test]
fn errors_for_missing_and_unknown_objectives() {
    let engine = engine("[]");
    let err = engine.resolve(&ctx("")).unwrap_err();
    assert_eq!(err, ResolveError::EmptyObjective);
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(err.as_label(), "empty_objective");

    let err = engine.resolve(&ctx("Nope")).unwrap_err();
    assert_eq!(
        err,
        ResolveError::UnknownObjective {
            objective: "Nope".to_owned()
        }
    );
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert_eq!(err.as_label(), "unknown_objective");
    assert_eq!(err.to_string(), r#"unknown objective "Nope""#);

    assert_eq!(
        engine.cache_key(&ctx("")).unwrap_err(),
        ResolveError::EmptyObjective
    );
    assert!(engine.cache_key(&ctx("Nope")).is_err());
}

#[test]
fn invalid_rule_set_is_rejected_with_every_issue() {
    let rules = models_config::parse(
        r#"{
        "clusters": { "c": { "endpoints": ["127.0.0.1:19001"] } },
        "routes": { "r": { "cluster": "c" } },
        "models": { "m": { "routing_key": "r" } },
        "objectives": { "O": { "default": "m" } }
    }"#,
    )
    .unwrap();
    let mut rules = rules.into_rules();
    rules.objectives.get_mut("O").unwrap().default = "missing".to_owned();
    rules.models.get_mut("m").unwrap().routing_key = "missing".to_owned();
    let errors = models_config::ValidRuleSet::new(rules).unwrap_err();
    assert_eq!(errors.0.len(), 2, "{errors:?}");
}

#[test]
fn resolves_the_full_example() {
    let rules = models_config::parse(include_str!("../../../models-config/examples/full.json"))
        .expect("the example is valid");
    let engine = Engine::new(&rules);
    assert_eq!(engine.version(), 42);

    let mut synthetic = ctx("ContinueWatchingRanking");
    synthetic.traffic_class = TrafficClass::Synthetic;
    let r = engine.resolve(&synthetic).unwrap();
    assert_eq!(&*r.routing_key, "ranker-synthetic");
    assert_eq!(r.matched_rule, Some(0));

    let kids_tv = with_attr(
        with_tenant(ctx("ContinueWatchingRanking"), "kids"),
        "device",
        "tv",
    );
    let r = engine.resolve(&kids_tv).unwrap();
    assert_eq!((&*r.routing_key, r.matched_rule), ("ranker-v1", Some(2)));
    assert_eq!(&*r.shadows[0].routing_key, "ranker-v2");
    assert_eq!(r.cache_ttl, Duration::from_secs(30));

    let enterprise = with_attr(ctx("SupportChat"), "plan", "enterprise");
    assert_eq!(
        &*engine.resolve(&enterprise).unwrap().routing_key,
        "llm-large"
    );
    let large = with_alloc(ctx("SupportChat"), "exp-llm-size", "large");
    let r = engine.resolve(&large).unwrap();
    assert_eq!(r.config.experiment.unwrap().cell.as_ref(), "large");
    assert_eq!(r.cache_ttl, Duration::ZERO);

    let payments = with_subject(with_tenant(ctx("FraudScoring"), "payments"), "acct-1");
    let r = engine.resolve(&payments).unwrap();
    assert!(matches!(&*r.routing_key, "fraud-v3" | "fraud-v4"));
    assert_eq!(r.matched_rule, Some(0));
}

// === cache keys ===

#[test]
fn cache_key_holds_only_what_the_rules_read() {
    let engine = engine(
        r#"[
        { "when": { "attributes": { "country": ["CA"] } }, "model": "b" },
        { "when": { "experiment": "exp", "cell": "treatment" }, "model": "c" }
    ]"#,
    );
    let base = with_attr(ctx("Obj"), "country", "CA");
    let key = engine.cache_key(&base).unwrap();
    // Tenant, traffic class, other attributes and other experiments are not read.
    let mut noisy = with_alloc(
        with_attr(with_tenant(base.clone(), "kids"), "device", "tv"),
        "three",
        "large",
    );
    noisy.traffic_class = TrafficClass::Synthetic;
    assert_eq!(engine.cache_key(&noisy).unwrap(), key);
    // The attribute that is read, is.
    assert_ne!(
        engine
            .cache_key(&with_attr(base.clone(), "country", "US"))
            .unwrap(),
        key
    );
    // The subject is read while `exp` is not allocated explicitly...
    assert_ne!(
        engine.cache_key(&with_subject(base.clone(), "u1")).unwrap(),
        key
    );
    // ...and not once it is.
    let explicit = with_alloc(base, "exp", "control");
    assert_eq!(
        engine
            .cache_key(&with_subject(explicit.clone(), "u1"))
            .unwrap(),
        engine.cache_key(&with_subject(explicit, "u2")).unwrap()
    );

    // No rules: everything but the objective is ignored.
    let plain = engine.cache_key(&ctx("Plain")).unwrap();
    let busy = with_subject(with_tenant(with_attr(ctx("Plain"), "x", "y"), "t"), "s");
    assert_eq!(engine.cache_key(&busy).unwrap(), plain);
    assert_ne!(plain, key);
}

#[test]
fn cache_key_reads_the_subject_for_splits() {
    let engine = engine(r#"[{ "when": {}, "split": { "b": 50, "c": 50 } }]"#);
    let one = engine.cache_key(&with_subject(ctx("Obj"), "u1")).unwrap();
    let two = engine.cache_key(&with_subject(ctx("Obj"), "u2")).unwrap();
    assert_ne!(one, two);
    // Empty and absent subjects are the same input.
    assert_eq!(
        engine.cache_key(&with_subject(ctx("Obj"), "")).unwrap(),
        engine.cache_key(&ctx("Obj")).unwrap()
    );
}

/// splitmix64: a tiny deterministic generator, so the property test needs no dependency and
/// always sees the same contexts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn random_option(rng: &mut Rng, values: &[&str]) -> Option<String> {
    rng.chance(70).then(|| rng.pick(values).to_owned())
}

fn random_context(rng: &mut Rng) -> RequestContext {
    let mut ctx = RequestContext {
        objective: rng
            .pick(&["Obj", "Obj", "Obj", "Plain", "", "Nope"])
            .to_owned(),
        tenant: random_option(rng, &["", "kids", "adults", "payments"]),
        subject_id: random_option(rng, &["", "u1", "u2", "u3", "u4", "u5", "u6"]),
        traffic_class: if rng.chance(50) {
            TrafficClass::Live
        } else {
            TrafficClass::Synthetic
        },
        ..RequestContext::default()
    };
    for (name, values) in [
        ("country", &["CA", "US", "FR"][..]),
        ("device", &["tv", "phone"][..]),
        ("surface", &["home", "search"][..]),
    ] {
        if let Some(value) = random_option(rng, values) {
            ctx.attributes.insert(name.to_owned(), value);
        }
    }
    for (experiment, cells) in [
        ("exp", &["control", "treatment", "bogus"][..]),
        ("three", &["small", "large", "holdout"][..]),
        ("unrelated", &["x"][..]),
    ] {
        if rng.chance(30) {
            ctx.experiment_allocations
                .insert(experiment.to_owned(), rng.pick(cells).to_owned());
        }
    }
    ctx
}

/// `ctx` with one input changed at random (possibly to the same value).
fn mutate(rng: &mut Rng, mut ctx: RequestContext) -> RequestContext {
    let other = random_context(rng);
    match rng.next() % 6 {
        0 => ctx.tenant = other.tenant,
        1 => ctx.subject_id = other.subject_id,
        2 => ctx.traffic_class = other.traffic_class,
        3 => ctx.attributes = other.attributes,
        4 => ctx.experiment_allocations = other.experiment_allocations,
        _ => ctx.objective = other.objective,
    }
    ctx
}

#[test]
fn contexts_with_equal_cache_keys_resolve_identically() {
    // Every kind of condition and a split, so every part of the key is exercised.
    let engine = engine(
        r#"[
        { "when": { "traffic_class": "synthetic", "tenants": ["kids"] }, "model": "d" },
        { "when": { "experiment": "exp", "cell": "treatment",
                    "attributes": { "country": ["CA", "US"] } }, "model": "b" },
        { "when": { "tenants": ["kids", "payments"], "attributes": { "device": ["tv"] } },
          "model": "c" },
        { "when": { "experiment": "three", "cell": "large" },
          "split": { "b": 40, "c": 60 } },
        { "when": { "attributes": { "country": ["FR"] } }, "split": { "a": 50, "d": 50 } }
    ]"#,
    );
    let mut rng = Rng(0x5eed);
    let mut by_key: HashMap<CacheKey, (RequestContext, Result<Resolution, ResolveError>)> =
        HashMap::new();
    let mut shared = 0;
    let mut check = |ctx: RequestContext| {
        let result = engine.resolve(&ctx);
        match engine.cache_key(&ctx) {
            Err(err) => assert_eq!(result.unwrap_err(), err, "{ctx:?}"),
            Ok(key) => match by_key.get(&key) {
                Some((first, first_result)) => {
                    if *first != ctx {
                        shared += 1;
                    }
                    assert_eq!(
                        &result, first_result,
                        "same key {key:?}\nfor {first:?}\nand {ctx:?}"
                    );
                }
                None => {
                    by_key.insert(key, (ctx, result));
                }
            },
        }
    };
    for _ in 0..300 {
        let ctx = random_context(&mut rng);
        // A near twin, likely to share the key when the changed input is not read.
        let twin = mutate(&mut rng, ctx.clone());
        check(ctx);
        check(twin);
    }
    // The test is only meaningful if many distinct contexts shared a key.
    assert!(shared >= 100, "only {shared} contexts shared a key");
    assert!(by_key.len() >= 50, "only {} distinct keys", by_key.len());
}
