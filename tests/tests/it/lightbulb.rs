//! Lightbulb: the real `lightbulb` binary answering over gRPC (Resolver, RoutingConfig,
//! health, reflection) and HTTP, following its rule-set file, shutting down on SIGTERM; and
//! end to end with the router, both reading one rule-set file.

use std::collections::BTreeSet;

use integration_tests::lightbulb::{LightbulbProcess, lightbulb_bin, next_message};
use integration_tests::{
    DEADLINE, FakeModel, HttpClient, RouterProcess, trace_init, wait_until, within,
};
use routing_proto::lightbulb::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

use crate::support::served_by;

const OBJECTIVE: &str = "ContinueWatchingRanking";

/// A rule set whose objective sends country CA to `ranker-v2` and everything else to
/// `default` (a model id). The clusters are never contacted.
fn rules(version: u64, default: &str) -> Value {
    json!({
        "version": version,
        "clusters": {
            "ranker-v1": { "endpoints": ["127.0.0.1:9001"] },
            "ranker-v2": { "endpoints": ["127.0.0.1:9002"] },
            "ranker-v3": { "endpoints": ["127.0.0.1:9003"] }
        },
        "routes": {
            "ranker-v1": { "cluster": "ranker-v1" },
            "ranker-v2": { "cluster": "ranker-v2" },
            "ranker-v3": { "cluster": "ranker-v3" }
        },
        "models": {
            "ranker-v1": { "routing_key": "ranker-v1", "version": "1", "input_type": "triton_v2" },
            "ranker-v2": { "routing_key": "ranker-v2", "version": "2" },
            "ranker-v3": { "routing_key": "ranker-v3", "version": "3" }
        },
        "objectives": {
            OBJECTIVE: {
                "rules": [
                    { "when": { "attributes": { "country": ["CA"] } }, "model": "ranker-v2" }
                ],
                "default": default
            }
        }
    })
}

fn request(objective: &str, subject: &str, country: Option<&str>) -> pb::ResolveRequest {
    pb::ResolveRequest {
        objective: objective.to_owned(),
        subject_id: subject.to_owned(),
        attributes: country
            .map(|c| [("country".to_owned(), c.to_owned())].into())
            .unwrap_or_default(),
        ..pb::ResolveRequest::default()
    }
}

/// Lightbulb's answer to `request`, which must succeed.
async fn resolve(
    client: &mut pb::resolver_client::ResolverClient<Channel>,
    request: pb::ResolveRequest,
) -> pb::ResolveResponse {
    client.resolve(request).await.expect("resolve").into_inner()
}

/// The routing key Lightbulb answers for a request without attributes.
async fn default_key(lightbulb: &LightbulbProcess) -> String {
    let mut client = lightbulb.resolver().await;
    resolve(&mut client, request(OBJECTIVE, "s", None))
        .await
        .routing_key
}

/// The one answer of a server-reflection stream that sends `message_request`.
async fn reflect(
    client: &mut ServerReflectionClient<Channel>,
    message_request: MessageRequest,
) -> ServerReflectionResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message_request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("a reflection stream")
        .into_inner();
    next_message("the reflection answer", &mut responses).await
}

/// Waits until `lightbulb_config_reloads_total{result}` reaches `at_least`.
async fn wait_for_reloads(lightbulb: &LightbulbProcess, result: &str, at_least: f64) {
    lightbulb
        .wait_for_metric(
            "lightbulb_config_reloads_total",
            &[("result", result)],
            |v| v >= at_least,
        )
        .await;
}

