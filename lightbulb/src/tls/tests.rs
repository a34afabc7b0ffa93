use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// A CA, and a certificate for `localhost` it signed, as files in a temp dir.
struct Files {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn new_files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    Files {
        ca: path("ca.pem"),
        cert: path("cert.pem"),
        key: path("key.pem"),
        dir,
    }
}

/// Serves `incoming`: answers every connection with `tls` or `plain` after reading 4 bytes.
fn answer_with_kind(mut incoming: Incoming) {
    tokio::spawn(async move {
        loop {
            let (mut conn, _peer) = Listener::accept(&mut incoming).await;
            tokio::spawn(async move {
                let mut ping = [0u8; 4];
                conn.read_exact(&mut ping).await.unwrap();
                let kind: &[u8] = if conn.is_tls() { b"tls" } else { b"plain" };
                conn.write_all(kind).await.unwrap();
                conn.shutdown().await.unwrap();
            });
        }
    });
}

async fn started(files: &Files, port: Port, tls_only: bool) -> (SocketAddr, CancellationToken) {
    let tls = Tls::load(&files.cert, &files.key, tls_only).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    answer_with_kind(tls.accept(listener, port, stop.clone()).unwrap());
    (addr, stop)
}

async fn plain(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET ").await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    Ok(answer)
}

/// A TLS client trusting `ca`, offering `alpn`: the answer and the protocol agreed.
async fn tls(
    addr: SocketAddr,
    ca: &Path,
    alpn: &[&[u8]],
) -> io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let config = shared::client_config(ca, None, alpn).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    stream.write_all(b"ping").await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok((answer, alpn))
}

#[tokio::test]
async fn tls_and_plaintext_share_a_port() {
    let files = new_files();
    let (addr, stop) = started(&files, Port::Http, false).await;
    assert_eq!(plain(addr).await.unwrap(), b"plain");
    let (answer, alpn) = tls(addr, &files.ca, &shared::ALPN_H2_HTTP1).await.unwrap();
    assert_eq!(answer, b"tls");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (_, alpn) = tls(addr, &files.ca, &[b"http/1.1"]).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    stop.cancel();
}

#[tokio::test]
async fn the_grpc_port_agrees_on_h2_only() {
    let files = new_files();
    let (addr, _stop) = started(&files, Port::Grpc, false).await;
    let (_, alpn) = tls(addr, &files.ca, &shared::ALPN_H2_HTTP1).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert!(tls(addr, &files.ca, &[b"http/1.1"]).await.is_err());
}

#[tokio::test]
async fn a_failed_handshake_closes_that_connection_only() {
    let files = new_files();
    let other = new_files();
    let (addr, _stop) = started(&files, Port::Http, false).await;
    assert!(tls(addr, &other.ca, &shared::ALPN_H2_HTTP1).await.is_err());
    // Garbage after a handshake record byte, then a client that hangs up at once.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0x16, 0xff, 0xff, 0xff]).await.unwrap();
    drop(TcpStream::connect(addr).await.unwrap());
    let (answer, _) = tls(addr, &files.ca, &shared::ALPN_H2_HTTP1).await.unwrap();
    assert_eq!(answer, b"tls");
    assert_eq!(plain(addr).await.unwrap(), b"plain");
}

#[tokio::test]
async fn tls_only_refuses_plaintext() {
    let files = new_files();
    let (addr, _stop) = started(&files, Port::Http, true).await;
    // The server never sees it: the client gets a TLS alert (record type 21) or nothing.
    let refused = plain(addr).await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |answer| answer.first().is_none_or(|&b| b == 21)),
        "{refused:?}"
    );
    let (answer, _) = tls(addr, &files.ca, &shared::ALPN_H2_HTTP1).await.unwrap();
    assert_eq!(answer, b"tls");
}

#[tokio::test]
async fn the_loop_stops_with_its_token() {
    let files = new_files();
    let (addr, stop) = started(&files, Port::Http, false).await;
    stop.cancel();
    // The listener is dropped once the loop has seen the token.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "still accepting on {addr} after stop");
}

#[test]
fn a_missing_file_is_named() {
    let files = new_files();
    let error = Tls::load(&files.dir.path().join("nope.pem"), &files.key, false)
        .unwrap_err()
        .to_string();
    assert!(error.contains("nope.pem"), "{error}");
}
