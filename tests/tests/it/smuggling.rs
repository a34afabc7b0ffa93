//! Request smuggling at the HTTP/1.1 edge (DESIGN §12): an ambiguous request is answered
//! `400` with the connection closed, and never forwarded. The cases: `Content-Length` with
//! `Transfer-Encoding: chunked` (either order), two different `Content-Length`s, an invalid
//! chunk size, a control byte in a chunk extension, a bare LF as a line end anywhere in a
//! head or in chunked trailers, an obsolete line fold, and an absolute-form target whose host
//! is not `Host`.
//!
//! Each refusal is tried with the request written at once, in three pieces and byte by byte
//! (a flush between writes): after a partial read hyper waits for the end of the head, which
//! is the case the router's refusal bytes are made for. The fake upstream counts what
//! reaches it: nothing while the router refuses, then the one well-formed request sent
//! afterwards on a new connection, so the count means something. Well-formed neighbours
//! (chunk extensions, trailers, `Content-Length` bodies, pipelining, split writes) pass.

use integration_tests::raw::{RawConn, RawResponse};
use integration_tests::{FakeModel, Listening, RouterProcess, trace_init};
use serde_json::json;

/// How a test writes a request.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// One write.
    Whole,
    /// Three writes of about equal size.
    Pieces,
    /// One write per byte.
    ByteByByte,
}

/// Every way of writing a request.
const WRITES: [Write; 3] = [Write::Whole, Write::Pieces, Write::ByteByByte];

/// A router with route `k` to the one fake it starts.
async fn router_and_fake() -> (RouterProcess, Listening) {
    let fake = FakeModel::new().name("m").start().await;
    let router = RouterProcess::start(&json!({
        "clusters": { "c": { "endpoints": [fake.endpoint()] } },
        "routes": { "k": { "cluster": "c" } },
    }))
    .await;
    (router, fake)
}

