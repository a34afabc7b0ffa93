//! Following Lightbulb's `RoutingConfig.Watch` stream (`router --control-plane URL[,URL...]`).
//!
//! [`follow`] runs on the control runtime. It connects to the URLs in turn, one at a time,
//! calls `Watch` with the router's node id and, for every [`pb::RoutingSnapshot`] received:
//!
//! 1. [`apply_snapshot`]: parses `rule_set_json` with models-config, checks that it is a
//!    routing snapshot (its version matches, it has clusters and routes), and applies it
//!    through [`Shared::apply`], which validates it and swaps the table whole. A snapshot
//!    that fails any step is logged with every problem, counted in
//!    `router_config_reloads_total{result="error"}`, and never applied: the current table
//!    stays.
//! 2. [`persist`]: writes the applied `rule_set_json` to `SNAPSHOT_DIR/snapshot.json`
//!    atomically (temp file, fsync, rename, fsync of the dir), so a restart without the
//!    control plane serves it at once ([`load_snapshot`]).
//!
//! On an error or a disconnect it moves to the next URL after an exponential backoff with
//! jitter ([`Backoff`]), capped, and reset once a snapshot arrives. `router_control_plane_connected`
//! is 1 while a stream is open.
//!
//! An `https://` URL is reached over TLS (rustls, ALPN `h2`), trusting only the CA of
//! `--control-plane-ca` (required for such a URL: [`check_tls`] refuses to start without it,
//! never falling back to plaintext) and presenting `--control-plane-cert`/`--control-plane-key`
//! when given (mTLS). The files are read again at every connection attempt, so a rotated CA
//! or client certificate is picked up on the next reconnect.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use models_config::ValidRuleSet;
use routing_proto::lightbulb::v1 as pb;
use routing_proto::lightbulb::v1::routing_config_client::RoutingConfigClient;
use tokio_util::sync::CancellationToken;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::{Config, Source};
use crate::route::RouteTable;
use crate::state::{ConfigSource, ProxySettings, Shared};

/// The file in the snapshot dir holding the last applied snapshot (a models-config rule set).
pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// Largest snapshot accepted from the stream (as `PUT /config`: a 100,000-route set is about
/// 10 MiB).
const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// How [`follow`] reaches the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lightbulb gRPC URLs (`http://HOST:PORT` or `https://HOST:PORT`), tried in turn.
    pub urls: Vec<String>,
    /// How `https://` URLs are trusted (`None`: no TLS files given).
    pub tls: Option<TlsFiles>,
    /// Sent in every Watch request.
    pub node_id: String,
    /// Where the last applied snapshot is kept.
    pub snapshot_dir: PathBuf,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Time allowed to connect and open the stream.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval (and ping timeout).
    pub keepalive: Duration,
    /// How long a snapshot older than the routes in force is held back before it is applied.
    pub stale_grace: Duration,
}

/// The TLS files of an `https://` control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA Lightbulb's certificate must chain to (`--control-plane-ca`).
    pub ca: PathBuf,
    /// The client certificate and key presented for mTLS (`--control-plane-cert`,
    /// `--control-plane-key`).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Settings {
    /// The settings given by the `--control-plane*`, `--snapshot-dir` and `--node-id` flags
    /// (no URLs in file mode).
    pub fn from_config(config: &Config) -> Self {
        let urls = match config.source() {
            Source::ControlPlane(urls) => urls.to_vec(),
            Source::File(_) => Vec::new(),
        };
        let (backoff_initial, backoff_max) = config.control_plane_backoff();
        let tls = config.control_plane_ca.clone().map(|ca| TlsFiles {
            ca,
            identity: config
                .control_plane_cert
                .clone()
                .zip(config.control_plane_key.clone()),
        });
        Settings {
            urls,
            tls,
            node_id: config.node_id(),
            snapshot_dir: config.snapshot_dir.clone(),
            backoff_initial,
            backoff_max,
            connect_timeout: Duration::from_millis(config.control_plane_connect_timeout_ms.max(1)),
            keepalive: Duration::from_millis(config.control_plane_keepalive_ms.max(1)),
            stale_grace: Duration::from_millis(config.control_plane_stale_grace_ms),
        }
    }
}

