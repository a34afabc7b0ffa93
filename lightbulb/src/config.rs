//! Process configuration: command-line flags (every one documented in `--help`).
//!
//! The rules themselves (objectives, models, experiments, clusters, routes) are not here:
//! they live in the rule-set file and can change while Lightbulb runs.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

pub use service_runtime::telemetry::LogFormat;

/// Lightbulb's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "lightbulb",
    version,
    about = "Resolves which model serves a request (gRPC lightbulb.v1 and HTTP), and streams routing snapshots to routers"
)]
pub struct Config {
    /// Rule-set file (JSON, models-config format); watched, and reloaded when it changes.
    /// With --store, only the seed of an empty store, and not watched.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,

    /// Versioned rule store: a directory (created if missing) holding one file per accepted
    /// version, written atomically; or `etcd://HOST:PORT[,HOST:PORT...]`, an etcd cluster
    /// shared by several replicas (each follows every change through an etcd watch).
    /// Enables the config API (/v1/config and friends) on the HTTP port.
    #[arg(long, value_name = "DIR|etcd://HOST:PORT[,...]")]
    pub store: Option<String>,

    /// With an etcd --store: the key prefix the versions live under.
    #[arg(long, value_name = "PREFIX", default_value = "/lightbulb")]
    pub etcd_prefix: String,

    /// With --store: how many versions are kept (older ones are deleted after each write).
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(100).expect("100 is not zero"))]
    pub history: NonZeroUsize,

    /// With --store: bearer tokens allowed to change the rules, one `name:token` per line
    /// (blank lines and lines starting with `#` are skipped), or a single bare token (named
    /// `default`).
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,

    /// With --store: a bearer token (named `env`) allowed to change the rules. Prefer the
    /// environment variable to the flag, which other users can see in the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LIGHTBULB_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<Secret>,

    /// With --store: accept config changes without a bearer token. Refused unless --http is
    /// a loopback address.
    #[arg(long)]
    pub insecure_no_auth: bool,

    /// Largest request body the config API accepts, in bytes (413 above it).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Address of the gRPC server (lightbulb.v1 Resolver and RoutingConfig,
    /// grpc.health.v1, server reflection).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,

    /// Address of the HTTP server (POST /v1/resolve, /metrics, /healthz, /readyz, and the
    /// config API with --store).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub http: SocketAddr,

    /// TLS certificate chain (PEM, leaf first) for the gRPC and HTTP ports; needs
    /// --tls-key. Both ports then serve TLS (ALPN `h2` on gRPC, `h2` and `http/1.1` on HTTP)
    /// and, unless --tls-only, plaintext too: the first byte of a connection tells a TLS
    /// ClientHello from plaintext. The files are re-read when they change, without a restart;
    /// connections already open keep the certificate they started with.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// With --tls-cert: refuse plaintext connections on both ports (a plaintext client's
    /// connection is closed during the failed handshake).
    #[arg(long)]
    pub tls_only: bool,

    /// Runtime worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub workers: Option<NonZeroUsize>,

    /// How often the rule-set file is checked for changes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub watch_interval_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight calls (and Watch streams) may take to finish,
    /// in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// Most resolutions kept in the server-side cache; 0 disables the cache.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub cache_capacity: u64,

    /// How long a cached resolution is kept, in milliseconds (a new rule set drops every
    /// entry at once regardless); 0 disables the cache.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub cache_ttl_ms: u64,

    /// Log line format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// OTLP span export (one span per Resolve call).
    #[command(flatten)]
    pub otlp: service_runtime::otlp::OtlpArgs,
}

