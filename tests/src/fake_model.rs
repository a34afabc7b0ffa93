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
//! | `/sha256` | 200, JSON `{"server","sha256","bytes"}` of the body, read streaming (recorded: [`Listening::sha256_bodies`]) |
//! | `/reset-after-read` | while [`Listening::reset_after_read`] has a count left: reads the whole body (recorded: [`Listening::reset_bodies`]), then breaks the exchange without any response; otherwise as `/sha256` |
//! | `/download?bytes=N` | 200, the first N bytes of [`crate::pattern`] in 64 KiB chunks |
//! | `/truncate?bytes=N` | 200, the first N bytes of [`crate::pattern`], then the body breaks: HTTP/1.1 closes the connection mid-body, HTTP/2 resets the stream |
//! | `/sse?chunks=N` | 200 `text/event-stream`; chunk k is produced only once the test has released k+1 permits of [`Listening::release_sse`] |
//! | `/hang` | never answers (until the server stops) |
//! | `/close` | 200, body = the server's name, with `connection: close` (HTTP/1.1 closes after it) |
//! | `/status/{code}` | that status, body = the server's name |
//! | `/v2/health/ready`, `/healthz` | the health probe: the status set by [`Listening::set_health`] (default 200), body = the server's name |
//! | anything else | 200, body = the server's name |
//!
//! Switches change the answers at run time, from the test:
//!
//! - [`Listening::set_health`] sets the status of the health paths (any method). Health probes
//!   are counted apart ([`Listening::health_probes`], [`Listening::health_probes_answered`]):
//!   they never count in [`Listening::requests`] nor replace [`Listening::last_request`], so a
//!   router probing the fake does not disturb tests counting the traffic it serves.
//! - [`Listening::fail_with`]`(Some(status))` answers every other request with `status`, body
//!   = the server's name, whatever its path (`/hang` and `/sse` included); `None` restores the
//!   table above. Those requests are still counted and recorded.
//! - [`Listening::fail_next`]`(n, status)` answers the next `n` requests (health probes
//!   excluded, whatever their path) with `status` once their body has been read whole, then
//!   the normal behaviour resumes. It comes before [`Listening::fail_with`].
//! - [`Listening::reset_after_read`]`(n)` arms `/reset-after-read` for its next `n` requests.
//!
//! Breaking the exchange ("a reset") is the handler failing: over HTTP/1.1 hyper closes the
//! connection without writing a response, over HTTP/2 it resets the stream
//! (`RST_STREAM`); either way the client sees the exchange fail before response headers.
//!
//! Every response carries `x-fake-model: NAME`. The server counts requests and connections
//! (probe connections included), keeps the last request's head and the headers of every
//! request ([`Listening::seen_header_values`]) for assertions. A panic in
//! a handler is recorded and re-raised by [`Listening::join`]. Dropping the [`Listening`] stops
//! the server and aborts its connections.

use std::collections::BTreeMap;
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
    /// `fail_next`: requests left to fail, and the status they get.
    fail_next: Mutex<FailNext>,
    /// Requests to `/reset-after-read` left to reset.
    reset_after_read: AtomicUsize,
    /// `(bytes, sha256)` of every body read by a reset `/reset-after-read`.
    reset_bodies: Mutex<Vec<(u64, String)>>,
    /// `(bytes, sha256)` of every body hashed and answered by `/sha256` (and a disarmed
    /// `/reset-after-read`).
    sha256_bodies: Mutex<Vec<(u64, String)>>,
    /// The headers of every request (health probes excluded), in arrival order.
    seen_headers: Mutex<Vec<HeaderMap>>,
}

/// What [`Listening::fail_next`] armed.
#[derive(Debug, Clone, Copy)]
struct FailNext {
    remaining: usize,
    status: StatusCode,
}

/// The error a handler returns to break the exchange without a response (see the module
/// docs).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fake model: the exchange is reset on purpose")
    }
}

