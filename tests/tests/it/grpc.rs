//! gRPC through the router: a tonic client speaks h2c to the router, the router speaks h2c
//! to a tonic upstream. Unary and server-streaming calls, trailers and non-OK statuses pass
//! through; the router's own errors are gRPC statuses.

use integration_tests::fake_grpc::pb::echo_client::EchoClient;
use integration_tests::fake_grpc::pb::{CountReply, CountRequest, SayRequest};
use integration_tests::{
    DEADLINE, DeadPort, FakeGrpc, GrpcListening, RouterProcess, trace_init, within,
};
use serde_json::json;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::support::{echo_client, keyed_call, say};

/// A router with routes `echo` (h2c cluster), `echo-auto` (auto cluster) and `dead` (a
/// cluster whose only endpoint refuses connections; keep the `DeadPort` alive).
async fn router_for(upstream: &GrpcListening) -> (RouterProcess, DeadPort) {
    let dead = DeadPort::new();
    let router = RouterProcess::start(&json!({
        "clusters": {
            "echo-h2": { "endpoints": [upstream.endpoint()], "protocol": "http2" },
            "echo-auto": { "endpoints": [upstream.endpoint()], "protocol": "auto" },
            "dead": { "endpoints": [dead.addr().to_string()], "protocol": "http2" },
        },
        "routes": {
            "echo": { "cluster": "echo-h2" },
            "echo-auto": { "cluster": "echo-auto" },
            "dead": { "cluster": "dead" },
        },
    }))
    .await;
    (router, dead)
}

/// `Count(n, fail_after)` with routing key `key`, awaited within the deadline up to the
/// response headers (`what` names it).
async fn count(
    client: &mut EchoClient<Channel>,
    what: &str,
    key: &str,
    n: u32,
    fail_after: u32,
) -> Result<Streaming<CountReply>, tonic::Status> {
    let request = keyed_call(CountRequest { n, fail_after }, key);
    within(what, DEADLINE, client.count(request))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_unary_call_passes_through_the_router() {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().name("echo-1").start().await;
    let (router, _dead) = router_for(&upstream).await;
    let mut client = echo_client(&router).await;

    for key in ["echo", "echo-auto"] {
        let reply = say(&mut client, "Say", key, &format!("hello {key}"))
            .await
            .unwrap_or_else(|status| panic!("Say through route {key}: {status:?}"));
        assert_eq!(reply.message, format!("hello {key}"));
        assert_eq!(reply.server, "echo-1");
    }
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn a_server_streaming_call_passes_through_with_its_ok_trailers() {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().start().await;
    let (router, _dead) = router_for(&upstream).await;
    let mut client = echo_client(&router).await;

    let mut stream = count(&mut client, "Count", "echo", 50, 0).await.unwrap();
    let mut got = Vec::new();
    // `message()` returns Ok(None) only once trailers with grpc-status 0 arrived: tonic
    // reports a missing status as an error.
    while let Some(reply) = within("a streamed reply", DEADLINE, stream.message())
        .await
        .unwrap_or_else(|status| panic!("the stream failed: {status:?}"))
    {
        got.push(reply.i);
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    let trailers = within("the trailers", DEADLINE, stream.trailers())
        .await
        .unwrap();
    assert!(trailers.is_some(), "the OK trailers reach the client");
}

#[tokio::test]
async fn a_non_ok_status_of_a_unary_call_reaches_the_client() {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().start().await;
    let (router, _dead) = router_for(&upstream).await;
    let mut client = echo_client(&router).await;

    let status = say(&mut client, "Say(fail)", "echo", "fail")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "nope");
}

#[tokio::test]
async fn a_status_in_trailers_after_streamed_messages_reaches_the_client() {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().start().await;
    let (router, _dead) = router_for(&upstream).await;
    let mut client = echo_client(&router).await;

    let mut stream = count(&mut client, "Count", "echo", 10, 3).await.unwrap();
    for i in 0..3 {
        let reply = within("a streamed reply", DEADLINE, stream.message())
            .await
            .unwrap()
            .expect("a message before the error");
        assert_eq!(reply.i, i);
    }
    let status = within("the final status", DEADLINE, stream.message())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "stopped");
    assert_eq!(
        status
            .metadata()
            .get("x-trailer")
            .map(|v| v.to_str().unwrap()),
        Some("kept"),
        "custom trailing metadata is kept"
    );
}

#[tokio::test]
async fn router_errors_reach_a_grpc_client_as_grpc_statuses() {
    let _trace = trace_init();
    let upstream = FakeGrpc::new().start().await;
    let (router, _dead) = router_for(&upstream).await;
    let mut client = echo_client(&router).await;

    let missing = within(
        "Say without a key",
        DEADLINE,
        client.say(tonic::Request::new(SayRequest {
            message: "x".into(),
        })),
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument, "{missing:?}");
    assert!(!missing.message().is_empty());

    let unknown = say(&mut client, "Say with an unknown key", "no-such-route", "x")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    let dead = say(&mut client, "Say to a dead cluster", "dead", "x")
        .await
        .unwrap_err();
    assert_eq!(dead.code(), tonic::Code::Unavailable, "{dead:?}");

    let streaming = count(
        &mut client,
        "Count with an unknown key",
        "no-such-route",
        1,
        0,
    )
    .await
    .map(|_| ())
    .unwrap_err();
    assert_eq!(streaming.code(), tonic::Code::NotFound, "{streaming:?}");

    // The client's connection is still fine after the errors.
    let ok = say(&mut client, "Say after the errors", "echo", "still here")
        .await
        .unwrap();
    assert_eq!(ok.message, "still here");
    assert_eq!(upstream.requests(), 1);
}
