//! `router --control-plane URL[,URL...]`: a router following the real Lightbulb's
//! `RoutingConfig.Watch` stream serves its routes and switches with every change without
//! failing a request; keeps serving when Lightbulb goes away; restarts from the snapshot it
//! kept on disk; fails over to the next URL; and without a snapshot stays not ready until a
//! Lightbulb answers. An invalid snapshot is never applied: Lightbulb only sends valid ones,
//! so that is shown with an in-process fake `RoutingConfig` server (and unit tests of
//! `router::control_plane::apply_snapshot`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::Version;
use integration_tests::lightbulb::LightbulbProcess;
use integration_tests::process::{Service, Started, rule_set_text};
use integration_tests::{
    DEADLINE, FakeModel, HttpClient, Listening, RouterProcess, client, trace_init, wait_until,
    within,
};
use routing_proto::lightbulb::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::support::served_by;

/// The `lightbulb` binary, for starting it on an address reserved beforehand (see
/// [`start_lightbulb_on`]).
const LIGHTBULB: Service = Service {
    name: "lightbulb",
    label: "lightbulb",
    env_override: "LIGHTBULB_BIN",
    listen_args: ["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    listening: "lightbulb listening",
    addr_keys: ["grpc", "http"],
};

/// Clusters `a` and `b`; route `k` to `key_cluster`, route `other` to `a`.
fn rules(version: u64, key_cluster: &str, a: &Listening, b: &Listening) -> Value {
    json!({
        "version": version,
        "clusters": {
            "a": { "endpoints": [a.endpoint()] },
            "b": { "endpoints": [b.endpoint()] },
        },
        "routes": {
            "k": { "cluster": key_cluster },
            "other": { "cluster": "a" },
        },
    })
}

async fn fakes() -> (Listening, Listening) {
    (
        FakeModel::new().name("a").start().await,
        FakeModel::new().name("b").start().await,
    )
}

/// A loopback address nothing listens on (a port the OS just handed out and took back): a
/// dead control plane, or one that a test starts later.
fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("a local address")
}

/// Starts Lightbulb on `rule_set` with its gRPC server on `grpc`.
async fn start_lightbulb_on(grpc: SocketAddr, rule_set: &Value) -> Started {
    let grpc = grpc.to_string();
    LIGHTBULB
        .start_listening_on(
            &rule_set_text(rule_set),
            &["--grpc", &grpc, "--http", "127.0.0.1:0"],
            &[],
        )
        .await
}

/// A `RoutingConfig` server that streams, to its first watcher, whatever the test sends.
struct FakeWatch {
    snapshots: Mutex<Option<mpsc::UnboundedReceiver<pb::RoutingSnapshot>>>,
}

type SnapshotStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<pb::RoutingSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl pb::routing_config_server::RoutingConfig for FakeWatch {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rx = self
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| Status::unavailable("this fake serves one watcher"))?;
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let snapshot = rx.recv().await?;
            Some((Ok(snapshot), rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Starts a [`FakeWatch`] on `127.0.0.1:0`; returns its URL, the sender of its snapshots and
/// the handle that stops it when dropped.
async fn start_fake_watch() -> (
    String,
    mpsc::UnboundedSender<pb::RoutingSnapshot>,
    oneshot::Sender<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("a local address"));
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = FakeWatch {
        snapshots: Mutex::new(Some(rx)),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::routing_config_server::RoutingConfigServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (url, tx, stop)
}

fn snapshot(version: u64, rule_set: &Value) -> pb::RoutingSnapshot {
    pb::RoutingSnapshot {
        version,
        rule_set_json: rule_set.to_string(),
    }
}

async fn wait_ready(router: &RouterProcess) {
    wait_until("the router is ready", DEADLINE, || async {
        router.admin_get("/readyz").await.status == 200
    })
    .await;
}

async fn wait_served_by(router: &RouterProcess, key: &str, name: &str) {
    let client = HttpClient::http1();
    wait_until(
        &format!("key {key} is served by {name}"),
        DEADLINE,
        || async {
            let resp = client.get(router.proxy_addr, "/", Some(key)).await;
            resp.status == 200 && resp.text() == name
        },
    )
    .await;
}

/// The version in the snapshot file the router keeps, if there is one.
fn snapshot_version(router: &RouterProcess) -> Option<u64> {
    let text = std::fs::read_to_string(&router.config_path).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["version"].as_u64()
}

async fn wait_snapshot_version(router: &RouterProcess, version: u64) {
    wait_until(
        &format!("the snapshot on disk has version {version}"),
        DEADLINE,
        || std::future::ready(snapshot_version(router) == Some(version)),
    )
    .await;
}

#[tokio::test]
async fn a_router_follows_lightbulb_and_switches_routes_without_failing_a_request() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let lightbulb = LightbulbProcess::start(&rules(1, "a", &a, &b)).await;
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let router =
        RouterProcess::start_following(&[lightbulb.grpc_url()], snapshots.path(), &[]).await;

    wait_ready(&router).await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    assert_eq!(served_by(&client, router.proxy_addr, "other").await, "a");
    let ready = router.admin_json("/readyz").await;
    assert_eq!(ready["source"], "control_plane");
    assert_eq!(ready["control_plane_connected"], true);
    assert_eq!(ready["version"], 1);
    router
        .wait_for_metric("router_control_plane_connected", &[], |v| v == 1.0)
        .await;
    let source = router
        .metric("router_config_source", &[("source", "control_plane")])
        .await;
    assert_eq!(source, 1.0);
    wait_snapshot_version(&router, 1).await;

    switch_k_to_b_under_load(router.proxy_addr, || {
        lightbulb.rewrite_config(&rules(2, "b", &a, &b));
        std::future::ready(())
    })
    .await;

    wait_served_by(&router, "k", "b").await;
    assert_eq!(served_by(&client, router.proxy_addr, "other").await, "a");
    let config = router.admin_json("/config").await;
    assert_eq!(config["version"], 2);
    wait_snapshot_version(&router, 2).await;
    assert_eq!(
        router
            .metric("router_config_reloads_total", &[("result", "error")])
            .await,
        0.0
    );
}

/// Runs HTTP/1.1 and h2c client loops on key `k` (served by `a`), makes `change` once they
/// are under way, and asserts that no request fails and that each loop moves from `a` to
/// `b` exactly once.
async fn switch_k_to_b_under_load<F, Fut>(proxy: SocketAddr, change: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sent = Arc::new(AtomicUsize::new(0));
    let changed = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let sent = sent.clone();
        let changed = changed.clone();
        loops.push(tokio::spawn(async move {
            let client = HttpClient::for_version(version);
            let mut seen_b = 0;
            // Bounded: the loop must see the new cluster long before this many requests.
            for i in 0..20_000 {
                let was_changed = changed.load(Ordering::SeqCst);
                let resp = client.get(proxy, "/", Some("k")).await;
                sent.fetch_add(1, Ordering::SeqCst);
                assert_eq!(
                    resp.status,
                    200,
                    "{version:?} request {i} failed during the switch: {:?}",
                    String::from_utf8_lossy(&resp.body)
                );
                match resp.text().as_str() {
                    "a" => assert_eq!(seen_b, 0, "{version:?}: a answered after b did"),
                    "b" => {
                        assert!(was_changed, "b answered before the change");
                        seen_b += 1;
                        if seen_b == 50 {
                            return i + 1;
                        }
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            panic!("{version:?}: the new cluster never answered within 20000 requests");
        }));
    }
    wait_until("the clients have sent 100 requests", DEADLINE, || {
        std::future::ready(sent.load(Ordering::SeqCst) >= 100)
    })
    .await;
    changed.store(true, Ordering::SeqCst);
    change().await;
    for l in loops {
        let requests = within("a client loop to finish", 4 * DEADLINE, l)
            .await
            .expect("a client loop panicked");
        assert!(requests > 50);
    }
}

#[tokio::test]
async fn a_change_through_the_config_api_reaches_a_router_under_load_without_failing_a_request() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let store = tempfile::tempdir().expect("a temp dir");
    let store_dir = store.path().join("rules");
    let lightbulb = LightbulbProcess::start_with_args(
        &rules(1, "a", &a, &b),
        &[
            "--store",
            store_dir.to_str().expect("utf-8 path"),
            "--insecure-no-auth",
        ],
    )
    .await;
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let router =
        RouterProcess::start_following(&[lightbulb.grpc_url()], snapshots.path(), &[]).await;
    wait_ready(&router).await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");

    switch_k_to_b_under_load(router.proxy_addr, || async {
        let resp = lightbulb
            .http_send(
                client::request(http::Method::PUT, lightbulb.http_addr, "/v1/routes/k")
                    .header("content-type", "application/json")
                    .body(client::full(r#"{"cluster":"b"}"#))
                    .expect("a request"),
            )
            .await;
        assert_eq!(
            resp.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.json()["version"], 2);
    })
    .await;

    assert_eq!(served_by(&client, router.proxy_addr, "other").await, "a");
    assert_eq!(router.admin_json("/config").await["version"], 2);
    wait_snapshot_version(&router, 2).await;
}

#[tokio::test]
async fn the_router_keeps_serving_when_lightbulb_goes_away() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let lightbulb = LightbulbProcess::start(&rules(1, "b", &a, &b)).await;
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let router =
        RouterProcess::start_following(&[lightbulb.grpc_url()], snapshots.path(), &[]).await;
    wait_ready(&router).await;
    router
        .wait_for_metric("router_control_plane_connected", &[], |v| v == 1.0)
        .await;

    drop(lightbulb); // kills it
    router
        .wait_for_metric("router_control_plane_connected", &[], |v| v == 0.0)
        .await;
    let client = HttpClient::http1();
    for _ in 0..20 {
        assert_eq!(served_by(&client, router.proxy_addr, "k").await, "b");
    }
    let ready = router.admin_json("/readyz").await;
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["control_plane_connected"], false);
    assert_eq!(ready["version"], 1);
}

#[tokio::test]
async fn a_router_restarted_without_lightbulb_serves_its_disk_snapshot() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let lightbulb = LightbulbProcess::start(&rules(7, "b", &a, &b)).await;
    let url = lightbulb.grpc_url();
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let first =
        RouterProcess::start_following(std::slice::from_ref(&url), snapshots.path(), &[]).await;
    wait_served_by(&first, "k", "b").await;
    wait_snapshot_version(&first, 7).await;
    drop(first);
    drop(lightbulb);

    let second = RouterProcess::start_following(&[url], snapshots.path(), &[]).await;
    wait_ready(&second).await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, second.proxy_addr, "k").await, "b");
    assert_eq!(served_by(&client, second.proxy_addr, "other").await, "a");
    let ready = second.admin_json("/readyz").await;
    assert_eq!(ready["source"], "snapshot");
    assert_eq!(ready["version"], 7);
    assert_eq!(ready["control_plane_connected"], false);
    let source = second
        .metric("router_config_source", &[("source", "snapshot")])
        .await;
    assert_eq!(source, 1.0);
}

