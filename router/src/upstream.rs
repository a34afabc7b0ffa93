//! Connections to model servers: a pool per endpoint and per worker, HTTP/1.1 or HTTP/2,
//! in cleartext (h2c with prior knowledge) or over TLS ([`tls`]).
//!
//! Each worker thread runs its own single-threaded runtime and owns its slot of every pool,
//! so a checkout touches a mutex that no other thread ever contends. HTTP/1.1 keeps a list
//! of connections and reuses the first one that is idle; HTTP/2 keeps one multiplexed
//! connection. Pools are keyed by address and carried over from one route table to the
//! next, so a config swap neither drops nor re-opens connections, unless it changes the
//! endpoint's TLS trust (CA file, client certificate, server name): then the pool lets go
//! of every connection it holds ([`Pool::set_tls`]) and the next requests open new ones.
//!
//! TLS costs the plaintext path one check when it opens a connection, and nothing per
//! request on a pooled one.

pub mod tls;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::RequestBody;
use tls::{Alpn, Handshaken, UpstreamTls};

/// Most idle-or-busy HTTP/1.1 connections a worker keeps per endpoint; beyond it a
/// connection serves its request and closes.
const MAX_H1_CONNECTIONS_PER_WORKER: usize = 512;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as proxy worker `index` (selects its slot in every pool).
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// How a request failed upstream, and whether it can be tried elsewhere.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent, and the request comes back so it
    /// can go to another endpoint.
    Connect(io::Error, Box<Request<RequestBody>>),
    /// The TLS handshake failed (an untrusted or mismatched certificate, a refused client
    /// certificate, no common ALPN protocol): nothing was sent, and the request comes back
    /// so it can go to another endpoint. `None` only when a TLS 1.3 server refused the
    /// client certificate right after the handshake, once the request was on its way.
    Tls(io::Error, Option<Box<Request<RequestBody>>>),
    /// The exchange failed after the request was handed to a connection.
    Exchange(hyper::Error),
    /// A new connection was needed, but the circuit breaker's `max_pending` requests are
    /// already waiting for one: nothing was sent, and the request comes back.
    Overloaded(Box<Request<RequestBody>>),
}

/// How [`Pool::send`] sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 on a pooled connection.
    Http1,
    /// HTTP/2 on the worker's multiplexed connection.
    Http2,
    /// An HTTP/1.1 upgrade on a connection of its own.
    Upgrade,
}

/// A circuit breaker's limit on the requests of a cluster waiting for a new connection.
#[derive(Debug, Clone, Copy)]
pub struct PendingLimit<'a> {
    /// Requests waiting right now (shared by every worker).
    pub count: &'a AtomicUsize,
    /// Most requests allowed to wait.
    pub max: usize,
}

/// One request counted as waiting for a connection until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> PendingLimit<'a> {
    fn enter(self) -> Option<Waiting<'a>> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Waiting(self.count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts `req` as waiting under `limit` (when there is one), or gives it back.
fn wait_for_connection<'a>(
    limit: Option<PendingLimit<'a>>,
    req: Request<RequestBody>,
) -> Result<(Option<Waiting<'a>>, Request<RequestBody>), SendError> {
    match limit {
        None => Ok((None, req)),
        Some(limit) => match limit.enter() {
            Some(waiting) => Ok((Some(waiting), req)),
            None => Err(SendError::Overloaded(Box::new(req))),
        },
    }
}

/// The connections of one endpoint, one slot per worker.
#[derive(Debug)]
pub struct Pool {
    address: Arc<str>,
    socket: Option<SocketAddr>,
    slots: Box<[Mutex<Slot>]>,
    /// TLS to the endpoint, set by every table build ([`Pool::set_tls`]); `None`:
    /// plaintext. Read when a connection is opened, never per request.
    tls: ArcSwapOption<UpstreamTls>,
    /// Bumped when `tls` changes trust; connections opened before are never pooled again.
    tls_epoch: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    h1: Vec<http1::SendRequest<RequestBody>>,
    h2: Option<http2::SendRequest<RequestBody>>,
    /// The `tls_epoch` of the connections in the slot: a connection taken out before the
    /// trust changed does not come back.
    epoch: u64,
}

/// A new connection, ready for its first request.
enum Opened {
    Http1(http1::SendRequest<RequestBody>),
    Http2(http2::SendRequest<RequestBody>),
}

/// What a new connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A pooled HTTP/1.1 connection.
    Http1,
    /// An HTTP/1.1 connection of its own, handed over after a `101`.
    Upgrade,
    /// A multiplexed HTTP/2 connection.
    Http2,
}

/// Why no connection could be opened.
enum DialError {
    /// TCP connect failed or timed out (the TLS handshake included).
    Connect(io::Error),
    /// The TLS handshake failed.
    Tls(io::Error),
    /// The HTTP handshake failed.
    Handshake(hyper::Error),
}

