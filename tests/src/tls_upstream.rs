//! An upstream over TLS, for the router's upstream TLS and mTLS tests.
//!
//! `TlsUpstream::new(&pki.server("s")).start().await` binds `127.0.0.1:0` before it returns
//! and accepts TLS with that certificate, offering ALPN `h2` and `http/1.1` (or the
//! protocols given to [`TlsUpstream::alpn`]); with [`TlsUpstream::require_client_cert`] a
//! client must present a certificate signed by the given CA (mTLS). After the handshake it
//! serves HTTP/1.1 and HTTP/2 (hyper-util's auto builder, whatever ALPN said) and answers
//! every request with JSON describing the connection:
//!
//! ```json
//! {"server": "s", "alpn": "h2", "version": "HTTP/2.0", "sni": "localhost",
//!  "client_cn": "router", "path": "/x"}
//! ```
//!
//! `alpn`, `sni` and `client_cn` are `null` when absent. `client_cn` is the last common
//! name in the client certificate, which for [`crate::pki::Pki`]'s certificates is the
//! subject's. `/healthz` answers the status set by [`TlsListening::set_health`] (default
//! 200), counted apart ([`TlsListening::health_probes`]).
//!
//! [`TlsUpstream::start_grpc_health`] serves `grpc.health.v1.Health` (tonic-health, whole
//! server `SERVING`) over TLS instead, h2 only.
//!
//! Failed handshakes are counted with their reason ([`TlsListening::handshake_failures`]).
//! Dropping the [`TlsListening`] stops the server and its connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::pki::CertFiles;

/// Builder of a TLS upstream.
#[derive(Debug, Clone)]
pub struct TlsUpstream {
    name: String,
    cert: CertFiles,
    alpn: Vec<Vec<u8>>,
    client_ca: Option<PathBuf>,
}

/// A running TLS upstream. Dropping it stops the server.
#[derive(Debug)]
pub struct TlsListening {
    /// The bound address (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    name: String,
    handshakes: AtomicUsize,
    failures: Mutex<Vec<String>>,
    requests: AtomicUsize,
    health: AtomicU16,
    health_probes: AtomicUsize,
}

/// What the accept loop knows of one connection after its handshake.
#[derive(Debug, Clone)]
struct Peer {
    alpn: Option<String>,
    sni: Option<String>,
    client_cn: Option<String>,
}

// === impl TlsUpstream ===

impl TlsUpstream {
    /// An upstream named `"tls"` presenting `cert`, offering `h2` and `http/1.1`, asking
    /// for no client certificate.
    pub fn new(cert: &CertFiles) -> Self {
        TlsUpstream {
            name: "tls".to_owned(),
            cert: cert.clone(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            client_ca: None,
        }
    }

    /// Names the upstream (the `server` field of its answers).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The ALPN protocols offered, most preferred first (empty: no ALPN). A client that
    /// offers none of them is refused during the handshake.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Requires a client certificate signed by the CA in `ca_file` (mTLS).
    pub fn require_client_cert(mut self, ca_file: &Path) -> Self {
        self.client_ca = Some(ca_file.to_path_buf());
        self
    }

    /// Binds `127.0.0.1:0` and serves the JSON answers.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound or the certificate files do not load.
    pub async fn start(self) -> TlsListening {
        let (listener, acceptor, state) = self.bind().await;
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(serve(listener, acceptor, Arc::clone(&state)));
        TlsListening { addr, state, task }
    }

    /// Binds `127.0.0.1:0` and serves `grpc.health.v1.Health` (the whole server
    /// `SERVING`) over TLS, HTTP/2 only.
    ///
    /// # Panics
    ///
    /// As [`TlsUpstream::start`].
    pub async fn start_grpc_health(self) -> TlsListening {
        let (listener, acceptor, state) = self.bind().await;
        let addr = listener.local_addr().expect("local address");
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (tx, rx) = mpsc::channel::<std::io::Result<TlsConn>>(16);
        let accepting = {
            let state = Arc::clone(&state);
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let state = Arc::clone(&state);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Some((tls, _peer)) = handshake(&acceptor, tcp, &state).await {
                            let _ = tx.send(Ok(TlsConn(tls))).await;
                        }
                    });
                }
            }
        };
        let task = tokio::spawn(async move {
            let serving = tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx));
            tokio::select! {
                () = accepting => {}
                result = serving => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "TLS gRPC upstream ended");
                    }
                }
            }
        });
        TlsListening { addr, state, task }
    }

    async fn bind(self) -> (TcpListener, TlsAcceptor, Arc<State>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS upstream to 127.0.0.1:0");
        let chain = CertificateDer::pem_file_iter(&self.cert.cert)
            .expect("read the server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse the server certificate");
        let key = PrivateKeyDer::from_pem_file(&self.cert.key).expect("read the server key");
        let provider = service_runtime::tls::provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = service_runtime::tls::read_roots(ca).expect("read the client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("the server certificate and key match");
        config.alpn_protocols = self.alpn;
        let state = Arc::new(State {
            name: self.name,
            handshakes: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            health: AtomicU16::new(200),
            health_probes: AtomicUsize::new(0),
        });
        (listener, TlsAcceptor::from(Arc::new(config)), state)
    }
}