/// The state a router following a control plane starts with: the snapshot kept in
/// `snapshot_dir` (source `snapshot`, ready at once), or, without a valid one, an empty
/// table that is not ready until the first snapshot is applied.
///
pub fn initial_state(snapshot_dir: &Path, settings: ProxySettings) -> Shared {
    if let Some(rule_set) = load_snapshot(snapshot_dir) {
        let shared = Shared::new(rule_set, ConfigSource::Snapshot, settings);
        tracing::info!(
            version = shared.table.load().version,
            "serving the snapshot kept on disk until the control plane answers"
        );
        return shared;
    }
    Shared::unconfigured(settings)
}

/// Why a snapshot was not applied.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// `rule_set_json` is not a models-config rule set.
    #[error("rule_set_json is not a valid rule set: {0}")]
    Parse(models_config::ConfigError),
    /// The snapshot's version and its rule set's version differ.
    #[error("snapshot version {snapshot} differs from the version {rule_set} of its rule set")]
    VersionMismatch {
        /// `RoutingSnapshot.version`.
        snapshot: u64,
        /// `version` inside `rule_set_json`.
        rule_set: u64,
    },
    /// The rule set has no clusters or no routes: applying it would answer 404 to every key.
    #[error(
        "snapshot has {clusters} cluster(s) and {routes} route(s); a routing snapshot needs both"
    )]
    Empty {
        /// Clusters in the rule set.
        clusters: usize,
        /// Routes in the rule set.
        routes: usize,
    },
}

/// What [`apply_snapshot`] did with a valid snapshot.
#[derive(Debug)]
pub enum Applied {
    /// A new table is in force.
    Changed(Arc<RouteTable>),
    /// The snapshot equals the rule set in force; nothing was rebuilt.
    Unchanged,
}

/// Parses, checks and applies one snapshot. On error nothing changes, every problem is in
/// the error, and `router_config_reloads_total{result="error"}` is incremented.
///
/// # Errors
///
/// See [`SnapshotError`].
pub fn apply_snapshot(
    shared: &Shared,
    snapshot: &pb::RoutingSnapshot,
) -> Result<Applied, SnapshotError> {
    let rule_set = match check(snapshot) {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::record_reload(false);
            return Err(e);
        }
    };
    let in_force = shared.table.load_full();
    if shared.is_configured()
        && matches!(
            shared.source(),
            ConfigSource::Snapshot | ConfigSource::ControlPlane
        )
        && in_force.rule_set == rule_set
    {
        shared.set_source(ConfigSource::ControlPlane);
        return Ok(Applied::Unchanged);
    }
    match shared.try_apply(rule_set, ConfigSource::ControlPlane) {
        Ok(table) => Ok(Applied::Changed(table)),
        // The table in force stays (counted as a failed reload by `try_apply`).
        Err(e) => Err(SnapshotError::Parse(e)),
    }
}

fn check(snapshot: &pb::RoutingSnapshot) -> Result<ValidRuleSet, SnapshotError> {
    let rule_set = models_config::parse(&snapshot.rule_set_json).map_err(SnapshotError::Parse)?;
    if rule_set.version != snapshot.version {
        return Err(SnapshotError::VersionMismatch {
            snapshot: snapshot.version,
            rule_set: rule_set.version,
        });
    }
    if rule_set.clusters.is_empty() || rule_set.routes.is_empty() {
        return Err(SnapshotError::Empty {
            clusters: rule_set.clusters.len(),
            routes: rule_set.routes.len(),
        });
    }
    Ok(rule_set)
}

/// Writes `rule_set_json` to `dir/snapshot.json` atomically: a temp file in `dir`, fsync,
/// rename over the old one, fsync of `dir`. A crash leaves the old or the new file, whole.
///
/// # Errors
///
/// When a step fails (the old snapshot, if any, is then still in place).
pub fn persist(dir: &Path, rule_set_json: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(rule_set_json.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The snapshot kept in `dir`, if there is a valid one. A missing file is `None`; an
/// unreadable or invalid one is logged with every problem and is `None` too (the router then
/// waits for the control plane).
pub fn load_snapshot(dir: &Path) -> Option<ValidRuleSet> {
    let path = dir.join(SNAPSHOT_FILE);
    if !path.exists() {
        tracing::info!(path = %path.display(), "no snapshot on disk; not ready until the control plane sends one");
        return None;
    }
    match models_config::load(&path) {
        Ok(rule_set) => Some(rule_set),
        Err(e) => {
            for issue in e.issues() {
                tracing::error!(path = %path.display(), at = %issue.path, "snapshot on disk rejected: {}", issue.message);
            }
            tracing::error!(path = %path.display(), "snapshot on disk rejected; not ready until the control plane sends one");
            None
        }
    }
}

/// Checks a `--control-plane` URL: `http://HOST:PORT` or `https://HOST:PORT`.
///
/// # Errors
///
/// A message naming the problem.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("--control-plane {url:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!(
            "--control-plane {url:?}: expected http://HOST:PORT or https://HOST:PORT"
        ));
    }
    Ok(())
}