/// A secret flag value (a bearer token): `Debug` never shows it, so the config can be
/// printed with `{:?}` safely.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; only for the code that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Config {
    /// The certificate and key files of `--tls-cert` and `--tls-key`; `None` without TLS.
    ///
    /// # Errors
    ///
    /// One of the two flags without the other, or `--tls-only` without them.
    pub fn tls_files(&self) -> Result<Option<(&Path, &Path)>, String> {
        match (self.tls_cert.as_deref(), self.tls_key.as_deref()) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) if self.tls_only => {
                Err("--tls-only needs --tls-cert FILE and --tls-key FILE".to_owned())
            }
            (None, None) => Ok(None),
            (Some(_), None) => Err("--tls-cert needs --tls-key FILE (its private key)".to_owned()),
            (None, Some(_)) => {
                Err("--tls-key needs --tls-cert FILE (the certificate it belongs to)".to_owned())
            }
        }
    }

    /// Worker threads to run: the flag, or one per available core.
    pub fn worker_count(&self) -> usize {
        service_runtime::worker_count(self.workers)
    }

    /// The file poll interval (at least 10 ms).
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watch_interval_ms.max(10))
    }

    /// The drain deadline.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The etcd endpoints of an `etcd://` --store, `None` for a directory store.
    ///
    /// # Errors
    ///
    /// An `etcd://` store naming no endpoint.
    pub fn etcd_endpoints(&self) -> Result<Option<Vec<String>>, String> {
        let Some(list) = self
            .store
            .as_deref()
            .and_then(|s| s.strip_prefix("etcd://"))
        else {
            return Ok(None);
        };
        let endpoints: Vec<String> = list
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "--store {list:?}: etcd://HOST:PORT[,HOST:PORT...] names no endpoint"
            ));
        }
        Ok(Some(endpoints))
    }

    /// How long a cached resolution lives.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.cache_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::parse_from(["lightbulb", "--config", "rules.json"]);
        assert_eq!(c.grpc, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.http, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.worker_count() >= 1);
        assert!(c.cache_capacity > 0);
        assert!(c.cache_ttl() > Duration::ZERO);
    }

    #[test]
    fn an_etcd_store_lists_its_endpoints() {
        let parse = |store: &str| {
            Config::parse_from(["lightbulb", "--config", "r.json", "--store", store])
                .etcd_endpoints()
        };
        assert_eq!(parse("dir").unwrap(), None);
        assert_eq!(
            parse("etcd://a:2379, b:2379/").unwrap(),
            Some(vec!["a:2379".to_owned(), "b:2379".to_owned()])
        );
        assert!(parse("etcd://").is_err());
        let c = Config::parse_from(["lightbulb", "--config", "r.json"]);
        assert_eq!(c.etcd_prefix, "/lightbulb");
    }

    #[test]
    fn tls_needs_a_certificate_and_its_key() {
        let parse = |args: &[&str]| {
            let mut all = vec!["lightbulb", "--config", "r.json"];
            all.extend_from_slice(args);
            Config::parse_from(all)
        };
        let both = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        assert_eq!(
            both.tls_files(),
            Ok(Some((Path::new("c.pem"), Path::new("k.pem"))))
        );
        assert!(!both.tls_only);
        assert_eq!(parse(&[]).tls_files(), Ok(None));
        for (lone, names) in [
            (&["--tls-cert", "c.pem"][..], "--tls-key"),
            (&["--tls-key", "k.pem"], "--tls-cert"),
            (&["--tls-only"], "--tls-cert"),
        ] {
            let error = parse(lone).tls_files().unwrap_err();
            assert!(error.contains(names), "{lone:?}: {error}");
        }
        let only = parse(&["--tls-cert", "c", "--tls-key", "k", "--tls-only"]);
        assert!(only.tls_only && only.tls_files().is_ok());
    }

    #[test]
    fn the_api_token_never_shows_in_debug() {
        let c = Config::parse_from([
            "lightbulb",
            "--config",
            "r.json",
            "--api-token",
            "hunter2-secret",
        ]);
        assert_eq!(
            c.api_token.as_ref().map(Secret::expose),
            Some("hunter2-secret")
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn the_config_file_is_required() {
        assert!(Config::try_parse_from(["lightbulb"]).is_err());
    }

    #[test]
    fn flags_override_the_defaults() {
        let c = Config::parse_from([
            "lightbulb",
            "--config",
            "r.json",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--workers",
            "3",
            "--watch-interval-ms",
            "1",
            "--cache-capacity",
            "0",
            "--log-format",
            "json",
        ]);
        assert_eq!(c.grpc.port(), 0);
        assert_eq!(c.worker_count(), 3);
        assert_eq!(c.watch_interval(), Duration::from_millis(10));
        assert_eq!(c.cache_capacity, 0);
        assert_eq!(c.log_format, LogFormat::Json);
    }
}
