use std::net::SocketAddr;

use routing_proto::lightbulb::v1::resolver_client::ResolverClient;
use routing_proto::lightbulb::v1::routing_config_client::RoutingConfigClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::{Channel, Server, server::TcpIncoming};

use super::*;

const RULES: &str = r#"{
    "version": 3,
    "clusters": { "c": { "endpoints": ["127.0.0.1:19001"] } },
    "routes": { "r-a": { "cluster": "c" }, "r-b": { "cluster": "c" } },
    "models": {
        "a": { "routing_key": "r-a", "version": "1", "input_type": "triton_v2",
               "parameters": { "k": "v" }, "metadata": { "owner": "team" } },
        "b": { "routing_key": "r-b", "version": "2" }
    },
    "experiments": { "exp": { "cells": { "control": 50, "treatment": 50 } } },
    "objectives": {
        "Obj": {
            "rules": [
                { "when": { "traffic_class": "synthetic" }, "model": "b" },
                { "when": { "experiment": "exp", "cell": "treatment" }, "model": "b" }
            ],
            "default": "a",
            "shadow": [{ "model": "b", "sample_percent": 12.5 }],
            "cache_ttl_ms": 1500
        }
    }
}"#;

fn engine(json: &str) -> Engine {
    Engine::new(&models_config::parse(json).expect("valid"))
}

/// A running server on `127.0.0.1:0` and a client connected to it.
struct Running {
    client: ResolverClient<Channel>,
    engine: Arc<ArcSwap<Engine>>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start() -> Running {
    let engine = Arc::new(ArcSwap::from_pointee(engine(RULES)));
    // Bound before the server task starts, so the port is listening when the client
    // connects: no sleep needed.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(ResolverService::new(Arc::clone(&engine)).into_server())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            }),
    );
    let client = ResolverClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    Running {
        client,
        engine,
        stop,
        server,
    }
}

impl Running {
    async fn shutdown(self) {
        drop(self.client);
        self.stop.send(()).expect("server still running");
        self.server
            .await
            .expect("server task did not panic")
            .expect("server ran cleanly");
    }
}

fn request(objective: &str) -> pb::ResolveRequest {
    pb::ResolveRequest {
        objective: objective.to_owned(),
        ..pb::ResolveRequest::default()
    }
}

#[tokio::test]
async fn resolve_returns_the_full_answer() {
    let mut running = start().await;
    let response = running
        .client
        .resolve(request("Obj"))
        .await
        .expect("resolves")
        .into_inner();
    assert_eq!(response.routing_key, "r-a");
    assert_eq!(response.cache_ttl_ms, 1_500);
    assert_eq!(response.rule_set_version, 3);
    let config = response.objective_config.expect("config is set");
    assert_eq!(config.objective, "Obj");
    assert_eq!(config.model_id, "a");
    assert_eq!(config.model_version, "1");
    assert_eq!(config.input_type, "triton_v2");
    assert_eq!(config.experiment_id, "");
    assert_eq!(config.parameters["k"], "v");
    assert_eq!(config.metadata["owner"], "team");
    assert_eq!(
        response.shadows,
        [pb::ShadowTarget {
            model_id: "b".to_owned(),
            routing_key: "r-b".to_owned(),
            sample_percent: 12.5,
        }]
    );

    let mut allocated = request("Obj");
    allocated
        .experiment_allocations
        .insert("exp".to_owned(), "treatment".to_owned());
    let response = running
        .client
        .resolve(allocated)
        .await
        .unwrap()
        .into_inner();
    let config = response.objective_config.unwrap();
    assert_eq!(
        (
            config.model_id.as_str(),
            config.experiment_id.as_str(),
            config.experiment_cell.as_str()
        ),
        ("b", "exp", "treatment")
    );

    let mut synthetic = request("Obj");
    synthetic.set_traffic_class(pb::TrafficClass::Synthetic);
    let response = running
        .client
        .resolve(synthetic)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.routing_key, "r-b");

    running.shutdown().await;
}

#[tokio::test]
async fn errors_become_statuses() {
    let mut running = start().await;
    let status = running.client.resolve(request("Nope")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), r#"unknown objective "Nope""#);

    let status = running.client.resolve(request("")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut bad_class = request("Obj");
    bad_class.traffic_class = 9;
    let status = running.client.resolve(bad_class).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "unknown traffic class 9");

    let mut bad_cell = request("Obj");
    bad_cell
        .experiment_allocations
        .insert("exp".to_owned(), "nope".to_owned());
    let status = running.client.resolve(bad_cell).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    running.shutdown().await;
}

