//! Every way a request can fail in the router, and the one place each becomes a response.
//!
//! A [`ProxyError`] knows its HTTP status, its gRPC status, its stable `code` (used in the
//! JSON body and as a metric label) and whose fault it is. Constructing one allocates
//! nothing; the body is only formatted when the response is built.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::headers::{GRPC_MESSAGE, GRPC_STATUS};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something the router cannot route.
    Downstream,
    /// A model server failed or was unreachable.
    Upstream,
    /// The router itself refused (limits).
    Internal,
}

/// A request the router answers itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The request has no routing-key header.
    #[error("request has no routing key header")]
    MissingRoutingKey,
    /// The routing key names no route.
    #[error("no route for this routing key")]
    UnknownRoutingKey,
    /// Every endpoint tried refused or timed out the connection.
    #[error("could not connect to any endpoint of the cluster")]
    UpstreamConnect,
    /// The upstream broke the exchange after the request was sent.
    #[error("the model server failed the request")]
    UpstreamProtocol,
    /// No response headers within the route's timeout.
    #[error("the model server did not answer within the route timeout")]
    UpstreamTimeout,
    /// The cluster has no endpoint that may receive traffic.
    #[error("no healthy endpoint in the cluster")]
    NoHealthyUpstream,
    /// A concurrency limit was hit (a cluster's circuit breaker).
    #[error("too many requests in flight to the cluster")]
    Overloaded,
    /// The tenant's `max_concurrent` requests are in flight.
    #[error("too many requests of this tenant in flight")]
    TenantOverloaded,
    /// The tenant's rate and burst are used up; a token is back in this many seconds.
    #[error("the tenant's request rate is exceeded")]
    RateLimited(u32),
    /// The route does not allow the request's tenant (or the request has none).
    #[error("the route does not allow this tenant")]
    TenantNotAllowed,
    /// The bearer token is missing or does not verify.
    #[error("a valid bearer token is required")]
    Unauthenticated,
    /// `x-traffic-class` holds an unknown value.
    #[error("x-traffic-class must be live, synthetic, shadow or replay")]
    InvalidTrafficClass,
    /// A CONNECT request, or an HTTP/1.1 upgrade to a cluster that speaks only h2c.
    #[error("CONNECT is not supported, and an upgrade needs an http1 or auto cluster")]
    UpgradeNotSupported,
    /// The TLS handshake with the endpoint failed (an untrusted or mismatched certificate,
    /// a refused client certificate, no common protocol).
    #[error("the TLS handshake with the model server failed")]
    UpstreamTlsFailed,
    /// An HTTP/1.1 request that could be read two ways (an absolute-form URI whose host
    /// disagrees with `Host`), or a request body that failed (a malformed chunk, the
    /// client gone): answered 400, connection closed.
    #[error("the request's framing is ambiguous or malformed")]
    MalformedRequest,
    /// An HTTP/2 request with more header fields than `--max-request-headers` (HTTP/1.1
    /// heads past the limits are refused by hyper itself, with the same status).
    #[error("the request has too many header fields")]
    HeadersTooLarge,
    /// The request body is larger than the route's `max_request_body_bytes` (by its
    /// `Content-Length`, or counted as it streamed).
    #[error("the request body is larger than the route allows")]
    RequestBodyTooLarge,
    /// The first chunk of an HTTP/1.1 chunked body did not come within the header-read
    /// timeout (it is read before anything goes upstream): answered 408, connection closed.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
}

