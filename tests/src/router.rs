//! Runs the real `router` binary for a test.
//!
//! [`RouterProcess::start`] writes the rule set into a temp dir, spawns
//! `router --config FILE --listen 127.0.0.1:0 --admin 127.0.0.1:0 --workers 2
//! --watch-interval-ms 50` and waits (up to [`crate::DEADLINE`]) for the stdout line
//! `router listening proxy=ADDR admin=ADDR`. The router's stdout and stderr are kept and printed
//! when a test fails; dropping the value kills the process and waits for it.
//!
//! The binary is `$ROUTER_BIN` when set, otherwise `router` next to the test binary's
//! `deps/` folder (`target/<profile>/router`): build it with `cargo build -p router`.

use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Method, header};
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::client::{self, Collected, HttpClient};
use crate::{DEADLINE, wait_until};

/// A running `router` process. Dropping it kills the process.
#[derive(Debug)]
pub struct RouterProcess {
    /// Where the proxy listens (HTTP/1.1 and h2c).
    pub proxy_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The rule-set file the router watches.
    pub config_path: PathBuf,
    child: Child,
    output: Output,
    admin: HttpClient,
    _dir: TempDir,
}

/// A router that exited during startup, as [`RouterProcess::start_expecting_failure`] saw it.
#[derive(Debug)]
pub struct FailedStart {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything the router printed on stdout.
    pub stdout: String,
    /// Everything the router printed on stderr.
    pub stderr: String,
}

/// The router's stdout and stderr, captured by reader threads.
#[derive(Debug, Default)]
struct Output {
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Mutex<Option<std::thread::JoinHandle<()>>>,
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
        let dir = tempfile::tempdir().expect("create a temp dir");
        let config_path = dir.path().join("rules.json");
        write_atomically(&config_path, rule_set);
        let (mut child, output, mut stdout_lines) = spawn(&config_path, extra);

        let give_up = tokio::time::Instant::now() + DEADLINE;
        let (proxy_addr, admin_addr) = loop {
            match tokio::time::timeout_at(give_up, stdout_lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(addrs) = parse_listening_line(&line) {
                        break addrs;
                    }
                }
                Ok(None) => {
                    // stdout closed: the router is exiting.
                    let status = child.wait().expect("wait for the router");
                    output.wait_for_eof();
                    panic!(
                        "the router exited ({status}) before printing `router listening ...`\n{}",
                        output.dump()
                    );
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    output.wait_for_eof();
                    panic!(
                        "the router did not print `router listening proxy=.. admin=..` within {DEADLINE:?}\n{}",
                        output.dump()
                    );
                }
            }
        };

        RouterProcess {
            proxy_addr,
            admin_addr,
            config_path,
            child,
            output,
            admin: HttpClient::http1(),
            _dir: dir,
        }
    }

    /// Runs the router on `rule_set`, expecting it to refuse to start: waits for it to exit.
    ///
    /// # Panics
    ///
    /// When the router starts listening instead, or does not exit within the deadline.
    pub async fn start_expecting_failure(rule_set: &serde_json::Value) -> FailedStart {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let config_path = dir.path().join("rules.json");
        write_atomically(&config_path, rule_set);
        let (mut child, output, mut stdout_lines) = spawn(&config_path, &[]);
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(give_up, stdout_lines.recv()).await {
                Ok(Some(line)) => {
                    if parse_listening_line(&line).is_some() {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "the router started on an invalid rule set\n{}",
                            output.dump()
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the router neither started nor exited within {DEADLINE:?}\n{}",
                        output.dump()
                    );
                }
            }
        }
        // stdout is closed, so the process is exiting: wait with a deadline all the same.
        let mut status = None;
        wait_until("the router exits", DEADLINE, || {
            status = child.try_wait().expect("poll the router");
            std::future::ready(status.is_some())
        })
        .await;
        output.wait_for_eof();
        FailedStart {
            status: status.expect("exited"),
            stdout: lock(&output.stdout).clone(),
            stderr: lock(&output.stderr).clone(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://PROXY{path}`.
    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr)
    }

    /// Replaces the watched rule-set file atomically (write a temp file, then rename), so the
    /// router never reads half a file.
    pub fn rewrite_config(&self, rule_set: &serde_json::Value) {
        write_atomically(&self.config_path, rule_set);
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
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(
            status.success(),
            "kill -TERM {} failed: {status}",
            self.pid()
        );
    }

    /// The exit status, if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll the router process")
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    ///
    /// When it is still running after `deadline`.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut status = None;
        wait_until("the router process exits", deadline, || {
            status = self.try_exit_status();
            std::future::ready(status.is_some())
        })
        .await;
        status.expect("exited")
    }

    /// Everything the router printed so far (stdout, then stderr).
    pub fn output(&self) -> String {
        self.output.dump()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- router output ----\n{}", self.output.dump());
        }
    }
}

