//! Runs a real single-member `etcd` (Debian's `etcd-server`) for a test.
//!
//! [`EtcdProcess::start`] picks two free loopback ports (bind `127.0.0.1:0`, read the port,
//! release it), starts `etcd` on them with its data in a temp dir, and waits (up to
//! [`crate::DEADLINE`]) until `GET /health` on its client port answers healthy. Its output
//! goes to a log file in the temp dir, printed when it fails to start; dropping the value
//! kills the process and waits for it.
//!
//! The binary is `$ETCD_BIN` when set, otherwise `etcd` on `PATH`. When it is missing the
//! test fails (it is not skipped): `scripts/test.sh` installs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use http::Method;
use tempfile::TempDir;

use crate::DEADLINE;
use crate::client::{self, HttpClient};

/// A running `etcd`. Dropping it kills the process.
#[derive(Debug)]
pub struct EtcdProcess {
    /// Where clients connect.
    pub client_addr: SocketAddr,
    peer_addr: SocketAddr,
    child: Child,
    log: PathBuf,
    dir: TempDir,
}

// === impl EtcdProcess ===

impl EtcdProcess {
    /// Starts etcd on free loopback ports and waits until it is healthy.
    ///
    /// # Panics
    ///
    /// When the `etcd` binary is missing (run `scripts/test.sh`, which installs it), or etcd
    /// exits or is not healthy within the deadline (the message carries its log).
    pub async fn start() -> EtcdProcess {
        let dir = tempfile::tempdir().expect("a temp dir");
        let client_addr = free_port();
        let peer_addr = free_port();
        let child = spawn(dir.path(), client_addr, peer_addr);
        let mut etcd = EtcdProcess {
            client_addr,
            peer_addr,
            child,
            log: dir.path().join("etcd.log"),
            dir,
        };
        etcd.wait_until_healthy().await;
        etcd
    }

    /// Kills etcd and starts it again on the same ports and data, waiting until it is
    /// healthy: its clients see their connections and watches fail meanwhile.
    ///
    /// # Panics
    ///
    /// As [`EtcdProcess::start`].
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.dir.path(), self.client_addr, self.peer_addr);
        self.wait_until_healthy().await;
    }

    /// `etcd://127.0.0.1:PORT`, the `--store` value for Lightbulb.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.client_addr)
    }

    /// Everything etcd logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_until_healthy(&mut self) {
        let http = HttpClient::http1_no_reuse();
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "etcd exited with {status} before it was healthy:\n{}",
                    self.output()
                );
            }
            let req = client::request(Method::GET, self.client_addr, "/health")
                .body(client::empty())
                .expect("a valid request");
            if let Ok(resp) = http.send(req).await
                && let Ok(body) = client::collect(resp).await
                && body.status == 200
                && body.text().contains("true")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "etcd on {} was not healthy after {DEADLINE:?}:\n{}",
                self.client_addr,
                self.output()
            );
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The etcd binary: `$ETCD_BIN`, or `etcd` on `PATH`.
///
/// # Panics
///
/// When there is none, telling to run `scripts/test.sh`.
pub fn etcd_bin() -> PathBuf {
    const INSTALL: &str = "run scripts/test.sh, which installs it (Debian package etcd-server)";
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "$ETCD_BIN is {}, which is not a file: {INSTALL}",
            bin.display()
        );
        return bin;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("the etcd binary is not on PATH (nor in $ETCD_BIN): {INSTALL}"))
}

/// Spawns etcd with its data and log in `dir`.
fn spawn(dir: &Path, client_addr: SocketAddr, peer_addr: SocketAddr) -> Child {
    let bin = etcd_bin();
    let client_url = format!("http://{client_addr}");
    let peer_url = format!("http://{peer_addr}");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .expect("open the etcd log file");
    Command::new(&bin)
        .arg("--name")
        .arg("default")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--listen-client-urls")
        .arg(&client_url)
        .arg("--advertise-client-urls")
        .arg(&client_url)
        .arg("--listen-peer-urls")
        .arg(&peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer_url)
        .arg("--initial-cluster")
        .arg(format!("default={peer_url}"))
        .arg("--initial-cluster-state")
        .arg("new")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}
