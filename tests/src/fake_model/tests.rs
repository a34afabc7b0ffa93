//! The fakes tested directly (no router), over HTTP/1.1 and h2c.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Version};
use http_body_util::BodyExt as _;

use super::*;
use crate::client::{self, HttpClient};
use crate::fake_grpc::FakeGrpc;
use crate::fake_grpc::pb::echo_client::EchoClient;
use crate::fake_grpc::pb::{CountRequest, SayRequest};
use crate::{DEADLINE, within};

const STEP: Duration = Duration::from_secs(10);

async fn both_versions(test: impl AsyncFn(HttpClient, Version)) {
    for version in [Version::HTTP_11, Version::HTTP_2] {
        test(HttpClient::for_version(version), version).await;
    }
}

#[tokio::test]
async fn the_default_answer_is_the_servers_name() {
    let fake = FakeModel::new().name("alpha").start().await;
    both_versions(async |client, _| {
        let resp = client.get(fake.addr, "/anything?x=1", None).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "alpha");
        assert_eq!(resp.header(SERVER_HEADER).as_deref(), Some("alpha"));
    })
    .await;
    assert_eq!(fake.requests(), 2);
    fake.join().await;
}

#[tokio::test]
async fn headers_reports_the_request_it_got() {
    let fake = FakeModel::new().name("h").start().await;
    both_versions(async |client, version| {
        let req = client::request(Method::GET, fake.addr, "/headers?q=1&r=2")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .body(client::empty())
            .unwrap();
        let json = client.fetch(req).await.json();
        assert_eq!(json["server"], "h");
        assert_eq!(json["path"], "/headers?q=1&r=2");
        assert_eq!(json["version"], format!("{version:?}"));
        assert_eq!(
            json["headers"]["x-custom"],
            serde_json::json!(["one", "two"])
        );
        assert_eq!(
            fake.last_headers().get_all("x-custom").iter().count(),
            2,
            "the last request's headers are recorded"
        );
    })
    .await;
}

#[tokio::test]
async fn status_answers_with_the_code_asked_for() {
    let fake = FakeModel::new().start().await;
    let resp = HttpClient::http1()
        .get(fake.addr, "/status/418", None)
        .await;
    assert_eq!(resp.status, 418);
}

#[tokio::test]
async fn sha256_hashes_a_streamed_body() {
    let fake = FakeModel::new().start().await;
    let len = 3 * 1024 * 1024 + 17;
    both_versions(async |client, _| {
        let req = client::request(Method::POST, fake.addr, "/sha256")
            .body(client::pattern_body(len))
            .unwrap();
        let json = within("the sha256 answer", DEADLINE, client.fetch(req))
            .await
            .json();
        assert_eq!(json["bytes"], len);
        assert_eq!(json["sha256"], crate::pattern::sha256_hex(len));
    })
    .await;
}

#[tokio::test]
async fn download_streams_the_pattern() {
    let fake = FakeModel::new().start().await;
    let len = 1024 * 1024 + 3;
    both_versions(async |client, _| {
        let resp = client
            .get(fake.addr, &format!("/download?bytes={len}"), None)
            .await;
        assert_eq!(resp.body.len() as u64, len);
        assert_eq!(resp.body, crate::pattern::bytes_at(0, len as usize));
    })
    .await;
}

#[tokio::test]
async fn echo_returns_each_chunk_before_the_request_body_ends() {
    let fake = FakeModel::new().start().await;
    both_versions(async |client, _| {
        let (tx, body) = client::channel_body(1);
        let req = client::request(Method::POST, fake.addr, "/echo")
            .body(body)
            .unwrap();
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let resp = within("the echo response head", STEP, client.send(req))
            .await
            .unwrap();
        let mut body = resp.into_body();
        for chunk in ["first", "second", "third"] {
            if chunk != "first" {
                tx.send(Bytes::from(chunk)).await.unwrap();
            }
            let mut got = Vec::new();
            while got.len() < chunk.len() {
                let frame = within("an echoed chunk", STEP, body.frame())
                    .await
                    .expect("the body is still open")
                    .unwrap();
                got.extend_from_slice(frame.data_ref().unwrap());
            }
            assert_eq!(got, chunk.as_bytes());
        }
        drop(tx);
        let rest = within("the end of the echo", STEP, body.collect())
            .await
            .unwrap();
        assert!(rest.to_bytes().is_empty());
    })
    .await;
}

