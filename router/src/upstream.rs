//! Connections to model servers: a pool per endpoint and per worker, HTTP/1.1 or h2c.
//!
//! Each worker thread runs its own single-threaded runtime and owns its slot of every pool,
//! so a checkout touches a mutex that no other thread ever contends. HTTP/1.1 keeps a list
//! of connections and reuses the first one that is idle; h2c keeps one multiplexed
//! connection. Pools are keyed by address and carried over from one route table to the
//! next, so a config swap neither drops nor re-opens connections.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::RequestBody;

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
    /// The exchange failed after the request was handed to a connection.
    Exchange(hyper::Error),
    /// A new connection was needed, but the circuit breaker's `max_pending` requests are
    /// already waiting for one: nothing was sent, and the request comes back.
    Overloaded(Box<Request<RequestBody>>),
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
    address: std::sync::Arc<str>,
    socket: Option<SocketAddr>,
    slots: Box<[Mutex<Slot>]>,
}

#[derive(Debug, Default)]
struct Slot {
    h1: Vec<http1::SendRequest<RequestBody>>,
    h2: Option<http2::SendRequest<RequestBody>>,
}

impl Pool {
    /// An empty pool for `address` (`host:port`; `socket` when the host is an IP address)
    /// with one slot per worker.
    pub fn new(address: std::sync::Arc<str>, socket: Option<SocketAddr>, workers: usize) -> Self {
        let slots = (0..workers.max(1)).map(|_| Mutex::default()).collect();
        Pool {
            address,
            socket,
            slots,
        }
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

    /// Sends `req` over HTTP/1.1 (origin-form URI, `Host` set), reusing an idle connection
    /// when there is one; a new one is opened only within `pending`'s limit.
    pub async fn send_http1(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let req = match self.checkout_h1() {
            Some(mut conn) => match conn.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin_h1(conn);
                    return Ok(resp);
                }
                Err(mut err) => match err.take_message() {
                    // The connection closed before taking the request: open a fresh one.
                    Some(back) => back,
                    None => return Err(SendError::Exchange(err.into_error())),
                },
            },
            None => req,
        };
        // The cold path is boxed so that the future of every pooled request stays small.
        Box::pin(self.open_http1(req, connect_timeout, pending)).await
    }

    async fn open_http1(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let (mut conn, req) = self
            .dial_http1(req, connect_timeout, pending, false)
            .await?;
        let result = conn.try_send_request(req).await;
        if result.is_ok() {
            self.checkin_h1(conn);
        }
        result.map_err(first_send_failed)
    }

    /// Sends an HTTP/1.1 upgrade request (`Connection: upgrade`) on a connection of its
    /// own, never pooled: after a `101` the connection belongs to the tunnel, and after any
    /// other answer it ends with the response.
    pub async fn send_upgrade(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let (mut conn, req) = self.dial_http1(req, connect_timeout, pending, true).await?;
        conn.try_send_request(req).await.map_err(first_send_failed)
    }

    /// Opens a new HTTP/1.1 connection within `pending`'s limit, its driver running on its
    /// own task (handing the connection over after a `101` when `upgrades` is set); gives
    /// `req` back with it, or inside the error when nothing could be sent.
    async fn dial_http1(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
        upgrades: bool,
    ) -> Result<(http1::SendRequest<RequestBody>, Request<RequestBody>), SendError> {
        let (waiting, req) = wait_for_connection(pending, req)?;
        let io = match self.connect(connect_timeout).await {
            Ok(io) => io,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        let (conn, driver) = match http1::Builder::new().handshake(io).await {
            Ok(pair) => pair,
            Err(e) => return Err(SendError::Exchange(e)),
        };
        drop(waiting);
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
        Ok((conn, req))
    }

    /// Sends `req` over h2c (absolute URI), on this worker's multiplexed connection; a new
    /// one is opened only within `pending`'s limit.
    pub async fn send_http2(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let existing = {
            let slot = self.slot().lock().unwrap_or_else(|e| e.into_inner());
            slot.h2.as_ref().filter(|c| !c.is_closed()).cloned()
        };
        let req = match existing {
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

    async fn open_http2(
        &self,
        req: Request<RequestBody>,
        connect_timeout: Duration,
        pending: Option<PendingLimit<'_>>,
    ) -> Result<Response<Incoming>, SendError> {
        let (waiting, req) = wait_for_connection(pending, req)?;
        let io = match self.connect(connect_timeout).await {
            Ok(io) => io,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        let (mut conn, driver) = match http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
        {
            Ok(pair) => pair,
            Err(e) => return Err(SendError::Exchange(e)),
        };
        drop(waiting);
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        self.slot().lock().unwrap_or_else(|e| e.into_inner()).h2 = Some(conn.clone());
        conn.try_send_request(req).await.map_err(first_send_failed)
    }

    /// Takes an idle HTTP/1.1 connection out of this worker's slot, dropping closed ones and
    /// leaving busy ones (still streaming a response) in place.
    fn checkout_h1(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut slot = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        let conns = &mut slot.h1;
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            if conns[i].is_closed() {
                conns.swap_remove(i);
            } else if conns[i].is_ready() {
                return Some(conns.swap_remove(i));
            }
        }
        None
    }

    fn checkin_h1(&self, conn: http1::SendRequest<RequestBody>) {
        let mut slot = self.slot().lock().unwrap_or_else(|e| e.into_inner());
        if slot.h1.len() < MAX_H1_CONNECTIONS_PER_WORKER {
            slot.h1.push(conn);
        }
    }

    async fn connect(&self, timeout: Duration) -> io::Result<TokioIo<TcpStream>> {
        let connect = async {
            let stream = match self.socket {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect(&*self.address).await?,
            };
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {} timed out after {timeout:?}", self.address),
            )),
        }
    }
}

/// A fresh connection that would not take its first request failed before anything was sent:
/// treated like a connect failure, so the request can go elsewhere.
fn first_send_failed(
    mut err: hyper::client::conn::TrySendError<Request<RequestBody>>,
) -> SendError {
    match err.take_message() {
        Some(back) => SendError::Connect(
            io::Error::new(io::ErrorKind::ConnectionReset, err.into_error()),
            Box::new(back),
        ),
        None => SendError::Exchange(err.into_error()),
    }
}
