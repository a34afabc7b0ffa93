//! The admin API: health, readiness, metrics, `GET/PUT /config` and `GET /clusters`.

use http::Method;
use integration_tests::{
    DEADLINE, FakeModel, HttpClient, RouterProcess, client, trace_init, wait_until, within,
};
use serde_json::{Value, json};

use crate::reload::{PROBLEM_NAMES, rules_with_three_problems};
use crate::support::{assert_status, keyed, served_by};

fn rules(key_cluster: &str, a: &str, b: &str, version: u64) -> Value {
    json!({
        "version": version,
        "clusters": {
            "a": { "endpoints": [a] },
            "b": { "endpoints": [b], "protocol": "http2", "lb_policy": "least_request" },
        },
        "routes": {
            "k": { "cluster": key_cluster },
        },
    })
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_once_a_table_is_loaded() {
    let _trace = trace_init();
    let a = FakeModel::new().start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &a.endpoint(), 1)).await;
    assert_eq!(router.admin_get("/healthz").await.status, 200);
    assert_eq!(router.admin_get("/readyz").await.status, 200);
}

#[tokio::test]
async fn get_config_returns_the_rule_set_in_force_with_its_version_and_hash() {
    let _trace = trace_init();
    let a = FakeModel::new().start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &a.endpoint(), 7)).await;
    let config = router.admin_json("/config").await;
    assert_eq!(config["version"], 7);
    assert!(
        config["generation"].is_u64(),
        "generation is a number: {config}"
    );
    let sha = config["sha256"].as_str().expect("sha256 is a string");
    assert_eq!(sha.len(), 64, "a hex SHA-256: {sha}");
    assert!(sha.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(config["rule_set"]["routes"]["k"]["cluster"], "a");
    assert_eq!(
        config["rule_set"]["clusters"]["a"]["endpoints"][0]
            .as_str()
            .or_else(|| config["rule_set"]["clusters"]["a"]["endpoints"][0]["address"].as_str()),
        Some(a.endpoint().as_str())
    );
}

#[tokio::test]
async fn put_config_applies_a_valid_rule_set_at_once() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &b.endpoint(), 1)).await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    let before = router.admin_json("/config").await;

    let resp = router
        .admin_put_json("/config", &rules("b", &a.endpoint(), &b.endpoint(), 2))
        .await;
    assert_status(&resp, 200);
    let applied = resp.json();
    assert_eq!(applied["version"], 2);
    let generation = applied["generation"].as_u64().expect("a generation");
    assert!(generation > before["generation"].as_u64().unwrap());

    // Applied when the PUT answers: the very next request uses the new table.
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "b");
    let after = router.admin_json("/config").await;
    assert_eq!(after["generation"], generation);
    assert_eq!(after["rule_set"]["routes"]["k"]["cluster"], "b");
    assert_ne!(after["sha256"], before["sha256"]);
}

#[tokio::test]
async fn put_config_rejects_an_invalid_rule_set_listing_every_problem_and_keeps_the_old_table() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &a.endpoint(), 1)).await;
    let before = router.admin_json("/config").await;

    let resp = router
        .admin_put_json("/config", &rules_with_three_problems(&a.endpoint()))
        .await;
    assert_status(&resp, 400);
    let error = &resp.json()["error"];
    assert_eq!(error["code"], "invalid_config", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    let problems = error["problems"].as_array().expect("a list of problems");
    assert!(
        problems.len() >= 3,
        "every problem is listed: {problems:#?}"
    );
    for problem in problems {
        let path = problem["path"].as_str().expect("each problem has a path");
        assert!(path.starts_with('$'), "a JSON path: {path}");
        assert!(problem["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for name in PROBLEM_NAMES {
        assert!(
            problems
                .iter()
                .any(|p| p["path"].as_str().unwrap_or_default().contains(name)),
            "a problem's path names {name:?}: {problems:#?}"
        );
    }

    let after = router.admin_json("/config").await;
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["sha256"], before["sha256"]);
    assert_eq!(
        served_by(&HttpClient::http1(), router.proxy_addr, "k").await,
        "a"
    );
}

#[tokio::test]
async fn put_config_rejects_a_body_that_is_not_a_rule_set() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &a.endpoint(), 1)).await;
    let before = router.admin_json("/config").await;

    let unknown_field = json!({ "clusters": {}, "routes": {}, "no_such_field": 1 });
    let resp = router.admin_put_json("/config", &unknown_field).await;
    assert_eq!(resp.status, 400, "unknown fields are rejected");

    let req = client::request(Method::PUT, router.admin_addr, "/config")
        .header("content-type", "application/json")
        .body(client::full("{ not json"))
        .unwrap();
    let resp = within("PUT /config", DEADLINE, HttpClient::http1().fetch(req)).await;
    assert_eq!(resp.status, 400, "malformed JSON is rejected");

    assert_eq!(
        router.admin_json("/config").await["generation"],
        before["generation"]
    );
}