impl DialError {
    /// The error of sending `req`, which nothing was sent of.
    fn with(self, req: Request<RequestBody>) -> SendError {
        match self {
            DialError::Connect(e) => SendError::Connect(e, Box::new(req)),
            DialError::Tls(e) => SendError::Tls(e, Some(Box::new(req))),
            DialError::Handshake(e) => SendError::Exchange(e),
        }
    }
}

impl Pool {
    /// An empty plaintext pool for `address` (`host:port`; `socket` when the host is an IP
    /// address) with one slot per worker.
    pub fn new(address: Arc<str>, socket: Option<SocketAddr>, workers: usize) -> Self {
        let slots = (0..workers.max(1)).map(|_| Mutex::default()).collect();
        Pool {
            address,
            socket,
            slots,
            tls: ArcSwapOption::empty(),
            tls_epoch: AtomicU64::new(0),
        }
    }

    /// Sets the endpoint's TLS (`None`: plaintext), at a table build. New material with
    /// the same trust (CA file, client certificate, server name) is used from the next
    /// connection on; other trust, or a switch between TLS and plaintext, also lets go of
    /// every pooled connection (requests in flight on them finish).
    pub fn set_tls(&self, tls: Option<Arc<UpstreamTls>>) {
        let same_trust = match (self.tls.load().as_deref(), tls.as_deref()) {
            (None, None) => return,
            (Some(current), Some(next)) => current.same_trust(next),
            _ => false,
        };
        self.tls.store(tls);
        if same_trust {
            return;
        }
        // After the store: a dial that read the old epoch may have the old settings, and
        // its connection is not pooled.
        let epoch = self.tls_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        for slot in self.slots.iter() {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.h1.clear();
            slot.h2 = None;
            slot.epoch = epoch;
        }
    }

    /// The endpoint's TLS, when it has some.
    pub fn tls(&self) -> Option<Arc<UpstreamTls>> {
        self.tls.load_full()
    }

    /// Changes whenever the endpoint's TLS trust changes (health probes reconnect then).
    pub fn tls_epoch(&self) -> u64 {
        self.tls_epoch.load(Ordering::SeqCst)
    }

    /// The address this pool connects to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The socket address, when the host is an IP address.
    pub fn socket(&self) -> Option<SocketAddr> {
        self.socket
    }

