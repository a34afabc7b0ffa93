//! Process configuration: command-line flags (every one documented in `--help`).
//!
//! Routing configuration (clusters, routes) is not here: it lives in the rule-set file and
//! can change while the router runs.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The router's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "router",
    version,
    about = "Routes inference requests to model clusters by the x-routing-key header, streaming bodies untouched"
)]
pub struct Config {
    /// Rule-set file (JSON); watched, and reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,

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

    /// How often the rule-set file is checked for changes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub watch_interval_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// Time a client has to send a complete HTTP/1.1 request head, in milliseconds; 0
    /// disables the limit.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub header_read_timeout_ms: u64,

    /// Most downstream connections open at once (split evenly across workers).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub max_connections: usize,

    /// Emit one access-log line per request (target `access`, level info).
    #[arg(long)]
    pub access_log: bool,

    /// Log line format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// File holding the bearer token required by mutating admin calls. Required when the
    /// admin API listens on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl Config {
    /// Worker threads to run: the flag, or one per available core.
    pub fn worker_count(&self) -> usize {
        self.workers
            .map(NonZeroUsize::get)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(NonZeroUsize::get)
            })
            .unwrap_or(1)
    }

    /// The file poll interval.
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watch_interval_ms.max(10))
    }

    /// The drain deadline.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
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
