//! Lightbulb's versioned rule store and config API (`--store DIR`): the real binary, its
//! HTTP API, its `RoutingConfig.Watch` stream, and a crash (`kill -9`) in the middle of a
//! burst of writes.

use std::path::PathBuf;

use http::{Method, header};
use integration_tests::client::{self, Collected};
use integration_tests::lightbulb::{LightbulbProcess, lightbulb_bin, next_message};
use integration_tests::{DEADLINE, HttpClient, trace_init, within};
use routing_proto::lightbulb::v1 as pb;
use serde_json::{Value, json};
use tempfile::TempDir;

pub(crate) const OBJECTIVE: &str = "ContinueWatchingRanking";
pub(crate) const TOKEN: &str = "s3cret";

/// The seed rule set: everything goes to `default` (a model id), country CA to `ranker-v2`.
pub(crate) fn rules(default: &str) -> Value {
    json!({
        "clusters": {
            "ranker-v1": { "endpoints": ["127.0.0.1:9001"] },
            "ranker-v2": { "endpoints": ["127.0.0.1:9002"] }
        },
        "routes": {
            "ranker-v1": { "cluster": "ranker-v1" },
            "ranker-v2": { "cluster": "ranker-v2" }
        },
        "models": {
            "ranker-v1": { "routing_key": "ranker-v1", "version": "1" },
            "ranker-v2": { "routing_key": "ranker-v2", "version": "2" }
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

/// A temp dir holding the token file (`alice` and `bob`) and the store directory.
struct StoreDir {
    dir: TempDir,
}

impl StoreDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(
            dir.path().join("tokens"),
            format!("# config writers\nalice:{TOKEN}\nbob:other-token\n"),
        )
        .expect("write the token file");
        Self { dir }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Starts Lightbulb on this store (seeded with `rules("ranker-v1")` when empty).
    async fn start(&self, extra: &[&str]) -> LightbulbProcess {
        let store = self.store().display().to_string();
        let tokens = self.dir.path().join("tokens").display().to_string();
        let mut args = vec!["--store", &store, "--api-token-file", &tokens];
        args.extend_from_slice(extra);
        LightbulbProcess::start_with_args(&rules("ranker-v1"), &args).await
    }
}

fn authed(lightbulb: &LightbulbProcess, method: Method, path: &str) -> http::request::Builder {
    client::request(method, lightbulb.http_addr, path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

/// Sends `req` with `body` as JSON (or no body).
async fn send(
    lightbulb: &LightbulbProcess,
    req: http::request::Builder,
    body: Option<&Value>,
) -> Collected {
    let req = match body {
        Some(body) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(client::full(body.to_string())),
        None => req.body(client::empty()),
    };
    lightbulb.http_send(req.expect("a valid request")).await
}

/// `PUT /v1/config` of `rules` with `If-Match: "if_match"`, as alice.
pub(crate) async fn put_config(
    lightbulb: &LightbulbProcess,
    if_match: u64,
    rules: &Value,
) -> Collected {
    let req = authed(lightbulb, Method::PUT, "/v1/config")
        .header(header::IF_MATCH, format!("\"{if_match}\""));
    send(lightbulb, req, Some(rules)).await
}

/// `GET` that must answer 200, as JSON.
pub(crate) async fn get_json(lightbulb: &LightbulbProcess, path: &str) -> Value {
    let resp = lightbulb.http_get(path).await;
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    resp.json()
}

pub(crate) fn assert_status(resp: &Collected, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
}

/// The `POST /v1/resolve` answer for a request without attributes.
pub(crate) async fn resolve(lightbulb: &LightbulbProcess) -> Value {
    let resp = lightbulb
        .http_post_json(
            "/v1/resolve",
            &json!({ "objective": OBJECTIVE, "subjectId": "s" }),
        )
        .await;
    assert_status(&resp, 200, "resolve");
    resp.json()
}

#[tokio::test]
async fn the_seed_is_version_1_and_get_config_carries_its_etag() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let resp = lightbulb.http_get("/v1/config").await;
    assert_status(&resp, 200, "GET /v1/config");
    assert_eq!(resp.header("etag").as_deref(), Some("\"1\""));
    let config = resp.json();
    assert_eq!(config["version"], 1);
    assert_eq!(config["routes"]["ranker-v1"]["cluster"], "ranker-v1");
    assert_eq!(resolve(&lightbulb).await["ruleSetVersion"], 1);
    let history = get_json(&lightbulb, "/v1/config/history").await;
    assert_eq!(history["current"], 1);
    assert_eq!(history["versions"][0]["version"], 1);
    assert_eq!(history["versions"][0]["who"], "seed");
    assert!(store.store().join(format!("v{:020}.json", 1)).exists());
}

#[tokio::test]
async fn put_config_needs_if_match_with_the_current_version() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let next = rules("ranker-v2");

    let missing = send(
        &lightbulb,
        authed(&lightbulb, Method::PUT, "/v1/config"),
        Some(&next),
    )
    .await;
    assert_status(&missing, 428, "PUT without If-Match");
    assert_eq!(missing.json()["error"]["code"], "precondition_required");

    let stale = put_config(&lightbulb, 7, &next).await;
    assert_status(&stale, 409, "PUT with a stale If-Match");
    assert_eq!(stale.json()["error"]["current_version"], 1);

    let ok = put_config(&lightbulb, 1, &next).await;
    assert_status(&ok, 200, "PUT with the current If-Match");
    assert_eq!(ok.json()["version"], 2);
    assert_eq!(ok.header("etag").as_deref(), Some("\"2\""));
    let resp = lightbulb.http_get("/v1/config").await;
    assert_eq!(resp.header("etag").as_deref(), Some("\"2\""));
    assert_eq!(resp.json()["objectives"][OBJECTIVE]["default"], "ranker-v2");
    let answer = resolve(&lightbulb).await;
    assert_eq!(answer["routingKey"], "ranker-v2");
    assert_eq!(answer["ruleSetVersion"], 2);

    // The same If-Match again is stale now.
    assert_status(&put_config(&lightbulb, 1, &next).await, 409, "second PUT");
}

#[tokio::test]
async fn of_concurrent_writes_from_one_version_exactly_one_wins() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let writes = (0..8).map(|i| {
        let mut next = rules("ranker-v1");
        next["models"]["ranker-v1"]["version"] = json!(format!("racer-{i}"));
        let lightbulb = &lightbulb;
        async move { put_config(lightbulb, 1, &next).await.status.as_u16() }
    });
    let mut statuses = futures_util::future::join_all(writes).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    let history = get_json(&lightbulb, "/v1/config/history").await;
    assert_eq!(history["current"], 2);
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn sigterm_with_a_store_ends_watch_streams_and_exits_zero() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let mut lightbulb = store.start(&[]).await;
    let mut stream = lightbulb
        .routing_config()
        .await
        .watch(pb::WatchRequest::default())
        .await
        .expect("a Watch stream")
        .into_inner();
    let first = within("the first snapshot", DEADLINE, stream.message())
        .await
        .expect("a snapshot");
    assert!(first.is_some());
    lightbulb.sigterm();
    let end = within("the end of the Watch stream", DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    let status = lightbulb.wait_for_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", lightbulb.output());
}

#[tokio::test]
async fn changes_need_a_valid_bearer_token_and_reads_do_not() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let body = json!({ "cluster": "ranker-v1" });
    let anonymous = client::request(Method::PUT, lightbulb.http_addr, "/v1/routes/r");
    let resp = send(&lightbulb, anonymous, Some(&body)).await;
    assert_status(&resp, 401, "no token");
    assert_eq!(resp.header("www-authenticate").as_deref(), Some("Bearer"));
    let wrong = client::request(Method::PUT, lightbulb.http_addr, "/v1/routes/r")
        .header(header::AUTHORIZATION, "Bearer not-a-token");
    assert_status(
        &send(&lightbulb, wrong, Some(&body)).await,
        401,
        "bad token",
    );
    let rollback = client::request(Method::POST, lightbulb.http_addr, "/v1/config/rollback");
    let resp = send(&lightbulb, rollback, Some(&json!({ "version": 1 }))).await;
    assert_status(&resp, 401, "rollback without a token");
    assert_eq!(get_json(&lightbulb, "/v1/config").await["version"], 1);

    let bob = client::request(Method::PUT, lightbulb.http_addr, "/v1/routes/r")
        .header(header::AUTHORIZATION, "Bearer other-token");
    assert_status(
        &send(&lightbulb, bob, Some(&body)).await,
        200,
        "bob's token",
    );
    let history = get_json(&lightbulb, "/v1/config/history").await;
    assert_eq!(history["versions"][0]["who"], "bob");
}

#[tokio::test]
async fn an_invalid_rule_set_is_refused_with_every_problem_and_changes_nothing() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let mut invalid = rules("no-such-model");
    invalid["routes"]["ranker-v2"]["cluster"] = json!("no-such-cluster");
    invalid["models"]["ranker-v1"]["routing_key"] = json!("no-such-route");

    for (method, path) in [
        (Method::PUT, "/v1/config"),
        (Method::POST, "/v1/config/validate"),
    ] {
        let req = authed(&lightbulb, method, path).header(header::IF_MATCH, "\"1\"");
        let resp = send(&lightbulb, req, Some(&invalid)).await;
        assert_status(&resp, 400, path);
        let error = &resp.json()["error"];
        assert_eq!(error["code"], "invalid_config", "{error}");
        let problems = error["problems"].as_array().expect("a list of problems");
        assert_eq!(problems.len(), 3, "{error}");
        let text = error["problems"].to_string();
        for needle in [
            "no-such-model",
            "no-such-cluster",
            "no-such-route",
            r#"$.routes[\"ranker-v2\"].cluster"#,
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert!(
            problems
                .iter()
                .all(|p| p["path"].is_string() && p["message"].is_string())
        );
    }
    assert_eq!(get_json(&lightbulb, "/v1/config").await["version"], 1);

    let valid = lightbulb
        .http_post_json("/v1/config/validate", &rules("ranker-v2"))
        .await;
    assert_status(&valid, 200, "validate a valid rule set");
    assert_eq!(valid.json()["valid"], true);
    assert!(valid.json()["warnings"].is_array());
    assert_eq!(
        get_json(&lightbulb, "/v1/config").await["version"],
        1,
        "validate is a dry run"
    );
}

#[tokio::test]
async fn bad_json_unknown_fields_wrong_types_and_big_bodies_are_4xx() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&["--max-body-bytes", "2048"]).await;

    let mut typo = rules("ranker-v1");
    typo["clusters"]["ranker-v1"]["wieght"] = json!(1);
    let resp = put_config(&lightbulb, 1, &typo).await;
    assert_status(&resp, 400, "unknown field");
    let error = &resp.json()["error"];
    assert_eq!(error["code"], "invalid_json");
    let message = error["message"].as_str().expect("a message");
    assert!(message.contains("wieght"), "{message}");
    assert!(
        message.contains("line") && message.contains("column"),
        "{message}"
    );

    let req = authed(&lightbulb, Method::PUT, "/v1/routes/r")
        .header(header::CONTENT_TYPE, "application/json")
        .body(client::full(
            "{\"cluster\": \"ranker-v1\",\n \"timeout_ms\": \"soon\"}",
        ))
        .expect("a valid request");
    let resp = lightbulb.http_send(req).await;
    assert_status(&resp, 400, "wrong type in a route");
    let problem = &resp.json()["error"]["problems"][0];
    assert_eq!(problem["path"], r#"$.routes["r"].timeout_ms"#, "{problem}");
    assert!(
        problem["message"].as_str().unwrap().contains("line 2"),
        "{problem}"
    );

    let req = authed(&lightbulb, Method::PUT, "/v1/config")
        .header(header::IF_MATCH, "\"1\"")
        .header(header::CONTENT_TYPE, "application/json")
        .body(client::full("{ not json"))
        .expect("a valid request");
    assert_status(&lightbulb.http_send(req).await, 400, "broken JSON");

    let req = authed(&lightbulb, Method::PUT, "/v1/config")
        .header(header::IF_MATCH, "\"1\"")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(client::full(rules("ranker-v2").to_string()))
        .expect("a valid request");
    let resp = lightbulb.http_send(req).await;
    assert_status(&resp, 415, "text/plain");
    assert_eq!(resp.json()["error"]["code"], "unsupported_media_type");

    let mut big = rules("ranker-v2");
    big["models"]["ranker-v1"]["metadata"] = json!({ "padding": "x".repeat(4096) });
    let resp = put_config(&lightbulb, 1, &big).await;
    assert_status(&resp, 413, "a body over --max-body-bytes");
    assert_eq!(resp.json()["error"]["code"], "payload_too_large");

    assert_eq!(get_json(&lightbulb, "/v1/config").await["version"], 1);
}

#[tokio::test]
async fn a_route_put_on_its_own_shows_in_the_config_and_in_the_resolve_answer() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let req = authed(&lightbulb, Method::PUT, "/v1/routes/ranker-v9");
    let resp = send(&lightbulb, req, Some(&json!({ "cluster": "ranker-v2" }))).await;
    assert_status(&resp, 200, "PUT a route");
    assert_eq!(resp.json()["version"], 2);
    let config = get_json(&lightbulb, "/v1/config").await;
    assert_eq!(config["routes"]["ranker-v9"]["cluster"], "ranker-v2");
    assert_eq!(config["version"], 2);

    let req =
        authed(&lightbulb, Method::PUT, "/v1/models/ranker-v1").header(header::IF_MATCH, "\"2\"");
    let model = json!({ "routing_key": "ranker-v9", "version": "9" });
    assert_status(
        &send(&lightbulb, req, Some(&model)).await,
        200,
        "PUT a model",
    );
    let answer = resolve(&lightbulb).await;
    assert_eq!(answer["routingKey"], "ranker-v9", "{answer}");
    assert_eq!(answer["objectiveConfig"]["modelVersion"], "9", "{answer}");
    assert_eq!(answer["ruleSetVersion"], 3, "{answer}");

    // A granular change with a stale If-Match.
    let req =
        authed(&lightbulb, Method::PUT, "/v1/routes/ranker-v9").header(header::IF_MATCH, "\"2\"");
    let resp = send(&lightbulb, req, Some(&json!({ "cluster": "ranker-v1" }))).await;
    assert_status(&resp, 409, "stale If-Match on a route");
    assert_eq!(resp.json()["error"]["current_version"], 3);
}

