//! Runs the real `lightbulb` binary for a test.
//!
//! [`LightbulbProcess::start`] writes the rule set into a temp dir, spawns
//! `lightbulb --config FILE --grpc 127.0.0.1:0 --http 127.0.0.1:0 --workers 2
//! --watch-interval-ms 50` and waits (up to [`crate::DEADLINE`]) for the stdout line
//! `lightbulb listening grpc=ADDR http=ADDR`. Its stdout and stderr are kept and printed when
//! a test fails; dropping the value kills the process and waits for it.
//!
//! The binary is `$LIGHTBULB_BIN` when set, otherwise `lightbulb` next to the test binary's
//! `deps/` folder (`target/<profile>/lightbulb`): build it with `cargo build -p lightbulb`.
//!
//! With TLS (`--tls-cert`, see [`LightbulbProcess::start_tls`]), gRPC clients connect
//! through a [`TlsConnector`] ([`LightbulbProcess::tls_channel`]), which makes the TLS
//! handshake itself with a rustls client configuration (e.g. [`crate::pki::Pki::client_config`])
//! and counts the connections it opens.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, header};
use hyper_util::rt::TokioIo;
use routing_proto::lightbulb::v1::resolver_client::ResolverClient;
use routing_proto::lightbulb::v1::routing_config_client::RoutingConfigClient;
use routing_proto::lightbulb::v1::{RoutingSnapshot, WatchRequest};
use rustls::pki_types::ServerName;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::client::{self, Collected, HttpClient};
use crate::pki::CertFiles;
pub use crate::process::FailedStart;
use crate::process::{
    Service, ServiceProcess, metric_value, rule_set_text, temp_config, write_text_atomically,
};
use crate::{DEADLINE, wait_until, within};

/// How to run the `lightbulb` binary.
const SERVICE: Service = Service {
    name: "lightbulb",
    label: "lightbulb",
    env_override: "LIGHTBULB_BIN",
    listen_args: ["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"],
    listening: "lightbulb listening",
    addr_keys: ["grpc", "http"],
};

/// A running `lightbulb` process. Dropping it kills the process.
#[derive(Debug)]
pub struct LightbulbProcess {
    /// Where the gRPC server listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The rule-set file Lightbulb watches.
    pub config_path: PathBuf,
    process: ServiceProcess,
    http: HttpClient,
    _dir: TempDir,
}

// === impl LightbulbProcess ===

impl LightbulbProcess {
    /// Starts Lightbulb on `rule_set` with the default test flags.
    ///
    /// # Panics
    ///
    /// When the binary is missing, or Lightbulb exits or stays silent past the deadline
    /// instead of printing its listening line (the panic message carries its stderr).
    pub async fn start(rule_set: &serde_json::Value) -> LightbulbProcess {
        Self::start_with_args(rule_set, &[]).await
    }

    /// [`LightbulbProcess::start`] with extra command-line arguments appended.
    ///
    /// # Panics
    ///
    /// As [`LightbulbProcess::start`].
    pub async fn start_with_args(rule_set: &serde_json::Value, extra: &[&str]) -> LightbulbProcess {
        let started = SERVICE.start(&rule_set_text(rule_set), extra).await;
        let (grpc_addr, http_addr) = started.addrs;
        LightbulbProcess {
            grpc_addr,
            http_addr,
            config_path: started.config_path,
            process: started.process,
            http: HttpClient::http1(),
            _dir: started.dir,
        }
    }

    /// [`LightbulbProcess::start_with_args`] with `--tls-cert` and `--tls-key` of `cert`
    /// first: TLS on both ports, plaintext too unless `extra` has `--tls-only`. The helpers
    /// that speak plaintext ([`LightbulbProcess::http_get`], [`LightbulbProcess::channel`])
    /// then work only without `--tls-only`.
    ///
    /// # Panics
    ///
    /// As [`LightbulbProcess::start`].
    pub async fn start_tls(
        rule_set: &serde_json::Value,
        cert: &CertFiles,
        extra: &[&str],
    ) -> LightbulbProcess {
        let (cert, key) = (
            cert.cert.display().to_string(),
            cert.key.display().to_string(),
        );
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        Self::start_with_args(rule_set, &args).await
    }

