//! Stamping the routing key onto outgoing requests: `x-routing-key` on an
//! [`http::Request`] or a [`HeaderMap`], or as metadata on a [`tonic::Request`].
//!
//! The free functions use the default header name [`ROUTING_KEY`]; a [`RoutingHeader`]
//! carries another name (routers can be configured to read a different one). The values are
//! prebuilt in the [`Resolved`] answer, so stamping copies no string.

use http::HeaderMap;
use http::header::HeaderName;
use tonic::metadata::AsciiMetadataKey;

use crate::Resolved;

/// The default routing header, `x-routing-key`, that the router reads.
pub const ROUTING_KEY: HeaderName = HeaderName::from_static("x-routing-key");

/// A routing header name, as an HTTP header and as gRPC metadata key.
///
/// Default: [`ROUTING_KEY`]. The client's is set with
/// [`Builder::routing_header`](crate::Builder::routing_header) and returned by
/// [`Client::routing_header`](crate::Client::routing_header).
#[derive(Debug, Clone)]
pub struct RoutingHeader {
    name: HeaderName,
    metadata_key: AsciiMetadataKey,
}

impl Default for RoutingHeader {
    fn default() -> Self {
        Self::new(ROUTING_KEY)
    }
}

impl RoutingHeader {
    /// A routing header called `name`.
    pub fn new(name: HeaderName) -> Self {
        // A `HeaderName` is lowercase token characters, which is exactly what an ASCII
        // metadata key accepts (it must not end in `-bin`, which a routing header never
        // does; `from_bytes` would reject it and `HeaderName` rules out nothing else).
        let metadata_key = AsciiMetadataKey::from_bytes(name.as_str().as_bytes())
            .unwrap_or_else(|_| AsciiMetadataKey::from_static("x-routing-key"));
        Self { name, metadata_key }
    }

    /// The header name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// Sets the header to the answer's routing key on `request`, replacing any value.
    pub fn stamp<B>(&self, resolved: &Resolved, request: &mut http::Request<B>) {
        self.set(request.headers_mut(), resolved);
    }

    /// Sets the header to the answer's routing key in `headers`, replacing any value.
    pub fn set(&self, headers: &mut HeaderMap, resolved: &Resolved) {
        headers.insert(self.name.clone(), resolved.routing_key_header().clone());
    }

    /// Sets the routing key as metadata on a gRPC `request`, replacing any value.
    pub fn stamp_grpc<T>(&self, resolved: &Resolved, request: &mut tonic::Request<T>) {
        request.metadata_mut().insert(
            self.metadata_key.clone(),
            resolved.routing_key_metadata().clone(),
        );
    }
}

/// Sets `x-routing-key` on `request` to the answer's routing key, replacing any value.
///
/// ```
/// # fn demo(resolved: &lightbulb_client::Resolved) {
/// let mut request = http::Request::new(());
/// lightbulb_client::stamp(resolved, &mut request);
/// assert_eq!(request.headers()["x-routing-key"], resolved.routing_key());
/// # }
/// ```
pub fn stamp<B>(resolved: &Resolved, request: &mut http::Request<B>) {
    set_routing_header(request.headers_mut(), resolved);
}

/// Sets `x-routing-key` in `headers` to the answer's routing key, replacing any value.
pub fn set_routing_header(headers: &mut HeaderMap, resolved: &Resolved) {
    headers.insert(ROUTING_KEY, resolved.routing_key_header().clone());
}

/// Sets `x-routing-key` metadata on a gRPC `request` (sent through the router) to the
/// answer's routing key, replacing any value.
pub fn stamp_grpc<T>(resolved: &Resolved, request: &mut tonic::Request<T>) {
    request.metadata_mut().insert(
        AsciiMetadataKey::from_static("x-routing-key"),
        resolved.routing_key_metadata().clone(),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::resolved::{Answer, ObjectiveConfig, Source};

    fn resolved(key: &str) -> Resolved {
        let answer = Answer::new(key.into(), ObjectiveConfig::default(), Box::new([]), 7)
            .expect("valid key");
        Resolved::new(Arc::new(answer), Source::Fresh)
    }

    #[test]
    fn stamp_sets_x_routing_key_on_an_http_request() {
        let mut request = http::Request::builder()
            .header("x-routing-key", "stale")
            .body(())
            .unwrap();
        stamp(&resolved("ranker-v2"), &mut request);
        let values: Vec<_> = request.headers().get_all(ROUTING_KEY).iter().collect();
        assert_eq!(values, ["ranker-v2"], "replaces, never appends");
    }

    #[test]
    fn set_routing_header_sets_a_header_map() {
        let mut headers = HeaderMap::new();
        set_routing_header(&mut headers, &resolved("ranker-v1"));
        assert_eq!(headers["x-routing-key"], "ranker-v1");
    }

    #[test]
    fn a_configured_header_name_is_used() {
        let header = RoutingHeader::new(HeaderName::from_static("x-model-route"));
        let mut request = http::Request::new(());
        header.stamp(&resolved("k"), &mut request);
        assert_eq!(request.headers()["x-model-route"], "k");
        assert!(request.headers().get(ROUTING_KEY).is_none());

        let mut grpc = tonic::Request::new(());
        header.stamp_grpc(&resolved("k"), &mut grpc);
        assert_eq!(grpc.metadata().get("x-model-route").unwrap(), "k");
    }

    #[test]
    fn stamp_grpc_sets_metadata() {
        let mut request = tonic::Request::new(());
        stamp_grpc(&resolved("ranker-v2"), &mut request);
        assert_eq!(
            request.metadata().get("x-routing-key").unwrap(),
            "ranker-v2"
        );
        let headers = request.metadata().clone().into_headers();
        assert_eq!(headers["x-routing-key"], "ranker-v2");
    }

    #[test]
    fn routing_keys_that_are_not_header_values_are_rejected() {
        for key in ["", "has space", "new\nline", "ünï"] {
            assert!(
                Answer::new(key.into(), ObjectiveConfig::default(), Box::new([]), 1).is_err(),
                "{key:?}"
            );
        }
    }
}
