//! The proxy listener: one worker thread per core, each with its own single-threaded runtime,
//! its own `SO_REUSEPORT` socket on the shared address, and its own slot in every upstream
//! pool. The kernel spreads new connections across the sockets; nothing is shared between
//! workers on the request path except the route table snapshot.
//!
//! Each connection: counted against `--max-connections` (past it, closed at once); on a
//! port that serves TLS, told TLS from plain HTTP by its first byte (or TLS only); its
//! HTTP/1.1 bytes followed by [`framing`](crate::framing) so an ambiguous request is refused
//! by hyper's own parser; closed when idle for `--idle-timeout-ms`; and asked to finish
//! gracefully when the router drains.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::framing::{Activity, ClientIo};
use crate::proxy::Proxy;
use crate::state::Shared;
use crate::{timer, upstream};

/// Settings of the proxy listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time allowed for a complete HTTP/1.1 request head, and for a TLS handshake (`None`:
    /// no limit).
    pub header_read_timeout: Option<Duration>,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// How long a connection may sit with nothing happening (`None`: forever).
    pub idle_timeout: Option<Duration>,
    /// Largest request head, in bytes (HTTP/1.1 read buffer; HTTP/2 header list).
    pub max_head_bytes: u32,
    /// Most header fields in an HTTP/1.1 request.
    pub max_headers: u32,
    /// HTTP/2 limits: concurrent streams, pending-accept resets, local error resets.
    pub http2_max_streams: u32,
    /// See `--http2-max-pending-resets`.
    pub http2_max_pending_resets: usize,
    /// See `--http2-max-error-resets`.
    pub http2_max_error_resets: usize,
}

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain HTTP/1.1 and h2c.
    Plain,
    /// TLS and plain on one port, told apart by the first byte.
    Sniff,
    /// TLS only.
    Tls,
}

/// The open client connections of the whole process, against `--max-connections`.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
}

/// One open connection, counted until dropped.
#[derive(Debug)]
struct Counted(Arc<ConnectionLimit>);

impl ConnectionLimit {
    /// A limit of `max` connections (at least one).
    #[must_use]
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            open: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>) -> Option<Counted> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Counted(Arc::clone(self)))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's sockets and what each serves, with the TLS acceptor when one needs it.
pub struct WorkerListeners {
    /// The `--listen` socket.
    pub main: std::net::TcpListener,
    /// What `main` serves.
    pub main_mode: Mode,
    /// The `--tls-listen` socket, TLS only.
    pub tls: Option<std::net::TcpListener>,
    /// The acceptor for TLS connections (set when any socket serves TLS).
    pub acceptor: Option<TlsAcceptor>,
}

impl std::fmt::Debug for WorkerListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerListeners")
            .field("main", &self.main)
            .field("main_mode", &self.main_mode)
            .field("tls", &self.tls)
            .field("acceptor", &self.acceptor.is_some())
            .finish()
    }
}

/// Binds `count` sockets to `addr` with `SO_REUSEPORT`. With port 0 the first socket picks
/// the port and the rest join it.
///
/// # Errors
///
/// When a socket cannot be created or bound.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = reuseport_socket(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(reuseport_socket(bound)?);
    }
    Ok(listeners)
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts worker `index` on its own thread, serving its listeners until `shutdown` is
/// cancelled, then draining.
///
/// # Errors
///
/// When the thread or its runtime cannot be created.
pub fn spawn_worker(
    index: usize,
    listeners: WorkerListeners,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    options: ServeOptions,
    limit: Arc<ConnectionLimit>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("router-worker-{index}"))
        .spawn(move || {
            upstream::set_worker_index(index);
            runtime.block_on(async move {
                // The request path's deadlines (route, per-try, header-read timeouts).
                timer::start();
                let registered =
                    tokio::net::TcpListener::from_std(listeners.main).and_then(|main| {
                        let tls = listeners
                            .tls
                            .map(tokio::net::TcpListener::from_std)
                            .transpose()?;
                        Ok((main, tls))
                    });
                match registered {
                    Ok((main, tls)) => {
                        let worker = Worker {
                            shared,
                            options,
                            limit,
                            acceptor: listeners.acceptor,
                            builder: builder(&options),
                            shutdown,
                            tracker: TaskTracker::new(),
                        };
                        worker.serve(main, listeners.main_mode, tls).await;
                    }
                    Err(e) => {
                        tracing::error!(worker = index, error = %e, "cannot register listener")
                    }
                }
            });
        })
}

/// The HTTP server settings every connection of a worker shares.
fn builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(timer::WorkerTimer)
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_head_bytes.max(8192) as usize)
        .keep_alive(true);
    // hyper keeps up to 100 headers on the stack; another limit moves them to the heap.
    if options.max_headers != 100 {
        http1.max_headers(options.max_headers as usize);
    }
    builder
        .http2()
        .timer(timer::WorkerTimer)
        .max_concurrent_streams(options.http2_max_streams)
        .max_header_list_size(options.max_head_bytes)
        .max_pending_accept_reset_streams(options.http2_max_pending_resets)
        .max_local_error_reset_streams(options.http2_max_error_resets);
    builder
}