    /// Number of open connections across workers (HTTP/1.1 ones plus h2 ones).
    pub fn open_connections(&self) -> usize {
        self.slots
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.h1.iter().filter(|c| !c.is_closed()).count()
                    + usize::from(s.h2.as_ref().is_some_and(|c| !c.is_closed()))
            })
            .sum()
    }

    fn slot(&self) -> &Mutex<Slot> {
        let index = WORKER.with(Cell::get);
        &self.slots[index % self.slots.len()]
    }

    /// Sends `req` the way `transport` says, each way's pooled fast path inline: one future
    /// for every way, so that the request path awaits it directly instead of wrapping a
    /// choice of three futures in a fourth (each wrapper a copy of the request and of the
    /// inner future). A new connection is opened only within `pending`'s limit.
    ///
    /// - [`Transport::Http1`]: origin-form URI, `Host` set; an idle connection is reused.
    /// - [`Transport::Http2`]: h2c or h2 (absolute URI) on this worker's multiplexed
    ///   connection.
    /// - [`Transport::Upgrade`]: an HTTP/1.1 upgrade on a connection of its own, never
    ///   pooled.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        transport: Transport,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        match transport {
            Transport::Http1 => {
                let req = match self.checkout_h1() {
                    Some((mut conn, epoch)) => match conn.try_send_request(req).await {
                        Ok(resp) => {
                            self.checkin_h1(conn, epoch);
                            return Ok(resp);
                        }
                        Err(mut err) => match err.take_message() {
                            // The connection closed before taking the request: open a fresh
                            // one.
                            Some(back) => back,
                            None => return Err(SendError::Exchange(err.into_error())),
                        },
                    },
                    None => req,
                };
                // The cold paths are boxed so that the future of every pooled request stays
                // small.
                Box::pin(self.open_http1(req, connect_timeout, pending)).await
            }
            Transport::Http2 => {
                let req = match self.live_h2() {
                    Some(mut conn) => match conn.try_send_request(req).await {
                        Ok(resp) => return Ok(resp),
                        Err(mut err) => match err.take_message() {
                            Some(back) => back,
                            None => return Err(SendError::Exchange(err.into_error())),
                        },
                    },
                    None => req,
                };
                Box::pin(self.open_http2(req, connect_timeout, pending)).await
            }
            Transport::Upgrade => Box::pin(self.send_upgrade(req, connect_timeout, pending)).await,
        }
    }

    async fn open_http1(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let epoch = self.tls_epoch.load(Ordering::SeqCst);
        let tls = self.tls.load_full();
        // An `auto` cluster over TLS speaks what the endpoint picked: an HTTP/2 connection
        // it chose carries HTTP/1.1 clients' requests too.
        if let Some(tls) = tls.as_ref().filter(|t| t.is_auto())
            && let Some(mut conn) = self.live_h2()
        {
            return conn
                .try_send_request(as_version(req, tls, true))
                .await
                .map_err(|e| first_send_failed(e, None));
        }
        let (waiting, req) = wait_for_connection(pending, req)?;
        let (opened, handshaken) = match self.dial(connect_timeout, Want::Http1, tls).await {
            Ok(dialed) => dialed,
            Err(e) => return Err(e.with(req)),
        };
        drop(waiting);
        match opened {
            Opened::Http1(mut conn) => {
                let result = conn.try_send_request(req).await;
                if result.is_ok() {
                    self.checkin_h1(conn, epoch);
                }
                result.map_err(|e| first_send_failed(e, handshaken.as_ref()))
            }
            Opened::Http2(mut conn) => {
                self.keep_h2(&conn, epoch);
                let req = match &handshaken {
                    Some(h) => as_version(req, h.settings(), true),
                    None => req,
                };
                conn.try_send_request(req)
                    .await
                    .map_err(|e| first_send_failed(e, handshaken.as_ref()))
            }
        }
    }

    /// Sends an HTTP/1.1 upgrade request (`Connection: upgrade`) on a connection of its
    /// own, never pooled: after a `101` the connection belongs to the tunnel, and after any
    /// other answer it ends with the response.
    async fn send_upgrade(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let (waiting, req) = wait_for_connection(pending, req)?;
        let tls = self.tls.load_full();
        let (opened, handshaken) = match self.dial(connect_timeout, Want::Upgrade, tls).await {
            Ok(dialed) => dialed,
            Err(e) => return Err(e.with(req)),
        };
        drop(waiting);
        let Opened::Http1(mut conn) = opened else {
            unreachable!("an upgrade offers http/1.1 only and opens an HTTP/1.1 connection");
        };
        conn.try_send_request(req)
            .await
            .map_err(|e| first_send_failed(e, handshaken.as_ref()))
    }

    /// Opens a new connection for `want` with `tls` (the pool's, read by the caller), its
    /// driver running on its own task. Over TLS the connection is the version the endpoint
    /// picked by ALPN, and comes with what tells a refused client certificate apart later.
    async fn dial(
        &self,
        connect_timeout: Duration,
        want: Want,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Result<(Opened, Option<Handshaken>), DialError> {
        let Some(tls) = tls else {
            let tcp = self
                .connect(connect_timeout)
                .await
                .map_err(DialError::Connect)?;
            let opened = handshake(TokioIo::new(tcp), want, want == Want::Http2).await;
            return Ok((opened.map_err(DialError::Handshake)?, None));
        };
        let alpn = match want {
            Want::Upgrade => Alpn::Http1,
            _ if tls.is_auto() => Alpn::Either,
            Want::Http1 => Alpn::Http1,
            Want::Http2 => Alpn::Http2,
        };
        let secure = async {
            let tcp = connect_tcp(&self.address, self.socket)
                .await
                .map_err(DialError::Connect)?;
            tls.handshake(tcp, alpn).await.map_err(|e| {
                tls.report(&e);
                DialError::Tls(e)
            })
        };
        let established = match tokio::time::timeout(connect_timeout, secure).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(DialError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connect and TLS handshake to {} timed out after {connect_timeout:?}",
                        self.address
                    ),
                )));
            }
        };
        let h2 = established.h2.unwrap_or(want == Want::Http2);
        let opened = handshake(TokioIo::new(established.io), want, h2).await;
        Ok((
            opened.map_err(DialError::Handshake)?,
            Some(established.handshaken),
        ))
    }

    async fn open_http2(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let epoch = self.tls_epoch.load(Ordering::SeqCst);
        let tls = self.tls.load_full();
        // An `auto` cluster over TLS speaks what the endpoint picked: an idle HTTP/1.1
        // connection it chose carries HTTP/2 clients' requests too.
        if let Some(tls) = tls.as_ref().filter(|t| t.is_auto())
            && let Some((mut conn, conn_epoch)) = self.checkout_h1()
        {
            let result = conn.try_send_request(as_version(req, tls, false)).await;
            if result.is_ok() {
                self.checkin_h1(conn, conn_epoch);
            }
            return result.map_err(|e| first_send_failed(e, None));
        }
        let (waiting, req) = wait_for_connection(pending, req)?;
        let (opened, handshaken) = match self.dial(connect_timeout, Want::Http2, tls).await {
            Ok(dialed) => dialed,
            Err(e) => return Err(e.with(req)),
        };
        drop(waiting);
        match opened {
            Opened::Http2(mut conn) => {
                self.keep_h2(&conn, epoch);
                conn.try_send_request(req)
                    .await
                    .map_err(|e| first_send_failed(e, handshaken.as_ref()))
            }
            Opened::Http1(mut conn) => {
                let req = match &handshaken {
                    Some(h) => as_version(req, h.settings(), false),
                    None => req,
                };
                let result = conn.try_send_request(req).await;
                if result.is_ok() {
                    self.checkin_h1(conn, epoch);
                }
                result.map_err(|e| first_send_failed(e, handshaken.as_ref()))
            }
        }
    }

    /// This worker's HTTP/2 connection, when it is open.
    fn live_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let slot = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        slot.h2.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// Makes `conn` this worker's HTTP/2 connection, unless the TLS trust changed since
    /// `epoch`.
    fn keep_h2(&self, conn: &http2::SendRequest<RequestBody>, epoch: u64) {
        let mut slot = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        if slot.epoch == epoch {
            slot.h2 = Some(conn.clone());
        }
    }

    /// Takes an idle HTTP/1.1 connection out of this worker's slot, dropping closed ones and
    /// leaving busy ones (still streaming a response) in place.
    /// The slot's epoch comes with the connection, for [`Pool::checkin_h1`].
    fn checkout_h1(&self) -> Option<(http1::SendRequest<RequestBody>, u64)> {
        let mut slot = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        let epoch = slot.epoch;
        let conns = &mut slot.h1;
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            if conns[i].is_closed() {
                conns.swap_remove(i);
            } else if conns[i].is_ready() {
                return Some((conns.swap_remove(i), epoch));
            }
        }
        None
    }

    /// Puts `conn` (of TLS epoch `epoch`) back, unless the TLS trust changed since.
    fn checkin_h1(&self, conn: http1::SendRequest<RequestBody>, epoch: u64) {
        let mut slot = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        if slot.h1.len() < MAX_H1_CONNECTIONS_PER_WORKER && slot.epoch == epoch {
            slot.h1.push(conn);
        }
    }

    async fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        match tokio::time::timeout(timeout, connect_tcp(&self.address, self.socket)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {} timed out after {timeout:?}", self.address),
            )),
        }
    }
}