#[tokio::test]
async fn resolve_answers_over_grpc_and_the_cache_serves_repeats() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(3, "ranker-v1")).await;
    let mut client = lightbulb.resolver().await;

    let answer = resolve(&mut client, request(OBJECTIVE, "member-42", Some("US"))).await;
    assert_eq!(answer.routing_key, "ranker-v1");
    assert_eq!(answer.rule_set_version, 3);
    let config = answer.objective_config.expect("an objective config");
    assert_eq!(config.objective, OBJECTIVE);
    assert_eq!(config.model_id, "ranker-v1");
    assert_eq!(config.model_version, "1");
    assert_eq!(config.input_type, "triton_v2");

    let canadian = resolve(&mut client, request(OBJECTIVE, "member-42", Some("CA"))).await;
    assert_eq!(canadian.routing_key, "ranker-v2");

    // Same inputs again (the subject id is not read by these rules): a cache hit.
    let again = resolve(&mut client, request(OBJECTIVE, "member-7", Some("US"))).await;
    assert_eq!(again.routing_key, "ranker-v1");
    assert!(lightbulb.metric("lightbulb_cache_hits_total", &[]).await >= 1.0);
    assert!(lightbulb.metric("lightbulb_cache_misses_total", &[]).await >= 2.0);
    assert_eq!(
        lightbulb
            .metric(
                "lightbulb_resolves_total",
                &[
                    ("objective", OBJECTIVE),
                    ("model", "ranker-v1"),
                    ("outcome", "ok")
                ]
            )
            .await,
        2.0
    );
    assert_eq!(lightbulb.metric("lightbulb_config_version", &[]).await, 3.0);
    let text = lightbulb.metrics_text().await;
    assert!(
        text.contains("lightbulb_resolve_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn resolve_batch_answers_each_request_on_its_own() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(1, "ranker-v1")).await;
    let results = lightbulb
        .resolver()
        .await
        .resolve_batch(pb::ResolveBatchRequest {
            requests: vec![
                request(OBJECTIVE, "a", Some("CA")),
                request("NoSuchObjective", "a", None),
                request("", "a", None),
                request(OBJECTIVE, "b", None),
            ],
        })
        .await
        .expect("a batch call")
        .into_inner()
        .results;
    assert_eq!(results.len(), 4);
    let outcome = |i: usize| results[i].outcome.clone().expect("an outcome");
    match outcome(0) {
        pb::resolve_result::Outcome::Response(r) => assert_eq!(r.routing_key, "ranker-v2"),
        other => panic!("expected an answer, got {other:?}"),
    }
    match outcome(1) {
        pb::resolve_result::Outcome::Error(e) => assert_eq!(e.code, Code::NotFound as i32),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    match outcome(2) {
        pb::resolve_result::Outcome::Error(e) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    match outcome(3) {
        pb::resolve_result::Outcome::Response(r) => assert_eq!(r.routing_key, "ranker-v1"),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test]
async fn errors_are_grpc_statuses_and_unknown_objectives_share_one_label() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(1, "ranker-v1")).await;
    let mut client = lightbulb.resolver().await;

    let unknown = client
        .resolve(request("NoSuchObjective", "s", None))
        .await
        .expect_err("an unknown objective fails");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("NoSuchObjective"), "{unknown:?}");

    let empty = client
        .resolve(request("", "s", None))
        .await
        .expect_err("an empty objective fails");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");

    let bad_class = client
        .resolve(pb::ResolveRequest {
            traffic_class: 42,
            ..request(OBJECTIVE, "s", None)
        })
        .await
        .expect_err("an unknown traffic class fails");
    assert_eq!(bad_class.code(), Code::InvalidArgument, "{bad_class:?}");

    let text = lightbulb.metrics_text().await;
    assert!(
        !text.contains("NoSuchObjective"),
        "request-supplied objectives must not become labels:\n{text}"
    );
    let unknown_label = [("objective", "unknown"), ("model", "none")];
    assert_eq!(
        lightbulb
            .metric("lightbulb_resolves_total", &unknown_label)
            .await,
        2.0
    );
    assert_eq!(
        lightbulb
            .metric(
                "lightbulb_resolves_total",
                &[
                    ("objective", OBJECTIVE),
                    ("outcome", "unknown_traffic_class")
                ]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(1, "ranker-v1")).await;
    let mut health = lightbulb.health().await;
    for service in ["", "lightbulb.v1.Resolver", "lightbulb.v1.RoutingConfig"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .expect_err("an unknown service has no status");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_lightbulb_services() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(1, "ranker-v1")).await;
    let mut client = ServerReflectionClient::new(lightbulb.channel().await);
    let response = reflect(&mut client, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "lightbulb.v1.Resolver",
        "lightbulb.v1.RoutingConfig",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }

    // The descriptors are there too: what grpcurl needs to build a request.
    let symbol = MessageRequest::FileContainingSymbol("lightbulb.v1.Resolver".to_owned());
    let response = reflect(&mut client, symbol).await;
    assert!(
        matches!(
            response.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()
        ),
        "{response:?}"
    );
}

#[tokio::test]
async fn http_resolve_mirrors_the_grpc_call() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(5, "ranker-v1")).await;

    let resp = lightbulb
        .http_post_json(
            "/v1/resolve",
            &json!({ "objective": OBJECTIVE, "subjectId": "member-42", "attributes": { "country": "CA" } }),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["routingKey"], "ranker-v2");
    assert_eq!(body["objectiveConfig"]["modelId"], "ranker-v2");
    assert_eq!(body["objectiveConfig"]["modelVersion"], "2");
    assert_eq!(body["ruleSetVersion"], 5);
    let grpc = resolve(
        &mut lightbulb.resolver().await,
        request(OBJECTIVE, "member-42", Some("CA")),
    )
    .await;
    assert_eq!(body["routingKey"], grpc.routing_key.as_str());
    assert_eq!(body["cacheTtlMs"], grpc.cache_ttl_ms);

    // The proto field names work too.
    let snake = lightbulb
        .http_post_json(
            "/v1/resolve",
            &json!({ "objective": OBJECTIVE, "subject_id": "x", "traffic_class": "synthetic" }),
        )
        .await;
    assert_eq!(snake.status, 200, "{}", snake.text());
    assert_eq!(snake.json()["routingKey"], "ranker-v1");

    let cases = [
        (
            json!({ "objective": "NoSuchObjective" }).to_string(),
            404,
            "NOT_FOUND",
        ),
        (
            json!({ "objective": "" }).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            json!({ "objectiv": OBJECTIVE }).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            json!({ "objective": OBJECTIVE, "trafficClass": "bulk" }).to_string(),
            400,
            "INVALID_ARGUMENT",
        ),
        ("{ not json".to_owned(), 400, "INVALID_ARGUMENT"),
    ];
    for (body, status, code) in cases {
        let resp = lightbulb.http_post("/v1/resolve", body.clone()).await;
        assert_eq!(resp.status, status, "{body}: {}", resp.text());
        let error = resp.json();
        assert_eq!(error["error"]["code"], code, "{body}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}: {error}"
        );
    }

    assert_eq!(lightbulb.http_get("/healthz").await.status, 200);
    let ready = lightbulb.http_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["version"], 5);
}