/// `METHOD TARGET HTTP/1.1` with `Host: a` and `x-routing-key: k`, then `fields` (each
/// line with its CRLF), the empty line and `body`.
fn request(method: &str, target: &str, fields: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {target} HTTP/1.1\r\nHost: a\r\nx-routing-key: k\r\n{fields}\r\n")
            .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A chunked `POST /` whose body bytes are `body` as written.
fn chunked(body: &[u8]) -> Vec<u8> {
    request("POST", "/", "Transfer-Encoding: chunked\r\n", body)
}

/// Writes `bytes` on a new connection as `write` says, ignoring a write error (the router
/// may close before the rest arrives).
async fn send(router: &RouterProcess, bytes: &[u8], write: Write) -> RawConn {
    let mut conn = RawConn::connect(router.proxy_addr).await;
    let _ = match write {
        Write::Whole => conn.try_send(bytes).await,
        Write::Pieces => conn.send_in_pieces(bytes, 3).await,
        Write::ByteByByte => conn.send_byte_by_byte(bytes).await,
    };
    conn
}

/// Sends `bytes` each way of [`WRITES`] on a new connection, expecting `400`, the
/// connection closed after it, and nothing at the fake.
async fn refused_every_way(router: &RouterProcess, fake: &Listening, bytes: &[u8], what: &str) {
    for write in WRITES {
        let what = format!("{what} ({write:?})");
        let mut conn = send(router, bytes, write).await;
        let resp = conn.response(&format!("the answer to {what}")).await;
        assert_eq!(
            resp.status,
            400,
            "{what}: {:?} {:?}",
            resp.headers,
            resp.text()
        );
        conn.expect_closed(&format!("the connection closed after {what}"))
            .await;
        assert_eq!(fake.requests(), 0, "{what} reached the upstream");
    }
}

/// A well-formed `GET /` on a new connection reaches the fake: the request count of a
/// refusal test is not zero just because nothing gets through at all.
async fn well_formed_get_is_served(router: &RouterProcess, fake: &Listening) {
    let before = fake.requests();
    let mut conn = RawConn::connect(router.proxy_addr).await;
    conn.send(&request("GET", "/after", "", b"")).await;
    let resp = conn.response("the answer to a well-formed GET").await;
    assert_ok(&resp, "a well-formed GET after the refusals");
    assert_eq!(
        fake.requests(),
        before + 1,
        "only the well-formed GET arrived"
    );
    let last = fake.last_request().expect("the fake saw a request");
    assert_eq!(last.uri.path(), "/after");
}

#[track_caller]
fn assert_ok(resp: &RawResponse, what: &str) {
    assert_eq!(
        resp.status,
        200,
        "{what}: {:?} {:?}",
        resp.headers,
        resp.text()
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    // A CL.TE pair: a front end reading the length forwards one request, a back end reading
    // the chunks sees a second one, `/smuggled`.
    let body = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\nx-routing-key: k\r\n\r\n";
    for fields in [
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ),
        format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            body.len()
        ),
    ] {
        let req = request("POST", "/", &fields, body);
        refused_every_way(&router, &fake, &req, &format!("a POST with {fields:?}")).await;
    }
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn two_different_content_lengths_are_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    let req = request(
        "POST",
        "/",
        "Content-Length: 3\r\nContent-Length: 5\r\n",
        b"abcde",
    );
    refused_every_way(&router, &fake, &req, "two Content-Lengths").await;
    let req = request("POST", "/", "Content-Length: 3, 5\r\n", b"abcde");
    refused_every_way(&router, &fake, &req, "a Content-Length list of two values").await;
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn an_invalid_first_chunk_size_is_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    for size in ["zz", "-2", "0x2", "fffffffffffffffffffff"] {
        let req = chunked(format!("{size}\r\nab\r\n0\r\n\r\n").as_bytes());
        refused_every_way(&router, &fake, &req, &format!("chunk size {size:?}")).await;
    }
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn a_control_byte_in_a_chunk_extension_is_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    for ext in [&b"\x01=x"[..], b"a=\x7f", b"a=b\x00"] {
        let mut body = b"2;".to_vec();
        body.extend_from_slice(ext);
        body.extend_from_slice(b"\r\nab\r\n0\r\n\r\n");
        let what = format!("chunk extension {:?}", String::from_utf8_lossy(ext));
        refused_every_way(&router, &fake, &chunked(&body), &what).await;
    }
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn a_bare_lf_in_a_head_is_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    let cases: [(&[u8], &str); 3] = [
        (
            b"GET / HTTP/1.1\nHost: a\r\nx-routing-key: k\r\n\r\n",
            "a bare LF ending the request line",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\nx-routing-key: k\r\n\r\n",
            "a bare LF ending a header line",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nx-routing-key: k\r\n\n",
            "a bare LF as the empty line ending the head",
        ),
    ];
    for (req, what) in cases {
        refused_every_way(&router, &fake, req, what).await;
    }
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn a_bare_lf_in_a_pipelined_second_head_refuses_only_that_request() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    let mut bytes = request("POST", "/first", "Content-Length: 3\r\n", b"a\nb");
    bytes.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: a\nx-routing-key: k\r\n\r\n");
    for (n, write) in WRITES.into_iter().enumerate() {
        let mut conn = send(&router, &bytes, write).await;
        let first = conn.response("the answer to the first request").await;
        assert_ok(&first, "the well-formed first request");
        let second = conn.response("the answer to the second request").await;
        assert_eq!(second.status, 400, "{write:?}: {:?}", second.text());
        conn.expect_closed("the connection closed after the refusal")
            .await;
        assert_eq!(fake.requests(), n + 1, "{write:?}: only the first arrived");
        let last = fake.last_request().expect("the fake saw a request");
        assert_eq!(last.uri.path(), "/first");
    }
}

