//! What [`crate::router::RouterProcess`] and [`crate::lightbulb::LightbulbProcess`] share:
//! running a workspace binary on a rule-set file for a test.
//!
//! - [`Service`] describes one binary (name, env-var override, listen flags, listening line)
//!   and starts it on a rule-set file in a temp dir: [`Service::start`] waits for the
//!   listening line, [`Service::start_expecting_failure`] for a refused start.
//! - [`workspace_bin`] locates a binary (an env-var override, otherwise next to the test
//!   binary's `deps/` folder).
//! - [`ServiceProcess`] owns the child and its captured stdout/stderr: it waits for the
//!   listening line with a deadline (or for a refused start), sends SIGTERM, waits for the
//!   exit, and kills the process on drop, printing its output when a test panics.
//! - [`write_text_atomically`] replaces a watched file; [`metric_value`] reads Prometheus text;
//!   [`rss_bytes`] reads a process's resident memory.

use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::{DEADLINE, wait_until};

/// The lines a service prints on stdout, as its reader thread sees them.
pub type StdoutLines = mpsc::UnboundedReceiver<String>;

/// What tells one service binary from another.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The binary's (and its package's) name, used in output headers: `router`.
    pub name: &'static str,
    /// How messages refer to the process: `the router`.
    pub label: &'static str,
    /// The env var that overrides the binary's path: `ROUTER_BIN`.
    pub env_override: &'static str,
    /// The flags that make it listen on free loopback ports:
    /// `["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]`.
    pub listen_args: [&'static str; 4],
    /// What starts its listening line: `router listening`.
    pub listening: &'static str,
    /// The keys of the two addresses on the listening line: `["proxy", "admin"]`.
    pub addr_keys: [&'static str; 2],
}

/// A service that printed its listening line, from [`Service::start`].
#[derive(Debug)]
pub struct Started {
    /// The temp dir holding the rule-set file; keep it for the life of the process.
    pub dir: TempDir,
    /// The rule-set file the service watches.
    pub config_path: PathBuf,
    /// The running process.
    pub process: ServiceProcess,
    /// The two addresses of the listening line, in the order of [`Service::addr_keys`].
    pub addrs: (SocketAddr, SocketAddr),
}

/// A service that exited during startup, as [`ServiceProcess::wait_for_failed_start`] saw it.
#[derive(Debug)]
pub struct FailedStart {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything the service printed on stdout.
    pub stdout: String,
    /// Everything the service printed on stderr.
    pub stderr: String,
}

/// A running workspace binary with its stdout and stderr captured. Dropping it kills the
/// process (and prints its output when the thread is panicking).
#[derive(Debug)]
pub struct ServiceProcess {
    /// The binary's name, used in output headers (`router`, `lightbulb`).
    name: &'static str,
    /// How messages refer to the process (`the router`, `lightbulb`).
    label: &'static str,
    child: Child,
    output: Output,
}

/// A service's stdout and stderr, captured by reader threads.
#[derive(Debug, Default)]
struct Output {
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Mutex<Option<std::thread::JoinHandle<()>>>,
}

// === impl Service ===

impl Service {
    /// Locates the binary (see [`workspace_bin`]).
    ///
    /// # Panics
    ///
    /// When it does not exist.
    pub fn bin(&self) -> PathBuf {
        workspace_bin(self.name, self.env_override)
    }

    /// Writes `rule_set_text` into a temp dir, starts the service on it with `extra`
    /// arguments appended, and waits (up to [`DEADLINE`]) for its listening line.
    ///
    /// # Panics
    ///
    /// When the binary is missing, or the service exits or stays silent past the deadline
    /// instead of printing its listening line (the panic message carries its output).
    pub async fn start(&self, rule_set_text: &str, extra: &[&str]) -> Started {
        let (dir, config_path) = temp_config(rule_set_text);
        let (mut process, mut lines) = self.spawn(&config_path, extra);
        let [a, b] = self.addr_keys;
        let expected = format!("{} {a}=.. {b}=..", self.listening);
        let addrs = process
            .wait_for_listening(&mut lines, &expected, |line| {
                self.parse_listening_line(line)
            })
            .await;
        Started {
            dir,
            config_path,
            process,
            addrs,
        }
    }

    /// Starts the service without a rule-set file: `BIN LISTEN_ARGS --workers 2 ARGS..`
    /// (e.g. a router following a control plane), and waits (up to [`DEADLINE`]) for its
    /// listening line.
    ///
    /// # Panics
    ///
    /// As [`Service::start`].
    pub async fn start_without_config(
        &self,
        args: &[&str],
    ) -> (ServiceProcess, (SocketAddr, SocketAddr)) {
        let (process, lines) = self.spawn_with(&self.listen_args, None, args);
        self.wait_for_listening_line(process, lines).await
    }

    /// [`Service::start`] with `listen_args` in place of [`Service::listen_args`], e.g. to
    /// start on an address a test reserved earlier.
    ///
    /// # Panics
    ///
    /// As [`Service::start`].
    pub async fn start_listening_on(
        &self,
        rule_set_text: &str,
        listen_args: &[&str],
        extra: &[&str],
    ) -> Started {
        let (dir, config_path) = temp_config(rule_set_text);
        let (process, lines) = self.spawn_with(listen_args, Some(&config_path), extra);
        let (process, addrs) = self.wait_for_listening_line(process, lines).await;
        Started {
            dir,
            config_path,
            process,
            addrs,
        }
    }

    async fn wait_for_listening_line(
        &self,
        mut process: ServiceProcess,
        mut lines: StdoutLines,
    ) -> (ServiceProcess, (SocketAddr, SocketAddr)) {
        let [a, b] = self.addr_keys;
        let expected = format!("{} {a}=.. {b}=..", self.listening);
        let addrs = process
            .wait_for_listening(&mut lines, &expected, |line| {
                self.parse_listening_line(line)
            })
            .await;
        (process, addrs)
    }

    /// Starts the service on a rule-set file holding `rule_set_text`, expecting it to refuse
    /// to start: waits for it to exit.
    ///
    /// # Panics
    ///
    /// When it starts listening instead, or does not exit within the deadline.
    pub async fn start_expecting_failure(&self, rule_set_text: &str) -> FailedStart {
        self.start_expecting_failure_with_args(rule_set_text, &[])
            .await
    }

    /// [`Service::start_expecting_failure`] with `extra` arguments appended.
    ///
    /// # Panics
    ///
    /// As [`Service::start_expecting_failure`].
    pub async fn start_expecting_failure_with_args(
        &self,
        rule_set_text: &str,
        extra: &[&str],
    ) -> FailedStart {
        let (_dir, config_path) = temp_config(rule_set_text);
        let (process, mut lines) = self.spawn(&config_path, extra);
        process
            .wait_for_failed_start(&mut lines, |line| self.parse_listening_line(line).is_some())
            .await
    }

    /// Parses `LISTENING KEY_A=ADDR KEY_B=ADDR` (anywhere in the line, the addresses in any
    /// order), e.g. `router listening proxy=ADDR admin=ADDR`.
    pub fn parse_listening_line(&self, line: &str) -> Option<(SocketAddr, SocketAddr)> {
        let rest = &line[line.find(self.listening)?..];
        let [key_a, key_b] = self.addr_keys;
        let mut a = None;
        let mut b = None;
        for word in rest.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let slot = if key == key_a {
                &mut a
            } else if key == key_b {
                &mut b
            } else {
                continue;
            };
            *slot = value.trim_matches(|c| c == '"' || c == ',').parse().ok();
        }
        Some((a?, b?))
    }

    /// `BIN --config CONFIG LISTEN_ARGS.. --workers 2 --watch-interval-ms 50 EXTRA..`, with
    /// stdin closed, stdout and stderr captured, and `RUST_LOG=info` unless the test run
    /// sets it.
    fn spawn(&self, config: &Path, extra: &[&str]) -> (ServiceProcess, StdoutLines) {
        self.spawn_with(&self.listen_args, Some(config), extra)
    }

    /// [`Service::spawn`] with other listen flags, and without `--config` (nor
    /// `--watch-interval-ms`) when `config` is `None`.
    fn spawn_with(
        &self,
        listen_args: &[&str],
        config: Option<&Path>,
        extra: &[&str],
    ) -> (ServiceProcess, StdoutLines) {
        let mut cmd = Command::new(self.bin());
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(listen_args).args(["--workers", "2"]);
        // Tests pass API tokens explicitly; one in the caller's environment must not leak in.
        cmd.env_remove("LIGHTBULB_API_TOKEN");
        if config.is_some() {
            cmd.args(["--watch-interval-ms", "50"]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        ServiceProcess::spawn(self.name, self.label, cmd)
    }
}

// === impl ServiceProcess ===

impl ServiceProcess {
    /// Spawns `cmd` (whose stdout and stderr must be piped) with both captured by reader
    /// threads; every stdout line is also sent on the returned channel.
    ///
    /// # Panics
    ///
    /// When the process cannot be spawned.
    pub fn spawn(name: &'static str, label: &'static str, mut cmd: Command) -> (Self, StdoutLines) {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", cmd.get_program().to_string_lossy()));

        let output = Output::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = output.stdout.clone();
        std::thread::spawn(move || {
            // Keeps draining after the listening line so the process never blocks on a full
            // pipe.
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
        let process = ServiceProcess {
            name,
            label,
            child,
            output,
        };
        (process, rx)
    }

    /// Waits (up to [`DEADLINE`]) for a stdout line that `parse` accepts and returns what it
    /// parsed; `expected` describes the line for failure messages.
    ///
    /// # Panics
    ///
    /// When the process exits or stays silent past the deadline instead (the message carries
    /// its output).
    pub async fn wait_for_listening<T>(
        &mut self,
        lines: &mut StdoutLines,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        let label = self.label;
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(give_up, lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(parsed) = parse(&line) {
                        return parsed;
                    }
                }
                Ok(None) => {
                    // stdout closed: the process is exiting.
                    let status = self
                        .child
                        .wait()
                        .unwrap_or_else(|e| panic!("wait for {label}: {e}"));
                    self.output.wait_for_eof();
                    panic!(
                        "{label} exited ({status}) before printing `{expected}`\n{}",
                        self.output()
                    );
                }
                Err(_) => {
                    self.kill_and_reap();
                    self.output.wait_for_eof();
                    panic!(
                        "{label} did not print `{expected}` within {DEADLINE:?}\n{}",
                        self.output()
                    );
                }
            }
        }
    }

    /// Waits (up to [`DEADLINE`]) for a process expected to refuse to start to exit, and
    /// returns its exit status and everything it printed.
    ///
    /// # Panics
    ///
    /// When a stdout line is `listening` (it started instead), or the process does not exit
    /// within the deadline.
    pub async fn wait_for_failed_start(
        mut self,
        lines: &mut StdoutLines,
        listening: impl Fn(&str) -> bool,
    ) -> FailedStart {
        let label = self.label;
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(give_up, lines.recv()).await {
                Ok(Some(line)) => {
                    if listening(&line) {
                        self.kill_and_reap();
                        panic!("{label} started on an invalid rule set\n{}", self.output());
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.kill_and_reap();
                    panic!(
                        "{label} neither started nor exited within {DEADLINE:?}\n{}",
                        self.output()
                    );
                }
            }
        }
        // stdout is closed, so the process is exiting: wait with a deadline all the same.
        let status = self.wait_for_exit(DEADLINE).await;
        FailedStart {
            status,
            stdout: lock(&self.output.stdout).clone(),
            stderr: lock(&self.output.stderr).clone(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// Sends SIGKILL (through `kill -KILL PID`): the process gets no chance to clean up.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails.
    pub fn sigkill(&self) {
        let status = Command::new("kill")
            .arg("-KILL")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -KILL");
        assert!(
            status.success(),
            "kill -KILL {} failed: {status}",
            self.pid()
        );
    }

    /// The exit status, if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let label = self.label;
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("poll {label}: {e}"))
    }

    /// Waits for the process to exit, then for its stderr to reach EOF so
    /// [`ServiceProcess::output`] holds everything it printed.
    ///
    /// # Panics
    ///
    /// When it is still running after `deadline`.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut status = None;
        let what = format!("{} exits", self.label);
        wait_until(&what, deadline, || {
            status = self.try_exit_status();
            std::future::ready(status.is_some())
        })
        .await;
        self.output.wait_for_eof();
        status.expect("exited")
    }

    /// Everything the process printed so far (stdout, then stderr).
    pub fn output(&self) -> String {
        let name = self.name;
        format!(
            "--- {name} stdout ---\n{}--- {name} stderr ---\n{}",
            lock(&self.output.stdout),
            lock(&self.output.stderr)
        )
    }

    fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill_and_reap();
        }
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.name, self.output());
        }
    }
}

