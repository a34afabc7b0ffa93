//! The demo server's body plumbing: one response body type for every protocol, JSON answers,
//! and request bodies read frame by frame up to a size cap.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::BoxError;

/// The response body of every answer (REST, SSE streams and gRPC).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The largest request body the server reads (64 MiB); past it the answer is 413.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// A body of one data frame.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A response with `bytes` as its body and `content_type`.
pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    bytes: Vec<u8>,
) -> Response<Body> {
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("a response serializes");
    bytes_response(status, "application/json", bytes)
}

/// The protocol's error answer: `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message.into() }))
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// It is longer than [`MAX_BODY_BYTES`].
    TooLarge,
    /// The connection failed while reading it.
    Broken(BoxError),
}

/// Reads a request body whole, frame by frame, refusing one over [`MAX_BODY_BYTES`] as soon
/// as it passes the cap.
///
/// # Errors
///
/// When the body is too large or the connection breaks.
pub async fn read_capped(body: Incoming) -> Result<Bytes, ReadError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ReadError::TooLarge),
        Err(e) => Err(ReadError::Broken(e)),
    }
}

/// The answer for a body that could not be read, in the shape `error` builds.
pub fn read_error_response(
    err: &ReadError,
    error: impl Fn(StatusCode, String) -> Response<Body>,
) -> Response<Body> {
    match err {
        ReadError::TooLarge => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the {MAX_BODY_BYTES}-byte limit"),
        ),
        ReadError::Broken(e) => error(
            StatusCode::BAD_REQUEST,
            format!("reading the request body failed: {e}"),
        ),
    }
}
