//! TLS to model servers (DESIGN §11 `tls`): the material of a cluster, loaded once per
//! table build, and the handshake of a new upstream connection.
//!
//! A table build loads every cluster's CA, client certificate and key
//! ([`load_clusters`]); a file that cannot be loaded refuses the whole rule set with an
//! issue naming the cluster and the file, so the table in force stays. Each endpoint's pool
//! then gets an [`UpstreamTls`]: the rustls configurations of its cluster and the server
//! name its certificate must be valid for. Only a new connection reads it; a pooled one
//! has already done its handshake, so nothing here runs per request.
//!
//! ALPN follows the protocol of the connection being opened: `http/1.1` for HTTP/1.1
//! (and always for an upgrade), `h2` for HTTP/2. An `auto` cluster offers both and speaks
//! the one the endpoint picks.
//!
//! A handshake that fails (an untrusted or mismatched certificate, a refused client
//! certificate, no common protocol) is a [`SendError::Tls`](super::SendError::Tls), logged
//! at `warn` with the cluster, the endpoint and rustls's reason (at most once a second per
//! endpoint; the others at `debug`). With TLS 1.3 a server that refuses the client
//! certificate (or its absence) says so only after the handshake, in an alert the first
//! read finds, or by closing the connection (when its reset overtakes the alert):
//! [`Handshaken::refusal`] tells that apart from other failures of a first exchange, from
//! the alert or from the endpoint having asked for a certificate in that handshake.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::uri::Authority;
use models_config::{ConfigError, Issue, ValidRuleSet, ValidTls, ValidationErrors};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ProtocolVersion, SignatureScheme};
use service_runtime::tls::TlsError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// ALPN id of HTTP/1.1.
const HTTP1: &[u8] = b"http/1.1";
/// ALPN id of HTTP/2 over TLS.
const H2: &[u8] = b"h2";
/// Shortest time between two `warn` lines about one endpoint's TLS failures.
const WARN_EVERY_MS: u64 = 1_000;

thread_local! {
    /// The flag of the handshake being polled on this thread, set by [`UpstreamTls::handshake`]
    /// around each poll and raised by [`NotesRequest`] when the server asks for a client
    /// certificate (rustls resolves it synchronously, inside that poll).
    static POLLED: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// The TLS material of one cluster, loaded from its files for one table build.
pub struct ClusterTls {
    /// The cluster (logs).
    name: Arc<str>,
    spec: ValidTls,
    /// The same roots and client certificate, offering `http/1.1`, `h2`, or both.
    http1: TlsConnector,
    http2: TlsConnector,
    either: TlsConnector,
    /// The server name of each endpoint, in endpoint order.
    server_names: Vec<ServerName<'static>>,
}

/// TLS to one endpoint, as its pool dials it.
pub struct UpstreamTls {
    /// The cluster that configured it (logs; clusters sharing an endpoint have the same
    /// `tls` block, validated).
    cluster: Arc<str>,
    /// The endpoint (logs).
    endpoint: Arc<str>,
    /// What pooled connections were verified against: a change makes them unusable.
    trust: Trust,
    server_name: ServerName<'static>,
    http1: TlsConnector,
    http2: TlsConnector,
    either: TlsConnector,
    /// Whether a cluster reaching the endpoint is `auto`: every connection offers both
    /// protocols, and the endpoint's pick decides.
    auto: bool,
    /// The endpoint as an authority, for a request sent in the other version than the
    /// client's (`auto`).
    pub(crate) authority: Authority,
    /// Unix milliseconds of the last `warn` line about this endpoint.
    warned_at_ms: AtomicU64,
}

/// The files and name a connection's handshake was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trust {
    ca_file: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Arc<str>,
}

/// The protocols a new connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    Http2,
    /// Both, `h2` preferred.
    Either,
}

/// A connection whose handshake succeeded.
#[derive(Debug)]
pub struct Established {
    /// The encrypted stream.
    pub io: TlsIo,
    /// Whether the endpoint picked `h2` (`Some(true)`) or `http/1.1` (`Some(false)`);
    /// `None` when it answered without ALPN.
    pub h2: Option<bool>,
    /// What tells a refused client certificate apart from other failures later.
    pub handshaken: Handshaken,
}

/// The TLS side of a fresh connection, kept while its first request is sent.
#[derive(Debug, Clone)]
pub struct Handshaken {
    settings: Arc<UpstreamTls>,
    failure: Arc<OnceLock<rustls::Error>>,
    /// TLS 1.3, and the endpoint asked for a client certificate: its verdict comes after
    /// the handshake.
    verdict_pending: bool,
}

/// The cluster's client certificate resolver, noting that the server asked.
#[derive(Debug)]
struct NotesRequest(Arc<dyn ResolvesClientCert>);

