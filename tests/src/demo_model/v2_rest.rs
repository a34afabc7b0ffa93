//! The Open Inference Protocol (V2) over HTTP/REST:
//!
//! | request | answer |
//! |---|---|
//! | `GET /v2` | server metadata: name, version, extensions |
//! | `GET /v2/health/live`, `GET /v2/health/ready` | 200 |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata: name, versions, platform, inputs, outputs |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 when served, else 404 |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | the inference (see [`super::v2_codec`]) |
//!
//! Errors are `{"error": "..."}`: 404 for an unknown model or path, 400 for a bad request,
//! 405 for a wrong method, 413 for a body over [`MAX_BODY_BYTES`](super::body::MAX_BODY_BYTES).

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use super::body::{self, Body, bytes_response, error_response, json_response};
use super::model::{self, Catalog, ModelSpec, PLATFORM, SIGNATURE};
use super::v2_codec::{self, BINARY_CONTENT_TYPE, HEADER_LENGTH, ResponseHead};
use super::{EXTENSIONS, SERVER_NAME, SERVER_VERSION};

/// What a `/v2/models/...` path asks for.
enum ModelCall {
    Metadata,
    Ready,
    Infer,
}

/// Answers a request whose path is `/v2` or under it.
pub async fn handle(catalog: &Catalog, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match segments.as_slice() {
        [] => only_get(&req, || {
            json_response(
                StatusCode::OK,
                &json!({ "name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS }),
            )
        }),
        ["health", "live"] => only_get(&req, || {
            json_response(StatusCode::OK, &json!({ "live": true }))
        }),
        ["health", "ready"] => only_get(&req, || {
            json_response(StatusCode::OK, &json!({ "ready": true }))
        }),
        ["models", name, rest @ ..] => {
            let (version, call) = match rest {
                [] => (None, ModelCall::Metadata),
                ["ready"] => (None, ModelCall::Ready),
                ["infer"] => (None, ModelCall::Infer),
                ["versions", v] => (Some(*v), ModelCall::Metadata),
                ["versions", v, "ready"] => (Some(*v), ModelCall::Ready),
                ["versions", v, "infer"] => (Some(*v), ModelCall::Infer),
                _ => return not_found(&req),
            };
            let spec = match catalog.find(name, version) {
                Ok(spec) => spec.clone(),
                Err(e) => return error_response(StatusCode::NOT_FOUND, e.0),
            };
            match call {
                ModelCall::Metadata => {
                    only_get(&req, || metadata(catalog, &spec, version.is_some()))
                }
                ModelCall::Ready => only_get(&req, || {
                    json_response(
                        StatusCode::OK,
                        &json!({ "name": spec.name, "version": spec.version, "ready": true }),
                    )
                }),
                ModelCall::Infer if req.method() == Method::POST => {
                    infer(catalog, &spec, req).await
                }
                ModelCall::Infer => wrong_method(&req, "POST"),
            }
        }
        _ => not_found(&req),
    }
}

/// `answer()` for a GET (or HEAD), else 405.
fn only_get(req: &Request<Incoming>, answer: impl FnOnce() -> Response<Body>) -> Response<Body> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        answer()
    } else {
        wrong_method(req, "GET")
    }
}

fn wrong_method(req: &Request<Incoming>, allowed: &'static str) -> Response<Body> {
    let mut resp = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} {} takes {allowed}", req.method(), req.uri().path()),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    resp
}

/// 404 for a path the server does not have.
pub fn not_found(req: &Request<Incoming>) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

/// The metadata of `spec`'s model: every served version, or only `spec`'s when the path
/// named one.
fn metadata(catalog: &Catalog, spec: &ModelSpec, one_version: bool) -> Response<Body> {
    let versions = if one_version {
        vec![spec.version.clone()]
    } else {
        catalog.versions(&spec.name)
    };
    let tensor = |i: usize| {
        let s = &SIGNATURE[i];
        json!({ "name": s.name, "datatype": s.datatype.name(), "shape": s.shape })
    };
    json_response(
        StatusCode::OK,
        &json!({
            "name": spec.name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [tensor(0)],
            "outputs": [tensor(1)],
        }),
    )
}

async fn infer(catalog: &Catalog, spec: &ModelSpec, req: Request<Incoming>) -> Response<Body> {
    let header_length = match req.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("the {HEADER_LENGTH} header is not a byte count: {v:?}"),
                );
            }
        },
    };
    let bytes = match body::read_capped(req.into_body()).await {
        Ok(bytes) => bytes,
        Err(e) => return body::read_error_response(&e, error_response),
    };
    let request = match v2_codec::decode_request(&bytes, header_length) {
        Ok(request) => request,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.0),
    };
    let outputs = match model::infer(&request.inputs, &request.requested_names()) {
        Ok(outputs) => outputs,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.0),
    };
    let head = ResponseHead {
        model_name: &spec.name,
        model_version: &spec.version,
        id: request.id.as_deref(),
        instance: &catalog.instance,
    };
    let encoded = v2_codec::encode_response(&head, &outputs, |t| request.wants_binary(&t.name));
    match encoded.header_length {
        None => bytes_response(StatusCode::OK, "application/json", encoded.body),
        Some(n) => {
            let mut resp = bytes_response(StatusCode::OK, BINARY_CONTENT_TYPE, encoded.body);
            resp.headers_mut()
                .insert(HEADER_LENGTH, HeaderValue::from(n));
            resp
        }
    }
}
