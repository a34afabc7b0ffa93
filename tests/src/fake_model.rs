//! A fake model server: the upstream behind the router in the integration tests.
//!
//! `FakeModel::new().name("a").start().await` binds `127.0.0.1:0` *before* it returns, so the
//! port accepts connections at once, and serves HTTP/1.1 and h2c (prior knowledge) on the same
//! port (hyper-util's auto builder). The behaviour is picked per request by the path:
//!
//! | path | answer |
//! |---|---|
//! | `/echo` | 200, the request body streamed back frame by frame (trailers too) |
//! | `/headers` | 200, JSON `{"server","method","path","version","headers":{name:[values]}}` |
//! | `/sha256` | 200, JSON `{"server","sha256","bytes"}` of the body, read streaming |
//! | `/download?bytes=N` | 200, the first N bytes of [`crate::pattern`] in 64 KiB chunks |
//! | `/sse?chunks=N` | 200 `text/event-stream`; chunk k is produced only once the test has released k+1 permits of [`Listening::release_sse`] |
//! | `/hang` | never answers (until the server stops) |
//! | `/close` | 200, body = the server's name, with `connection: close` (HTTP/1.1 closes after it) |
//! | `/status/{code}` | that status, body = the server's name |
//! | `/v2/health/ready`, `/healthz` | the health probe: the status set by [`Listening::set_health`] (default 200), body = the server's name |
//! | anything else | 200, body = the server's name |
//!
//! Two switches change the answers at run time, from the test:
//!
//! - [`Listening::set_health`] sets the status of the health paths (any method). Health probes
//!   are counted apart ([`Listening::health_probes`], [`Listening::health_probes_answered`]):
//!   they never count in [`Listening::requests`] nor replace [`Listening::last_request`], so a
//!   router probing the fake does not disturb tests counting the traffic it serves.
//! - [`Listening::fail_with`]`(Some(status))` answers every other request with `status`, body
//!   = the server's name, whatever its path (`/hang` and `/sse` included); `None` restores the
//!   table above. Those requests are still counted and recorded.
//!
//! Every response carries `x-fake-model: NAME`. The server counts requests and connections
//! (probe connections included) and keeps the last request's head for assertions. A panic in
//! a handler is recorded and re-raised by [`Listening::join`]. Dropping the [`Listening`] stops
//! the server and aborts its connections.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::BoxError;
use crate::pattern;

/// The response body type of the fake.
type Body = BoxBody<Bytes, BoxError>;

/// The response header naming the fake that answered.
pub const SERVER_HEADER: &str = "x-fake-model";

/// The paths answered as health probes (see [`Listening::set_health`]).
pub const HEALTH_PATHS: [&str; 2] = ["/v2/health/ready", "/healthz"];

/// Builder of a fake model server.
#[derive(Debug, Clone)]
pub struct FakeModel {
    name: String,
}

/// A running fake model server. Dropping it stops the server.
#[derive(Debug)]
pub struct Listening {
    /// The bound address (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    state: Arc<State>,
    /// The accept loop; it owns the connection tasks, so aborting it aborts them.
    task: Option<JoinHandle<()>>,
    /// Dropped (or sent to) to stop the server: wakes `/hang` and gated `/sse` handlers.
    shutdown: watch::Sender<bool>,
}

/// The head of a request as the fake received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The request method.
    pub method: Method,
    /// The request URI (absolute for HTTP/2, origin-form for HTTP/1.1).
    pub uri: Uri,
    /// The HTTP version the request arrived with.
    pub version: Version,
    /// The request headers.
    pub headers: HeaderMap,
}

#[derive(Debug)]
struct State {
    name: String,
    requests: AtomicUsize,
    connections: AtomicUsize,
    sse_started: AtomicUsize,
    last: Mutex<Option<SeenRequest>>,
    /// One permit per SSE chunk allowed to be produced (shared by all SSE streams).
    sse_gate: Semaphore,
    /// The first handler panic, re-raised by `join`.
    panic: Mutex<Option<String>>,
    /// What the health paths answer, and the probes answered so far.
    health: Mutex<Health>,
    /// The status every other request is answered with; 0: none (normal behaviour).
    fail_with: AtomicU16,
}

/// The health-probe state: the status answered and the probes counted, changed together
/// under one lock so a count by status is exact.
#[derive(Debug)]
struct Health {
    status: StatusCode,
    probes: usize,
    answered: BTreeMap<u16, usize>,
}