impl ResolvesClientCert for NotesRequest {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        POLLED.with(|polled| {
            if let Some(asked) = &*polled.borrow() {
                asked.store(true, Ordering::Relaxed);
            }
        });
        self.0.resolve(root_hint_subjects, sigschemes)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }

    fn has_certs(&self) -> bool {
        self.0.has_certs()
    }
}

/// A client TLS stream that remembers the first TLS error it read (an alert from the
/// server, say), for [`Handshaken::refusal`].
#[derive(Debug)]
pub struct TlsIo {
    inner: TlsStream<TcpStream>,
    failure: Arc<OnceLock<rustls::Error>>,
}

// === impl ClusterTls ===

impl ClusterTls {
    /// Loads the CA (and client certificate and key) of cluster `name`.
    ///
    /// # Errors
    ///
    /// An issue at the offending field (`ca_file`, `cert_file`, `key_file`, or the `tls`
    /// block when a key does not match its certificate) naming the cluster and the file.
    pub fn load(name: &str, spec: &ValidTls) -> Result<Self, Issue> {
        let at = |field: &str| {
            let quoted = serde_json::to_string(name).unwrap_or_default();
            if field.is_empty() {
                format!("$.clusters[{quoted}].tls")
            } else {
                format!("$.clusters[{quoted}].tls.{field}")
            }
        };
        let identity = spec
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let base =
            service_runtime::tls::client_config(&spec.ca_file, identity, &[]).map_err(|e| {
                let field = match &e {
                    TlsError::File {
                        what: "CA file", ..
                    } => "ca_file",
                    TlsError::File {
                        what: "certificate",
                        ..
                    } => "cert_file",
                    TlsError::File {
                        what: "private key",
                        ..
                    } => "key_file",
                    TlsError::Rustls { context, .. } if context.starts_with("CA file") => "ca_file",
                    _ => "",
                };
                Issue::new(
                    at(field),
                    format!("cluster {name:?} cannot use its tls files: {e}"),
                )
            })?;
        let resolver: Arc<dyn ResolvesClientCert> =
            Arc::new(NotesRequest(Arc::clone(&base.client_auth_cert_resolver)));
        let offering = |alpn: &[&[u8]]| {
            let mut config = ClientConfig::clone(&base);
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            config.client_auth_cert_resolver = Arc::clone(&resolver);
            TlsConnector::from(Arc::new(config))
        };
        let mut server_names = Vec::with_capacity(spec.server_names.len());
        for name_text in &spec.server_names {
            match ServerName::try_from(name_text.to_string()) {
                Ok(server_name) => server_names.push(server_name),
                // Validation checked the name, so this does not happen; reported all the same.
                Err(e) => {
                    return Err(Issue::new(
                        at("server_name"),
                        format!("invalid server_name {name_text:?}: {e}"),
                    ));
                }
            }
        }
        Ok(ClusterTls {
            name: Arc::from(name),
            spec: spec.clone(),
            http1: offering(&[HTTP1]),
            http2: offering(&[H2]),
            either: offering(&[H2, HTTP1]),
            server_names,
        })
    }

    /// The settings of endpoint `index` (`auto`: some cluster reaching it is `auto`).
    pub fn endpoint(
        &self,
        index: usize,
        endpoint: &Arc<str>,
        authority: &Authority,
        auto: bool,
    ) -> Arc<UpstreamTls> {
        Arc::new(UpstreamTls {
            cluster: Arc::clone(&self.name),
            endpoint: Arc::clone(endpoint),
            trust: Trust {
                ca_file: self.spec.ca_file.clone(),
                identity: self.spec.identity.clone(),
                server_name: Arc::clone(&self.spec.server_names[index]),
            },
            server_name: self.server_names[index].clone(),
            http1: self.http1.clone(),
            http2: self.http2.clone(),
            either: self.either.clone(),
            auto,
            authority: authority.clone(),
            warned_at_ms: AtomicU64::new(0),
        })
    }
}

/// Loads the TLS material of every cluster with a `tls` block, by cluster name.
///
/// # Errors
///
/// [`ConfigError::Invalid`] with one issue per cluster whose files cannot be loaded.
pub fn load_clusters(rule_set: &ValidRuleSet) -> Result<BTreeMap<String, ClusterTls>, ConfigError> {
    let mut loaded = BTreeMap::new();
    let mut issues = Vec::new();
    for name in rule_set.clusters.keys() {
        let Some(spec) = rule_set.cluster(name).and_then(|c| c.tls.as_ref()) else {
            continue;
        };
        match ClusterTls::load(name, spec) {
            Ok(tls) => {
                loaded.insert(name.clone(), tls);
            }
            Err(issue) => issues.push(issue),
        }
    }
    if issues.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigError::Invalid(ValidationErrors(issues)))
    }
}

