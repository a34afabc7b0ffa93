//! The demo model server behind `demo-model`: a small model server that stock inference
//! clients accept, for trying the platform (`scripts/dev.sh`) and for the end-to-end tests
//! with third-party clients (`tests/python`).
//!
//! One port speaks HTTP/1.1 and h2c. An HTTP/2 request with `content-type: application/grpc*`
//! goes to the gRPC services ([`v2_grpc`]: `inference.GRPCInferenceService`, and
//! `grpc.health.v1.Health` reporting SERVING); every other request to the REST handlers by
//! path:
//!
//! - `/v2...`: the Open Inference Protocol (KServe V2) REST API with the binary tensor
//!   extension ([`v2_rest`], [`v2_codec`]);
//! - `/v1...`: the OpenAI-compatible completions API, streamed as server-sent events on
//!   request ([`openai`]);
//! - `/`: a JSON index naming the server, the instance and its models.
//!
//! Every model computes `OUTPUT0 = INPUT0 × 2` ([`model`], [`tensor`]). Every answer carries
//! [`INSTANCE_HEADER`], and the bodies name the model, its version and the instance, so a
//! request sent through the router shows where it went.

pub mod body;
pub mod model;
pub mod openai;
pub mod tensor;
pub mod v2_codec;
pub mod v2_grpc;
pub mod v2_rest;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tonic::codegen::Service as _;
use tonic::service::Routes;

use crate::BoxError;
use body::{Body, json_response};
pub use model::{Catalog, ModelSpec};
pub use openai::{Pacing, Steps};
use v2_grpc::{GrpcInferenceServiceServer, InferenceService};

/// The response header naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-model-instance";
/// The server name the metadata reports.
pub const SERVER_NAME: &str = "demo-model";
/// The server version the metadata reports.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The protocol extensions the server supports.
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

/// A demo model server: what it serves and how, shared by its connections.
#[derive(Debug)]
pub struct DemoModel {
    catalog: Arc<Catalog>,
    pacing: Pacing,
    instance_header: HeaderValue,
    grpc: Routes,
}

impl DemoModel {
    /// A server for `catalog`, spacing streamed tokens by `pacing`.
    ///
    /// # Errors
    ///
    /// When the instance name cannot be sent as a header value, or no model is given.
    pub async fn new(catalog: Catalog, pacing: Pacing) -> anyhow::Result<Arc<DemoModel>> {
        anyhow::ensure!(!catalog.models.is_empty(), "serve at least one model");
        let instance_header = HeaderValue::from_str(&catalog.instance).map_err(|_| {
            anyhow::anyhow!(
                "the instance name {:?} is not a valid header value",
                catalog.instance
            )
        })?;
        let catalog = Arc::new(catalog);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<GrpcInferenceServiceServer<InferenceService>>()
            .await;
        let grpc = Routes::new(GrpcInferenceServiceServer::new(InferenceService::new(
            catalog.clone(),
        )))
        .add_service(health_service);
        Ok(Arc::new(DemoModel {
            catalog,
            pacing,
            instance_header,
            grpc,
        }))
    }

    /// What the server serves.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Accepts connections on `listener` and serves each (HTTP/1.1 or h2c) on its own task,
    /// until the process ends.
    ///
    /// # Errors
    ///
    /// Never: a failed accept is reported on stderr and the loop goes on.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        // Told each time a connection ends (and its descriptor is free again).
        let closed = Arc::new(tokio::sync::Notify::new());
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: try again once a connection has closed,
                    // or after ACCEPT_RETRY at the latest (descriptors held elsewhere).
                    eprintln!("demo-model: accept failed: {e}");
                    let _ = tokio::time::timeout(ACCEPT_RETRY, closed.notified()).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = Arc::clone(&self);
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                let _closed = NotifyOnDrop(closed);
                let service = hyper::service::service_fn(move |req| {
                    let server = Arc::clone(&server);
                    async move { Ok::<_, Infallible>(server.answer(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Answers one request, whatever its protocol, with [`INSTANCE_HEADER`] set.
    pub async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let mut resp = if is_grpc(&req) {
            let mut grpc = self.grpc.clone();
            match grpc.call(req).await {
                Ok(resp) => resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
                Err(never) => match never {},
            }
        } else {
            let path = req.uri().path();
            if path == "/v2" || path.starts_with("/v2/") {
                v2_rest::handle(&self.catalog, req).await
            } else if path == "/v1" || path.starts_with("/v1/") {
                openai::handle(&self.catalog, &self.pacing, req).await
            } else if path == "/demo/step" && *req.method() == Method::POST {
                self.step()
            } else if path == "/" && matches!(*req.method(), Method::GET | Method::HEAD) {
                self.index()
            } else {
                v2_rest::not_found(&req)
            }
        };
        resp.headers_mut()
            .insert(INSTANCE_HEADER, self.instance_header.clone());
        resp
    }

    /// `GET /`: the server, the instance, its models and its APIs.
    /// `POST /demo/step`: lets a stepped server's stream send its next event (204); 409
    /// from a server that paces by time.
    fn step(&self) -> Response<Body> {
        match &self.pacing {
            Pacing::Stepped(steps) => {
                steps.release();
                let mut resp = Response::new(body::full(Bytes::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            Pacing::Delay(_) => body::error_response(
                StatusCode::CONFLICT,
                "this server paces streams by time (--token-delay-ms), not by steps",
            ),
        }
    }

    fn index(&self) -> Response<Body> {
        let models: Vec<_> = self
            .catalog
            .models
            .iter()
            .map(|m| json!({ "name": m.name, "version": m.version }))
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "name": SERVER_NAME,
                "version": SERVER_VERSION,
                "instance": self.catalog.instance,
                "models": models,
                "apis": ["/v2 (Open Inference Protocol REST)", "inference.GRPCInferenceService (gRPC)", "/v1 (OpenAI-compatible)"],
            }),
        )
    }
}

/// Whether a request is gRPC: HTTP/2 with an `application/grpc` content type.
fn is_grpc(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Longest wait before a failed accept is tried again when no connection closes meanwhile.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Wakes the accept loop when a connection task ends.
struct NotifyOnDrop(Arc<tokio::sync::Notify>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}
