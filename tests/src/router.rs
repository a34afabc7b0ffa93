//! Runs the real `router` binary for a test.
//!
//! [`RouterProcess::start`] writes the rule set into a temp dir, spawns
//! `router --config FILE --listen 127.0.0.1:0 --admin 127.0.0.1:0 --workers 2
//! --watch-interval-ms 50` and waits (up to [`crate::DEADLINE`]) for the stdout line
//! `router listening proxy=ADDR admin=ADDR`. The router's stdout and stderr are kept and printed
//! when a test fails; dropping the value kills the process and waits for it.
//! [`RouterProcess::start_with_options`] changes what those flags fix (`--admin`,
//! `--workers`) and sets the process environment (e.g. `RUST_LOG`).
//!
//! The binary is `$ROUTER_BIN` when set, otherwise `router` next to the test binary's
//! `deps/` folder (`target/<profile>/router`): build it with `cargo build -p router`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use http::{Method, header};
use tempfile::TempDir;

use crate::client::{self, Collected, HttpClient};
pub use crate::process::{FailedStart, metric_value, rss_bytes};
use crate::process::{Service, ServiceProcess, rule_set_text, temp_config, write_text_atomically};
use crate::{DEADLINE, wait_until};

/// How to run the `router` binary.
const SERVICE: Service = Service {
    name: "router",
    label: "the router",
    env_override: "ROUTER_BIN",
    listen_args: ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
    listening: "router listening",
    addr_keys: ["proxy", "admin"],
};

/// A running `router` process. Dropping it kills the process.
#[derive(Debug)]
pub struct RouterProcess {
    /// Where the proxy listens (HTTP/1.1 and h2c).
    pub proxy_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The rule-set file the router watches; for a router following a control plane, the
    /// snapshot file in its snapshot dir.
    pub config_path: PathBuf,
    process: ServiceProcess,
    admin: HttpClient,
    _dir: Option<TempDir>,
}

/// How [`RouterProcess::start_with_options`] runs the router, beyond the rule set: what the
/// default flags fix (`--admin`, `--workers`), the process environment, and more flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions<'a> {
    /// The `--admin` address (default `127.0.0.1:0`). On an unspecified address such as
    /// `0.0.0.0:0`, [`RouterProcess::admin_addr`] is the port on 127.0.0.1.
    pub admin: Option<&'a str>,
    /// `--workers` (default 2).
    pub workers: Option<usize>,
    /// Environment variables set for the process, e.g. `("RUST_LOG", "debug")` (otherwise
    /// `RUST_LOG` is the test run's, or `info`).
    pub env: &'a [(&'a str, &'a str)],
    /// More arguments, appended.
    pub args: &'a [&'a str],
}

// === impl RouterProcess ===

impl RouterProcess {
    /// Starts the router on `rule_set` with the default test flags.
    ///
    /// # Panics
    ///
    /// When the binary is missing, or the router exits or stays silent past the deadline
    /// instead of printing its listening line (the panic message carries its stderr).
    pub async fn start(rule_set: &serde_json::Value) -> RouterProcess {
        Self::start_with_args(rule_set, &[]).await
    }

    /// [`RouterProcess::start`] with extra command-line arguments appended.
    ///
    /// # Panics
    ///
    /// As [`RouterProcess::start`].
    pub async fn start_with_args(rule_set: &serde_json::Value, extra: &[&str]) -> RouterProcess {
        let started = SERVICE.start(&rule_set_text(rule_set), extra).await;
        let (proxy_addr, admin_addr) = started.addrs;
        RouterProcess {
            proxy_addr,
            admin_addr,
            config_path: started.config_path,
            process: started.process,
            admin: HttpClient::http1(),
            _dir: Some(started.dir),
        }
    }