// === impl UpstreamTls ===

impl UpstreamTls {
    /// Whether connections verified with `other` may stay pooled under `self`: the same
    /// CA file, client certificate and server name (the files' contents may have been
    /// re-read; they are used from the next connection on).
    pub fn same_trust(&self, other: &UpstreamTls) -> bool {
        self.trust == other.trust
    }

    /// Whether a cluster reaching the endpoint is `auto`.
    pub fn is_auto(&self) -> bool {
        self.auto
    }

    /// The cluster that configured it.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Runs the handshake on `tcp`, offering `alpn`.
    ///
    /// # Errors
    ///
    /// rustls's reason (or the I/O error that cut the handshake short).
    pub async fn handshake(
        self: &Arc<Self>,
        tcp: TcpStream,
        alpn: Alpn,
    ) -> io::Result<Established> {
        let connector = match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::Http2 => &self.http2,
            Alpn::Either => &self.either,
        };
        let asked = Arc::new(AtomicBool::new(false));
        let mut connect = std::pin::pin!(connector.connect(self.server_name.clone(), tcp));
        let inner = std::future::poll_fn(|cx| {
            POLLED.with(|polled| *polled.borrow_mut() = Some(Arc::clone(&asked)));
            let polled = connect.as_mut().poll(cx);
            POLLED.with(|polled| *polled.borrow_mut() = None);
            polled
        })
        .await?;
        let session = inner.get_ref().1;
        let h2 = session.alpn_protocol().map(|protocol| protocol == H2);
        let verdict_pending = asked.load(Ordering::Relaxed)
            && session.protocol_version() == Some(ProtocolVersion::TLSv1_3);
        let failure = Arc::new(OnceLock::new());
        Ok(Established {
            io: TlsIo {
                inner,
                failure: Arc::clone(&failure),
            },
            h2,
            handshaken: Handshaken {
                settings: Arc::clone(self),
                failure,
                verdict_pending,
            },
        })
    }

    /// Logs a TLS failure of this endpoint: at `warn` with the cluster, the endpoint and
    /// the reason, at most once every [`WARN_EVERY_MS`]; the others at `debug`.
    pub fn report(&self, reason: &dyn fmt::Display) {
        let now = crate::outlier::unix_ms();
        let last = self.warned_at_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .warned_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due {
            tracing::warn!(
                cluster = %self.cluster,
                endpoint = %self.endpoint,
                server_name = %self.trust.server_name,
                reason = %reason,
                "upstream TLS failed; answering 502 upstream_tls_failed"
            );
        } else {
            tracing::debug!(cluster = %self.cluster, endpoint = %self.endpoint, reason = %reason, "upstream TLS failed");
        }
    }
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configurations hold the client key: never printed.
        f.debug_struct("ClusterTls")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configurations hold the client key: never printed.
        f.debug_struct("UpstreamTls")
            .field("cluster", &self.cluster)
            .field("endpoint", &self.endpoint)
            .field("trust", &self.trust)
            .field("auto", &self.auto)
            .finish_non_exhaustive()
    }
}

// === impl Handshaken ===

impl Handshaken {
    /// Why the first exchange of the connection failed, when TLS is the reason: the TLS
    /// error it read after the handshake (a TLS 1.3 server refusing the client
    /// certificate, typically), or, when the endpoint asked for a client certificate in a
    /// TLS 1.3 handshake, the connection closing before any answer. Logged. `None` when
    /// the failure was something else.
    pub fn refusal(&self) -> Option<io::Error> {
        let error = match self.failure.get() {
            Some(error) => io::Error::new(io::ErrorKind::InvalidData, error.clone()),
            None if self.verdict_pending => io::Error::new(
                io::ErrorKind::ConnectionReset,
                if self.settings.trust.identity.is_some() {
                    "the endpoint asked for a client certificate, then closed the connection without an answer: it refused the certificate"
                } else {
                    "the endpoint asked for a client certificate, then closed the connection without an answer: the cluster has no cert_file"
                },
            ),
            None => return None,
        };
        self.settings.report(&error);
        Some(error)
    }

    /// The settings the handshake used.
    pub fn settings(&self) -> &Arc<UpstreamTls> {
        &self.settings
    }
}

// === impl TlsIo ===

impl TlsIo {
    fn note(&self, result: &io::Result<()>) {
        if let Err(e) = result
            && let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            let _first_one_kept = self.failure.set(tls.clone());
        }
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(result) = &polled {
            self.note(result);
        }
        polled
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate (usable as a CA file) and its key, in `dir`.
    fn write_pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn rules(tls: serde_json::Value) -> ValidRuleSet {
        let json = serde_json::json!({
            "clusters": {
                "plain": { "endpoints": ["127.0.0.1:1"] },
                "secure": { "endpoints": ["127.0.0.1:2", "localhost:3"], "tls": tls }
            },
            "routes": { "k": { "cluster": "secure" } }
        });
        models_config::parse(&json.to_string()).expect("valid rule set")
    }

