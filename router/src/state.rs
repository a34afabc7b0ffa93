//! State shared by every worker, the admin API and the reloader.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderName;
use models_config::spec::RuleSet;
use sha2::{Digest, Sha256};

use crate::metrics;
use crate::route::RouteTable;

/// What every part of the router reads: the current route table and fixed settings.
#[derive(Debug)]
pub struct Shared {
    /// The route table in use. Requests take a snapshot; the reloader swaps it whole.
    pub table: ArcSwap<RouteTable>,
    /// The header carrying the routing key.
    pub routing_header: HeaderName,
    /// Whether one access-log line is emitted per request (target `access`).
    pub access_log: bool,
    /// Proxy worker threads (one pool slot each).
    pub workers: usize,
    /// False while starting and once draining; `/readyz` answers 503 then.
    pub ready: AtomicBool,
    /// Where the rule set in force came from ([`ConfigSource`] as a byte); `None` until one
    /// is (control-plane mode without a snapshot on disk starts with an empty table), and
    /// `/readyz` answers 503 then.
    source: AtomicU8,
    /// Whether a control-plane Watch stream is open.
    control_plane_connected: AtomicBool,
    generation: AtomicU64,
    /// Serialises table builds so two appliers cannot interleave generations.
    apply_lock: Mutex<()>,
}

/// Where the rule set in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConfigSource {
    /// Nothing yet: an empty table, waiting for the control plane.
    None = 0,
    /// The `--config` file, or a rule set pushed with `PUT /config`.
    File = 1,
    /// The snapshot kept on disk by an earlier run, read at startup.
    Snapshot = 2,
    /// A snapshot received on the control-plane Watch stream.
    ControlPlane = 3,
}

impl ConfigSource {
    /// Every source, in label order.
    pub const ALL: [ConfigSource; 4] = [
        ConfigSource::None,
        ConfigSource::File,
        ConfigSource::Snapshot,
        ConfigSource::ControlPlane,
    ];

    /// The label used in `/readyz` and the `router_config_source` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::None => "none",
            ConfigSource::File => "file",
            ConfigSource::Snapshot => "snapshot",
            ConfigSource::ControlPlane => "control_plane",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ConfigSource::File,
            2 => ConfigSource::Snapshot,
            3 => ConfigSource::ControlPlane,
            _ => ConfigSource::None,
        }
    }
}

/// Why a rule set was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// It failed validation; every problem is listed.
    #[error("invalid rule set:\n{0}")]
    Invalid(models_config::ValidationErrors),
    /// It was valid but a table could not be built from it.
    #[error("rule set cannot be applied: {0}")]
    Build(String),
}

impl Shared {
    /// Validates `rule_set` and builds the first table from it, which came from `source`.
    ///
    /// # Errors
    ///
    /// When validation or the table build fails.
    pub fn new(
        rule_set: RuleSet,
        source: ConfigSource,
        routing_header: HeaderName,
        access_log: bool,
        workers: usize,
    ) -> Result<Self, ApplyError> {
        let table = build(rule_set, None, workers, 1)?;
        metrics::record_table(table.version, table.generation, table.len());
        let shared = Shared {
            table: ArcSwap::from_pointee(table),
            routing_header,
            access_log,
            workers,
            ready: AtomicBool::new(false),
            source: AtomicU8::new(source as u8),
            control_plane_connected: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            apply_lock: Mutex::new(()),
        };
        metrics::record_source(source);
        Ok(shared)
    }

    /// An empty table (every key unknown) that is not ready until a rule set is applied:
    /// the start of a router following a control plane with no snapshot on disk.
    ///
    /// # Errors
    ///
    /// Never in practice (an empty rule set is valid); kept for symmetry with [`Shared::new`].
    pub fn unconfigured(
        routing_header: HeaderName,
        access_log: bool,
        workers: usize,
    ) -> Result<Self, ApplyError> {
        Self::new(
            RuleSet::default(),
            ConfigSource::None,
            routing_header,
            access_log,
            workers,
        )
    }

    /// Whether a rule set is in force (false only before the first one in control-plane
    /// mode).
    pub fn is_configured(&self) -> bool {
        self.source() != ConfigSource::None
    }

    /// Where the rule set in force came from.
    pub fn source(&self) -> ConfigSource {
        ConfigSource::from_u8(self.source.load(Ordering::Relaxed))
    }

    /// Records where the rule set in force came from (and publishes it as a metric).
    pub fn set_source(&self, source: ConfigSource) {
        self.source.store(source as u8, Ordering::Relaxed);
        metrics::record_source(source);
    }

    /// Whether a control-plane Watch stream is open.
    pub fn control_plane_connected(&self) -> bool {
        self.control_plane_connected.load(Ordering::Relaxed)
    }

    /// Records whether a control-plane Watch stream is open (and publishes it as a metric).
    pub fn set_control_plane_connected(&self, connected: bool) {
        self.control_plane_connected
            .store(connected, Ordering::Relaxed);
        metrics::record_control_plane_connected(connected);
    }

    /// Validates `rule_set`, builds a table from it and swaps it in atomically, recording
    /// `source` as where it came from. Requests in flight finish on the table they started
    /// with. On error the current table and source stay.
    ///
    /// # Errors
    ///
    /// When validation or the table build fails.
    pub fn apply(
        &self,
        rule_set: RuleSet,
        source: ConfigSource,
    ) -> Result<Arc<RouteTable>, ApplyError> {
        let _one_at_a_time = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.table.load_full();
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let result = build(rule_set, Some(&current), self.workers, generation);
        metrics::record_reload(result.is_ok());
        let table = Arc::new(result?);
        self.generation.store(generation, Ordering::Relaxed);
        self.table.store(Arc::clone(&table));
        self.set_source(source);
        metrics::record_table(table.version, table.generation, table.len());
        tracing::info!(
            version = table.version,
            generation,
            routes = table.len(),
            "route table applied"
        );
        Ok(table)
    }
}

fn build(
    rule_set: RuleSet,
    previous: Option<&RouteTable>,
    workers: usize,
    generation: u64,
) -> Result<RouteTable, ApplyError> {
    let warnings = models_config::validate(&rule_set).map_err(ApplyError::Invalid)?;
    for w in &warnings {
        tracing::warn!(path = %w.path, "{}", w.message);
    }
    let canonical = serde_json::to_vec(&rule_set).map_err(|e| ApplyError::Build(e.to_string()))?;
    let sha256 = hex(&Sha256::digest(&canonical));
    RouteTable::build(Arc::new(rule_set), previous, workers, generation, sha256)
        .map_err(ApplyError::Build)
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}