#[tokio::test]
async fn sse_produces_a_chunk_only_once_released() {
    let fake = FakeModel::new().start().await;
    both_versions(async |client, _| {
        let resp = within(
            "the SSE head",
            STEP,
            client.send(
                client::request(Method::GET, fake.addr, "/sse?chunks=3")
                    .body(client::empty())
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        for i in 0..3 {
            // Nothing is released yet, so no chunk can be pending.
            let early = tokio::time::timeout(Duration::from_millis(1), body.frame()).await;
            assert!(early.is_err(), "chunk {i} arrived before it was released");
            fake.release_sse(1);
            let frame = within("a released chunk", STEP, body.frame())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(frame.data_ref().unwrap(), sse_chunk(i).as_bytes());
        }
        let rest = within("the end", STEP, body.collect()).await.unwrap();
        assert!(rest.to_bytes().is_empty());
    })
    .await;
    assert_eq!(fake.sse_started(), 2);
}

#[tokio::test]
async fn hang_answers_only_when_the_server_stops() {
    let fake = FakeModel::new().start().await;
    let addr = fake.addr;
    let pending = tokio::spawn(async move {
        HttpClient::http1()
            .send(
                client::request(Method::GET, addr, "/hang")
                    .body(client::empty())
                    .unwrap(),
            )
            .await
    });
    crate::wait_until("the hang request arrives", DEADLINE, || {
        std::future::ready(fake.requests() == 1)
    })
    .await;
    assert!(!pending.is_finished());
    drop(fake);
    // Either the 503 of a stopping handler or a closed connection: never a hang.
    let _ = within("the hang request to end", DEADLINE, pending).await;
}

#[tokio::test]
async fn a_handler_panic_is_re_raised_by_join() {
    let fake = FakeModel::new().start().await;
    // `/sse?chunks=x` makes the handler panic on the bad number.
    let resp = HttpClient::http1()
        .get(fake.addr, "/sse?chunks=x", None)
        .await;
    assert_eq!(resp.status, 500);
    let joined = tokio::spawn(fake.join()).await;
    assert!(joined.unwrap_err().is_panic());
}

#[tokio::test]
async fn the_grpc_fake_answers_unary_streaming_and_errors() {
    let fake = FakeGrpc::new().name("g").start().await;
    let mut client = EchoClient::connect(format!("http://{}", fake.addr))
        .await
        .unwrap();
    let reply = client
        .say(SayRequest {
            message: "hi".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.message.as_str(), reply.server.as_str()), ("hi", "g"));

    let status = client
        .say(SayRequest {
            message: "fail".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "nope");

    let mut stream = client
        .count(CountRequest {
            n: 4,
            fail_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        got.push(reply.i);
    }
    assert_eq!(got, [0, 1, 2, 3]);

    let mut stream = client
        .count(CountRequest {
            n: 4,
            fail_after: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().i, 0);
    assert_eq!(stream.message().await.unwrap().unwrap().i, 1);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert_eq!(status.metadata().get("x-trailer").unwrap(), "kept");
    assert_eq!(fake.requests(), 4);
}

#[tokio::test]
async fn health_probes_follow_set_health_and_are_counted_apart() {
    let fake = FakeModel::new().name("hp").start().await;
    both_versions(async |client, _| {
        for path in HEALTH_PATHS {
            let resp = client.get(fake.addr, path, None).await;
            assert_eq!(resp.status, 200, "{path}");
            assert_eq!(resp.header(SERVER_HEADER).as_deref(), Some("hp"));
        }
    })
    .await;
    assert_eq!(fake.health_probes(), 4);
    assert_eq!(fake.health_probes_answered(200), 4);
    assert_eq!(fake.requests(), 0, "health probes are not requests");
    assert!(
        fake.last_request().is_none(),
        "a health probe is not recorded"
    );

    fake.set_health(503);
    let client = HttpClient::http1();
    assert_eq!(client.get(fake.addr, "/healthz", None).await.status, 503);
    assert_eq!(
        client.get(fake.addr, "/v2/health/ready", None).await.status,
        503
    );
    assert_eq!(
        client.get(fake.addr, "/", None).await.status,
        200,
        "other paths are unaffected"
    );
    assert_eq!(fake.health_probes_answered(503), 2);
    assert_eq!(fake.health_probes(), 6);
    assert_eq!(fake.requests(), 1);

    fake.set_health(200);
    assert_eq!(client.get(fake.addr, "/healthz", None).await.status, 200);
    assert_eq!(fake.health_probes_answered(200), 5);
    fake.join().await;
}

#[tokio::test]
async fn fail_with_answers_every_other_request_with_the_status_until_cleared() {
    let fake = FakeModel::new().name("fw").start().await;
    fake.fail_with(Some(500));
    both_versions(async |client, _| {
        for path in ["/", "/echo", "/sse?chunks=1", "/hang", "/status/201"] {
            let resp = within(path, STEP, client.get(fake.addr, path, None)).await;
            assert_eq!(resp.status, 500, "{path}");
            assert_eq!(resp.text(), "fw", "{path}");
            assert_eq!(resp.header(SERVER_HEADER).as_deref(), Some("fw"));
        }
        let probe = client.get(fake.addr, "/healthz", None).await;
        assert_eq!(probe.status, 200, "health probes are not failed");
    })
    .await;
    assert_eq!(fake.requests(), 10, "failed requests are still counted");
    assert_eq!(fake.sse_started(), 0);

    fake.fail_with(None);
    let resp = HttpClient::http1()
        .get(fake.addr, "/status/201", None)
        .await;
    assert_eq!(resp.status, 201, "normal behaviour is back");
    fake.join().await;
}

#[tokio::test]
async fn the_grpc_fake_reports_the_serving_status_the_test_sets() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let fake = FakeGrpc::new().start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fake.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let check = async |health: &mut HealthClient<tonic::transport::Channel>, service: &str| {
        within(
            "a health check",
            STEP,
            health.check(HealthCheckRequest {
                service: service.to_owned(),
            }),
        )
        .await
        .map(|r| r.into_inner().status)
    };
    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        check(&mut health, "echo.v1.Echo").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        check(&mut health, "no.such.Service")
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );

    let mut watch = within(
        "a health watch",
        STEP,
        health.watch(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let first = within("the first watch message", STEP, watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    fake.set_serving(false);
    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::NotServing as i32
    );
    let changed = within("the watched change", STEP, watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.status, ServingStatus::NotServing as i32);

    fake.set_serving(true);
    assert_eq!(
        check(&mut health, "").await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(fake.health_probes(), 6);
    assert_eq!(fake.requests(), 0, "health calls are not echo requests");
}

#[tokio::test]
async fn fail_next_fails_only_the_next_requests_after_reading_their_bodies() {
    let fake = FakeModel::new().name("fn").start().await;
    let len = 1024 * 1024 + 5;
    both_versions(async |client, _| {
        let before = fake.requests();
        fake.fail_next(2, 503);
        for path in ["/sha256", "/hang"] {
            let req = client::request(Method::POST, fake.addr, path)
                .body(client::pattern_body(len))
                .unwrap();
            let resp = within(path, STEP, client.fetch(req)).await;
            assert_eq!(resp.status, 503, "{path}");
            assert_eq!(resp.text(), "fn", "{path}");
            assert_eq!(resp.header(SERVER_HEADER).as_deref(), Some("fn"));
        }
        assert_eq!(fake.fail_next_remaining(), 0);
        let probe = client.get(fake.addr, "/healthz", None).await;
        assert_eq!(probe.status, 200, "health probes are not failed");
        let req = client::request(Method::POST, fake.addr, "/sha256")
            .body(client::pattern_body(len))
            .unwrap();
        let resp = within("the request after", STEP, client.fetch(req)).await;
        assert_eq!(resp.status, 200, "normal behaviour is back");
        assert_eq!(resp.json()["sha256"], crate::pattern::sha256_hex(len));
        assert_eq!(fake.requests(), before + 3, "failed requests are counted");
    })
    .await;
    assert_eq!(
        fake.sha256_bodies(),
        vec![(len, crate::pattern::sha256_hex(len)); 2],
        "only the answered /sha256 bodies are recorded"
    );
    fake.join().await;
}

#[tokio::test]
async fn reset_after_read_reads_the_whole_body_then_breaks_the_exchange_while_armed() {
    let fake = FakeModel::new().name("r").start().await;
    let len = 2 * 1024 * 1024 + 9;
    let sha = crate::pattern::sha256_hex(len);
    both_versions(async |client, version| {
        fake.reset_after_read(1);
        let req = client::request(Method::POST, fake.addr, "/reset-after-read")
            .body(client::pattern_body(len))
            .unwrap();
        let broken = within("the reset request", STEP, client.send(req)).await;
        assert!(
            broken.is_err(),
            "{version:?}: no response while armed, got {:?}",
            broken.map(|r| r.status())
        );
        assert_eq!(fake.resets_remaining(), 0);

        let req = client::request(Method::POST, fake.addr, "/reset-after-read")
            .body(client::pattern_body(len))
            .unwrap();
        let resp = within("the request after", STEP, client.fetch(req)).await;
        assert_eq!(resp.status, 200, "{version:?}: disarmed, it is /sha256");
        let json = resp.json();
        assert_eq!(json["bytes"], len);
        assert_eq!(json["sha256"], sha);
        assert_eq!(json["server"], "r");
    })
    .await;
    assert_eq!(fake.reset_bodies(), vec![(len, sha.clone()); 2]);
    assert_eq!(fake.sha256_bodies(), vec![(len, sha); 2]);
    assert_eq!(fake.requests(), 4);
    fake.join().await;
}

#[tokio::test]
async fn every_requests_header_values_are_recorded_in_order() {
    let fake = FakeModel::new().start().await;
    let client = HttpClient::http1();
    for value in [Some("one"), None, Some("two")] {
        let mut req = client::request(Method::GET, fake.addr, "/");
        if let Some(value) = value {
            req = req.header("x-subject-id", value);
        }
        client.fetch(req.body(client::empty()).unwrap()).await;
    }
    client.get(fake.addr, "/healthz", None).await;
    assert_eq!(fake.seen_header_values("x-subject-id"), ["one", "two"]);
    assert!(fake.seen_header_values("x-absent").is_empty());
    assert_eq!(fake.requests(), 3);
}

#[tokio::test]
async fn the_grpc_fake_fails_the_next_unary_calls_with_unavailable_when_armed() {
    let fake = FakeGrpc::new().name("g").start().await;
    let mut client = EchoClient::connect(format!("http://{}", fake.addr))
        .await
        .unwrap();
    fake.fail_next_unavailable(2);
    for _ in 0..2 {
        let status = within(
            "a failed Say",
            STEP,
            client.say(SayRequest {
                message: "hi".into(),
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), crate::fake_grpc::UNAVAILABLE_MESSAGE);
    }
    let reply = within(
        "a Say after",
        STEP,
        client.say(SayRequest {
            message: "hi".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(reply.server, "g");
    assert_eq!(fake.requests(), 3, "failed calls are counted");
}

#[tokio::test]
async fn truncate_breaks_the_body_after_the_bytes_asked_for() {
    let fake = FakeModel::new().start().await;
    both_versions(async |client, version| {
        let resp = within(
            "the truncate head",
            STEP,
            client.send(
                client::request(Method::GET, fake.addr, "/truncate?bytes=1000")
                    .body(client::empty())
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let end = within("the broken body", STEP, async {
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => got.extend_from_slice(frame.data_ref().unwrap()),
                    Some(Err(error)) => return Err(error),
                    None => return Ok(()),
                }
            }
        })
        .await;
        assert!(end.is_err(), "{version:?}: the body must not end cleanly");
        assert_eq!(got, crate::pattern::bytes_at(0, 1000), "{version:?}");
    })
    .await;
}