// === impl TlsListening ===

impl TlsListening {
    /// `host:port` of the upstream, as written in a rule set.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// Why each failed handshake failed, in order.
    pub fn handshake_failures(&self) -> Vec<String> {
        lock(&self.state.failures).clone()
    }

    /// Requests answered so far (health probes excluded).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Sets the status `/healthz` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    /// `/healthz` requests answered so far.
    pub fn health_probes(&self) -> usize {
        self.state.health_probes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsListening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === serving ===

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    // The connection tasks live in this set: aborting the accept loop aborts them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                conns.spawn(async move {
                    let Some((tls, peer)) = handshake(&acceptor, tcp, &state).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let answer = answer(&state, &peer, &req);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    if let Err(error) = builder.serve_connection(TokioIo::new(tls), svc).await {
                        tracing::debug!(%error, "TLS upstream connection ended with an error");
                    }
                });
            }
            Some(_done) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The TLS handshake, counted; `None` (with the reason recorded) when it fails.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    state: &State,
) -> Option<(TlsStream<TcpStream>, Peer)> {
    let _ = tcp.set_nodelay(true);
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            state.handshakes.fetch_add(1, Ordering::SeqCst);
            let conn = tls.get_ref().1;
            let peer = Peer {
                alpn: conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                sni: conn.server_name().map(str::to_owned),
                client_cn: conn
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| last_common_name(leaf)),
            };
            Some((tls, peer))
        }
        Err(error) => {
            lock(&state.failures).push(error.to_string());
            None
        }
    }
}

fn answer(state: &State, peer: &Peer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let status = if path == "/healthz" {
        state.health_probes.fetch_add(1, Ordering::SeqCst);
        StatusCode::from_u16(state.health.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
    } else {
        state.requests.fetch_add(1, Ordering::SeqCst);
        StatusCode::OK
    };
    let body = serde_json::json!({
        "server": state.name,
        "alpn": peer.alpn,
        "version": format!("{:?}", req.version()),
        "sni": peer.sni,
        "client_cn": peer.client_cn,
        "path": path,
    });
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// The value of the last `commonName` attribute (OID 2.5.4.3) in a DER certificate, read
/// without an X.509 parser: the issuer's comes first, then the subject's.
fn last_common_name(der: &CertificateDer<'_>) -> Option<String> {
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let bytes = der.as_ref();
    let at = bytes.windows(CN_OID.len()).rposition(|w| w == CN_OID)?;
    // OID, then a string (UTF8String 0x0c, PrintableString 0x13, ...) with a short length.
    let value = bytes.get(at + CN_OID.len()..)?;
    let len = usize::from(*value.get(1)?);
    let text = value.get(2..2 + len)?;
    Some(String::from_utf8_lossy(text).into_owned())
}

/// A server TLS stream as tonic's server takes it.
struct TlsConn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
