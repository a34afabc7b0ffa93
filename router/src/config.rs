//! Process configuration: command-line flags (every one documented in `--help`).
//!
//! Routing configuration (clusters, routes) is not here: it comes from one source, a
//! rule-set file (`--config`) or Lightbulb's Watch stream (`--control-plane`), and can change
//! while the router runs.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};

pub use service_runtime::telemetry::LogFormat;

fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

/// The router's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "router",
    version,
    about = "Routes inference requests to model clusters by the x-routing-key header, streaming bodies untouched",
    group(ArgGroup::new("source").required(true).args(["config", "control_plane"]))
)]
pub struct Config {
    /// Rule-set file (JSON); watched, and reloaded when it changes. Exactly one of --config
    /// and --control-plane is required.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Lightbulb gRPC addresses (`http://HOST:PORT`, comma-separated) whose Watch stream the
    /// routes follow. One is followed at a time; on an error or a disconnect the next one is
    /// tried. Every snapshot received is validated, applied whole and kept in --snapshot-dir.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub control_plane: Vec<String>,

    /// With --control-plane: the directory holding the last applied snapshot
    /// (`snapshot.json`, written atomically). At startup the router serves it at once, so it
    /// restarts without the control plane; without one it is not ready until the first
    /// snapshot arrives. Created when missing.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SNAPSHOT_DIR)]
    pub snapshot_dir: PathBuf,

    /// With --control-plane: the first reconnect delay, in milliseconds; it doubles after
    /// every failed attempt (with jitter) up to --control-plane-backoff-max-ms, and is reset
    /// once a snapshot is received.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub control_plane_backoff_initial_ms: u64,

    /// With --control-plane: the longest reconnect delay, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub control_plane_backoff_max_ms: u64,

    /// With --control-plane: time allowed to open a connection to one Lightbulb, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    pub control_plane_connect_timeout_ms: u64,

    /// With --control-plane: HTTP/2 keepalive ping interval on the Watch connection, in
    /// milliseconds; a peer that does not answer a ping within the same time is dropped
    /// (and the next URL tried).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub control_plane_keepalive_ms: u64,

    /// With --control-plane: how long a snapshot older than the routes in force is held back,
    /// in milliseconds. A Lightbulb replica that is behind (after a fail-over) sends a newer
    /// one as soon as it catches up, which replaces it; one that keeps offering the older
    /// version (its store was reset) gets it applied when this time has passed.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    pub control_plane_stale_grace_ms: u64,

    /// With an `https://` --control-plane URL: the CA file (PEM) that Lightbulb's certificate
    /// must chain to. Required for `https://` URLs; read again at every connection attempt.
    #[arg(long, value_name = "FILE")]
    pub control_plane_ca: Option<PathBuf>,

    /// With --control-plane-ca: a client certificate (PEM) to present to Lightbulb (mTLS);
    /// needs --control-plane-key.
    #[arg(long, value_name = "FILE")]
    pub control_plane_cert: Option<PathBuf>,

    /// The private key (PEM) of --control-plane-cert.
    #[arg(long, value_name = "FILE")]
    pub control_plane_key: Option<PathBuf>,

    /// With --control-plane: the name sent in the Watch request, shown in Lightbulb's logs
    /// [default: HOSTNAME-PID].
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,

    /// Address the proxy listens on, for HTTP/1.1 and h2c.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of the admin API (health, metrics, config). Keep it on loopback unless a
    /// token is set.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,

    /// Proxy worker threads, each with its own event loop and connection pools
    /// [default: one per core].
    #[arg(long, value_name = "N")]
    pub workers: Option<NonZeroUsize>,

    /// Header that carries the routing key.
    #[arg(long, value_name = "NAME", default_value = "x-routing-key")]
    pub routing_header: String,

    /// JWKS file (JSON Web Key Set) whose keys verify `Authorization: Bearer` tokens; every
    /// proxied request then needs a valid one (RS256, ES256 or EdDSA), else 401. Re-read
    /// when it changes. Requires --jwt-issuer and --jwt-audience.
    #[arg(long, value_name = "FILE")]
    pub jwt_jwks: Option<PathBuf>,

    /// With --jwt-jwks: the `iss` every token must carry.
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// With --jwt-jwks: the audience every token's `aud` must contain.
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// With --jwt-jwks: set request header HEADER to the token's claim CLAIM (removing any
    /// value the client sent), e.g. `sub=x-forwarded-user`, `tenant=x-tenant-id`. Repeatable.
    #[arg(long, value_name = "CLAIM=HEADER")]
    pub jwt_claim_header: Vec<String>,

    /// Header that carries the caller's tenant (routes' `tenants`, the top-level `tenants`
    /// limits).
    #[arg(long, value_name = "NAME", default_value = "x-tenant-id")]
    pub tenant_header: String,

    /// Whether responses carry `x-served-by: cluster=..; endpoint=..; version=..`.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub served_by: bool,

    /// How often the rule-set file is checked for changes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub watch_interval_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// Time a client has to send a complete HTTP/1.1 request head, in milliseconds (and,
    /// once it has, the first chunk of a chunked body: past it, 408 `request_timeout`); 0
    /// disables the limit.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub header_read_timeout_ms: u64,

    /// Most client connections open at once, across all workers. Past it a new connection
    /// is accepted and closed at once (counted in `router_connections_refused_total`).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub max_connections: usize,

