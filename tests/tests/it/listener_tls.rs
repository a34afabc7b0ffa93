//! TLS on the router's listener: HTTP/1.1 and h2 by ALPN, plain HTTP/1.1 and h2c on the
//! same port unless `--tls-only`, a TLS-only `--tls-listen` port, and the certificate
//! re-read when its files change, with connections already open kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use integration_tests::client::ROUTING_KEY;
use integration_tests::pki::{CertFiles, Pki};
use integration_tests::{
    FakeModel, HttpClient, Listening, RouterProcess, trace_init, wait_until, within,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const DEADLINE: Duration = Duration::from_secs(20);

struct Setup {
    router: RouterProcess,
    pki: Pki,
    served: CertFiles,
    fake: Listening,
}

async fn setup(extra: &[&str]) -> Setup {
    let fake = FakeModel::new().name("tls-backend").start().await;
    let pki = Pki::new("listener");
    let served = pki.server("router");
    let (cert, key) = (
        served.cert.display().to_string(),
        served.key.display().to_string(),
    );
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    let router = RouterProcess::start_with_args(
        &json!({
            "clusters": { "c": { "endpoints": [fake.endpoint()], "protocol": "auto" } },
            "routes": { "k": { "cluster": "c" } },
        }),
        &args,
    )
    .await;
    Setup {
        router,
        pki,
        served,
        fake,
    }
}

async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(pki.client_config(&[alpn], None));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}

fn get(version: Version) -> Request<Empty<Bytes>> {
    let uri = if version == Version::HTTP_2 {
        "https://localhost/"
    } else {
        "/"
    };
    Request::get(uri)
        .version(version)
        .header("host", "localhost")
        .header(ROUTING_KEY, "k")
        .body(Empty::new())
        .unwrap()
}

/// Sends one GET over an HTTP/1.1 TLS connection and keeps the connection for more.
struct H1Tls {
    sender: http1::SendRequest<Empty<Bytes>>,
}

impl H1Tls {
    async fn open(stream: TlsStream<TcpStream>) -> Self {
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        H1Tls { sender }
    }

    async fn get(&mut self) -> StatusCode {
        self.sender.ready().await.unwrap();
        let resp = self
            .sender
            .send_request(get(Version::HTTP_11))
            .await
            .unwrap();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        status
    }
}

#[tokio::test]
async fn http1_and_h2_over_tls_by_alpn_and_plain_on_the_same_port() {
    let _trace = trace_init();
    let s = setup(&[]).await;
    let addr = s.router.proxy_addr;

    let stream = tls_connect(&s.pki, addr, b"http/1.1").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = H1Tls::open(stream).await;
    assert_eq!(h1.get().await, StatusCode::OK);
    assert_eq!(
        h1.get().await,
        StatusCode::OK,
        "the TLS connection is kept alive"
    );

    let stream = tls_connect(&s.pki, addr, b"h2").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(get(Version::HTTP_2)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);

    // Plain HTTP/1.1 and h2c still work on the same port.
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let resp = client.get(addr, "/", Some("k")).await;
        assert_eq!(resp.status, StatusCode::OK, "{:?}", client.version());
    }
    assert!(s.fake.requests() >= 5);
}

#[tokio::test]
async fn tls_only_refuses_plain_connections_and_a_tls_listen_port_serves_tls() {
    let _trace = trace_init();
    let s = setup(&["--tls-only", "--tls-listen", "127.0.0.1:0"]).await;
    let addr = s.router.proxy_addr;

    // A plain request on a TLS-only port: the connection is closed without an HTTP answer
    // (at most a TLS alert).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-routing-key: k\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = within(
        "the plain connection to close",
        DEADLINE,
        tcp.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_err() || !buf.starts_with(b"HTTP/"),
        "got {:?}",
        String::from_utf8_lossy(&buf)
    );

    let stream = tls_connect(&s.pki, addr, b"http/1.1").await.unwrap();
    assert_eq!(H1Tls::open(stream).await.get().await, StatusCode::OK);

    // The second port, named on the listening line.
    let output = s.router.output();
    let tls_addr: SocketAddr = output
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tls="))
        .expect("the listening line names the TLS port")
        .parse()
        .unwrap();
    let stream = tls_connect(&s.pki, tls_addr, b"http/1.1").await.unwrap();
    assert_eq!(H1Tls::open(stream).await.get().await, StatusCode::OK);
    let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = within(
        "the plain connection to close",
        DEADLINE,
        tcp.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_err() || !buf.starts_with(b"HTTP/"));
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_and_others_are_served() {
    let _trace = trace_init();
    let s = setup(&[]).await;
    let stranger = Pki::new("stranger");
    let refused = tls_connect(&stranger, s.router.proxy_addr, b"http/1.1").await;
    assert!(
        refused.is_err(),
        "an untrusted certificate must fail the handshake"
    );
    let stream = tls_connect(&s.pki, s.router.proxy_addr, b"http/1.1")
        .await
        .unwrap();
    assert_eq!(H1Tls::open(stream).await.get().await, StatusCode::OK);
}

#[tokio::test]
async fn a_new_certificate_is_picked_up_and_open_connections_stay() {
    let _trace = trace_init();
    let s = setup(&[]).await;
    let addr = s.router.proxy_addr;
    let before = tls_connect(&s.pki, addr, b"http/1.1").await.unwrap();
    let old_leaf = peer_leaf(&before);
    let mut kept = H1Tls::open(before).await;
    assert_eq!(kept.get().await, StatusCode::OK);

    // A broken write first: the old certificate stays in force.
    std::fs::write(&s.served.cert, "not a certificate").unwrap();
    let next = s.pki.server("router-next");
    std::fs::copy(&next.key, &s.served.key).unwrap();
    std::fs::copy(&next.cert, &s.served.cert).unwrap();
    let new_leaf = CertificateDer::from_pem_file(&next.cert).unwrap();
    assert_ne!(old_leaf, new_leaf);

    let pki = Arc::new(s.pki);
    let expected = new_leaf.clone();
    wait_until(
        "new handshakes to present the new certificate",
        DEADLINE,
        || {
            let pki = Arc::clone(&pki);
            let expected = expected.clone();
            async move {
                match tls_connect(&pki, addr, b"http/1.1").await {
                    Ok(stream) => peer_leaf(&stream) == expected,
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    // The connection opened before the change still works.
    assert_eq!(kept.get().await, StatusCode::OK);
    let output = s.router.output();
    assert!(output.contains("TLS certificate reloaded"), "{output}");
}