// === impl FakeModel ===

impl Default for FakeModel {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeModel {
    /// A fake named `"fake"`.
    pub fn new() -> Self {
        FakeModel {
            name: "fake".to_owned(),
        }
    }

    /// Names the fake: the default answer's body and the `x-fake-model` header.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound.
    pub async fn start(self) -> Listening {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake model to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the fake model");
        let state = Arc::new(State {
            name: self.name,
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            sse_started: AtomicUsize::new(0),
            last: Mutex::new(None),
            sse_gate: Semaphore::new(0),
            panic: Mutex::new(None),
            health: Mutex::new(Health {
                status: StatusCode::OK,
                probes: 0,
                answered: BTreeMap::new(),
            }),
            fail_with: AtomicU16::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state.clone(), shutdown_rx));
        Listening {
            addr,
            state,
            task: Some(task),
            shutdown,
        }
    }
}

// === impl Listening ===

impl Listening {
    /// The fake's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// `host:port` of the fake, as written in a rule set.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far (counted when the head arrives), health probes excluded.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// SSE responses started so far (their headers have been handed to hyper).
    pub fn sse_started(&self) -> usize {
        self.state.sse_started.load(Ordering::SeqCst)
    }

    /// The head of the last request received.
    pub fn last_request(&self) -> Option<SeenRequest> {
        lock(&self.state.last).clone()
    }

    /// The headers of the last request received (empty when there was none).
    pub fn last_headers(&self) -> HeaderMap {
        self.last_request().map(|r| r.headers).unwrap_or_default()
    }

    /// Allows `chunks` more SSE chunks to be produced, across all open SSE streams.
    pub fn release_sse(&self, chunks: usize) {
        self.state.sse_gate.add_permits(chunks);
    }

    /// Sets the status answered on the health paths ([`HEALTH_PATHS`]) from now on
    /// (default 200).
    ///
    /// # Panics
    ///
    /// When `status` is not a valid HTTP status (100 to 999).
    pub fn set_health(&self, status: u16) {
        let status = StatusCode::from_u16(status)
            .unwrap_or_else(|_| panic!("fake model: {status} is not an HTTP status"));
        lock(&self.state.health).status = status;
    }

    /// Health probes answered so far (requests to [`HEALTH_PATHS`]); they are not counted in
    /// [`Listening::requests`].
    pub fn health_probes(&self) -> usize {
        lock(&self.state.health).probes
    }