#[tokio::test]
async fn get_clusters_lists_every_cluster_with_its_endpoints_and_active_requests() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let b = FakeModel::new().name("b").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": {
            "a": { "endpoints": [a.endpoint()] },
            "b": {
                "endpoints": [b.endpoint(), { "address": a.endpoint(), "weight": 3 }],
                "protocol": "http2",
                "lb_policy": "weighted_round_robin",
            },
        },
        "routes": { "k": { "cluster": "a" } },
    }))
    .await;

    let clusters = router.admin_json("/clusters").await;
    let list = clusters["clusters"].as_array().expect("a list of clusters");
    let find = |name: &str| -> Value {
        list.iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("cluster {name} is listed: {clusters}"))
            .clone()
    };
    let ca = find("a");
    assert_eq!(ca["protocol"], "http1");
    assert_eq!(ca["lb_policy"], "round_robin");
    assert_eq!(ca["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(ca["endpoints"][0]["address"], a.endpoint());
    assert_eq!(ca["endpoints"][0]["weight"], 1);
    assert_eq!(ca["endpoints"][0]["active_requests"], 0);
    let cb = find("b");
    assert_eq!(cb["protocol"], "http2");
    assert_eq!(cb["lb_policy"], "weighted_round_robin");
    assert_eq!(cb["endpoints"][1]["address"], a.endpoint());
    assert_eq!(cb["endpoints"][1]["weight"], 3);

    // Two requests held open upstream show up as active requests of the endpoint.
    let client = HttpClient::h2c();
    let mut held = Vec::new();
    for _ in 0..2 {
        let req = keyed(Method::GET, router.proxy_addr, "/sse?chunks=1", "k")
            .body(client::empty())
            .unwrap();
        let resp = within("an SSE head", DEADLINE, client.send(req))
            .await
            .unwrap();
        held.push(resp);
    }
    wait_until("/clusters shows 2 active requests", DEADLINE, || async {
        let clusters = router.admin_json("/clusters").await;
        clusters["clusters"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "a"))
            .map(|c| c["endpoints"][0]["active_requests"] == 2)
            .unwrap_or(false)
    })
    .await;
    a.release_sse(2);
    for resp in held {
        let body = http_body_util::BodyExt::collect(resp.into_body());
        within("an SSE body", DEADLINE, body).await.unwrap();
    }
    wait_until("/clusters shows no active request", DEADLINE, || async {
        let clusters = router.admin_json("/clusters").await;
        clusters["clusters"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "a"))
            .map(|c| c["endpoints"][0]["active_requests"] == 0)
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test]
async fn metrics_expose_requests_durations_config_version_and_reloads() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let router = RouterProcess::start(&rules("a", &a.endpoint(), &a.endpoint(), 5)).await;
    let client = HttpClient::http1();
    for _ in 0..3 {
        assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    }
    router
        .wait_for_metric(
            "router_requests_total",
            &[("route", "k"), ("cluster", "a"), ("status", "200")],
            |v| v == 3.0,
        )
        .await;
    router
        .wait_for_metric("router_request_duration_seconds_count", &[], |v| v >= 3.0)
        .await;
    let text = router.metrics_text().await;
    assert!(
        text.contains("router_request_duration_seconds_bucket"),
        "the duration is a histogram"
    );
    router
        .wait_for_metric("router_config_version", &[], |v| v == 5.0)
        .await;

    // A reload of the watched file moves the version gauge and counts an ok reload.
    router.rewrite_config(&rules("a", &a.endpoint(), &a.endpoint(), 6));
    router
        .wait_for_metric("router_config_version", &[], |v| v == 6.0)
        .await;
    router
        .wait_for_metric("router_config_reloads_total", &[("result", "ok")], |v| {
            v >= 1.0
        })
        .await;
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request_when_enabled() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let router = RouterProcess::start_with_args(
        &rules("a", &a.endpoint(), &a.endpoint(), 1),
        &["--access-log", "--log-format", "json"],
    )
    .await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    wait_until("the access log line is written", DEADLINE, || async {
        router.output().lines().any(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|v| {
                v["target"] == "access"
                    && v["route"] == "k"
                    && v["cluster"] == "a"
                    && v["status"] == 200
            })
        })
    })
    .await;
}

#[tokio::test]
async fn put_config_requires_the_bearer_token_when_one_is_configured() {
    let _trace = trace_init();
    let a = FakeModel::new().name("a").start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write the token");
    let router = RouterProcess::start_with_args(
        &rules("a", &a.endpoint(), &a.endpoint(), 1),
        &[
            "--admin-token-file",
            token_file.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    let resp = router
        .admin_put_json("/config", &rules("a", &a.endpoint(), &a.endpoint(), 2))
        .await;
    assert_status(&resp, 401);
    assert_eq!(resp.json()["error"]["code"], "unauthorized");
    let config = router.admin_json("/config").await;
    assert_eq!(config["version"], 1, "the rejected push changed nothing");
    // Reads stay open: health, metrics and the config need no token.
    assert_eq!(router.admin_get("/healthz").await.status, 200);

    let authorized = HttpClient::http1()
        .fetch(
            client::request(Method::PUT, router.admin_addr, "/config")
                .header("authorization", "Bearer s3cret-token")
                .header("content-type", "application/json")
                .body(client::full(
                    rules("a", &a.endpoint(), &a.endpoint(), 2).to_string(),
                ))
                .expect("a request"),
        )
        .await;
    assert_eq!(
        authorized.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&authorized.body)
    );
    assert_eq!(router.admin_json("/config").await["version"], 2);
}
