//! Header names the router reads or writes, and the per-request header rewrite: hop-by-hop
//! stripping, `x-forwarded-for`, `x-request-id`.
//!
//! Every name is a `const` built with `from_static`, so using one costs nothing at run time.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};

/// The default header carrying the routing key (configurable with `--routing-header`).
pub const ROUTING_KEY: HeaderName = HeaderName::from_static("x-routing-key");
/// Appended with the client address on every forwarded request.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Correlates a request across services; generated when the client sent none.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The tenant of a request.
pub const X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
/// gRPC status code of a trailers-only error response.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// gRPC status message of a trailers-only error response.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const CONNECTION_INDEX: usize = 0;
const TE_INDEX: usize = 5;
const UPGRADE_INDEX: usize = 7;

/// Headers that describe one hop and must never be forwarded (RFC 9110 §7.6.1), beside the
/// ones a `Connection` header names. `CONNECTION_INDEX` and `TE_INDEX` point into it.
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

/// Position of `name` in [`HOP_BY_HOP`]. Standard names compare as small integers, so this
/// is a handful of integer comparisons.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| h == name)
}

/// Whether a `Connection` value is only `keep-alive` or `close`: it names no header and asks
/// for no upgrade.
fn is_plain_connection(value: &HeaderValue) -> bool {
    let value = value.as_bytes();
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
}

/// Removes hop-by-hop headers, including every header named in `Connection`, and returns
/// the `Upgrade` header's value when the message asks for an upgrade (`Connection` lists
/// `upgrade` and an `Upgrade` header is present): the caller decides whether to pass it on.
///
/// `te: trailers` is kept on requests when `keep_te_trailers` is set: gRPC requires it end to
/// end, and it only announces that the client accepts trailers.
#[inline]
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) -> Option<HeaderValue> {
    // One pass over the few headers a message carries, no hashing; then only the names seen
    // are removed. Most requests have none (h2 forbids them outright); HTTP/1.1 responses
    // usually carry just `connection: keep-alive`.
    let mut present = 0u8;
    // Whether a `Connection` value lists more than `keep-alive` or `close` (the value of
    // nearly every one, which then needs no token parsing).
    let mut connection_lists = false;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
            connection_lists |= i == CONNECTION_INDEX && !is_plain_connection(value);
        }
    }
    if present == 0 {
        return None;
    }
    let te_trailers = keep_te_trailers
        && present & (1 << TE_INDEX) != 0
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let mut upgrade = None;
    if connection_lists {
        // Names listed in Connection are hop-by-hop too. The usual tokens (`keep-alive`,
        // `close`, `upgrade`, `te`) need no work: they are removed below or name no header.
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                {
                    continue;
                }
                if token.eq_ignore_ascii_case("upgrade") {
                    if present & (1 << UPGRADE_INDEX) != 0 {
                        upgrade = headers.get(header::UPGRADE).cloned();
                    }
                    continue;
                }
                // `Host` is end to end whatever a client lists (and was looked for already).
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                    && hop_by_hop_index(&name).is_none()
                    && name != HOST
                {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    upgrade
}

/// The value a connection from `client` adds to `x-forwarded-for`, built once per
/// connection.
pub fn forwarded_for_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string()).expect("an IP address is a valid header value")
}

/// Appends the client address (from [`forwarded_for_value`]) to `x-forwarded-for`,
/// comma-separated after any existing value, per the de-facto convention. Without an
/// existing value this is a reference-count bump, no formatting.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    use http::header::Entry;
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(client.clone());
        }
        Entry::Occupied(mut slot) => {
            let mut buf = BytesMut::with_capacity(64);
            // A list may arrive split over several header lines; they are one list, in order.
            for existing in slot.iter() {
                buf.put_slice(existing.as_bytes());
                buf.put_slice(b", ");
            }
            buf.put_slice(client.as_bytes());
            // Valid values joined by ", " always form a valid value.
            if let Ok(value) = HeaderValue::from_maybe_shared(buf.freeze()) {
                // Replaces every line with the one joined value.
                slot.insert(value);
            }
        }
    }
}