    /// Health probes answered with `status` so far.
    pub fn health_probes_answered(&self, status: u16) -> usize {
        lock(&self.state.health)
            .answered
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// With `Some(status)`, answers every request except health probes with `status` (body =
    /// the server's name) from now on; `None` restores the normal behaviour.
    ///
    /// # Panics
    ///
    /// When `status` is not a valid HTTP status (100 to 999).
    pub fn fail_with(&self, status: Option<u16>) {
        let code = match status {
            Some(s) => {
                StatusCode::from_u16(s)
                    .unwrap_or_else(|_| panic!("fake model: {s} is not an HTTP status"));
                s
            }
            None => 0,
        };
        self.state.fail_with.store(code, Ordering::SeqCst);
    }

    /// Stops the server and re-raises the first panic of a handler, if any.
    ///
    /// # Panics
    ///
    /// When a handler or the accept loop panicked.
    pub async fn join(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        if let Some(msg) = lock(&self.state.panic).take() {
            panic!("fake model {:?} panicked: {msg}", self.state.name);
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === serving ===

async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    // Connection tasks live in this set: when the accept loop ends (or is aborted) the set is
    // dropped, which aborts every connection, including ones stuck in `/hang`.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "fake model accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                let shutdown = shutdown.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        let shutdown = shutdown.clone();
                        async move { Ok::<_, Infallible>(handle_catching(state, req, shutdown).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    if let Err(error) = builder.serve_connection(TokioIo::new(stream), svc).await {
                        tracing::debug!(%error, "fake model connection ended with an error");
                    }
                });
            }
            Some(_done) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs the handler, turning a panic into a recorded failure and a 500.
async fn handle_catching(
    state: Arc<State>,
    req: Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    match AssertUnwindSafe(handle(state.clone(), req, shutdown))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned());
            lock(&state.panic).get_or_insert(msg);
            let mut resp = Response::new(full("fake model handler panicked"));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    let mut resp = answer(&state, req, shutdown).await;
    resp.headers_mut().insert(
        SERVER_HEADER,
        HeaderValue::from_str(&state.name).expect("fake model names are valid header values"),
    );
    resp
}

/// The answer to one request, before the `x-fake-model` header is added.
async fn answer(
    state: &Arc<State>,
    req: Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    if HEALTH_PATHS.contains(&req.uri().path()) {
        return health(state);
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let seen = SeenRequest {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    };
    *lock(&state.last) = Some(seen.clone());

    let failing = state.fail_with.load(Ordering::SeqCst);
    if failing != 0 {
        let mut resp = text(state.name.clone());
        *resp.status_mut() =
            StatusCode::from_u16(failing).expect("fail_with stores valid statuses");
        return resp;
    }

    let query = parse_query(req.uri().query());
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/echo" => echo(req),
        "/headers" => headers_json(state, &seen),
        "/sha256" => sha256(state, req).await,
        "/download" => download(query.get("bytes").map_or(0, |n| parse_num(n))),
        "/sse" => sse(
            state,
            query.get("chunks").map_or(1, |n| parse_num(n)),
            shutdown,
        ),
        "/hang" => hang(shutdown).await,
        "/close" => {
            let mut resp = text(state.name.clone());
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        p => match p.strip_prefix("/status/") {
            Some(code) => with_status(state, code),
            None => text(state.name.clone()),
        },
    }
}

/// A health probe: counted apart, answered with the status of [`Listening::set_health`].
fn health(state: &State) -> Response<Body> {
    let status = {
        let mut health = lock(&state.health);
        health.probes += 1;
        let status = health.status;
        *health.answered.entry(status.as_u16()).or_default() += 1;
        status
    };
    let mut resp = text(state.name.clone());
    *resp.status_mut() = status;
    resp
}

fn echo(req: Request<Incoming>) -> Response<Body> {
    let mut resp = Response::new(req.into_body().map_err(BoxError::from).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

fn headers_json(state: &State, seen: &SeenRequest) -> Response<Body> {
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &seen.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let path = seen
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    json(&serde_json::json!({
        "server": state.name,
        "method": seen.method.as_str(),
        "path": path,
        "version": format!("{:?}", seen.version),
        "headers": headers,
    }))
}

async fn sha256(state: &State, req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    bytes += data.len() as u64;
                }
            }
            Err(error) => {
                let mut resp = text(format!("reading the body failed: {error}"));
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                return resp;
            }
        }
    }
    json(&serde_json::json!({
        "server": state.name,
        "sha256": pattern::hex(&hasher.finalize()),
        "bytes": bytes,
    }))
}

fn download(len: u64) -> Response<Body> {
    let chunks = futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= len {
            return None;
        }
        let n = (len - offset).min(pattern::CHUNK as u64) as usize;
        let frame = Frame::data(pattern::bytes_at(offset, n));
        Some((Ok::<_, BoxError>(frame), offset + n as u64))
    });
    let mut resp = Response::new(StreamBody::new(chunks).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// The text of SSE chunk `i`.
pub fn sse_chunk(i: u64) -> String {
    format!("id: {i}\ndata: chunk {i}\n\n")
}

fn sse(state: &Arc<State>, chunks: u64, shutdown: watch::Receiver<bool>) -> Response<Body> {
    state.sse_started.fetch_add(1, Ordering::SeqCst);
    let state = state.clone();
    let stream = futures_util::stream::unfold(
        (0u64, state, shutdown),
        move |(i, state, mut shutdown)| async move {
            if i >= chunks {
                return None;
            }
            tokio::select! {
                permit = state.sse_gate.acquire() => permit.expect("the SSE gate is never closed").forget(),
                _ = shutdown.changed() => return None,
            }
            let frame = Frame::data(Bytes::from(sse_chunk(i)));
            Some((Ok::<_, BoxError>(frame), (i + 1, state, shutdown)))
        },
    );
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn hang(mut shutdown: watch::Receiver<bool>) -> Response<Body> {
    // Returns only when the server stops (the sender is dropped or signalled).
    let _ = shutdown.changed().await;
    let mut resp = text("stopped".to_owned());
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp
}

fn with_status(state: &State, code: &str) -> Response<Body> {
    let status = code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = text(state.name.clone());
    *resp.status_mut() = status;
    resp
}

// === helpers ===

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn text(body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

fn parse_num(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("fake model: {s:?} is not a number"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