// === impl Output ===

impl Output {
    fn dump(&self) -> String {
        format!(
            "--- router stdout ---\n{}--- router stderr ---\n{}",
            lock(&self.stdout),
            lock(&self.stderr)
        )
    }

    /// Waits for the stderr reader to reach EOF (which follows the exit of the process), so
    /// a failure message carries everything the router printed.
    fn wait_for_eof(&self) {
        if let Some(reader) = lock(&self.stderr_reader).take() {
            let _ = reader.join();
        }
    }
}

// === helpers ===

/// Locates the router binary.
///
/// # Panics
///
/// When it does not exist.
pub fn router_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ROUTER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut dir = exe
        .parent()
        .expect("the test binary has a parent dir")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("router{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "the router binary is missing at {}: run `cargo build -p router` first (or set ROUTER_BIN)",
        bin.display()
    );
    bin
}

fn spawn(config: &Path, extra: &[&str]) -> (Child, Output, mpsc::UnboundedReceiver<String>) {
    let bin = router_bin();
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--workers", "2", "--watch-interval-ms", "50"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

    let output = Output::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let sink = output.stdout.clone();
    std::thread::spawn(move || {
        // Keeps draining after the listening line so the router never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            {
                let mut out = lock(&sink);
                out.push_str(&line);
                out.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().expect("piped stderr");
    let sink = output.stderr.clone();
    let reader = std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut buf = [0u8; 8192];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => lock(&sink).push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    *lock(&output.stderr_reader) = Some(reader);
    (child, output, rx)
}

/// Parses `router listening proxy=ADDR admin=ADDR` (anywhere in the line).
fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = &line[line.find("router listening")?..];
    let mut proxy = None;
    let mut admin = None;
    for word in rest.split_whitespace() {
        if let Some(v) = word.strip_prefix("proxy=") {
            proxy = v.trim_matches(|c| c == '"' || c == ',').parse().ok();
        } else if let Some(v) = word.strip_prefix("admin=") {
            admin = v.trim_matches(|c| c == '"' || c == ',').parse().ok();
        }
    }
    Some((proxy?, admin?))
}

fn write_atomically(path: &Path, rule_set: &serde_json::Value) {
    let text = serde_json::to_string_pretty(rule_set).expect("serialize the rule set");
    write_text_atomically(path, &text);
}

fn write_text_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// The sum of the samples of `name` in Prometheus text whose labels include every pair of
/// `labels`; `None` when no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            (labels, value)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // a longer metric name with this prefix
        };
        let all_match = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if !all_match {
            continue;
        }
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *sum.get_or_insert(0.0) += value;
    }
    sum
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_is_parsed_wherever_it_appears() {
        let plain = parse_listening_line("router listening proxy=127.0.0.1:1 admin=127.0.0.1:2");
        assert_eq!(
            plain,
            Some((
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ))
        );
        let logged = parse_listening_line(
            "2024-01-01T00:00:00Z INFO router: router listening proxy=127.0.0.1:80 admin=127.0.0.1:90",
        );
        assert!(logged.is_some());
        assert_eq!(parse_listening_line("router starting"), None);
    }

    #[test]
    fn metric_samples_are_matched_by_a_subset_of_labels() {
        let text = "# TYPE router_requests_total counter\n\
            router_requests_total{route=\"a\",cluster=\"c\",status=\"200\"} 3\n\
            router_requests_total{route=\"a\",cluster=\"c\",status=\"404\"} 1\n\
            router_requests_total_other 9\n\
            router_config_version 7\n";
        assert_eq!(
            metric_value(text, "router_requests_total", &[("route", "a")]),
            Some(4.0)
        );
        assert_eq!(
            metric_value(text, "router_requests_total", &[("status", "404")]),
            Some(1.0)
        );
        assert_eq!(metric_value(text, "router_config_version", &[]), Some(7.0));
        assert_eq!(
            metric_value(text, "router_requests_total", &[("route", "b")]),
            None
        );
    }
}