/// Sets `x-request-id` to a fresh random id when the request has none.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    headers.entry(X_REQUEST_ID).or_insert_with(new_request_id);
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

/// The code of a `grpc-status` value (`None` for anything but a number from 0 to 255).
pub fn grpc_code(value: &HeaderValue) -> Option<u8> {
    value.to_str().ok()?.parse().ok()
}

/// What the proxy refuses in a parsed head before routing it: an HTTP/1.1 absolute-form
/// target whose authority disagrees with `Host` (two parsers could pick different hosts:
/// `400`), and an HTTP/2 request with more than `max_headers` header fields (`431`; hyper
/// counts HTTP/1.1 fields itself). Costs two comparisons for a request with neither.
#[inline]
pub fn head_problem<B>(req: &Request<B>, max_headers: usize) -> Option<crate::error::ProxyError> {
    use crate::error::ProxyError;
    if req.version() >= Version::HTTP_2 {
        return (req.headers().len() > max_headers).then_some(ProxyError::HeadersTooLarge);
    }
    let authority = req.uri().authority()?;
    match req.headers().get(HOST) {
        Some(host)
            if !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Some(ProxyError::MalformedRequest)
        }
        _ => None,
    }
}

/// Puts the URI (and `Host`) in the form the upstream protocol wants: origin-form plus a
/// `Host` header for HTTP/1.1, absolute-form (`:scheme` `http`, or `https` over TLS, and
/// `:authority`) for HTTP/2. The
/// client's own authority is kept when it sent one; every part is a cheap `Bytes` clone.
/// `has_host`: whether the request has a `Host` header (found in the pass of
/// [`OwnHeaders::find`], so that it is not looked up again).
pub fn prepare_uri<B>(
    req: &mut Request<B>,
    endpoint: &Authority,
    h2: bool,
    tls: bool,
    has_host: bool,
) {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        // `Host` is parsed only here, where it becomes `:authority`.
        let client_authority = req.uri().authority().cloned().or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        });
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = Some(client_authority.unwrap_or_else(|| endpoint.clone()));
        parts.path_and_query = Some(path);
        *req.uri_mut() =
            Uri::from_parts(parts).expect("scheme, authority and path form a valid URI");
        req.headers_mut().remove(HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        // A `Host` the client sent stays as it is; without one, the URI's authority or the
        // endpoint's becomes it.
        if !has_host {
            let authority = req
                .uri()
                .authority()
                .cloned()
                .unwrap_or_else(|| endpoint.clone());
            let value = HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value");
            req.headers_mut().insert(HOST, value);
        }
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
    }
}

/// A request's headers kept for a retry as one byte buffer (DESIGN: the replay buffer's
/// head). Saving them costs one allocation and a few small copies, where cloning the map
/// costs two allocations, a reference count per name and value (and, for a name or value
/// not shared yet, one more allocation each) and as many drops. They are turned back into a
/// map only when a retry is made.
#[derive(Debug)]
pub struct SavedHeaders(Vec<u8>);

/// Bytes reserved for saved headers at once (a typical inference request's head fits).
const SAVED_CAPACITY: usize = 512;

impl SavedHeaders {
    /// Saves every name and value of `headers`, in order, duplicates included.
    pub fn save(headers: &HeaderMap) -> Self {
        let mut buf = Vec::with_capacity(SAVED_CAPACITY);
        for (name, value) in headers {
            let (name, value_bytes) = (name.as_str().as_bytes(), value.as_bytes());
            // One copy for the fixed part: sensitive flag, name length, value length.
            let mut prefix = [0u8; 9];
            prefix[0] = u8::from(value.is_sensitive());
            prefix[1..5].copy_from_slice(&(name.len() as u32).to_ne_bytes());
            prefix[5..].copy_from_slice(&(value_bytes.len() as u32).to_ne_bytes());
            buf.reserve(prefix.len() + name.len() + value_bytes.len());
            buf.extend_from_slice(&prefix);
            buf.extend_from_slice(name);
            buf.extend_from_slice(value_bytes);
        }
        SavedHeaders(buf)
    }