    /// A connection with no request in progress and no bytes either way for this long is
    /// closed, in milliseconds; 0 keeps idle connections open.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Largest request head (request line and header fields) in bytes, at least 8192;
    /// past it: 431. For HTTP/2 the limit on the header list.
    #[arg(long, value_name = "BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_request_head_bytes: u32,

    /// Most header fields in a request; past it: 431.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_request_headers: u32,

    /// HTTP/2: most streams a client may have open at once on one connection.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub http2_max_concurrent_streams: u32,

    /// HTTP/2 reset-flood guard: most streams a client may open and reset before the
    /// router takes them up; past it the connection ends with GOAWAY (ENHANCE_YOUR_CALM).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub http2_max_pending_resets: usize,

    /// HTTP/2: most streams the router may reset for a client's protocol errors before
    /// it ends the connection with GOAWAY (ENHANCE_YOUR_CALM).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub http2_max_error_resets: usize,

    /// TLS on the listener: the certificate chain (PEM, leaf first). Re-read when it or
    /// the key changes; connections already open keep theirs.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS on the listener: the private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// With --tls-cert: refuse plain HTTP on --listen (by default the first byte of a
    /// connection tells TLS from plain HTTP/1.1 and h2c, and both are served).
    #[arg(long, requires = "tls_cert")]
    pub tls_only: bool,

    /// With --tls-cert: a second address that serves TLS only.
    #[arg(long, value_name = "ADDR", requires = "tls_cert")]
    pub tls_listen: Option<SocketAddr>,

    /// Emit one access-log line per request (target `access`, level info).
    #[arg(long)]
    pub access_log: bool,

    /// Log line format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// OTLP span export (one span per request).
    #[command(flatten)]
    pub otlp: service_runtime::otlp::OtlpArgs,

    /// File holding the admin API's bearer token (compared in constant time): required by
    /// `PUT /config`, and, when --admin is not a loopback address (the file is required
    /// then), by every endpoint but `/healthz` and `/readyz`. A file others than its owner
    /// can read is accepted with a warning.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Where `--snapshot-dir` points unless set.
pub const DEFAULT_SNAPSHOT_DIR: &str = "/var/lib/router";

/// Where the routing configuration comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A rule-set file, watched.
    File(&'a std::path::Path),
    /// Lightbulb Watch streams, tried in turn.
    ControlPlane(&'a [String]),
}

impl Config {
    /// The routing-config source (clap guarantees exactly one is set).
    pub fn source(&self) -> Source<'_> {
        match &self.config {
            Some(path) => Source::File(path),
            None => Source::ControlPlane(&self.control_plane),
        }
    }

    /// The reconnect backoff bounds (initial, max), the initial at least 1 ms and never above
    /// the max.
    pub fn control_plane_backoff(&self) -> (Duration, Duration) {
        let max = self.control_plane_backoff_max_ms.max(1);
        let initial = self.control_plane_backoff_initial_ms.clamp(1, max);
        (Duration::from_millis(initial), Duration::from_millis(max))
    }

    /// The name sent in Watch requests: `--node-id`, or `HOSTNAME-PID`.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "router".to_string());
        format!("{host}-{}", std::process::id())
    }

    /// Worker threads to run: the flag, or one per available core.
    pub fn worker_count(&self) -> usize {
        service_runtime::worker_count(self.workers)
    }

    /// The file poll interval.
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watch_interval_ms.max(10))
    }

    /// The drain deadline.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The header-read timeout (`None` when `--header-read-timeout-ms` is 0).
    pub fn header_read_timeout(&self) -> Option<Duration> {
        (self.header_read_timeout_ms > 0)
            .then(|| Duration::from_millis(self.header_read_timeout_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::parse_from(["router", "--config", "rules.json"]);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.routing_header, "x-routing-key");
        assert!(c.worker_count() >= 1);
        assert_eq!(c.snapshot_dir, PathBuf::from(DEFAULT_SNAPSHOT_DIR));
        assert!(matches!(c.source(), Source::File(_)));
    }

    #[test]
    fn exactly_one_config_source_is_required() {
        assert!(Config::try_parse_from(["router"]).is_err());
        assert!(
            Config::try_parse_from([
                "router",
                "--config",
                "r.json",
                "--control-plane",
                "http://127.0.0.1:1"
            ])
            .is_err()
        );
        let c = Config::parse_from([
            "router",
            "--control-plane",
            "http://a:1,http://b:2",
            "--snapshot-dir",
            "/tmp/x",
        ]);
        match c.source() {
            Source::ControlPlane(urls) => assert_eq!(urls, ["http://a:1", "http://b:2"]),
            Source::File(_) => panic!("expected the control plane"),
        }
        assert_eq!(c.snapshot_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn backoff_bounds_are_sane() {
        let c = Config::parse_from([
            "router",
            "--control-plane",
            "http://a:1",
            "--control-plane-backoff-initial-ms",
            "5000",
            "--control-plane-backoff-max-ms",
            "200",
        ]);
        assert_eq!(
            c.control_plane_backoff(),
            (Duration::from_millis(200), Duration::from_millis(200))
        );
    }

    #[test]
    fn workers_flag_sets_the_thread_count() {
        let c = Config::parse_from(["router", "--config", "r.json", "--workers", "3"]);
        assert_eq!(c.worker_count(), 3);
        assert!(
            Config::try_parse_from(["router", "--config", "r.json", "--workers", "0"]).is_err()
        );
    }
}
