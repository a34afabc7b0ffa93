//! A fake gRPC upstream: tonic serving `echo.v1.Echo` (see `tests/proto/echo.proto`) on
//! `127.0.0.1:0` with `serve_with_incoming_shutdown`.
//!
//! - `Say` answers with the message and the server's name; the message `"fail"` is answered
//!   with `PERMISSION_DENIED` / `"nope"` (a trailers-only response).
//! - `Count { n, fail_after }` streams `0..n`; with `fail_after > 0` it stops after that many
//!   replies with `ABORTED` / `"stopped"` and trailing metadata `x-trailer: kept`, so a status
//!   in real trailers (after data frames) can be checked end to end.
//!
//! [`GrpcListening::fail_next_unavailable`]`(n)` makes the next `n` `Say` calls fail with
//! `UNAVAILABLE` / [`UNAVAILABLE_MESSAGE`], a trailers-only response (`grpc-status` in the
//! response headers), as a retriable upstream failure looks.
//!
//! It also serves `grpc.health.v1.Health` (the `tonic-health` protocol): `Check` and `Watch`
//! of the whole server (`""`) or of `echo.v1.Echo` answer `SERVING` until the test calls
//! [`GrpcListening::set_serving`]`(false)`, then `NOT_SERVING`; other service names are
//! `NOT_FOUND`. Health calls are counted apart ([`GrpcListening::health_probes`]), never in
//! [`GrpcListening::requests`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::server::NamedService as _;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The code generated from `tests/proto/echo.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("echo.v1");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{CountReply, CountRequest, SayReply, SayRequest};

/// The message of the `UNAVAILABLE` status armed by [`GrpcListening::fail_next_unavailable`].
pub const UNAVAILABLE_MESSAGE: &str = "fake unavailable";

/// Builder of a fake gRPC upstream.
#[derive(Debug, Clone)]
pub struct FakeGrpc {
    name: String,
}

/// A running fake gRPC upstream. Dropping it stops the server.
#[derive(Debug)]
pub struct GrpcListening {
    /// The bound address (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    fail_next: Arc<AtomicUsize>,
    health: Arc<HealthState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

#[derive(Debug)]
struct EchoService {
    name: String,
    requests: Arc<AtomicUsize>,
    /// `Say` calls left to fail with `UNAVAILABLE`.
    fail_next: Arc<AtomicUsize>,
}

/// The serving status shared by the health service and the test.
#[derive(Debug)]
struct HealthState {
    /// `true`: SERVING. A watch channel so `Watch` streams see every change.
    serving: watch::Sender<bool>,
    /// Health calls (`Check` and `Watch`) received so far.
    probes: AtomicUsize,
}

/// `grpc.health.v1.Health` answering from a [`HealthState`].
#[derive(Debug)]
struct HealthService {
    state: Arc<HealthState>,
}

// === impl FakeGrpc ===

impl Default for FakeGrpc {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeGrpc {
    /// A fake named `"grpc"`.
    pub fn new() -> Self {
        FakeGrpc {
            name: "grpc".to_owned(),
        }
    }

    /// Names the fake (echoed in `SayReply.server`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound.
    pub async fn start(self) -> GrpcListening {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake gRPC server to 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(AtomicUsize::new(0));
        let fail_next = Arc::new(AtomicUsize::new(0));
        let service = EchoService {
            name: self.name,
            requests: requests.clone(),
            fail_next: fail_next.clone(),
        };
        let health = Arc::new(HealthState {
            serving: watch::Sender::new(true),
            probes: AtomicUsize::new(0),
        });
        let health_service = HealthService {
            state: health.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(service))
                .add_service(HealthServer::new(health_service))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        GrpcListening {
            addr,
            requests,
            fail_next,
            health,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

// === impl GrpcListening ===

impl GrpcListening {
    /// `host:port` of the fake, as written in a rule set.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// `echo.v1.Echo` RPCs received so far (health calls excluded).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Answers the next `n` unary calls (`Say`) with `UNAVAILABLE` / [`UNAVAILABLE_MESSAGE`]
    /// as a trailers-only response, then answers normally again. Replaces what an earlier
    /// call armed (`0` disarms). The failed calls are counted in [`GrpcListening::requests`].
    pub fn fail_next_unavailable(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Sets what `grpc.health.v1.Health` reports for the whole server (`""`) and for
    /// `echo.v1.Echo` from now on: `SERVING` when `serving`, else `NOT_SERVING` (default
    /// `SERVING`). Open `Watch` streams get the change.
    pub fn set_serving(&self, serving: bool) {
        self.health.serving.send_replace(serving);
    }

    /// `grpc.health.v1.Health` calls (`Check` and `Watch`) received so far.
    pub fn health_probes(&self) -> usize {
        self.health.probes.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcListening {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === impl EchoService ===

type CountStream = Pin<Box<dyn futures_util::Stream<Item = Result<CountReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            // Returned before any message: tonic answers trailers-only.
            return Err(Status::unavailable(UNAVAILABLE_MESSAGE));
        }
        let message = request.into_inner().message;
        if message == "fail" {
            return Err(Status::permission_denied("nope"));
        }
        Ok(Response::new(SayReply {
            message,
            server: self.name.clone(),
        }))
    }

    type CountStream = CountStream;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let CountRequest { n, fail_after } = request.into_inner();
        let replies: Vec<Result<CountReply, Status>> = if fail_after > 0 {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("x-trailer", "kept".parse().expect("valid metadata"));
            (0..fail_after.min(n))
                .map(|i| Ok(CountReply { i }))
                .chain(std::iter::once(Err(Status::with_metadata(
                    tonic::Code::Aborted,
                    "stopped",
                    metadata,
                ))))
                .collect()
        } else {
            (0..n).map(|i| Ok(CountReply { i })).collect()
        };
        Ok(Response::new(Box::pin(futures_util::stream::iter(replies))))
    }
}

// === impl HealthService ===

type WatchStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

impl HealthService {
    /// Counts a call and checks its service name: `""` (the whole server) or the echo
    /// service.
    fn accept(&self, request: &Request<HealthCheckRequest>) -> Result<(), Status> {
        self.state.probes.fetch_add(1, Ordering::SeqCst);
        let service = request.get_ref().service.as_str();
        if service.is_empty() || service == EchoServer::<EchoService>::NAME {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "service {service:?} not registered"
            )))
        }
    }
}

fn health_response(serving: bool) -> HealthCheckResponse {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.accept(&request)?;
        Ok(Response::new(health_response(*self.state.serving.borrow())))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.accept(&request)?;
        let mut rx = self.state.serving.subscribe();
        rx.mark_changed();
        // The current status first, then one message per change; ends when the server stops.
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let serving = *rx.borrow_and_update();
            Some((Ok(health_response(serving)), rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