    fn issues(rule_set: &ValidRuleSet) -> Vec<Issue> {
        load_clusters(rule_set)
            .expect_err("the files do not load")
            .issues()
    }

    #[test]
    fn a_missing_file_is_an_issue_naming_the_cluster_and_the_file() {
        let found = issues(&rules(
            serde_json::json!({ "ca_file": "/nonexistent/ca.pem" }),
        ));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, r#"$.clusters["secure"].tls.ca_file"#);
        let message = &found[0].message;
        assert!(
            message.contains(r#"cluster "secure""#) && message.contains("/nonexistent/ca.pem"),
            "{message}"
        );

        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = write_pair(dir.path(), "ca");
        let found = issues(&rules(serde_json::json!({
            "ca_file": ca, "cert_file": "/nonexistent/client.pem", "key_file": "/nonexistent/client.key"
        })));
        assert_eq!(found[0].path, r#"$.clusters["secure"].tls.cert_file"#);
        assert!(
            found[0].message.contains("/nonexistent/client.pem"),
            "{found:?}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_an_issue_on_the_tls_block() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = write_pair(dir.path(), "ca");
        let (cert, _) = write_pair(dir.path(), "client");
        let (_, other_key) = write_pair(dir.path(), "other");
        let found = issues(&rules(serde_json::json!({
            "ca_file": ca, "cert_file": cert, "key_file": other_key
        })));
        assert_eq!(found[0].path, r#"$.clusters["secure"].tls"#);
        assert!(found[0].message.contains("client.pem"), "{found:?}");
    }

    #[test]
    fn each_endpoint_gets_its_server_name_and_trust_follows_files_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = write_pair(dir.path(), "ca");
        let loaded =
            load_clusters(&rules(serde_json::json!({ "ca_file": ca }))).expect("the CA file loads");
        assert_eq!(
            loaded.keys().collect::<Vec<_>>(),
            ["secure"],
            "only TLS clusters"
        );
        let secure = &loaded["secure"];
        assert_eq!(
            secure.server_names,
            [
                ServerName::try_from("127.0.0.1").unwrap(),
                ServerName::try_from("localhost").unwrap()
            ]
        );
        let endpoint = |i: usize, address: &str, auto: bool| {
            secure.endpoint(i, &Arc::from(address), &address.parse().unwrap(), auto)
        };
        let first = endpoint(0, "127.0.0.1:2", false);
        assert!(!first.is_auto());
        assert_eq!(first.cluster(), "secure");
        // Loaded again (new material, same files and name): the same trust.
        let again = load_clusters(&rules(serde_json::json!({ "ca_file": ca }))).unwrap();
        let reloaded = again["secure"].endpoint(
            0,
            &Arc::from("127.0.0.1:2"),
            &"127.0.0.1:2".parse().unwrap(),
            true,
        );
        assert!(first.same_trust(&reloaded));
        assert!(!first.same_trust(&endpoint(1, "localhost:3", false)));
        let named = load_clusters(&rules(
            serde_json::json!({ "ca_file": ca, "server_name": "model.internal" }),
        ))
        .unwrap();
        let renamed = named["secure"].endpoint(
            0,
            &Arc::from("127.0.0.1:2"),
            &"127.0.0.1:2".parse().unwrap(),
            false,
        );
        assert!(!first.same_trust(&renamed));
        assert!(
            !format!("{first:?}").contains("PRIVATE"),
            "no key material in Debug"
        );

        // A pool lets go of its connections only when the trust changes.
        let pool =
            crate::upstream::Pool::new(Arc::from("127.0.0.1:2"), "127.0.0.1:2".parse().ok(), 2);
        pool.set_tls(None);
        assert_eq!(pool.tls_epoch(), 0, "plaintext stays plaintext");
        pool.set_tls(Some(Arc::clone(&first)));
        assert_eq!(pool.tls_epoch(), 1);
        pool.set_tls(Some(reloaded));
        assert_eq!(pool.tls_epoch(), 1, "new material, same trust");
        assert!(
            pool.tls().is_some_and(|t| t.is_auto()),
            "the new settings are in force"
        );
        pool.set_tls(Some(renamed));
        assert_eq!(pool.tls_epoch(), 2);
        pool.set_tls(None);
        pool.set_tls(None);
        assert_eq!(pool.tls_epoch(), 3);
        assert!(pool.tls().is_none());
    }
}