#[tokio::test]
async fn the_router_fails_over_to_the_next_lightbulb() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let dead = format!("http://{}", unused_addr());
    let first = LightbulbProcess::start(&rules(1, "a", &a, &b)).await;
    let second = LightbulbProcess::start(&rules(2, "b", &a, &b)).await;
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let router = RouterProcess::start_following(
        &[dead, first.grpc_url(), second.grpc_url()],
        snapshots.path(),
        &[],
    )
    .await;

    // The dead URL is skipped for the first live one.
    wait_served_by(&router, "k", "a").await;
    wait_ready(&router).await;

    // The one followed goes away: the next one takes over.
    drop(first);
    wait_served_by(&router, "k", "b").await;
    router
        .wait_for_metric("router_control_plane_connected", &[], |v| v == 1.0)
        .await;
    assert_eq!(router.admin_json("/config").await["version"], 2);
    wait_snapshot_version(&router, 2).await;
}

#[tokio::test]
async fn without_a_snapshot_the_router_is_not_ready_until_lightbulb_answers() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let grpc = unused_addr();
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let router =
        RouterProcess::start_following(&[format!("http://{grpc}")], snapshots.path(), &[]).await;

    let not_ready = router.admin_get("/readyz").await;
    assert_eq!(not_ready.status, 503);
    let body = not_ready.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["source"], "none");
    let client = HttpClient::http1();
    let unknown = client.get(router.proxy_addr, "/", Some("k")).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "unknown_routing_key");
    assert!(snapshot_version(&router).is_none());

    let _lightbulb = start_lightbulb_on(grpc, &rules(3, "a", &a, &b)).await;
    wait_ready(&router).await;
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    assert_eq!(
        router.admin_json("/readyz").await["source"],
        "control_plane"
    );
    wait_snapshot_version(&router, 3).await;
}

