//! Small hyper client helpers: HTTP/1.1 and h2c (prior knowledge), streaming request bodies,
//! and collecting a response with its trailers.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::BoxError;
use crate::pattern;

/// The request body type of the helpers.
pub type Body = BoxBody<Bytes, BoxError>;

/// The routing header the router reads.
pub const ROUTING_KEY: &str = "x-routing-key";

/// A pooled hyper client speaking one HTTP version.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Body>,
    version: Version,
}

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct Collected {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The trailers, when the response had any.
    pub trailers: Option<HeaderMap>,
}

// === impl HttpClient ===

impl HttpClient {
    /// HTTP/1.1 with keep-alive connections.
    pub fn http1() -> Self {
        Self::build(false, true)
    }

    /// HTTP/1.1 that opens a new connection for every request.
    pub fn http1_no_reuse() -> Self {
        Self::build(false, false)
    }

    /// HTTP/2 over cleartext with prior knowledge (h2c); requests share one connection.
    pub fn h2c() -> Self {
        Self::build(true, true)
    }

    /// [`HttpClient::http1`] or [`HttpClient::h2c`] by version.
    ///
    /// # Panics
    ///
    /// For versions other than HTTP/1.1 and HTTP/2.
    pub fn for_version(version: Version) -> Self {
        match version {
            Version::HTTP_11 => Self::http1(),
            Version::HTTP_2 => Self::h2c(),
            other => panic!("no client for {other:?}"),
        }
    }

    fn build(h2: bool, reuse: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(h2);
        if !reuse {
            builder.pool_max_idle_per_host(0);
        }
        HttpClient {
            inner: builder.build(connector),
            version: if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            },
        }
    }

    /// The HTTP version this client speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sends `req` and returns the response head with its body unread.
    ///
    /// # Errors
    ///
    /// When the connection or the exchange fails.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }

    /// Sends `req` and reads the whole response.
    ///
    /// # Panics
    ///
    /// When the exchange fails: the router must answer every request.
    pub async fn fetch(&self, req: Request<Body>) -> Collected {
        let what = format!("{} {}", req.method(), req.uri());
        let resp = self
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"));
        collect(resp)
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the response failed: {e:?}"))
    }

    /// `GET http://addr{path}` with `x-routing-key: key` when given, read to the end.
    ///
    /// # Panics
    ///
    /// When the exchange fails.
    pub async fn get(&self, addr: SocketAddr, path: &str, key: Option<&str>) -> Collected {
        let mut req = request(Method::GET, addr, path);
        if let Some(key) = key {
            req = req.header(ROUTING_KEY, key);
        }
        self.fetch(req.body(empty()).expect("a valid request"))
            .await
    }
}

// === impl Collected ===

impl Collected {
    /// The body as UTF-8 text.
    ///
    /// # Panics
    ///
    /// When the body is not UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("a UTF-8 body")
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    ///
    /// When the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}); status {}, body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header of the head, or failing that of the trailers, as a string.
    pub fn header_or_trailer(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .or_else(|| self.trailers.as_ref().and_then(|t| t.get(name)))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// A response header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Reads a response to its end, keeping trailers.
///
/// # Errors
///
/// When reading the body fails.
pub async fn collect(resp: Response<Incoming>) -> Result<Collected, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Collected {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// A request builder for `http://addr{path}` (the client sends origin-form on HTTP/1.1).
pub fn request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A body of one data frame.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A body fed by the returned sender, one data frame per `Bytes`; it ends when the sender is
/// dropped. `capacity` bounds the frames buffered ahead of the connection.
pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(capacity);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|data| (Ok::<_, BoxError>(Frame::data(data)), rx))
    });
    (tx, StreamBody::new(frames).boxed())
}

/// The first `len` bytes of [`crate::pattern`], produced lazily in 64 KiB frames.
pub fn pattern_body(len: u64) -> Body {
    let frames = futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= len {
            return None;
        }
        let n = (len - offset).min(pattern::CHUNK as u64) as usize;
        let frame = Frame::data(pattern::bytes_at(offset, n));
        Some((Ok::<_, BoxError>(frame), offset + n as u64))
    });
    StreamBody::new(frames).boxed()
}
