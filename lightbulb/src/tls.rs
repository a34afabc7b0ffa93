//! TLS on Lightbulb's two ports (`--tls-cert FILE --tls-key FILE [--tls-only]`).
//!
//! [`Tls::load`] reads the certificate and key once (a [`ReloadingCert`]) and builds two
//! rustls server configurations over the same pair: the gRPC port offers ALPN `h2` only, the
//! HTTP port `h2` and `http/1.1`. [`Tls::watch`] re-reads the files when they change: every
//! handshake after that presents the new pair, and connections already open keep the one
//! they started with (nothing is restarted, nothing is dropped). A file that does not load is
//! logged and the pair in force stays.
//!
//! [`Tls::accept`] runs the accept loop of one port and hands ready connections to the
//! server (tonic takes [`Incoming`] as a stream, axum as a [`Listener`]):
//!
//! ```text
//! TcpListener::accept ──▶ one task per connection (the loop never waits on a client):
//!                           first byte peeked (not read)        (skipped with --tls-only)
//!                             0x16, a TLS handshake record → rustls handshake ──▶ Conn::Tls
//!                             anything else (HTTP/1.1, the h2 preface)        ──▶ Conn::Plain
//!                           both within HANDSHAKE_TIMEOUT; a failure closes that connection
//!                           only (debug log, lightbulb_tls_handshake_failures_total)
//!                     ──▶ channel ──▶ Incoming ──▶ tonic / axum
//! ```
//!
//! Shutdown: the loop and the pending handshakes stop when the token is cancelled; the
//! servers' own graceful shutdown drains the connections they already have.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use rustls::ServerConfig;
use service_runtime::tls::{self as shared, ReloadingCert, TlsError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a new connection may take to send its first byte and finish the TLS handshake
/// before it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN of the gRPC port: gRPC is HTTP/2 only.
pub const ALPN_GRPC: [&[u8]; 1] = [b"h2"];

/// Connections ready (handshake done) but not yet taken by the server.
const READY_BACKLOG: usize = 128;

/// Pause after an accept error that is not about one connection (out of file descriptors),
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The certificate in force and the server configurations of both ports.
#[derive(Debug, Clone)]
pub struct Tls {
    cert: Arc<ReloadingCert>,
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    tls_only: bool,
}

/// Which port a connection came in on (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The gRPC port (`--grpc`).
    Grpc,
    /// The HTTP port (`--http`).
    Http,
}

/// A connection accepted by [`Tls::accept`]: TLS, or plaintext on the same port (without
/// `--tls-only`).
#[derive(Debug)]
pub enum Conn {
    /// The client sent something other than a TLS handshake (nothing of it has been read).
    Plain(TcpStream),
    /// The TLS handshake is done.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The connections of one port, ready to serve: a `Stream` for tonic's
/// `serve_with_incoming_shutdown`, a [`Listener`] for `axum::serve`. It ends (the stream) or
/// waits forever (the listener) once the accept loop has stopped.
#[derive(Debug)]
pub struct Incoming {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
    local_addr: SocketAddr,
}

// === impl Tls ===

impl Tls {
    /// Loads the certificate chain and key; `tls_only` refuses plaintext connections.
    ///
    /// # Errors
    ///
    /// When a file cannot be read or the key does not match the certificate.
    pub fn load(cert: &Path, key: &Path, tls_only: bool) -> Result<Self, TlsError> {
        let cert = ReloadingCert::load(cert, key)?;
        let grpc = shared::server_config(Arc::clone(&cert), &ALPN_GRPC)?;
        let http = shared::server_config(Arc::clone(&cert), &shared::ALPN_H2_HTTP1)?;
        Ok(Self {
            cert,
            grpc,
            http,
            tls_only,
        })
    }

    /// Starts re-reading the files when they change (see the module docs). The watcher
    /// stops when the last clone of `self` (and every configuration built from it) is gone.
    ///
    /// # Errors
    ///
    /// When the watcher thread cannot be started.
    pub fn watch(&self) -> io::Result<()> {
        self.cert.watch()
    }