    /// The headers as they were saved (`None` only if the buffer were corrupt).
    pub fn restore(&self) -> Option<HeaderMap> {
        let mut map = HeaderMap::new();
        let mut rest = &self.0[..];
        while let Some((&sensitive, tail)) = rest.split_first() {
            let name_len = u32::from_ne_bytes(tail.get(..4)?.try_into().ok()?) as usize;
            let value_len = u32::from_ne_bytes(tail.get(4..8)?.try_into().ok()?) as usize;
            let name = tail.get(8..8 + name_len)?;
            let value = tail.get(8 + name_len..8 + name_len + value_len)?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(sensitive == 1);
            map.append(HeaderName::from_bytes(name).ok()?, value);
            rest = &tail[8 + name_len + value_len..];
        }
        Some(map)
    }
}

/// The header naming a request's traffic class.
pub const TRAFFIC_CLASS: HeaderName = HeaderName::from_static("x-traffic-class");
/// The attribution header of responses.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Where a request comes from (DESIGN §11): the `x-traffic-class` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficClass {
    /// Real users' traffic (also when the header is absent).
    Live,
    /// Load tests, probes and other synthetic traffic.
    Synthetic,
    /// A mirrored copy.
    Shadow,
    /// Recorded traffic played again.
    Replay,
}

/// The request headers the router reads: the first value of the routing key, the traffic
/// class, the tenant header and `Content-Type`, as `HeaderMap::get` gives them, and whether
/// a `Host` header is there.
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnHeaders<'h> {
    /// The routing-key header (`x-routing-key` unless renamed).
    pub routing_key: Option<&'h HeaderValue>,
    /// `x-traffic-class`.
    pub traffic_class: Option<&'h HeaderValue>,
    /// The tenant header (`x-tenant-id` unless renamed).
    pub tenant: Option<&'h HeaderValue>,
    /// `Content-Type`.
    pub content_type: Option<&'h HeaderValue>,
    /// Whether the request has a `Host` header.
    pub host: bool,
}

/// Heads with more values than this are searched with one hashed lookup per header instead
/// of one pass over them all.
const SCAN_LIMIT: usize = 32;

impl<'h> OwnHeaders<'h> {
    /// Finds the three in `headers`: for a head of up to [`SCAN_LIMIT`] values, in one pass
    /// comparing names (most are standard headers, told apart from these without reading a
    /// byte), which costs less than hashing each of the three names for a lookup.
    #[inline]
    pub fn find(headers: &'h HeaderMap, routing: &HeaderName, tenant: &HeaderName) -> Self {
        if headers.len() > SCAN_LIMIT {
            return OwnHeaders {
                routing_key: headers.get(routing),
                traffic_class: headers.get(TRAFFIC_CLASS),
                tenant: headers.get(tenant),
                content_type: headers.get(header::CONTENT_TYPE),
                host: headers.contains_key(HOST),
            };
        }
        let mut own = OwnHeaders::default();
        for (name, value) in headers {
            // Each on its own: a renamed header may share a name with another.
            if own.routing_key.is_none() && name == routing {
                own.routing_key = Some(value);
            }
            if own.traffic_class.is_none() && *name == TRAFFIC_CLASS {
                own.traffic_class = Some(value);
            }
            if own.tenant.is_none() && name == tenant {
                own.tenant = Some(value);
            }
            if own.content_type.is_none() && *name == header::CONTENT_TYPE {
                own.content_type = Some(value);
            }
            own.host |= *name == HOST;
        }
        own
    }

    /// Whether the request is gRPC (its errors then become trailers-only gRPC statuses).
    #[inline]
    pub fn is_grpc(&self) -> bool {
        self.content_type
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }
}

impl TrafficClass {
    /// How many classes there are.
    pub const COUNT: usize = 4;