#[tokio::test]
async fn a_changed_file_changes_the_answer_and_an_invalid_one_keeps_it() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(1, "ranker-v1")).await;
    assert_eq!(default_key(&lightbulb).await, "ranker-v1");

    lightbulb.rewrite_config(&rules(2, "ranker-v3"));
    wait_until("the new default is answered", DEADLINE, || async {
        default_key(&lightbulb).await == "ranker-v3"
    })
    .await;
    assert_eq!(lightbulb.metric("lightbulb_config_version", &[]).await, 2.0);
    wait_for_reloads(&lightbulb, "ok", 1.0).await;

    // Not JSON, then valid JSON that fails validation: both rejected, the rules stay.
    lightbulb.rewrite_config_text("{ \"clusters\": ");
    wait_for_reloads(&lightbulb, "error", 1.0).await;
    let mut invalid = rules(3, "ranker-v2");
    invalid["objectives"][OBJECTIVE]["default"] = json!("no-such-model");
    lightbulb.rewrite_config(&invalid);
    wait_for_reloads(&lightbulb, "error", 2.0).await;
    assert_eq!(default_key(&lightbulb).await, "ranker-v3");
    assert_eq!(lightbulb.metric("lightbulb_config_version", &[]).await, 2.0);
    // Every problem is logged (the log writer is asynchronous, so wait for the line).
    wait_until("the rejection names the problem", DEADLINE, || {
        std::future::ready(lightbulb.output().contains("no-such-model"))
    })
    .await;
}

