//! SIGTERM: the router stops accepting, lets in-flight requests finish (up to the drain
//! timeout) and exits 0.

use std::net::SocketAddr;

use http::Method;
use hyper::body::Incoming;
use integration_tests::fake_model::sse_chunk;
use integration_tests::{
    DEADLINE, FakeModel, HttpClient, Listening, RouterProcess, client, trace_init, wait_until,
    within,
};
use serde_json::json;

use crate::support::{expect_end, keyed, read_exactly};

const CHUNKS: u64 = 3;

async fn router_for(fake: &Listening, extra: &[&str]) -> RouterProcess {
    RouterProcess::start_with_args(
        &json!({
            "clusters": { "c": { "endpoints": [fake.endpoint()], "protocol": "auto" } },
            "routes": { "k": { "cluster": "c" } },
        }),
        extra,
    )
    .await
}

/// Starts an SSE request and returns its body once the response head arrived, i.e. once the
/// request is in flight through the router.
async fn start_sse(client: &HttpClient, proxy: SocketAddr) -> Incoming {
    let req = keyed(Method::GET, proxy, &format!("/sse?chunks={CHUNKS}"), "k")
        .body(client::empty())
        .unwrap();
    let resp = within("an SSE head", DEADLINE, client.send(req))
        .await
        .expect("an SSE request through the router");
    assert_eq!(resp.status(), 200);
    resp.into_body()
}

async fn refuses_connections(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn sigterm_drains_twenty_in_flight_requests_then_exits_0() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let mut router = router_for(&fake, &[]).await;

    // Ten HTTP/1.1 requests on their own connections and ten streams on one h2c connection.
    let h2 = HttpClient::h2c();
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(start_sse(&HttpClient::http1(), router.proxy_addr).await);
        bodies.push(start_sse(&h2, router.proxy_addr).await);
    }
    assert_eq!(fake.sse_started(), 20);

    router.sigterm();
    wait_until(
        "the router stops accepting connections after SIGTERM",
        DEADLINE,
        || refuses_connections(router.proxy_addr),
    )
    .await;
    assert!(
        router.try_exit_status().is_none(),
        "the router waits for its in-flight requests"
    );

    // Every stream gets all its chunks, released one round at a time.
    for k in 0..CHUNKS {
        fake.release_sse(bodies.len());
        for (i, body) in bodies.iter_mut().enumerate() {
            read_exactly(
                body,
                sse_chunk(k).as_bytes(),
                &format!("request {i}, chunk {k}"),
            )
            .await;
        }
    }
    for (i, body) in bodies.into_iter().enumerate() {
        expect_end(body, &format!("the end of request {i}")).await;
    }

    let status = router.wait_for_exit(DEADLINE).await;
    assert!(status.success(), "a drained router exits 0, got {status}");
}

#[tokio::test]
async fn sigterm_on_an_idle_router_exits_0() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let mut router = router_for(&fake, &[]).await;
    // An idle keep-alive connection must not hold the drain up.
    let client = HttpClient::http1();
    assert_eq!(
        client.get(router.proxy_addr, "/", Some("k")).await.status,
        200
    );
    let h2 = HttpClient::h2c();
    assert_eq!(h2.get(router.proxy_addr, "/", Some("k")).await.status, 200);

    router.sigterm();
    let status = router.wait_for_exit(DEADLINE).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sigterm_gives_up_on_requests_still_in_flight_after_the_drain_timeout() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let mut router = router_for(&fake, &["--drain-timeout-ms", "300"]).await;
    // Never released: the request outlives any drain.
    let body = start_sse(&HttpClient::http1(), router.proxy_addr).await;

    router.sigterm();
    let status = router.wait_for_exit(DEADLINE).await;
    assert!(
        status.success(),
        "exit status after the drain timeout: {status}"
    );
    // The cut request ends (with an error or early): it does not hang.
    let _ = within(
        "the cut request to end",
        DEADLINE,
        http_body_util::BodyExt::collect(body),
    )
    .await;
}

#[tokio::test]
async fn sigterm_right_after_the_listening_line_still_exits_0() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let mut router = router_for(&fake, &[]).await;
    // The listening line says the router is up: from then on SIGTERM must mean a graceful
    // stop, never the default action of the signal (death by SIGTERM).
    router.sigterm();
    let status = router.wait_for_exit(DEADLINE).await;
    assert!(status.success(), "exit status {status}");
}