#[tokio::test]
async fn an_invalid_snapshot_is_counted_and_never_applied() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let (url, snapshots, _stop) = start_fake_watch().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let router = RouterProcess::start_following(&[url], dir.path(), &[]).await;
    router
        .wait_for_metric("router_control_plane_connected", &[], |v| v == 1.0)
        .await;

    // A route to a cluster that does not exist: rejected, and the router stays not ready.
    let dangling = json!({
        "version": 1,
        "clusters": { "a": { "endpoints": [a.endpoint()] } },
        "routes": { "k": { "cluster": "missing" } },
    });
    snapshots
        .send(snapshot(1, &dangling))
        .expect("the fake is watched");
    router
        .wait_for_metric("router_config_reloads_total", &[("result", "error")], |v| {
            v >= 1.0
        })
        .await;
    assert_eq!(router.admin_get("/readyz").await.status, 503);
    assert!(snapshot_version(&router).is_none());

    snapshots
        .send(snapshot(2, &rules(2, "a", &a, &b)))
        .expect("the fake is watched");
    wait_ready(&router).await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    wait_snapshot_version(&router, 2).await;

    // Not JSON, then a snapshot whose version disagrees with its rule set: both rejected,
    // the routes in force and the snapshot on disk stay.
    snapshots
        .send(pb::RoutingSnapshot {
            version: 3,
            rule_set_json: "{ not json".to_string(),
        })
        .expect("the fake is watched");
    snapshots
        .send(snapshot(4, &rules(3, "b", &a, &b)))
        .expect("the fake is watched");
    router
        .wait_for_metric("router_config_reloads_total", &[("result", "error")], |v| {
            v >= 3.0
        })
        .await;
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "a");
    assert_eq!(router.admin_json("/config").await["version"], 2);
    assert_eq!(snapshot_version(&router), Some(2));
    assert!(
        router.output().contains("unknown cluster"),
        "every problem is logged"
    );
}

#[tokio::test]
async fn an_older_snapshot_is_held_back_and_a_newer_one_replaces_it() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let (url, snapshots, _stop) = start_fake_watch().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    // The default grace (5 s) is far longer than this test needs between its two sends.
    let router = RouterProcess::start_following(&[url], dir.path(), &[]).await;
    snapshots
        .send(snapshot(5, &rules(5, "b", &a, &b)))
        .expect("the fake is watched");
    wait_ready(&router).await;
    wait_snapshot_version(&router, 5).await;

    // A replica that is behind offers version 3, then catches up with version 6.
    snapshots
        .send(snapshot(3, &rules(3, "a", &a, &b)))
        .expect("the fake is watched");
    router
        .wait_for_metric("router_control_plane_stale_snapshots_total", &[], |v| {
            v >= 1.0
        })
        .await;
    let client = HttpClient::http1();
    assert_eq!(served_by(&client, router.proxy_addr, "k").await, "b");
    snapshots
        .send(snapshot(6, &rules(6, "b", &a, &b)))
        .expect("the fake is watched");
    wait_snapshot_version(&router, 6).await;
    assert_eq!(router.admin_json("/config").await["version"], 6);
    assert_eq!(
        router
            .metric("router_config_reloads_total", &[("result", "ok")])
            .await,
        2.0,
        "versions 5 and 6 were applied, 3 never"
    );
}

#[tokio::test]
async fn an_older_snapshot_offered_past_the_grace_period_is_applied() {
    let _trace = trace_init();
    let (a, b) = fakes().await;
    let (url, snapshots, _stop) = start_fake_watch().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let router = RouterProcess::start_following(
        &[url],
        dir.path(),
        &["--control-plane-stale-grace-ms", "100"],
    )
    .await;
    snapshots
        .send(snapshot(5, &rules(5, "b", &a, &b)))
        .expect("the fake is watched");
    wait_ready(&router).await;

    // The control plane's store was reset: version 1 is all it will ever offer.
    snapshots
        .send(snapshot(1, &rules(1, "a", &a, &b)))
        .expect("the fake is watched");
    wait_snapshot_version(&router, 1).await;
    wait_served_by(&router, "k", "a").await;
    assert_eq!(router.admin_json("/config").await["version"], 1);
}
