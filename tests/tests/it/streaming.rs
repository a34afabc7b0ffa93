//! Bodies stream both ways, byte for byte, without buffering: large uploads and downloads
//! compared by SHA-256, an echo in lock step, and SSE chunks that reach the client before
//! the next one exists.

use bytes::Bytes;
use http::{Method, Version};
use http_body_util::BodyExt as _;
use integration_tests::fake_model::sse_chunk;
use integration_tests::{
    DEADLINE, FakeModel, HttpClient, RouterProcess, client, pattern, trace_init, wait_until, within,
};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::support::{assert_status, expect_end, h1_h2_router, keyed, read_exactly};

const LARGE: u64 = 64 * 1024 * 1024;

fn key_for(version: Version) -> &'static str {
    if version == Version::HTTP_2 {
        "h2"
    } else {
        "h1"
    }
}

async fn upload_is_byte_exact(client_version: Version, upstream: Version) {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    let client = HttpClient::for_version(client_version);

    let req = keyed(
        Method::POST,
        router.proxy_addr,
        "/sha256",
        key_for(upstream),
    )
    .body(client::pattern_body(LARGE))
    .unwrap();
    let resp = within("a 64 MiB upload", 4 * DEADLINE, client.fetch(req)).await;
    assert_status(&resp, 200);
    let json = resp.json();
    assert_eq!(json["bytes"], LARGE);
    assert_eq!(json["sha256"], pattern::sha256_hex(LARGE));
}

#[tokio::test]
async fn a_64_mib_upload_over_http1_arrives_byte_exact() {
    upload_is_byte_exact(Version::HTTP_11, Version::HTTP_11).await;
}

#[tokio::test]
async fn a_64_mib_upload_over_h2c_arrives_byte_exact() {
    upload_is_byte_exact(Version::HTTP_2, Version::HTTP_2).await;
}

