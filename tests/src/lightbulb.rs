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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use http::{Method, header};
use routing_proto::lightbulb::v1::resolver_client::ResolverClient;
use routing_proto::lightbulb::v1::routing_config_client::RoutingConfigClient;
use routing_proto::lightbulb::v1::{RoutingSnapshot, WatchRequest};
use tempfile::TempDir;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::client::{self, Collected, HttpClient};
pub use crate::process::FailedStart;
use crate::process::{Service, ServiceProcess, metric_value, rule_set_text, write_text_atomically};
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