    /// [`LightbulbProcess::start_with_args`] with environment variables set for the process
    /// (e.g. `RUST_LOG=debug`, which replaces the default: the test run's `RUST_LOG`, else
    /// `info`).
    ///
    /// # Panics
    ///
    /// As [`LightbulbProcess::start`].
    pub async fn start_with_env(
        rule_set: &serde_json::Value,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> LightbulbProcess {
        let (dir, config_path) = temp_config(&rule_set_text(rule_set));
        let mut cmd = Command::new(SERVICE.bin());
        cmd.arg("--config")
            .arg(&config_path)
            .args(SERVICE.listen_args)
            .args(["--workers", "2", "--watch-interval-ms", "50"])
            .args(extra)
            .env_remove("LIGHTBULB_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().copied());
        let (mut process, mut lines) = ServiceProcess::spawn(SERVICE.name, SERVICE.label, cmd);
        let (grpc_addr, http_addr) = process
            .wait_for_listening(&mut lines, "lightbulb listening grpc=.. http=..", |line| {
                SERVICE.parse_listening_line(line)
            })
            .await;
        LightbulbProcess {
            grpc_addr,
            http_addr,
            config_path,
            process,
            http: HttpClient::http1(),
            _dir: dir,
        }
    }

    /// Runs Lightbulb on a rule-set file holding `text`, expecting it to refuse to start:
    /// waits for it to exit.
    ///
    /// # Panics
    ///
    /// When Lightbulb starts listening instead, or does not exit within the deadline.
    pub async fn start_expecting_failure(text: &str) -> FailedStart {
        SERVICE.start_expecting_failure(text).await
    }

    /// [`LightbulbProcess::start_expecting_failure`] with extra command-line arguments.
    ///
    /// # Panics
    ///
    /// As [`LightbulbProcess::start_expecting_failure`].
    pub async fn start_expecting_failure_with_args(text: &str, extra: &[&str]) -> FailedStart {
        SERVICE.start_expecting_failure_with_args(text, extra).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://GRPC_ADDR`, the URI gRPC clients connect to.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// A connected gRPC channel to Lightbulb.
    ///
    /// # Panics
    ///
    /// When no connection is made within the deadline.
    pub async fn channel(&self) -> Channel {
        let endpoint =
            tonic::transport::Endpoint::from_shared(self.grpc_url()).expect("a valid URI");
        crate::within(
            "connecting to lightbulb's gRPC port",
            DEADLINE,
            endpoint.connect(),
        )
        .await
        .expect("connect to lightbulb over gRPC")
    }

    /// `https://GRPC_ADDR`, the URI a router's `--control-plane` names for a TLS Lightbulb.
    pub fn grpc_tls_url(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// A gRPC channel to Lightbulb over TLS, through `connector` (which counts the
    /// connections it opens: a channel keeps using its one connection while it works).
    ///
    /// # Panics
    ///
    /// When no connection is made within the deadline (a failed handshake included).
    pub async fn tls_channel(&self, connector: TlsConnector) -> Channel {
        within(
            "connecting to lightbulb's gRPC port over TLS",
            DEADLINE,
            self.try_tls_channel(connector),
        )
        .await
        .expect("connect to lightbulb over gRPC with TLS")
    }

    /// [`LightbulbProcess::tls_channel`] that returns the failure (a refused handshake)
    /// instead of panicking.
    ///
    /// # Errors
    ///
    /// When the connection or the handshake fails.
    pub async fn try_tls_channel(
        &self,
        connector: TlsConnector,
    ) -> Result<Channel, tonic::transport::Error> {
        // `http://`: the connector makes the TLS handshake, so tonic must not try to.
        tonic::transport::Endpoint::from_shared(self.grpc_url())
            .expect("a valid URI")
            .connect_with_connector(connector)
            .await
    }

    /// A `lightbulb.v1.Resolver` client on a new connection.
    pub async fn resolver(&self) -> ResolverClient<Channel> {
        ResolverClient::new(self.channel().await)
    }

    /// A `lightbulb.v1.RoutingConfig` client on a new connection.
    pub async fn routing_config(&self) -> RoutingConfigClient<Channel> {
        RoutingConfigClient::new(self.channel().await)
    }

    /// Opens a `RoutingConfig.Watch` stream on a new connection, as a router named
    /// `test-router` would.
    ///
    /// # Panics
    ///
    /// When the call fails.
    pub async fn watch_snapshots(&self) -> Streaming<RoutingSnapshot> {
        self.routing_config()
            .await
            .watch(WatchRequest {
                node_id: "test-router".to_owned(),
            })
            .await
            .expect("a Watch stream")
            .into_inner()
    }

    /// A `grpc.health.v1.Health` client on a new connection.
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// Replaces the watched rule-set file atomically (write a temp file, then rename), so
    /// Lightbulb never reads half a file.
    pub fn rewrite_config(&self, rule_set: &serde_json::Value) {
        write_text_atomically(&self.config_path, &rule_set_text(rule_set));
    }

    /// Replaces the watched rule-set file with arbitrary text (e.g. broken JSON).
    pub fn rewrite_config_text(&self, text: &str) {
        write_text_atomically(&self.config_path, text);
    }

    /// `GET` on the HTTP API, read to the end.
    pub async fn http_get(&self, path: &str) -> Collected {
        let req = client::request(Method::GET, self.http_addr, path)
            .body(client::empty())
            .expect("a valid request");
        self.http.fetch(req).await
    }

    /// Sends `req` (built with [`client::request`] on [`LightbulbProcess::http_addr`]) to the
    /// HTTP API and reads the answer to the end.
    pub async fn http_send(&self, req: http::Request<client::Body>) -> Collected {
        self.http.fetch(req).await
    }

    /// `POST` of a JSON body on the HTTP API, read to the end.
    pub async fn http_post_json(&self, path: &str, body: &serde_json::Value) -> Collected {
        self.http_post(path, body.to_string()).await
    }

    /// `POST` of raw bytes (sent as JSON) on the HTTP API, read to the end.
    pub async fn http_post(&self, path: &str, body: impl Into<bytes::Bytes>) -> Collected {
        let req = client::request(Method::POST, self.http_addr, path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(client::full(body))
            .expect("a valid request");
        self.http.fetch(req).await
    }

    /// The Prometheus text of `GET /metrics`.
    ///
    /// # Panics
    ///
    /// When the status is not 200.
    pub async fn metrics_text(&self) -> String {
        let resp = self.http_get("/metrics").await;
        assert_eq!(resp.status, 200, "GET /metrics");
        resp.text()
    }

    /// The sum of the samples of `name` whose labels include all of `labels` (0 when none
    /// match).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics_text().await, name, labels).unwrap_or(0.0)
    }

    /// Waits until the sum of the samples of `name` matching `labels` satisfies `ok`.
    ///
    /// # Panics
    ///
    /// At the deadline.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) {
        wait_until(
            &format!("{name}{labels:?} reaches the expected value"),
            DEADLINE,
            || async { ok(self.metric(name, labels).await) },
        )
        .await;
    }

    /// Sends SIGTERM (through `kill -TERM PID`).
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails.
    pub fn sigterm(&self) {
        self.process.sigterm();
    }

    /// Sends SIGKILL (through `kill -KILL PID`), e.g. to crash it in the middle of a write.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails.
    pub fn sigkill(&self) {
        self.process.sigkill();
    }

    /// Waits for the process to exit (and for its output to be complete).
    ///
    /// # Panics
    ///
    /// When it is still running after `deadline`.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> ExitStatus {
        self.process.wait_for_exit(deadline).await
    }

    /// Everything Lightbulb printed so far (stdout, then stderr).
    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// A tonic connector that opens TCP to the endpoint's address and makes the TLS handshake
/// with its rustls configuration, for the server name `localhost`; clones share the count
/// of connections opened.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    connections: Arc<AtomicUsize>,
}

// === impl TlsConnector ===

impl TlsConnector {
    /// A connector using `config` (offer ALPN `h2`: tonic speaks HTTP/2).
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            config,
            server_name: ServerName::try_from("localhost").expect("a valid server name"),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// TCP connections opened so far (handshake or not).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .expect("an endpoint with host:port")
                .as_str();
            let tcp = TcpStream::connect(authority).await?;
            this.connections.fetch_add(1, Ordering::SeqCst);
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

// === helpers ===

/// Locates the lightbulb binary.
///
/// # Panics
///
/// When it does not exist.
pub fn lightbulb_bin() -> PathBuf {
    SERVICE.bin()
}

/// The next message of a gRPC stream, within the deadline.
///
/// # Panics
///
/// When the stream fails, ends, or stays silent past the deadline.
pub async fn next_message<T>(what: &str, stream: &mut Streaming<T>) -> T {
    within(what, DEADLINE, stream.message())
        .await
        .unwrap_or_else(|status| panic!("{what}: the stream failed: {status:?}"))
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_is_parsed_wherever_it_appears() {
        assert_eq!(
            SERVICE.parse_listening_line("lightbulb listening grpc=127.0.0.1:1 http=127.0.0.1:2"),
            Some((
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ))
        );
        assert_eq!(SERVICE.parse_listening_line("lightbulb starting"), None);
        assert_eq!(
            SERVICE.parse_listening_line("router listening proxy=127.0.0.1:1 admin=127.0.0.1:2"),
            None
        );
    }
}