#[tokio::test]
async fn deleting_what_is_still_referenced_is_refused_and_a_missing_name_is_404() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let resp = send(
        &lightbulb,
        authed(&lightbulb, Method::DELETE, "/v1/clusters/ranker-v2"),
        None,
    )
    .await;
    assert_status(&resp, 400, "delete a cluster a route uses");
    let problems = resp.json()["error"]["problems"].to_string();
    assert!(
        problems.contains(r#"$.routes[\"ranker-v2\"]"#),
        "{problems}"
    );

    let resp = send(
        &lightbulb,
        authed(&lightbulb, Method::DELETE, "/v1/experiments/nope"),
        None,
    )
    .await;
    assert_status(&resp, 404, "delete a missing experiment");
    assert_eq!(get_json(&lightbulb, "/v1/config").await["version"], 1);

    // Unreferenced: a new cluster, deleted again.
    let req = authed(&lightbulb, Method::PUT, "/v1/clusters/spare");
    let cluster = json!({ "endpoints": ["127.0.0.1:9009"] });
    assert_status(&send(&lightbulb, req, Some(&cluster)).await, 200, "PUT");
    let req =
        authed(&lightbulb, Method::DELETE, "/v1/clusters/spare").header(header::IF_MATCH, "\"2\"");
    let resp = send(&lightbulb, req, None).await;
    assert_status(&resp, 200, "delete an unused cluster");
    assert_eq!(resp.json()["version"], 3);
    assert!(
        get_json(&lightbulb, "/v1/config").await["clusters"]
            .get("spare")
            .is_none()
    );
}

