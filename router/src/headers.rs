//! Header names the router reads or writes, and the per-request header rewrite: hop-by-hop
//! stripping, `x-forwarded-for`, `x-request-id`.
//!
//! Every name is a `const` built with `from_static`, so using one costs nothing at run time.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The default header carrying the routing key (configurable with `--routing-header`).
pub const ROUTING_KEY: HeaderName = HeaderName::from_static("x-routing-key");
/// Appended with the client address on every forwarded request.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Correlates a request across services; generated when the client sent none.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `live`, `synthetic` or `shadow`.
pub const X_TRAFFIC_CLASS: HeaderName = HeaderName::from_static("x-traffic-class");
/// The tenant of a request.
pub const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
/// gRPC status code of a trailers-only error response.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC status message of a trailers-only error response.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop and must never be forwarded (RFC 9110 §7.6.1), beside the
/// ones a `Connection` header names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
///
/// `te: trailers` is kept on requests when `keep_te_trailers` is set: gRPC requires it end to
/// end, and it only announces that the client accepts trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // Fast path: most requests carry none of these (h2 forbids them outright).
    if !HOP_BY_HOP.iter().any(|name| headers.contains_key(name)) {
        return;
    }
    let te_trailers = keep_te_trailers
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Names listed in Connection are hop-by-hop too. Collecting them allocates, but only on
    // requests that carry a Connection header with a listed name.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Appends the client address to `x-forwarded-for` (comma-separated after any existing
/// value, per the de-facto convention).
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut buf = BytesMut::with_capacity(64);
    // A list may arrive split over several header lines; they are one list, in order.
    for existing in headers.get_all(&X_FORWARDED_FOR) {
        buf.put_slice(existing.as_bytes());
        buf.put_slice(b", ");
    }
    let _ = write!(ByteWriter(&mut buf), "{client}");
    // Valid values and an IP address joined by ", " always form a valid value.
    if let Ok(value) = HeaderValue::from_maybe_shared(buf.freeze()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// Sets `x-request-id` to a fresh random id when the request has none.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(&X_REQUEST_ID) {
        return;
    }
    headers.insert(X_REQUEST_ID, new_request_id());
}

/// A random UUIDv4-formatted id (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
pub fn new_request_id() -> HeaderValue {
    let (hi, lo) = (crate::rng::next_u64(), crate::rng::next_u64());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[(b >> 4) as usize];
        out[o + 1] = HEX[(b & 0xf) as usize];
        o += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

/// Whether a request is gRPC (its errors then become trailers-only gRPC statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

struct ByteWriter<'a>(&'a mut BytesMut);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = map(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("te").is_none());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, ::1");
    }

    #[test]
    fn forwarded_for_split_over_lines_keeps_every_hop() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
    }

    #[test]
    fn request_id_is_generated_only_when_absent() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h[X_REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        ensure_request_id(&mut h);
        assert_eq!(h[X_REQUEST_ID], id.as_str());
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn grpc_is_detected_by_content_type() {
        assert!(is_grpc(&map(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&map(&[("content-type", "application/json")])));
    }
}