    /// Starts the router on `rule_set` as `options` say: `router --config FILE --listen
    /// 127.0.0.1:0 --admin ADMIN --workers N --watch-interval-ms 50 ARGS..`.
    ///
    /// # Panics
    ///
    /// As [`RouterProcess::start`].
    pub async fn start_with_options(
        rule_set: &serde_json::Value,
        options: &StartOptions<'_>,
    ) -> RouterProcess {
        let (dir, config_path) = temp_config(&rule_set_text(rule_set));
        let cmd = command(&config_path, options);
        let (mut process, mut lines) = ServiceProcess::spawn(SERVICE.name, SERVICE.label, cmd);
        let (proxy_addr, mut admin_addr) = process
            .wait_for_listening(&mut lines, "router listening proxy=.. admin=..", |line| {
                SERVICE.parse_listening_line(line)
            })
            .await;
        if admin_addr.ip().is_unspecified() {
            admin_addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        RouterProcess {
            proxy_addr,
            admin_addr,
            config_path,
            process,
            admin: HttpClient::http1(),
            _dir: Some(dir),
        }
    }

    /// [`RouterProcess::start_with_options`], expecting the router to refuse to start:
    /// waits for it to exit.
    ///
    /// # Panics
    ///
    /// As [`RouterProcess::start_expecting_failure`].
    pub async fn start_with_options_expecting_failure(
        rule_set: &serde_json::Value,
        options: &StartOptions<'_>,
    ) -> FailedStart {
        let (_dir, config_path) = temp_config(&rule_set_text(rule_set));
        let cmd = command(&config_path, options);
        let (process, mut lines) = ServiceProcess::spawn(SERVICE.name, SERVICE.label, cmd);
        process
            .wait_for_failed_start(&mut lines, |line| {
                SERVICE.parse_listening_line(line).is_some()
            })
            .await
    }

    /// Starts a router following the control plane at `urls` (`--control-plane
    /// URL,URL..`), keeping its snapshot in `snapshot_dir`, reconnecting within 200 ms
    /// (`--control-plane-backoff-max-ms 200`), with `extra` arguments appended. Returns once
    /// it listens, which it does whether or not a control plane answers.
    ///
    /// # Panics
    ///
    /// As [`RouterProcess::start`].
    pub async fn start_following(
        urls: &[String],
        snapshot_dir: &std::path::Path,
        extra: &[&str],
    ) -> RouterProcess {
        let urls = urls.join(",");
        let dir = snapshot_dir.to_str().expect("a UTF-8 snapshot dir");
        let mut args = vec![
            "--control-plane",
            &urls,
            "--snapshot-dir",
            dir,
            "--control-plane-backoff-initial-ms",
            "20",
            "--control-plane-backoff-max-ms",
            "200",
        ];
        args.extend_from_slice(extra);
        let (process, (proxy_addr, admin_addr)) = SERVICE.start_without_config(&args).await;
        RouterProcess {
            proxy_addr,
            admin_addr,
            config_path: snapshot_dir.join("snapshot.json"),
            process,
            admin: HttpClient::http1(),
            _dir: None,
        }
    }

    /// Runs the router on `rule_set`, expecting it to refuse to start: waits for it to exit.
    ///
    /// # Panics
    ///
    /// When the router starts listening instead, or does not exit within the deadline.
    pub async fn start_expecting_failure(rule_set: &serde_json::Value) -> FailedStart {
        SERVICE
            .start_expecting_failure(&rule_set_text(rule_set))
            .await
    }

    /// [`RouterProcess::start_expecting_failure`] with extra command-line arguments appended.
    ///
    /// # Panics
    ///
    /// As [`RouterProcess::start_expecting_failure`].
    pub async fn start_expecting_failure_with_args(
        rule_set: &serde_json::Value,
        extra: &[&str],
    ) -> FailedStart {
        SERVICE
            .start_expecting_failure_with_args(&rule_set_text(rule_set), extra)
            .await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The router's resident set size in bytes (see [`rss_bytes`]).
    ///
    /// # Panics
    ///
    /// When `/proc/PID/status` cannot be read (the process is gone, or not Linux).
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// `http://PROXY{path}`.
    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr)
    }

    /// Replaces the watched rule-set file atomically (write a temp file, then rename), so the
    /// router never reads half a file.
    pub fn rewrite_config(&self, rule_set: &serde_json::Value) {
        write_text_atomically(&self.config_path, &rule_set_text(rule_set));
    }

    /// Replaces the watched rule-set file with arbitrary text (e.g. broken JSON).
    pub fn rewrite_config_text(&self, text: &str) {
        write_text_atomically(&self.config_path, text);
    }