impl std::error::Error for Reset {}

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
            fail_next: Mutex::new(FailNext {
                remaining: 0,
                status: StatusCode::OK,
            }),
            reset_after_read: AtomicUsize::new(0),
            reset_bodies: Mutex::new(Vec::new()),
            sha256_bodies: Mutex::new(Vec::new()),
            seen_headers: Mutex::new(Vec::new()),
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

    /// Answers the next `n` requests (health probes excluded, whatever their path, `/hang`
    /// included) with `status`, body = the server's name, each once its request body has
    /// been read whole; then the normal behaviour resumes. Replaces what an earlier call
    /// armed (`n = 0` disarms). The failed requests are counted in [`Listening::requests`].
    /// Comes before [`Listening::fail_with`].
    ///
    /// # Panics
    ///
    /// When `status` is not a valid HTTP status (100 to 999).
    pub fn fail_next(&self, n: usize, status: u16) {
        let status = StatusCode::from_u16(status)
            .unwrap_or_else(|_| panic!("fake model: {status} is not an HTTP status"));
        *lock(&self.state.fail_next) = FailNext {
            remaining: n,
            status,
        };
    }

    /// Requests [`Listening::fail_next`] still has to fail.
    pub fn fail_next_remaining(&self) -> usize {
        lock(&self.state.fail_next).remaining
    }

    /// Arms `/reset-after-read` for its next `n` requests (replacing an earlier count;
    /// `0` disarms): each reads the whole request body, records its length and SHA-256
    /// ([`Listening::reset_bodies`]) and breaks the exchange without a response. Once the
    /// count has run out, `/reset-after-read` answers as `/sha256`.
    pub fn reset_after_read(&self, n: usize) {
        self.state.reset_after_read.store(n, Ordering::SeqCst);
    }

    /// Resets [`Listening::reset_after_read`] still has to do.
    pub fn resets_remaining(&self) -> usize {
        self.state.reset_after_read.load(Ordering::SeqCst)
    }

    /// `(bytes, hex sha256)` of the body read by each reset `/reset-after-read` request, in
    /// the order they were reset.
    pub fn reset_bodies(&self) -> Vec<(u64, String)> {
        lock(&self.state.reset_bodies).clone()
    }

    /// `(bytes, hex sha256)` of every body `/sha256` (or a disarmed `/reset-after-read`)
    /// read to its end and answered, in the order the answers were made.
    pub fn sha256_bodies(&self) -> Vec<(u64, String)> {
        lock(&self.state.sha256_bodies).clone()
    }

    /// The value (the first, as text) of header `name` on every request received so far
    /// that carried it, health probes excluded, in arrival order. Requests without the
    /// header are skipped: compare the length with [`Listening::requests`] to see them.
    pub fn seen_header_values(&self, name: &str) -> Vec<String> {
        lock(&self.state.seen_headers)
            .iter()
            .filter_map(|headers| headers.get(name))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
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
                        async move { handle_catching(state, req, shutdown).await }
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

/// Runs the handler, turning a panic into a recorded failure and a 500. An `Err` breaks the
/// exchange (see [`Reset`]).
async fn handle_catching(
    state: Arc<State>,
    req: Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, Reset> {
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
            Ok(resp)
        }
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, Reset> {
    let mut resp = answer(&state, req, shutdown).await?;
    resp.headers_mut().insert(
        SERVER_HEADER,
        HeaderValue::from_str(&state.name).expect("fake model names are valid header values"),
    );
    Ok(resp)
}

/// The answer to one request, before the `x-fake-model` header is added; `Err` breaks the
/// exchange.
async fn answer(
    state: &Arc<State>,
    req: Request<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, Reset> {
    if HEALTH_PATHS.contains(&req.uri().path()) {
        return Ok(health(state));
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let seen = SeenRequest {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    };
    lock(&state.seen_headers).push(seen.headers.clone());
    *lock(&state.last) = Some(seen.clone());

    if let Some(status) = take_fail_next(state) {
        // The whole body first, so the client has sent everything before it sees the answer.
        let _read = read_body(req.into_body()).await;
        let mut resp = text(state.name.clone());
        *resp.status_mut() = status;
        return Ok(resp);
    }

    let failing = state.fail_with.load(Ordering::SeqCst);
    if failing != 0 {
        let mut resp = text(state.name.clone());
        *resp.status_mut() =
            StatusCode::from_u16(failing).expect("fail_with stores valid statuses");
        return Ok(resp);
    }

    let query = parse_query(req.uri().query());
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/echo" => echo(req),
        "/headers" => headers_json(state, &seen),
        "/sha256" => sha256(state, req).await,
        "/reset-after-read" => return reset_after_read(state, req).await,
        "/download" => download(query.get("bytes").map_or(0, |n| parse_num(n))),
        "/truncate" => truncate(query.get("bytes").map_or(0, |n| parse_num(n))),
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
    };
    Ok(resp)
}

/// Consumes one request of [`Listening::fail_next`]: the status to answer, if armed.
fn take_fail_next(state: &State) -> Option<StatusCode> {
    let mut fail = lock(&state.fail_next);
    if fail.remaining == 0 {
        return None;
    }
    fail.remaining -= 1;
    Some(fail.status)
}

/// `/reset-after-read`: resets after reading the body while armed, else `/sha256`.
async fn reset_after_read(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Reset> {
    let armed = state
        .reset_after_read
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if !armed {
        return Ok(sha256(state, req).await);
    }
    // A body that fails to arrive whole is not recorded: the test sees what was read whole.
    if let Ok(read) = read_body(req.into_body()).await {
        lock(&state.reset_bodies).push(read);
    }
    Err(Reset)
}

/// Reads a body to its end, streaming: `(bytes, hex sha256)`.
async fn read_body(mut body: Incoming) -> Result<(u64, String), hyper::Error> {
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            hasher.update(data);
            bytes += data.len() as u64;
        }
    }
    Ok((bytes, pattern::hex(&hasher.finalize())))
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
    let (bytes, sha256) = match read_body(req.into_body()).await {
        Ok(read) => read,
        Err(error) => {
            let mut resp = text(format!("reading the body failed: {error}"));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return resp;
        }
    };
    lock(&state.sha256_bodies).push((bytes, sha256.clone()));
    json(&serde_json::json!({
        "server": state.name,
        "sha256": sha256,
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

/// `len` bytes of the pattern, then a body error instead of the end.
fn truncate(len: u64) -> Response<Body> {
    let data = futures_util::stream::iter(
        (len > 0).then(|| Ok::<_, BoxError>(Frame::data(pattern::bytes_at(0, len as usize)))),
    );
    // Pending once before the error, so hyper flushes the head and the data first (an
    // HTTP/1.1 head is written together with the body frames that follow it at once).
    let broken = futures_util::stream::once(async {
        tokio::task::yield_now().await;
        Err::<Frame<Bytes>, BoxError>(BoxError::from(Reset))
    });
    let mut resp =
        Response::new(StreamBody::new(futures_util::StreamExt::chain(data, broken)).boxed());
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