    /// Whether plaintext connections are refused.
    pub fn tls_only(&self) -> bool {
        self.tls_only
    }

    /// The server configuration of `port` (its ALPN list differs).
    pub fn server_config(&self, port: Port) -> Arc<ServerConfig> {
        Arc::clone(match port {
            Port::Grpc => &self.grpc,
            Port::Http => &self.http,
        })
    }

    /// Spawns the accept loop of `listener` on the current runtime, until `stop`.
    ///
    /// # Errors
    ///
    /// When the listener has no local address.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn accept(
        &self,
        listener: TcpListener,
        port: Port,
        stop: CancellationToken,
    ) -> io::Result<Incoming> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_BACKLOG);
        let acceptor = TlsAcceptor::from(self.server_config(port));
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            self.tls_only,
            port,
            tx,
            stop,
        ));
        Ok(Incoming { ready, local_addr })
    }
}

// === impl Port ===

impl Port {
    /// The metric label: `grpc` or `http`.
    pub fn as_label(self) -> &'static str {
        match self {
            Port::Grpc => "grpc",
            Port::Http => "http",
        }
    }
}

/// Accepts until `stop`; each connection is opened in its own task so a slow or broken
/// client never holds up the next one.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tls_only: bool,
    port: Port,
    ready: mpsc::Sender<(Conn, SocketAddr)>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                pause_after(&e, &stop).await;
                continue;
            }
        };
        // As tonic's own listener does: gRPC answers are small writes.
        let _ = tcp.set_nodelay(true);
        let (acceptor, ready, stop) = (acceptor.clone(), ready.clone(), stop.clone());
        tokio::spawn(async move {
            let opened = tokio::select! {
                () = stop.cancelled() => return,
                opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, open(tcp, &acceptor, tls_only)) => opened,
            };
            match opened {
                Ok(Ok(Some(conn))) => {
                    // Err: the server stopped taking connections (shutdown); this one closes.
                    let _ = ready.send((conn, peer)).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => handshake_failed(port, peer, &e),
                Err(_) => handshake_failed(port, peer, &"timed out"),
            }
        });
    }
}

/// TLS or plaintext, by the first byte; `None` when the client closed before sending one.
async fn open(tcp: TcpStream, acceptor: &TlsAcceptor, tls_only: bool) -> io::Result<Option<Conn>> {
    if !tls_only {
        let mut first = [0u8; 1];
        // Peeked, not read: a plaintext connection reaches the server whole.
        if tcp.peek(&mut first).await? == 0 {
            return Ok(None);
        }
        if !shared::starts_tls(first[0]) {
            return Ok(Some(Conn::Plain(tcp)));
        }
    }
    let tls = acceptor.accept(tcp).await?;
    Ok(Some(Conn::Tls(Box::new(tls))))
}

fn handshake_failed(port: Port, peer: SocketAddr, error: &dyn std::fmt::Display) {
    crate::metrics::record_tls_handshake_failure(port);
    tracing::debug!(port = port.as_label(), %peer, %error, "TLS handshake failed; connection closed");
}

/// After an accept error: nothing when it concerned one connection only, otherwise a short
/// pause (cut short by `stop`).
async fn pause_after(error: &io::Error, stop: &CancellationToken) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "accept failed; retrying in {ACCEPT_ERROR_PAUSE:?}");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
    }
}

// === impl Conn ===

impl Conn {
    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl Connected for Conn {
    // The same as a plaintext TCP connection's, so `Request::remote_addr` works either way.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(tcp) => tcp.is_write_vectored(),
            Conn::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

// === impl Incoming ===

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready
            .poll_recv(cx)
            .map(|next| next.map(|(conn, _)| Ok(conn)))
    }
}

impl Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept loop stopped, so shutdown has begun: axum stops on its signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests;