// === impl Output ===

impl Output {
    /// Waits for the stderr reader to reach EOF (which follows the exit of the process), so
    /// a failure message carries everything the process printed.
    fn wait_for_eof(&self) {
        if let Some(reader) = lock(&self.stderr_reader).take() {
            let _ = reader.join();
        }
    }
}

// === helpers ===

/// Locates the workspace binary `name`: `$env_override` when set, otherwise `name` next to
/// the test binary's `deps/` folder (`target/<profile>/name`).
///
/// # Panics
///
/// When it does not exist.
pub fn workspace_bin(name: &str, env_override: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env_override) {
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
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "the {name} binary is missing at {}: run `cargo build -p {name}` first (or set {env_override})",
        bin.display()
    );
    bin
}

/// A new temp dir holding `rules.json` with `text`; returns the dir and the file's path.
///
/// # Panics
///
/// When the dir or the file cannot be created.
pub fn temp_config(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let config_path = dir.path().join("rules.json");
    write_text_atomically(&config_path, text);
    (dir, config_path)
}

/// The pretty JSON text of a rule set.
pub fn rule_set_text(rule_set: &serde_json::Value) -> String {
    serde_json::to_string_pretty(rule_set).expect("serialize the rule set")
}

/// Replaces `path` atomically (write a temp file, then rename), so a watcher never reads half
/// a file.
///
/// # Panics
///
/// When the file cannot be written or renamed.
pub fn write_text_atomically(path: &Path, text: &str) {
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

/// The resident set size of process `pid` in bytes: `VmRSS` of `/proc/PID/status`.
///
/// # Panics
///
/// When the file cannot be read (no such process, or not Linux) or has no `VmRSS` line.
pub fn rss_bytes(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    parse_vm_rss(&status).unwrap_or_else(|| panic!("no VmRSS line in {path}:\n{status}"))
}

/// `VmRSS:   1234 kB` of a `/proc/PID/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let unit = match words.next().unwrap_or("kB") {
        "B" => 1,
        "kB" => 1024,
        "mB" | "MB" => 1024 * 1024,
        "gB" | "GB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    Some(value * unit)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_resident_set_size_is_read_from_proc_status() {
        let status = "Name:\trouter\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(
            rss_bytes(std::process::id()) > 0,
            "this process has resident memory"
        );
    }
}