#[tokio::test]
async fn watch_sends_a_snapshot_on_connect_and_after_every_change() {
    let _trace = trace_init();
    let lightbulb = LightbulbProcess::start(&rules(10, "ranker-v1")).await;
    let mut stream = lightbulb.watch_snapshots().await;

    let first = next_message("the first snapshot", &mut stream).await;
    assert_eq!(first.version, 10);
    let routing: Value = serde_json::from_str(&first.rule_set_json).expect("JSON");
    assert!(routing["routes"]["ranker-v1"].is_object(), "{routing}");
    assert!(
        routing["objectives"]
            .as_object()
            .is_none_or(|o| o.is_empty()),
        "only the routing part is sent: {routing}"
    );
    let parsed = models_config::parse(&first.rule_set_json).expect("the router can read it");
    assert_eq!(parsed.version, 10);

    let mut next = rules(11, "ranker-v1");
    next["clusters"]["ranker-v4"] = json!({ "endpoints": ["127.0.0.1:9004"] });
    next["routes"]["ranker-v4"] = json!({ "cluster": "ranker-v4" });
    lightbulb.rewrite_config(&next);
    let second = next_message("the snapshot after the change", &mut stream).await;
    assert_eq!(second.version, 11);
    let routing: Value = serde_json::from_str(&second.rule_set_json).expect("JSON");
    assert!(routing["routes"]["ranker-v4"].is_object(), "{routing}");
}