impl ProxyError {
    /// The HTTP status of the error response.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::MissingRoutingKey
            | ProxyError::InvalidTrafficClass
            | ProxyError::MalformedRequest => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::RequestBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::TenantNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::TenantOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UnknownRoutingKey => StatusCode::NOT_FOUND,
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamProtocol
            | ProxyError::UpstreamTlsFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoHealthyUpstream | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpgradeNotSupported => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The stable machine-readable code (JSON body, metric label, logs).
    pub fn as_label(self) -> &'static str {
        match self {
            ProxyError::MissingRoutingKey => "missing_routing_key",
            ProxyError::UnknownRoutingKey => "unknown_routing_key",
            ProxyError::UpstreamConnect => "upstream_connect_failed",
            ProxyError::UpstreamProtocol => "upstream_error",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::Overloaded | ProxyError::TenantOverloaded => "overloaded",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::TenantNotAllowed => "tenant_not_allowed",
            ProxyError::Unauthenticated => "unauthenticated",
            ProxyError::InvalidTrafficClass => "invalid_traffic_class",
            ProxyError::UpgradeNotSupported => "upgrade_not_supported",
            ProxyError::UpstreamTlsFailed => "upstream_tls_failed",
            ProxyError::MalformedRequest => "malformed_request",
            ProxyError::HeadersTooLarge => "request_headers_too_large",
            ProxyError::RequestBodyTooLarge => "request_body_too_large",
            ProxyError::RequestTimeout => "request_timeout",
        }
    }

    /// The gRPC status code used for gRPC requests.
    pub fn grpc_status(self) -> u8 {
        match self {
            ProxyError::MissingRoutingKey
            | ProxyError::InvalidTrafficClass
            | ProxyError::MalformedRequest => 3, // INVALID_ARGUMENT
            ProxyError::HeadersTooLarge | ProxyError::RequestBodyTooLarge => 8, // RESOURCE_EXHAUSTED
            ProxyError::TenantNotAllowed => 7,                                  // PERMISSION_DENIED
            ProxyError::Unauthenticated => 16,                                  // UNAUTHENTICATED
            ProxyError::RateLimited(_) => 8,    // RESOURCE_EXHAUSTED
            ProxyError::TenantOverloaded => 14, // UNAVAILABLE
            ProxyError::UnknownRoutingKey => 5, // NOT_FOUND
            ProxyError::UpstreamTimeout | ProxyError::RequestTimeout => 4, // DEADLINE_EXCEEDED
            ProxyError::UpgradeNotSupported => 12, // UNIMPLEMENTED
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamProtocol
            | ProxyError::UpstreamTlsFailed
            | ProxyError::NoHealthyUpstream
            | ProxyError::Overloaded => 14, // UNAVAILABLE
        }
    }

    /// Whether the answer closes an HTTP/1.1 connection even when the body was read: what
    /// follows a malformed request, or a body cut off at its limit, cannot be trusted.
    pub fn ends_connection(self) -> bool {
        matches!(
            self,
            ProxyError::MalformedRequest
                | ProxyError::RequestBodyTooLarge
                | ProxyError::RequestTimeout
        )
    }

    /// Whose fault the failure is.
    pub fn fault(self) -> Fault {
        match self {
            ProxyError::MissingRoutingKey
            | ProxyError::UnknownRoutingKey
            | ProxyError::InvalidTrafficClass
            | ProxyError::TenantNotAllowed
            | ProxyError::Unauthenticated
            | ProxyError::UpgradeNotSupported
            | ProxyError::MalformedRequest
            | ProxyError::HeadersTooLarge
            | ProxyError::RequestBodyTooLarge
            | ProxyError::RequestTimeout => Fault::Downstream,
            ProxyError::Overloaded | ProxyError::TenantOverloaded | ProxyError::RateLimited(_) => {
                Fault::Internal
            }
            _ => Fault::Upstream,
        }
    }

    /// Builds the response: a JSON error body, or for gRPC requests a trailers-only response
    /// carrying `grpc-status` and `grpc-message`.
    pub fn into_response<B: From<Bytes>>(
        self,
        routing_key: Option<&[u8]>,
        grpc: bool,
    ) -> Response<B> {
        let mut resp = Response::new(B::from(Bytes::new()));
        let headers = resp.headers_mut();
        if grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(
                GRPC_STATUS,
                HeaderValue::from(u16::from(self.grpc_status())),
            );
            // The Display text is plain ASCII without control characters.
            headers.insert(
                GRPC_MESSAGE,
                HeaderValue::from_str(&format!("{}: {self}", self.as_label()))
                    .expect("error messages are valid header values"),
            );
        } else {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let key = routing_key.map(String::from_utf8_lossy);
            let body = serde_json::json!({
                "error": {
                    "code": self.as_label(),
                    "message": self.to_string(),
                    "routing_key": key,
                }
            });
            *resp.body_mut() = B::from(Bytes::from(body.to_string()));
            *resp.status_mut() = self.status();
        }
        match self {
            ProxyError::Overloaded | ProxyError::TenantOverloaded => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::Unauthenticated => {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::RateLimited(seconds) => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn json_error_names_the_code_and_the_key() {
        let resp: Response<Full<Bytes>> =
            ProxyError::UnknownRoutingKey.into_response(Some(b"ranker-v9"), false);
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unknown_routing_key");
        assert_eq!(v["error"]["routing_key"], "ranker-v9");
        assert!(v["error"]["message"].as_str().unwrap().contains("no route"));
    }

    #[test]
    fn grpc_error_is_trailers_only() {
        let resp: Response<Full<Bytes>> = ProxyError::UpstreamTimeout.into_response(None, true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[GRPC_STATUS], "4");
        assert!(
            resp.headers()[GRPC_MESSAGE]
                .to_str()
                .unwrap()
                .starts_with("upstream_timeout")
        );
    }

    #[test]
    fn overloaded_carries_retry_after() {
        let resp: Response<Full<Bytes>> = ProxyError::Overloaded.into_response(None, false);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn tenant_refusals_have_their_statuses_and_retry_after() {
        let limited: Response<Full<Bytes>> = ProxyError::RateLimited(7).into_response(None, false);
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()[RETRY_AFTER], "7");
        let busy: Response<Full<Bytes>> = ProxyError::TenantOverloaded.into_response(None, false);
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        let denied: Response<Full<Bytes>> = ProxyError::TenantNotAllowed.into_response(None, true);
        assert_eq!(denied.headers()[GRPC_STATUS], "7");
        assert_eq!(ProxyError::RateLimited(1).grpc_status(), 8);
        assert_eq!(ProxyError::InvalidTrafficClass.status(), 400);
    }
}