    /// The class of a request with `headers`; `None` when the header holds another value.
    #[inline]
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        Self::from_value(headers.get(TRAFFIC_CLASS))
    }

    /// The class a `x-traffic-class` value (`None`: absent) names; `None` when it names none.
    #[inline]
    pub fn from_value(value: Option<&HeaderValue>) -> Option<Self> {
        match value.map(HeaderValue::as_bytes) {
            None | Some(b"live") => Some(TrafficClass::Live),
            Some(b"synthetic") => Some(TrafficClass::Synthetic),
            Some(b"shadow") => Some(TrafficClass::Shadow),
            Some(b"replay") => Some(TrafficClass::Replay),
            Some(_) => None,
        }
    }

    /// The label (`live`, `synthetic`, `shadow`, `replay`).
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Live => "live",
            TrafficClass::Synthetic => "synthetic",
            TrafficClass::Shadow => "shadow",
            TrafficClass::Replay => "replay",
        }
    }

    /// A dense index, for per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether a route's `synthetic_cluster` takes this class.
    pub fn is_synthetic(self) -> bool {
        matches!(self, TrafficClass::Synthetic | TrafficClass::Replay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three as hashed lookups find them.
    fn looked_up<'h>(
        h: &'h HeaderMap,
        routing: &HeaderName,
        tenant: &HeaderName,
    ) -> [Option<&'h HeaderValue>; 3] {
        [h.get(routing), h.get(TRAFFIC_CLASS), h.get(tenant)]
    }

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut req = Request::builder().uri(uri);
        if let Some(host) = host {
            req = req.header(HOST, host);
        }
        req.body(()).unwrap()
    }

    /// `prepare_uri` with `Host` looked up, as the mirror does.
    fn prep(req: &mut Request<()>, endpoint: &Authority, h2: bool, tls: bool) {
        let has_host = req.headers().contains_key(HOST);
        prepare_uri(req, endpoint, h2, tls, has_host);
    }

    #[test]
    fn prepare_uri_gives_http1_origin_form_and_a_host() {
        let endpoint = Authority::from_static("10.0.0.7:9000");
        // The client's Host stays; the target becomes origin-form.
        let mut req = request("http://other.example/v1/infer?x=1", Some("models.internal"));
        prep(&mut req, &endpoint, false, false);
        assert_eq!(req.uri(), "/v1/infer?x=1");
        assert_eq!(req.headers()[HOST], "models.internal");
        assert_eq!(req.version(), Version::HTTP_11);
        // No Host: the absolute-form target's authority, else the endpoint's.
        let mut req = request("http://models.internal:8080/v1", None);
        prep(&mut req, &endpoint, false, false);
        assert_eq!(req.headers()[HOST], "models.internal:8080");
        let mut req = request("/v1", None);
        prep(&mut req, &endpoint, false, false);
        assert_eq!(req.uri(), "/v1");
        assert_eq!(req.headers()[HOST], "10.0.0.7:9000");
    }

    #[test]
    fn prepare_uri_gives_http2_an_authority_from_host_and_drops_host() {
        let endpoint = Authority::from_static("10.0.0.7:9000");
        let mut req = request("/v1/infer", Some("models.internal"));
        prep(&mut req, &endpoint, true, false);
        assert_eq!(req.uri(), "http://models.internal/v1/infer");
        assert!(req.headers().get(HOST).is_none());
        assert_eq!(req.version(), Version::HTTP_2);
        let mut req = request("/", None);
        prep(&mut req, &endpoint, true, true);
        assert_eq!(req.uri(), "https://10.0.0.7:9000/");
    }

    #[test]
    fn own_headers_are_the_first_values_lookups_find() {
        let routing = ROUTING_KEY;
        let tenant = X_TENANT_ID;
        let mut heads = Vec::new();
        heads.push(HeaderMap::new());
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "models.internal"),
            ("content-type", "application/json"),
            ("x-routing-key", "ranker"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-tenant-id", "team-a"),
            ("x-traffic-class", "shadow"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        heads.push(h.clone());
        // Repeated headers: the first value counts, as for `get`.
        for (k, v) in [("x-routing-key", "second"), ("x-tenant-id", "team-b")] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        heads.push(h.clone());
        // Past the scan limit: the lookups.
        for i in 0..SCAN_LIMIT {
            h.append(
                HeaderName::from_bytes(format!("x-extra-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        heads.push(h);
        for h in &heads {
            let own = OwnHeaders::find(h, &routing, &tenant);
            assert_eq!(
                [own.routing_key, own.traffic_class, own.tenant],
                looked_up(h, &routing, &tenant)
            );
        }
        // Renamed headers, one of them a standard header's name, and both the same.
        let user_agent = HeaderName::from_static("user-agent");
        let h = &heads[2];
        let own = OwnHeaders::find(h, &X_TENANT_ID, &X_TENANT_ID);
        assert_eq!(own.routing_key.unwrap(), "team-a");
        assert_eq!(own.tenant.unwrap(), "team-a");
        let mut with_agent = h.clone();
        with_agent.insert(&user_agent, HeaderValue::from_static("client/1"));
        let own = OwnHeaders::find(&with_agent, &routing, &user_agent);
        assert_eq!(own.tenant.unwrap(), "client/1");
        assert_eq!(own.routing_key.unwrap(), "ranker");
    }

    #[test]
    fn saved_headers_come_back_as_they_were() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("model.test"));
        headers.append("x-routing-key", HeaderValue::from_static("ranker"));
        headers.append("x-multi", HeaderValue::from_static("one"));
        headers.append("x-multi", HeaderValue::from_static("two"));
        headers.append("x-empty", HeaderValue::from_static(""));
        headers.append("x-obs-text", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let mut secret = HeaderValue::from_static("Bearer abc");
        secret.set_sensitive(true);
        headers.append(header::AUTHORIZATION, secret);

        let restored = SavedHeaders::save(&headers).restore().unwrap();
        assert_eq!(restored, headers);
        let order = |m: &HeaderMap| {
            m.iter()
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&restored), order(&headers));
        assert!(
            SavedHeaders::save(&HeaderMap::new())
                .restore()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_corrupt_buffer_is_refused_not_misread() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("model.test"));
        let SavedHeaders(mut buf) = SavedHeaders::save(&headers);
        buf.truncate(buf.len() - 1);
        assert!(SavedHeaders(buf).restore().is_none());
    }

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
        assert_eq!(
            strip_hop_by_hop(&mut h, true),
            None,
            "an Upgrade header alone asks for nothing"
        );
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn a_plain_connection_value_is_removed_and_a_listing_one_still_counts() {
        for plain in ["keep-alive", "Keep-Alive", "close", "CLOSE"] {
            let mut h = map(&[("connection", plain), ("x-keep", "yes")]);
            assert_eq!(strip_hop_by_hop(&mut h, false), None);
            assert_eq!(h.len(), 1, "{plain}: {h:?}");
        }
        // The plain value first, the listing one second: the listed header goes too.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
        // A plain value beside an upgrade request still reports the upgrade.
        let mut h = map(&[
            ("connection", "close"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(strip_hop_by_hop(&mut h, false).unwrap(), "websocket");
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn an_upgrade_is_reported_and_still_stripped() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert_eq!(strip_hop_by_hop(&mut h, true).unwrap(), "websocket");
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = map(&[("connection", "upgrade")]);
        assert_eq!(strip_hop_by_hop(&mut h, true), None, "no protocol named");
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
        append_forwarded_for(&mut h, &forwarded_for_value("10.0.0.1".parse().unwrap()));
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
        append_forwarded_for(&mut h, &forwarded_for_value("::1".parse().unwrap()));
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, ::1");
    }

    #[test]
    fn forwarded_for_split_over_lines_keeps_every_hop() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        append_forwarded_for(&mut h, &forwarded_for_value("127.0.0.1".parse().unwrap()));
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
        let grpc = |h: &HeaderMap| OwnHeaders::find(h, &ROUTING_KEY, &X_TENANT_ID).is_grpc();
        assert!(grpc(&map(&[("content-type", "application/grpc+proto")])));
        assert!(!grpc(&map(&[("content-type", "application/json")])));
        assert!(!grpc(&map(&[("x-content-type", "application/grpc")])));
    }
}