    /// `GET` on the admin API, read to the end.
    pub async fn admin_get(&self, path: &str) -> Collected {
        let req = client::request(Method::GET, self.admin_addr, path)
            .body(client::empty())
            .expect("a valid request");
        self.admin.fetch(req).await
    }

    /// `PUT` of a JSON body on the admin API, read to the end.
    pub async fn admin_put_json(&self, path: &str, body: &serde_json::Value) -> Collected {
        let req = client::request(Method::PUT, self.admin_addr, path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(client::full(body.to_string()))
            .expect("a valid request");
        self.admin.fetch(req).await
    }

    /// `GET` on the admin API, expecting 200 and a JSON body.
    ///
    /// # Panics
    ///
    /// On another status or a body that is not JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let resp = self.admin_get(path).await;
        assert_eq!(
            resp.status,
            200,
            "GET {path} on the admin API: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
        resp.json()
    }

    /// The Prometheus text of `GET /metrics`.
    ///
    /// # Panics
    ///
    /// When the status is not 200.
    pub async fn metrics_text(&self) -> String {
        let resp = self.admin_get("/metrics").await;
        assert_eq!(resp.status, 200, "GET /metrics");
        resp.text()
    }

    /// The sum of the samples of `name` whose labels include all of `labels` (0 when none
    /// match).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics_text().await, name, labels).unwrap_or(0.0)
    }

    /// Waits until the sum of the samples of `name` matching `labels` satisfies `ok`, and
    /// returns it.
    ///
    /// # Panics
    ///
    /// At the deadline, with the exported samples of `name` in the message.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        // Polls an observable condition; the deadline only turns a hang into a failure.
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            poll.tick().await;
            let text = self.metrics_text().await;
            let value = metric_value(&text, name, labels);
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            if tokio::time::Instant::now() >= give_up {
                let samples: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
                panic!(
                    "gave up waiting for {name}{labels:?} to reach the expected value (last: {value:?}); exported:\n{}",
                    samples.join("\n")
                );
            }
        }
    }

    /// Waits until the rule set with `generation` or later is in force, per `GET /config`.
    pub async fn wait_for_generation(&self, generation: u64) {
        wait_until(
            &format!("the router reports config generation >= {generation}"),
            DEADLINE,
            || async {
                let cfg = self.admin_json("/config").await;
                cfg["generation"].as_u64().unwrap_or(0) >= generation
            },
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

    /// The exit status, if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.process.try_exit_status()
    }

    /// Waits for the process to exit (and for its output to be complete).
    ///
    /// # Panics
    ///
    /// When it is still running after `deadline`.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> ExitStatus {
        self.process.wait_for_exit(deadline).await
    }

    /// Everything the router printed so far (stdout, then stderr).
    pub fn output(&self) -> String {
        self.process.output()
    }
}

// === helpers ===

/// The command line of [`RouterProcess::start_with_options`], with stdin closed and stdout
/// and stderr piped.
fn command(config: &Path, options: &StartOptions<'_>) -> Command {
    let workers = options.workers.unwrap_or(2).to_string();
    let mut cmd = Command::new(SERVICE.bin());
    cmd.arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--admin", options.admin.unwrap_or("127.0.0.1:0")])
        .args(["--workers", &workers, "--watch-interval-ms", "50"])
        .args(options.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (name, value) in options.env {
        cmd.env(name, value);
    }
    cmd
}

/// Locates the router binary.
///
/// # Panics
///
/// When it does not exist.
pub fn router_bin() -> PathBuf {
    SERVICE.bin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_is_parsed_wherever_it_appears() {
        let plain =
            SERVICE.parse_listening_line("router listening proxy=127.0.0.1:1 admin=127.0.0.1:2");
        assert_eq!(
            plain,
            Some((
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ))
        );
        let logged = SERVICE.parse_listening_line(
            "2024-01-01T00:00:00Z INFO router: router listening proxy=127.0.0.1:80 admin=127.0.0.1:90",
        );
        assert!(logged.is_some());
        assert_eq!(SERVICE.parse_listening_line("router starting"), None);
    }
}
