//! Test support for the cross-component integration tests.
//!
//! Everything here is in-process and binds `127.0.0.1:0`, so tests run in parallel and never
//! collide on ports:
//!
//! - [`fake_model`]: an HTTP/1.1 + h2c upstream whose behaviour is picked by the request path
//!   (`/echo`, `/headers`, `/sha256`, `/reset-after-read`, `/download`, `/sse`, `/hang`,
//!   `/status/{code}`, the health paths, and a default that answers with the server's name),
//!   with run-time switches for its health status, for failing every request or the next
//!   few, and for resetting after reading a body.
//! - [`fake_grpc`]: a tonic upstream for `echo.v1.Echo` (unary, server streaming, errors,
//!   armed `UNAVAILABLE` answers) and `grpc.health.v1.Health` (a serving status the test
//!   flips).
//! - [`demo_model`]: the `demo-model` server (Open Inference Protocol REST and gRPC,
//!   OpenAI-compatible completions) that stock clients talk to, in `scripts/dev.sh` and the
//!   Python end-to-end tests; the integration tests run its binary.
//! - [`black_hole`]: a TCP server that accepts connections and never reads nor writes.
//! - [`otlp`]: an OTLP/gRPC trace receiver standing in for a collector: it keeps every
//!   exported span with its resource attributes and lets a test wait for the spans it
//!   expects; plus a W3C `traceparent` parser.
//! - [`router`]: spawns the real `router` binary on a rule set in a temp dir and talks to its
//!   admin API.
//! - [`lightbulb`]: the same for the real `lightbulb` binary (gRPC and HTTP APIs).
//! - [`process`]: what both share: locating a workspace binary, spawning it with its output
//!   captured, waiting for its listening line, SIGTERM, exit, kill on drop; reading a
//!   process's resident memory.
//! - [`pki`]: a test CA made at run time, server and client certificates it signs, and
//!   rustls client configurations trusting it.
//! - [`tls_upstream`]: an upstream over TLS (optionally requiring a client certificate)
//!   that answers with the ALPN protocol, HTTP version, SNI and client certificate it saw;
//!   or serves `grpc.health.v1.Health` over TLS.
//! - [`jwt`]: signing keys generated with `openssl` at run time, the JWKS file the router
//!   watches, signed tokens and the malformed ones it must refuse.
//! - [`client`]: small hyper client helpers (HTTP/1.1 and h2c, streaming bodies).
//! - [`pattern`]: deterministic pseudo-random bytes, so large bodies are compared by hash
//!   without holding them in memory.
//! - [`raw`]: raw TCP connections for the bytes a well-behaved client never sends: exact
//!   HTTP/1.1 requests (whole, in pieces, byte by byte), responses and closes read off the
//!   wire, and hand-encoded HTTP/2 frames.
//!
//! The waiting helpers ([`wait_until`], [`within`]) wait for an *observable condition* with a
//! deadline that only exists to turn a hang into a readable failure; no test sleeps to
//! synchronise and no test asserts on timing.

pub mod black_hole;
pub mod client;
pub mod demo_model;
pub mod envoy;
pub mod etcd;
pub mod fake_grpc;
pub mod fake_model;
pub mod jwt;
pub mod lightbulb;
pub mod otlp;
pub mod pattern;
pub mod pki;
pub mod process;
pub mod raw;
pub mod router;
pub mod tls_upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use black_hole::BlackHole;
pub use client::{Collected, HttpClient};
pub use fake_grpc::{FakeGrpc, GrpcListening};
pub use fake_model::{FakeModel, Listening, SeenRequest};
pub use otlp::OtlpReceiver;
pub use router::RouterProcess;

/// The boxed error used by the body types of the helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The deadline used by tests for "this must happen eventually" (a generous bound so a slow,
/// loaded debug build never flakes; it is never a timing assertion).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Keeps test tracing installed; returned by [`trace_init`].
#[derive(Debug)]
#[must_use = "keep the guard for the duration of the test: `let _trace = trace_init();`"]
pub struct TraceGuard(());

/// Installs a tracing subscriber writing to the test output, filtered by `RUST_LOG`
/// (default `warn`). Call first in each test: `let _trace = trace_init();`. Installing it
/// twice in one process is harmless.
pub fn trace_init() -> TraceGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _already_installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    TraceGuard(())
}

/// Polls `condition` every 20 ms until it returns `true`.
///
/// # Panics
///
/// When `deadline` passes first, naming `what` was awaited.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up after {deadline:?} waiting until {what}"
        );
    }
}

/// Awaits `fut`, turning a hang into a panic that names `what`.
///
/// # Panics
///
/// When `deadline` passes before `fut` completes.
pub async fn within<F: Future>(what: &str, deadline: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(deadline, fut).await {
        Ok(out) => out,
        Err(_) => panic!("gave up after {deadline:?} waiting for {what}"),
    }
}

/// A loopback port that is reserved but refuses connections: a socket bound to it that never
/// listens. Unlike "bind, read the port, close", no other test can grab the port while this
/// value lives, so connecting to [`DeadPort::addr`] reliably gets `ECONNREFUSED`.
#[derive(Debug)]
pub struct DeadPort {
    addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl DeadPort {
    /// Reserves a refusing port on 127.0.0.1.
    ///
    /// # Panics
    ///
    /// When no socket can be bound.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a socket to 127.0.0.1:0");
        let addr = socket
            .local_addr()
            .expect("local address of a bound socket");
        DeadPort {
            addr,
            _socket: socket,
        }
    }

    /// The refusing address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}