#[tokio::test]
async fn history_lists_every_version_and_rollback_stores_an_old_one_as_new() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    assert_status(
        &put_config(&lightbulb, 1, &rules("ranker-v2")).await,
        200,
        "v2",
    );
    let mut v3 = rules("ranker-v2");
    v3["models"]["ranker-v2"]["version"] = json!("2b");
    assert_status(&put_config(&lightbulb, 2, &v3).await, 200, "v3");

    let history = get_json(&lightbulb, "/v1/config/history").await;
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v["version"].as_u64().expect("a number"))
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(history["versions"][0]["who"], "alice");
    assert!(
        history["versions"][0]["written_at_unix_ms"]
            .as_u64()
            .unwrap()
            > 0
    );

    let old = lightbulb.http_get("/v1/config/versions/2").await;
    assert_status(&old, 200, "version 2");
    assert_eq!(old.header("etag").as_deref(), Some("\"2\""));
    assert_eq!(old.json()["models"]["ranker-v2"]["version"], "2");
    assert_status(
        &lightbulb.http_get("/v1/config/versions/42").await,
        404,
        "a version never stored",
    );

    let req = authed(&lightbulb, Method::POST, "/v1/config/rollback");
    let resp = send(&lightbulb, req, Some(&json!({ "version": 1 }))).await;
    assert_status(&resp, 200, "rollback to 1");
    assert_eq!(resp.json()["version"], 4);
    let config = get_json(&lightbulb, "/v1/config").await;
    assert_eq!(config["version"], 4);
    let mut expected = rules("ranker-v1");
    expected["version"] = json!(4);
    let expected = models_config::parse(&expected.to_string()).expect("valid");
    let got = models_config::parse(&config.to_string()).expect("valid");
    assert_eq!(got, expected, "version 4 is version 1's content");
    assert_eq!(resolve(&lightbulb).await["routingKey"], "ranker-v1");

    let req = authed(&lightbulb, Method::POST, "/v1/config/rollback");
    let resp = send(&lightbulb, req, Some(&json!({ "version": 99 }))).await;
    assert_status(&resp, 404, "rollback to a version never stored");
    let req = authed(&lightbulb, Method::POST, "/v1/config/rollback");
    let resp = send(&lightbulb, req, Some(&json!({ "versoin": 1 }))).await;
    assert_status(&resp, 400, "rollback with a typo");
    assert!(resp.text().contains("versoin"), "{}", resp.text());
}