#[tokio::test]
async fn sigterm_reports_not_serving_ends_streams_and_exits_zero() {
    let _trace = trace_init();
    let mut lightbulb = LightbulbProcess::start(&rules(1, "ranker-v1")).await;

    let mut health = lightbulb
        .health()
        .await
        .watch(HealthCheckRequest {
            service: "lightbulb.v1.Resolver".to_owned(),
        })
        .await
        .expect("a health Watch stream")
        .into_inner();
    let serving = next_message("the first health status", &mut health).await;
    assert_eq!(serving.status, ServingStatus::Serving as i32);

    let mut snapshots = lightbulb
        .routing_config()
        .await
        .watch(pb::WatchRequest::default())
        .await
        .expect("a Watch stream")
        .into_inner();
    next_message("the first snapshot", &mut snapshots).await;

    lightbulb.sigterm();
    // The stream delivers NOT_SERVING before it ends.
    let draining = next_message("the draining health status", &mut health).await;
    assert_eq!(draining.status, ServingStatus::NotServing as i32);
    let end = within("the end of the Watch stream", DEADLINE, snapshots.message()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");

    // Long-lived streams end on their own, so the drain finishes well before its deadline.
    let status = lightbulb.wait_for_exit(DEADLINE).await;
    assert!(status.success(), "{status}\n{}", lightbulb.output());
    assert!(
        lightbulb.output().contains("stopped"),
        "{}",
        lightbulb.output()
    );
}

#[tokio::test]
async fn an_invalid_rule_set_stops_startup_with_every_problem_listed() {
    let _trace = trace_init();
    let mut invalid = rules(1, "no-such-model");
    invalid["routes"]["ranker-v2"]["cluster"] = json!("no-such-cluster");
    let failed = LightbulbProcess::start_expecting_failure(&invalid.to_string()).await;
    assert_eq!(failed.status.code(), Some(64), "{failed:?}");
    for problem in ["no-such-model", "no-such-cluster"] {
        assert!(
            failed.stderr.contains(problem),
            "{problem}: {}",
            failed.stderr
        );
    }

    let failed = LightbulbProcess::start_expecting_failure("{ not json").await;
    assert_eq!(failed.status.code(), Some(64), "{failed:?}");
}

#[test]
fn help_documents_every_flag() {
    let output = std::process::Command::new(lightbulb_bin())
        .arg("--help")
        .output()
        .expect("run lightbulb --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--config",
        "--grpc",
        "--http",
        "--workers",
        "--watch-interval-ms",
        "--drain-timeout-ms",
        "--cache-capacity",
        "--cache-ttl-ms",
        "--log-format",
        "127.0.0.1:50051",
        "127.0.0.1:8081",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

/// One rule-set file for both processes: Lightbulb picks the model, the router delivers the
/// request to the cluster of the model's routing key.
#[tokio::test]
async fn end_to_end_the_request_lands_on_the_cluster_lightbulb_chose() {
    let _trace = trace_init();
    let a = FakeModel::new().name("ranker-a").start().await;
    let b = FakeModel::new().name("ranker-b").start().await;
    let c = FakeModel::new().name("ranker-c").start().await;
    let rule_set = json!({
        "version": 100,
        "clusters": {
            "ranker-a": { "endpoints": [a.endpoint()] },
            "ranker-b": { "endpoints": [b.endpoint()] },
            "ranker-c": { "endpoints": [c.endpoint()] }
        },
        "routes": {
            "ranker-a": { "cluster": "ranker-a" },
            "ranker-b": { "cluster": "ranker-b" },
            "ranker-c": { "cluster": "ranker-c" }
        },
        "models": {
            "ranker-a": { "routing_key": "ranker-a", "version": "1" },
            "ranker-b": { "routing_key": "ranker-b", "version": "2" },
            "ranker-c": { "routing_key": "ranker-c", "version": "3" }
        },
        "experiments": {
            "exp-ranker": { "cells": { "control": 50, "treatment": 50 } }
        },
        "objectives": {
            OBJECTIVE: {
                "rules": [
                    { "when": { "experiment": "exp-ranker", "cell": "treatment" }, "model": "ranker-b" },
                    { "when": { "attributes": { "country": ["CA"] } },
                      "split": { "ranker-a": 50, "ranker-c": 50 } }
                ],
                "default": "ranker-a"
            }
        }
    });
    let lightbulb = LightbulbProcess::start(&rule_set).await;
    let router = RouterProcess::start(&rule_set).await;
    let mut resolver = lightbulb.resolver().await;
    let http = HttpClient::http1();

    let mut chosen = BTreeSet::new();
    let mut treatment = 0;
    for i in 0..24 {
        let subject = format!("member-{i}");
        let country = if i % 2 == 0 { Some("CA") } else { None };
        let answer = resolve(&mut resolver, request(OBJECTIVE, &subject, country)).await;
        let config = answer.objective_config.expect("an objective config");
        // The cluster the rules chose, derived from the answer's own explanation.
        if config.experiment_cell == "treatment" {
            treatment += 1;
            assert_eq!(answer.routing_key, "ranker-b", "{subject}");
        } else if country.is_none() {
            assert_eq!(answer.routing_key, "ranker-a", "{subject}");
        } else {
            assert!(
                ["ranker-a", "ranker-c"].contains(&answer.routing_key.as_str()),
                "{subject}: {}",
                answer.routing_key
            );
        }
        let landed = served_by(&http, router.proxy_addr, &answer.routing_key).await;
        assert_eq!(landed, answer.routing_key, "{subject} ({country:?})");
        chosen.insert(answer.routing_key);
    }
    assert!(treatment > 0, "some subject is in the treatment cell");
    assert!(chosen.len() >= 2, "the rules spread subjects: {chosen:?}");
    assert_eq!(a.requests() + b.requests() + c.requests(), 24);
}