struct Worker {
    shared: Arc<Shared>,
    options: ServeOptions,
    limit: Arc<ConnectionLimit>,
    acceptor: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Worker {
    async fn serve(
        self,
        main: tokio::net::TcpListener,
        main_mode: Mode,
        tls: Option<tokio::net::TcpListener>,
    ) {
        let worker = Arc::new(self);
        loop {
            let (accepted, mode) = tokio::select! {
                biased;
                () = worker.shutdown.cancelled() => break,
                accepted = main.accept() => (accepted, main_mode),
                accepted = accept_on(tls.as_ref()) => (accepted, Mode::Tls),
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and similar: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(counted) = worker.limit.enter() else {
                // Closed at once: a client past the limit learns it now, not after a wait.
                crate::metrics::connection_refused();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = Arc::clone(&worker);
            worker.tracker.spawn(async move {
                this.connection(stream, remote, mode).await;
                drop(counted);
            });
        }
        drop(main);
        drop(tls);
        worker.tracker.close();
        let open = worker.tracker.len();
        if open > 0 {
            tracing::info!(connections = open, "draining");
        }
        if tokio::time::timeout(worker.options.drain_timeout, worker.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(deadline = ?worker.options.drain_timeout, "drain deadline passed; closing remaining connections");
        }
    }

    async fn connection(&self, stream: TcpStream, remote: SocketAddr, mode: Mode) {
        let tls = match mode {
            Mode::Plain => false,
            Mode::Tls => true,
            Mode::Sniff => {
                let mut first = [0u8; 1];
                match self.limited(stream.peek(&mut first)).await {
                    Some(Ok(1)) => service_runtime::tls::starts_tls(first[0]),
                    // Closed, failed or silent past the header-read timeout.
                    _ => return,
                }
            }
        };
        if !tls {
            return self.serve_io(stream, remote, true).await;
        }
        let Some(acceptor) = &self.acceptor else {
            return;
        };
        match self.limited(acceptor.accept(stream)).await {
            Some(Ok(stream)) => {
                // ALPN h2: no HTTP/1.1 framing to follow.
                let h1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
                self.serve_io(stream, remote, h1).await;
            }
            Some(Err(e)) => {
                tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
            }
            None => tracing::debug!(client = %remote, "TLS handshake timed out"),
        }
    }

    /// `fut` within the header-read timeout, when there is one.
    async fn limited<F: Future>(&self, fut: F) -> Option<F::Output> {
        match self.options.header_read_timeout {
            Some(limit) => tokio::time::timeout(limit, fut).await.ok(),
            None => Some(fut.await),
        }
    }

    async fn serve_io<I>(&self, io: I, remote: SocketAddr, h1: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let options = self.options;
        let watched = options.idle_timeout.is_some() || options.header_read_timeout.is_some();
        let activity = watched.then(|| Arc::new(Activity::default()));
        let io = ClientIo::new(io, h1, activity.clone());
        let proxy = Proxy::new(Arc::clone(&self.shared), remote, activity.clone());
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), proxy);
        let mut conn = std::pin::pin!(conn);
        // One signal for every reason to finish (draining, no HTTP version in time, idle),
        // so that each wake-up of the connection polls one future besides it. The watch is
        // a task of its own.
        let stop = self.shutdown.child_token();
        let watch = activity.map(|activity| {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = watch(&activity, options, remote) => stop.cancel(),
                    () = stop.cancelled() => {}
                }
            })
        });
        let mut stopped = std::pin::pin!(stop.cancelled());
        let mut closing = false;
        loop {
            tokio::select! {
                biased;
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(client = %remote, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = &mut stopped, if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        if let Some(watch) = watch {
            watch.abort();
        }
    }
}

async fn accept_on(
    listener: Option<&tokio::net::TcpListener>,
) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the connection should finish: it has not told its HTTP version within
/// the header-read timeout (a partial HTTP/2 preface: hyper's own head timer starts only
/// after it), or it has been idle for the idle timeout.
async fn watch(activity: &Activity, options: ServeOptions, remote: SocketAddr) {
    let unstarted = async {
        match options.header_read_timeout {
            Some(limit) => {
                tokio::time::sleep(limit).await;
                if activity.version_known.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let idle = async {
        match options.idle_timeout {
            Some(limit) => idle_watch(activity, limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = unstarted => {
            tracing::debug!(client = %remote, "closing a connection that did not start in time");
        }
        () = idle => tracing::debug!(client = %remote, "closing an idle connection"),
    }
}

/// Resolves once nothing has happened on the connection for `limit`: no request waiting
/// for its answer and no bytes either way. Looks every half `limit`, so an idle connection
/// closes between `limit` and 1.5 × `limit` after its last activity.
async fn idle_watch(activity: &Activity, limit: Duration) {
    let tick = limit / 2;
    let mut last = activity.sample();
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.sample();
        if now.1 || now.0 != last.0 {
            quiet = Duration::ZERO;
        } else {
            quiet += tick;
            if quiet >= limit {
                return;
            }
        }
        last = now;
    }
}
