//! A fake gRPC upstream: tonic serving `echo.v1.Echo` (see `tests/proto/echo.proto`) on
//! `127.0.0.1:0` with `serve_with_incoming_shutdown`.
//!
//! - `Say` answers with the message and the server's name; the message `"fail"` is answered
//!   with `PERMISSION_DENIED` / `"nope"` (a trailers-only response).
//! - `Count { n, fail_after }` streams `0..n`; with `fail_after > 0` it stops after that many
//!   replies with `ABORTED` / `"stopped"` and trailing metadata `x-trailer: kept`, so a status
//!   in real trailers (after data frames) can be checked end to end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

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
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

#[derive(Debug)]
struct EchoService {
    name: String,
    requests: Arc<AtomicUsize>,
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
        let service = EchoService {
            name: self.name,
            requests: requests.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(service))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        GrpcListening {
            addr,
            requests,
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

    /// RPCs received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
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