/// Whether `url` is reached over TLS.
fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// Checks the TLS flags against the `--control-plane` URLs at startup: an `https://` URL
/// needs `--control-plane-ca` (there is no fallback to plaintext, nor to system roots);
/// `--control-plane-cert` and `--control-plane-key` go together and need the CA; and the
/// files must load (the key matching its certificate).
///
/// # Errors
///
/// A message naming the flag and, for a file, the file and what is wrong with it.
pub fn check_tls(config: &Config) -> Result<(), String> {
    let identity = match (&config.control_plane_cert, &config.control_plane_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "--control-plane-cert needs --control-plane-key FILE (its private key)".into(),
            );
        }
        (None, Some(_)) => {
            return Err(
                "--control-plane-key needs --control-plane-cert FILE (the client certificate)"
                    .into(),
            );
        }
    };
    let Some(ca) = &config.control_plane_ca else {
        if let Some(url) = config.control_plane.iter().find(|url| is_https(url)) {
            return Err(format!(
                "--control-plane {url:?}: an https:// URL needs --control-plane-ca FILE (the CA that signed Lightbulb's certificate)"
            ));
        }
        if identity.is_some() {
            return Err("--control-plane-cert needs --control-plane-ca FILE".into());
        }
        return Ok(());
    };
    service_runtime::tls::client_config(ca, identity, &[b"h2"])
        .map_err(|e| format!("--control-plane-ca/--control-plane-cert: {e}"))?;
    if !config.control_plane.iter().any(|url| is_https(url)) {
        tracing::warn!(
            ca = %ca.display(),
            "--control-plane-ca is unused: no --control-plane URL is https://"
        );
    }
    Ok(())
}

/// The endpoint of `url`: over TLS for an `https://` URL, with the CA and client
/// certificate read from their files now.
fn endpoint(url: &str, settings: &Settings) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("invalid URL: {e}"))?
        .connect_timeout(settings.connect_timeout)
        .http2_keep_alive_interval(settings.keepalive)
        .keep_alive_timeout(settings.keepalive)
        .keep_alive_while_idle(true);
    if !is_https(url) {
        return Ok(endpoint);
    }
    // Checked at startup; the files may have gone since.
    let files = settings
        .tls
        .as_ref()
        .ok_or("an https:// URL needs --control-plane-ca")?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&files.ca)?));
    if let Some((cert, key)) = &files.identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| format!("TLS settings refused: {}", chain(&e)))
}