#[tokio::test]
async fn an_api_change_reaches_routing_config_watch() {
    let _trace = trace_init();
    let store = StoreDir::new();
    let lightbulb = store.start(&[]).await;
    let mut stream = lightbulb.watch_snapshots().await;
    let first = next_message("the first snapshot", &mut stream).await;
    assert_eq!(first.version, 1);

    let req = authed(&lightbulb, Method::PUT, "/v1/clusters/ranker-v4");
    let cluster = json!({ "endpoints": ["127.0.0.1:9004"] });
    assert_status(&send(&lightbulb, req, Some(&cluster)).await, 200, "cluster");
    let second = next_message("the snapshot after the change", &mut stream).await;
    assert_eq!(second.version, 2);
    let routing: Value = serde_json::from_str(&second.rule_set_json).expect("JSON");
    assert!(routing["clusters"]["ranker-v4"].is_object(), "{routing}");
}

#[tokio::test]
async fn a_store_without_tokens_or_insecure_no_auth_refuses_to_start() {
    let _trace = trace_init();
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = dir.path().join("store").display().to_string();
    let failed = LightbulbProcess::start_expecting_failure_with_args(
        &rules("ranker-v1").to_string(),
        &["--store", &store],
    )
    .await;
    assert_eq!(failed.status.code(), Some(64), "{failed:?}");
    assert!(failed.stderr.contains("LIGHTBULB_API_TOKEN"), "{failed:?}");

    // On loopback, the flag is allowed, and changes are anonymous.
    let lightbulb = LightbulbProcess::start_with_args(
        &rules("ranker-v1"),
        &["--store", &store, "--insecure-no-auth"],
    )
    .await;
    let req = client::request(Method::PUT, lightbulb.http_addr, "/v1/routes/r");
    let resp = send(&lightbulb, req, Some(&json!({ "cluster": "ranker-v1" }))).await;
    assert_status(&resp, 200, "no auth needed");
    let history = get_json(&lightbulb, "/v1/config/history").await;
    assert_eq!(history["versions"][0]["who"], "anonymous");
}