/// Opens a TCP connection to `address` (`socket` when its host is an IP address), with
/// `TCP_NODELAY`; no timeout (the caller's).
///
/// # Errors
///
/// When the connection cannot be opened.
pub async fn connect_tcp(address: &str, socket: Option<SocketAddr>) -> io::Result<TcpStream> {
    let stream = match socket {
        Some(addr) => TcpStream::connect(addr).await?,
        None => TcpStream::connect(address).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The HTTP handshake on a new connection `io`, as HTTP/2 when `h2`, its driver spawned
/// (with upgrades for [`Want::Upgrade`]).
async fn handshake<T>(io: T, want: Want, h2: bool) -> Result<Opened, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (conn, driver) = http2::Builder::new(TokioExecutor::new())
            // The worker's timer table (a tokio timer off the workers).
            .timer(crate::timer::WorkerTimer)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        return Ok(Opened::Http2(conn));
    }
    let (conn, driver) = http1::Builder::new().handshake(io).await?;
    let upgrades = want == Want::Upgrade;
    tokio::spawn(async move {
        let ended = if upgrades {
            driver.with_upgrades().await
        } else {
            driver.await
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream http1 connection ended");
        }
    });
    Ok(Opened::Http1(conn))
}

/// `req` rewritten for the other HTTP version than the client's, on an `auto` cluster
/// whose endpoint picked that one by ALPN.
fn as_version(mut req: Request<RequestBody>, tls: &UpstreamTls, h2: bool) -> Request<RequestBody> {
    let has_host = req.headers().contains_key(http::header::HOST);
    crate::headers::prepare_uri(&mut req, &tls.authority, h2, true, has_host);
    req
}

/// A fresh connection that would not take its first request failed before anything was sent:
/// treated like a connect failure, so the request can go elsewhere. Over TLS, a TLS error
/// read after the handshake (a refused client certificate) is a TLS failure.
fn first_send_failed(
    mut err: hyper::client::conn::TrySendError<Request<RequestBody>>,
    handshaken: Option<&Handshaken>,
) -> SendError {
    if let Some(refusal) = handshaken.and_then(Handshaken::refusal) {
        return SendError::Tls(refusal, err.take_message().map(Box::new));
    }
    match err.take_message() {
        Some(back) => SendError::Connect(
            io::Error::new(io::ErrorKind::ConnectionReset, err.into_error()),
            Box::new(back),
        ),
        None => SendError::Exchange(err.into_error()),
    }
}