/// Exponential backoff with jitter: each delay is drawn from `[d/2, d]`, where `d` starts at
/// the initial delay and doubles after every call up to the max.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 {
            0
        } else {
            crate::rng::next_u64() % (jitter_ms + 1)
        };
        half + Duration::from_millis(extra)
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Follows the control plane until `shutdown`: see the module docs.
pub async fn follow(settings: Settings, shared: Arc<Shared>, shutdown: CancellationToken) {
    if settings.urls.is_empty() {
        return;
    }
    shared.set_control_plane_connected(false);
    let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
    let mut attempt = 0usize;
    loop {
        let url = &settings.urls[attempt % settings.urls.len()];
        attempt = attempt.wrapping_add(1);
        let ended = tokio::select! {
            _ = shutdown.cancelled() => break,
            ended = watch(url, &settings, &shared, &mut backoff) => ended,
        };
        shared.set_control_plane_connected(false);
        let delay = backoff.next_delay();
        tracing::warn!(url = %url, retry_in_ms = delay.as_millis() as u64, "control plane: {ended}; keeping the current routes");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    shared.set_control_plane_connected(false);
}

/// One connection: connect, Watch, apply every snapshot until the stream ends. Returns why
/// it ended.
async fn watch(
    url: &str,
    settings: &Settings,
    shared: &Arc<Shared>,
    backoff: &mut Backoff,
) -> String {
    let endpoint = match endpoint(url, settings) {
        Ok(endpoint) => endpoint,
        Err(e) => return e,
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect: {}", chain(&e)),
    };
    let mut client =
        RoutingConfigClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT_BYTES);
    let request = pb::WatchRequest {
        node_id: settings.node_id.clone(),
    };
    let mut stream =
        match tokio::time::timeout(settings.connect_timeout, client.watch(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return format!("Watch failed: {status}"),
            Err(_) => return "Watch did not answer in time".to_string(),
        };
    shared.set_control_plane_connected(true);
    tracing::info!(url = %url, node_id = %settings.node_id, "control plane: following the Watch stream");
    // A snapshot older than the routes in force, held back until `stale_grace` has passed:
    // after a fail-over to a replica that is behind, that replica's newer snapshot replaces
    // it; a control plane that keeps offering the older version (a reset store) wins.
    let mut held: Option<(pb::RoutingSnapshot, tokio::time::Instant)> = None;
    loop {
        let hold_until = held.as_ref().map(|(_, until)| *until);
        let next = tokio::select! {
            message = stream.message() => Some(message),
            () = sleep_until_or_forever(hold_until) => None,
        };
        let snapshot = match next {
            None => {
                let (snapshot, _) = held.take().expect("a deadline implies a held snapshot");
                tracing::warn!(
                    version = snapshot.version,
                    in_force = shared.table.load().version,
                    "control plane: applying an older snapshot, offered for {:?} without a newer one",
                    settings.stale_grace
                );
                snapshot
            }
            Some(Ok(Some(snapshot))) => {
                backoff.reset();
                let in_force = shared.table.load().version;
                if shared.is_configured() && snapshot.version < in_force {
                    crate::metrics::record_stale_snapshot();
                    tracing::warn!(
                        version = snapshot.version,
                        in_force,
                        "control plane: snapshot older than the routes in force; holding it back for {:?}",
                        settings.stale_grace
                    );
                    let until = hold_until
                        .unwrap_or_else(|| tokio::time::Instant::now() + settings.stale_grace);
                    held = Some((snapshot, until));
                    continue;
                }
                held = None;
                snapshot
            }
            Some(Ok(None)) => return "the server ended the Watch stream".to_string(),
            Some(Err(status)) => return format!("Watch stream broke: {status}"),
        };
        let shared = Arc::clone(shared);
        let dir = settings.snapshot_dir.clone();
        // Parsing and building a large table is CPU work: off the control runtime.
        let handled = tokio::task::spawn_blocking(move || handle(&shared, &dir, &snapshot)).await;
        if handled.is_err() {
            tracing::error!("control plane: applying a snapshot panicked");
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// An error with its causes: `transport error: tcp connect error: Connection refused`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Applies one snapshot and, when it changed the table, keeps it on disk; logs the outcome.
fn handle(shared: &Shared, dir: &Path, snapshot: &pb::RoutingSnapshot) {
    match apply_snapshot(shared, snapshot) {
        Ok(Applied::Changed(table)) => {
            tracing::info!(
                version = table.version,
                generation = table.generation,
                "control plane: snapshot applied"
            );
            match persist(dir, &snapshot.rule_set_json) {
                Ok(()) => crate::metrics::record_snapshot_write(true),
                Err(e) => {
                    crate::metrics::record_snapshot_write(false);
                    tracing::error!(dir = %dir.display(), error = %e, "control plane: cannot keep the snapshot on disk");
                }
            }
        }
        Ok(Applied::Unchanged) => {
            tracing::debug!(
                version = snapshot.version,
                "control plane: snapshot equals the routes in force"
            );
        }
        Err(e) => log_rejected(snapshot.version, &e),
    }
}

fn log_rejected(version: u64, e: &SnapshotError) {
    match e {
        SnapshotError::Parse(parse) => {
            for issue in parse.issues() {
                tracing::error!(version, at = %issue.path, "control plane: snapshot rejected: {}", issue.message);
            }
        }
        _ => tracing::error!(version, "control plane: snapshot rejected: {e}"),
    }
    tracing::error!(
        version,
        "control plane: snapshot rejected; keeping the current routes"
    );
}

#[cfg(test)]
mod tests;