#[tokio::test]
async fn a_bare_lf_in_chunked_trailers_is_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    refused_every_way(
        &router,
        &fake,
        &chunked(b"0\r\nx-t: 1\n\r\n"),
        "a bare LF ending a trailer line",
    )
    .await;
    refused_every_way(
        &router,
        &fake,
        &chunked(b"0\r\nx-t: 1\r\n\n"),
        "a bare LF ending the trailers",
    )
    .await;
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn an_obsolete_line_fold_is_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    let req = request("GET", "/", "x-folded: a\r\n b\r\n", b"");
    refused_every_way(&router, &fake, &req, "an obs-fold (space)").await;
    let req = request("GET", "/", "x-folded: a\r\n\tb\r\n", b"");
    refused_every_way(&router, &fake, &req, "an obs-fold (tab)").await;
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn an_absolute_form_target_naming_another_host_is_refused_unforwarded() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    let req = request("GET", "http://other/", "", b"");
    refused_every_way(&router, &fake, &req, "GET http://other/ with Host: a").await;
    let req = request("GET", "http://a:8080/", "", b"");
    refused_every_way(&router, &fake, &req, "GET http://a:8080/ with Host: a").await;

    // The same host in both passes (compared case-insensitively).
    for target in ["http://a/agreeing", "http://A/agreeing"] {
        let mut conn = RawConn::connect(router.proxy_addr).await;
        conn.send(&request("GET", target, "", b"")).await;
        let resp = conn.response("the answer to an agreeing target").await;
        assert_ok(&resp, target);
    }
    assert_eq!(fake.requests(), 2);
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn a_bad_chunk_after_the_first_fails_the_request_and_closes() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    // The first chunk is well formed, so the request is on its way upstream when the bad
    // one arrives: the upstream must never get a complete body, and the client a 400 with
    // the connection closed.
    let req = request(
        "POST",
        "/sha256",
        "Transfer-Encoding: chunked\r\n",
        b"2\r\nab\r\nzz\r\ncd\r\n0\r\n\r\n",
    );
    for write in WRITES {
        let mut conn = send(&router, &req, write).await;
        let resp = conn.response("the answer to a bad second chunk").await;
        assert_eq!(resp.status, 400, "{write:?}: {:?}", resp.text());
        conn.expect_closed("the connection closed after a bad second chunk")
            .await;
    }
    assert_eq!(
        fake.sha256_bodies(),
        Vec::new(),
        "no body ended well upstream"
    );
    well_formed_get_is_served(&router, &fake).await;
}

#[tokio::test]
async fn well_formed_chunked_bodies_with_extensions_and_trailers_pass() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    let req = request(
        "POST",
        "/echo",
        "Transfer-Encoding: chunked\r\n",
        b"2;a=b\r\nab\r\n3;name=\"v a\";x\r\ncde\r\n0\r\nx-t: 1\r\n\r\n",
    );
    for write in WRITES {
        let mut conn = send(&router, &req, write).await;
        let resp = conn.response("the echo of a chunked body").await;
        assert_ok(
            &resp,
            &format!("chunked with extensions and trailers ({write:?})"),
        );
        assert_eq!(resp.text(), "abcde");
    }
    assert_eq!(fake.requests(), WRITES.len());
}

#[tokio::test]
async fn content_length_bodies_and_pipelined_requests_pass() {
    let _trace = trace_init();
    let (router, fake) = router_and_fake().await;
    // A body holding what would be line ends and a request line in a head.
    let body = b"a\nb\r\nGET / HTTP/1.1\n\n";
    let fields = format!("Content-Length: {}\r\n", body.len());
    let req = request("POST", "/echo", &fields, body);
    for write in WRITES {
        let mut conn = send(&router, &req, write).await;
        let resp = conn.response("the echo of a Content-Length body").await;
        assert_ok(&resp, &format!("a Content-Length body ({write:?})"));
        assert_eq!(resp.body, body);
    }

    // Two requests in one write, both answered in order on the kept connection.
    let mut both = request("GET", "/one", "", b"");
    both.extend_from_slice(&request("POST", "/echo", "Content-Length: 3\r\n", b"two"));
    let mut conn = RawConn::connect(router.proxy_addr).await;
    conn.send(&both).await;
    let one = conn
        .response("the answer to the first pipelined request")
        .await;
    assert_ok(&one, "the first pipelined request");
    let two = conn
        .response("the answer to the second pipelined request")
        .await;
    assert_ok(&two, "the second pipelined request");
    assert_eq!(two.text(), "two");
    assert_eq!(fake.requests(), WRITES.len() + 2);

    // The connection stays usable.
    conn.send(&request("GET", "/three", "", b"")).await;
    let three = conn.response("the answer to a third request").await;
    assert_ok(&three, "a third request on the same connection");
}