/// `kill -9` while a client writes version after version: after a restart on the same
/// directory, the current version is at least the last acknowledged one, and every
/// acknowledged version still in the history reads back as it was sent.
#[tokio::test]
async fn every_acknowledged_version_survives_kill_9_during_a_burst_of_writes() {
    const HISTORY: u64 = 50;
    const WRITES: usize = 200;
    const KILL_AFTER: usize = 20;
    let _trace = trace_init();
    let store = StoreDir::new();
    let history = HISTORY.to_string();
    let mut lightbulb = store.start(&["--history", &history]).await;

    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = lightbulb.http_addr;
    let writer = tokio::spawn(async move {
        let client = HttpClient::http1();
        let mut current = 1;
        for i in 0..WRITES {
            let marker = format!("burst-{i}");
            let mut next = rules("ranker-v1");
            next["models"]["ranker-v1"]["version"] = json!(marker);
            let req = client::request(Method::PUT, addr, "/v1/config")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::IF_MATCH, format!("\"{current}\""))
                .header(header::CONTENT_TYPE, "application/json")
                .body(client::full(next.to_string()))
                .expect("a valid request");
            // The process is killed at some point: a failed exchange ends the burst.
            let Ok(resp) = client.send(req).await else {
                break;
            };
            let Ok(resp) = client::collect(resp).await else {
                break;
            };
            assert_eq!(resp.status, 200, "write {i}: {}", resp.text());
            current = resp.json()["version"].as_u64().expect("a version");
            if acked_tx.send((current, marker)).is_err() {
                break;
            }
        }
    });

    let mut acked = Vec::new();
    while acked.len() < KILL_AFTER {
        let ack = within("an acknowledged write", DEADLINE, acked_rx.recv())
            .await
            .expect("the writer acknowledges writes until the kill");
        acked.push(ack);
    }
    lightbulb.sigkill();
    lightbulb.wait_for_exit(DEADLINE).await;
    within("the writer stops", DEADLINE, writer)
        .await
        .expect("the writer does not panic");
    while let Some(ack) = acked_rx.recv().await {
        acked.push(ack);
    }
    let (last, _) = acked.last().cloned().expect("acknowledged writes");
    drop(lightbulb);

    let restarted = store.start(&["--history", &history]).await;
    let config = get_json(&restarted, "/v1/config").await;
    let current = config["version"].as_u64().expect("a version");
    assert!(
        current >= last,
        "current version {current} < last acknowledged {last}"
    );
    let mut checked = 0;
    for (version, marker) in &acked {
        if version + HISTORY <= current {
            continue; // pruned: beyond the history bound
        }
        let old = get_json(&restarted, &format!("/v1/config/versions/{version}")).await;
        assert_eq!(old["version"], *version);
        assert_eq!(
            old["models"]["ranker-v1"]["version"], *marker,
            "version {version}"
        );
        checked += 1;
    }
    assert!(checked > 0, "at least one acknowledged version was checked");
    // And writing goes on from there.
    assert_status(
        &put_config(&restarted, current, &rules("ranker-v2")).await,
        200,
        "a write after the restart",
    );
}

#[test]
fn help_documents_the_store_and_api_flags() {
    let output = std::process::Command::new(lightbulb_bin())
        .arg("--help")
        .env_remove("LIGHTBULB_API_TOKEN")
        .output()
        .expect("run lightbulb --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--store",
        "--history",
        "--api-token-file",
        "--api-token",
        "LIGHTBULB_API_TOKEN",
        "--insecure-no-auth",
        "--max-body-bytes",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}