#[tokio::test]
async fn batch_answers_each_request_in_order() {
    let mut running = start().await;
    let mut synthetic = request("Obj");
    synthetic.set_traffic_class(pb::TrafficClass::Synthetic);
    let batch = pb::ResolveBatchRequest {
        requests: vec![request("Obj"), request("Nope"), synthetic],
    };
    let results = running
        .client
        .resolve_batch(batch)
        .await
        .expect("batch resolves")
        .into_inner()
        .results;
    let outcomes: Vec<_> = results
        .into_iter()
        .map(|r| r.outcome.expect("every result has an outcome"))
        .collect();
    match &outcomes[..] {
        [
            pb::resolve_result::Outcome::Response(first),
            pb::resolve_result::Outcome::Error(second),
            pb::resolve_result::Outcome::Response(third),
        ] => {
            assert_eq!(first.routing_key, "r-a");
            assert_eq!(second.code, Code::NotFound as i32);
            assert_eq!(second.message, r#"unknown objective "Nope""#);
            assert_eq!(third.routing_key, "r-b");
        }
        other => panic!("unexpected outcomes {other:?}"),
    }

    let too_big = pb::ResolveBatchRequest {
        requests: vec![request("Obj"); MAX_BATCH + 1],
    };
    let status = running.client.resolve_batch(too_big).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    running.shutdown().await;
}

#[tokio::test]
async fn a_swapped_engine_answers_the_next_call() {
    let mut running = start().await;
    let first = running.client.resolve(request("Obj")).await.unwrap();
    assert_eq!(first.into_inner().rule_set_version, 3);

    running.engine.store(Arc::new(engine(
        &RULES.replace(r#""version": 3"#, r#""version": 4"#),
    )));
    let second = running.client.resolve(request("Obj")).await.unwrap();
    assert_eq!(second.into_inner().rule_set_version, 4);

    running.shutdown().await;
}

#[test]
fn request_conversion_treats_empty_and_unspecified_as_absent() {
    let ctx = RequestContext::try_from(pb::ResolveRequest {
        objective: "Obj".to_owned(),
        tenant: String::new(),
        subject_id: "u1".to_owned(),
        ..pb::ResolveRequest::default()
    })
    .unwrap();
    assert_eq!(ctx.tenant, None);
    assert_eq!(ctx.subject_id.as_deref(), Some("u1"));
    assert_eq!(ctx.traffic_class, TrafficClass::Live);

    let mut live = request("Obj");
    live.set_traffic_class(pb::TrafficClass::Live);
    assert_eq!(
        RequestContext::try_from(live).unwrap().traffic_class,
        TrafficClass::Live
    );
}

fn rule_set(version: u64) -> models_config::ValidRuleSet {
    models_config::parse(RULES)
        .expect("valid")
        .with_version(version)
}

#[test]
fn snapshot_holds_clusters_and_routes_only() {
    let rules = rule_set(11);
    let snapshot = routing_snapshot(&rules).unwrap();
    assert_eq!(snapshot.version, 11);
    // The router reads it with the same code as a file.
    let routing = models_config::parse(&snapshot.rule_set_json).expect("a valid rule set");
    assert_eq!(routing.version, 11);
    assert_eq!(routing.clusters, rules.clusters);
    assert_eq!(routing.routes, rules.routes);
    assert!(routing.models.is_empty());
    assert!(routing.experiments.is_empty());
    assert!(routing.objectives.is_empty());
}

#[tokio::test]
async fn watch_sends_the_current_snapshot_then_every_change() {
    let (publish, rules) = watch::channel(rule_set(1));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(RoutingConfigService::new(rules).into_server())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            }),
    );
    let mut client = RoutingConfigClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let mut stream = client
        .watch(pb::WatchRequest {
            node_id: "router-0".to_owned(),
        })
        .await
        .expect("watch starts")
        .into_inner();

    let first = stream.message().await.unwrap().expect("a first snapshot");
    assert_eq!(first.version, 1);

    publish.send(rule_set(2)).expect("a watcher is subscribed");
    let second = stream.message().await.unwrap().expect("a second snapshot");
    assert_eq!(second.version, 2);
    assert_eq!(
        models_config::parse(&second.rule_set_json).unwrap().version,
        2
    );

    // Dropping the publisher ends every stream cleanly.
    drop(publish);
    assert!(stream.message().await.unwrap().is_none());

    drop(client);
    stop.send(()).expect("server still running");
    server
        .await
        .expect("server task did not panic")
        .expect("server ran cleanly");
}