async fn download_is_byte_exact(client_version: Version, upstream: Version) {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    let client = HttpClient::for_version(client_version);

    let req = keyed(
        Method::GET,
        router.proxy_addr,
        &format!("/download?bytes={LARGE}"),
        key_for(upstream),
    )
    .body(client::empty())
    .unwrap();
    let resp = within("the download head", DEADLINE, client.send(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let finished = within("a 64 MiB download", 4 * DEADLINE, async {
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.expect("the download body").data_ref() {
                hasher.update(data);
                received += data.len() as u64;
            }
        }
    });
    finished.await;
    assert_eq!(received, LARGE);
    assert_eq!(pattern::hex(&hasher.finalize()), pattern::sha256_hex(LARGE));
}

#[tokio::test]
async fn a_64_mib_download_over_http1_arrives_byte_exact() {
    download_is_byte_exact(Version::HTTP_11, Version::HTTP_11).await;
}

#[tokio::test]
async fn a_64_mib_download_over_h2c_arrives_byte_exact() {
    download_is_byte_exact(Version::HTTP_2, Version::HTTP_2).await;
}

/// The request body goes up chunk by chunk and each chunk comes back before the next is sent:
/// a router that buffered either body would deadlock here (and fail at the deadline).
async fn echo_streams_both_ways_in_lock_step(client_version: Version, upstream: Version) {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    let client = HttpClient::for_version(client_version);

    let (tx, body) = client::channel_body(1);
    let req = keyed(Method::POST, router.proxy_addr, "/echo", key_for(upstream))
        .body(body)
        .unwrap();
    tx.send(Bytes::from_static(b"chunk 0;")).await.unwrap();
    let resp = within("the echo head", DEADLINE, client.send(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    read_exactly(&mut body, b"chunk 0;", "echoed chunk 0").await;
    for i in 1..5 {
        let chunk = format!("chunk {i};");
        tx.send(Bytes::from(chunk.clone())).await.unwrap();
        read_exactly(&mut body, chunk.as_bytes(), &format!("echoed chunk {i}")).await;
    }
    drop(tx);
    expect_end(body, "the end of the echo").await;
}

#[tokio::test]
async fn an_echo_over_http1_streams_both_bodies_in_lock_step() {
    echo_streams_both_ways_in_lock_step(Version::HTTP_11, Version::HTTP_11).await;
}

#[tokio::test]
async fn an_echo_over_h2c_streams_both_bodies_in_lock_step() {
    echo_streams_both_ways_in_lock_step(Version::HTTP_2, Version::HTTP_2).await;
}

#[tokio::test]
async fn an_echo_from_an_http1_client_to_an_h2c_upstream_streams_in_lock_step() {
    echo_streams_both_ways_in_lock_step(Version::HTTP_11, Version::HTTP_2).await;
}

/// The fake produces SSE chunk k+1 only after the test released it, and the test releases it
/// only after the client has received chunk k.
async fn sse_chunks_arrive_one_by_one(client_version: Version, upstream: Version) {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    let client = HttpClient::for_version(client_version);

    let chunks = 5;
    let req = keyed(
        Method::GET,
        router.proxy_addr,
        &format!("/sse?chunks={chunks}"),
        key_for(upstream),
    )
    .header("accept", "text/event-stream")
    .body(client::empty())
    .unwrap();
    let resp = within("the SSE head", DEADLINE, client.send(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    for k in 0..chunks {
        fake.release_sse(1);
        read_exactly(
            &mut body,
            sse_chunk(k).as_bytes(),
            &format!("SSE chunk {k} (chunk {} is not produced yet)", k + 1),
        )
        .await;
    }
    expect_end(body, "the end of the event stream").await;
}

#[tokio::test]
async fn sse_chunk_k_reaches_an_http1_client_before_chunk_k_plus_1_exists() {
    sse_chunks_arrive_one_by_one(Version::HTTP_11, Version::HTTP_11).await;
}

#[tokio::test]
async fn sse_chunk_k_reaches_an_h2c_client_before_chunk_k_plus_1_exists() {
    sse_chunks_arrive_one_by_one(Version::HTTP_2, Version::HTTP_2).await;
}

#[tokio::test]
async fn sse_through_an_h2c_upstream_reaches_an_http1_client_chunk_by_chunk() {
    sse_chunks_arrive_one_by_one(Version::HTTP_11, Version::HTTP_2).await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_frees_its_endpoint() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    // Both clusters list the same fake: its state belongs to the address, so count each
    // address once.
    let active = || async {
        let clusters = router.admin_json("/clusters").await;
        clusters["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                let address = e["address"].as_str().unwrap_or_default().to_owned();
                (address, e["active_requests"].as_u64().unwrap_or(0))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .values()
            .sum::<u64>()
    };
    for client_version in [Version::HTTP_11, Version::HTTP_2] {
        for upstream in [Version::HTTP_11, Version::HTTP_2] {
            let client = HttpClient::for_version(client_version);
            let req = keyed(
                Method::GET,
                router.proxy_addr,
                "/sse?chunks=100",
                key_for(upstream),
            )
            .body(client::empty())
            .unwrap();
            let resp = within("the SSE head", DEADLINE, client.send(req))
                .await
                .unwrap();
            let mut body = resp.into_body();
            fake.release_sse(1);
            read_exactly(&mut body, sse_chunk(0).as_bytes(), "the first chunk").await;
            assert_eq!(active().await, 1);
            // The client goes away: h2 resets the stream, HTTP/1.1 closes the connection.
            drop(body);
            drop(client);
            wait_until(
                &format!("{client_version:?} client, {upstream:?} upstream: the request is no longer active"),
                DEADLINE,
                || async { active().await == 0 },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn an_upload_that_outlasts_the_route_timeout_still_completes() {
    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "c": { "endpoints": [fake.endpoint()] } },
        "routes": { "slow": { "cluster": "c", "timeout_ms": 300 } },
    }))
    .await;
    let client = HttpClient::http1();

    // The upload starts, then stays open for longer than the route timeout: the upstream
    // cannot answer before the body ends, so a timeout that counts the upload time would cut
    // every large upload from a slow client.
    let (tx, body) = client::channel_body(1);
    let req = keyed(Method::POST, router.proxy_addr, "/sha256", "slow")
        .body(body)
        .unwrap();
    let upload = tokio::spawn({
        let client = client.clone();
        async move { client.fetch(req).await }
    });
    tx.send(pattern::bytes_at(0, 1000)).await.unwrap();
    // A request on the same route that started later has timed out: more than the timeout
    // has passed for the upload too (an observed event, not a sleep).
    let hang = HttpClient::http1()
        .get(router.proxy_addr, "/hang", Some("slow"))
        .await;
    assert_eq!(hang.status, 504);
    tx.send(pattern::bytes_at(1000, 1000)).await.unwrap();
    drop(tx);
    let resp = within("the upload answer", DEADLINE, upload).await.unwrap();
    assert_status(&resp, 200);
    assert_eq!(resp.json()["sha256"], pattern::sha256_hex(2000));
}

#[tokio::test]
async fn a_request_body_survives_a_connect_retry_and_a_fallback() {
    let _trace = trace_init();
    let fake = FakeModel::new().name("alive").start().await;
    let dead = (
        integration_tests::DeadPort::new(),
        integration_tests::DeadPort::new(),
    );
    let router = RouterProcess::start(&json!({
        "clusters": {
            "half-dead": { "endpoints": [dead.0.addr().to_string(), fake.endpoint()], "protocol": "auto" },
            "all-dead": { "endpoints": [dead.0.addr().to_string(), dead.1.addr().to_string()] },
            "backup": { "endpoints": [fake.endpoint()], "protocol": "auto" },
        },
        "routes": {
            "retry": { "cluster": "half-dead" },
            "fallback": { "cluster": "all-dead", "fallback": "backup" },
        },
    }))
    .await;

    // The body is not sent to an endpoint that refused the connection, so it must reach the
    // next one (or the fallback) whole.
    let len = 1024 * 1024 + 7;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let client = HttpClient::for_version(version);
        for key in ["retry", "fallback"] {
            for _ in 0..4 {
                let req = keyed(Method::POST, router.proxy_addr, "/sha256", key)
                    .body(client::pattern_body(len))
                    .unwrap();
                let resp = within("an upload", DEADLINE, client.fetch(req)).await;
                assert_eq!(resp.status, 200, "{version:?} {key}: {:?}", resp.text());
                let json = resp.json();
                assert_eq!(json["bytes"], len, "{version:?} {key}");
                assert_eq!(
                    json["sha256"],
                    pattern::sha256_hex(len),
                    "{version:?} {key}"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_expect_100_continue_upload_goes_through() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let _trace = trace_init();
    let fake = FakeModel::new().start().await;
    let router = h1_h2_router(&fake).await;
    for key in ["h1", "h2"] {
        // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for the interim
        // answer (or a timeout) before sending the body: speak raw HTTP/1.1 to see it.
        let mut conn = tokio::net::TcpStream::connect(router.proxy_addr)
            .await
            .unwrap();
        let body = pattern::bytes_at(0, 4096);
        let head = format!(
            "POST /sha256 HTTP/1.1\r\nhost: router\r\nx-routing-key: {key}\r\n\
             content-length: {}\r\nexpect: 100-continue\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = within("the interim 100 Continue", DEADLINE, conn.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0, "{key}: the router closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
        let interim = String::from_utf8_lossy(&got).into_owned();
        assert!(
            interim.starts_with("HTTP/1.1 100"),
            "{key}: expected 100 Continue before the body, got {interim:?}"
        );
        conn.write_all(&body).await.unwrap();
        let mut rest = Vec::new();
        while !String::from_utf8_lossy(&rest).contains(&pattern::sha256_hex(4096)) {
            let n = within("the final answer", DEADLINE, conn.read(&mut buf))
                .await
                .unwrap();
            assert!(
                n > 0,
                "{key}: connection closed before the answer: {:?}",
                String::from_utf8_lossy(&rest)
            );
            rest.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&rest).into_owned();
        let answer = answer
            .split("HTTP/1.1 ")
            .filter(|s| !s.is_empty())
            .last()
            .unwrap();
        assert!(answer.starts_with("200"), "{key}: {answer:?}");
    }
}
