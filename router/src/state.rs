//! State shared by every worker, the admin API and the reloader.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use models_config::spec::RuleSet;
use models_config::{ConfigError, ValidRuleSet};
use sha2::{Digest, Sha256};

use crate::health::{ProbeReceiver, ProbeSpawner};
use crate::host::HostRegistry;
use crate::identity::Verifier;
use crate::metrics;
use crate::route::RouteTable;
pub use crate::source::ConfigSource;
use service_runtime::otlp::Tracer;

/// What every part of the router reads: the current route table and fixed settings.
#[derive(Debug)]
pub struct Shared {
    /// The route table in use. Requests take a snapshot; the reloader swaps it whole.
    pub table: ArcSwap<RouteTable>,
    /// The state of every endpoint address and cluster, shared by successive tables.
    pub hosts: HostRegistry,
    /// Starts the health-check probers of new endpoints.
    probes: ProbeSpawner,
    /// Where those probers wait until [`Shared::take_probers`] hands them to a runtime.
    probe_receiver: Mutex<Option<ProbeReceiver>>,
    /// The fixed settings of the request path (from the command line).
    pub settings: ProxySettings,
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

/// The fixed settings of the request path, from the command line.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The header carrying the routing key.
    pub routing_header: HeaderName,
    /// The header carrying the tenant.
    pub tenant_header: HeaderName,
    /// Whether one access-log line is emitted per request.
    pub access_log: bool,
    /// Whether responses carry `x-served-by`.
    pub attribution: bool,
    /// Verifies bearer tokens, when `--jwt-jwks` is given.
    pub identity: Option<Arc<Verifier>>,
    /// Records one span per sampled request and exports it, with `--otlp-endpoint`.
    pub tracer: Option<Arc<Tracer>>,
    /// Proxy worker threads.
    pub workers: usize,
    /// Most header fields in a request (hyper enforces it for HTTP/1.1, the proxy for
    /// HTTP/2).
    pub max_request_headers: usize,
    /// The header-read timeout, which also bounds the wait for the first chunk of an
    /// HTTP/1.1 chunked body (read before anything goes upstream); `None`: no limit.
    pub header_read_timeout: Option<Duration>,
}

impl ProxySettings {
    /// The defaults of the command line, with `workers` workers.
    pub fn with_workers(workers: usize) -> Self {
        ProxySettings {
            routing_header: HeaderName::from_static("x-routing-key"),
            tenant_header: HeaderName::from_static("x-tenant-id"),
            access_log: false,
            attribution: true,
            identity: None,
            tracer: None,
            workers,
            max_request_headers: 100,
            header_read_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl Shared {
    /// Builds the first table from `rule_set`, which came from `source`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when a cluster's TLS files cannot be loaded (each issue
    /// names the cluster and the file).
    pub fn try_new(
        rule_set: ValidRuleSet,
        source: ConfigSource,
        settings: ProxySettings,
    ) -> Result<Self, ConfigError> {
        let hosts = HostRegistry::new(settings.workers);
        let (probes, probe_receiver) = ProbeSpawner::new();
        let table = build(rule_set, None, &hosts, &probes, 1, settings.attribution)?;
        metrics::record_table(table.version, table.generation, table.len());
        let shared = Shared {
            table: ArcSwap::from_pointee(table),
            hosts,
            probes,
            probe_receiver: Mutex::new(Some(probe_receiver)),
            settings,
            ready: AtomicBool::new(false),
            source: AtomicU8::new(source as u8),
            control_plane_connected: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            apply_lock: Mutex::new(()),
        };
        metrics::record_source(source);
        Ok(shared)
    }

    /// [`Shared::try_new`], falling back to [`Shared::unconfigured`] (not ready, every key
    /// unknown) with every problem logged when the rule set's TLS files cannot be loaded.
    pub fn new(rule_set: ValidRuleSet, source: ConfigSource, settings: ProxySettings) -> Self {
        match Self::try_new(rule_set, source, settings.clone()) {
            Ok(shared) => shared,
            Err(e) => {
                log_rejected(&e);
                Self::unconfigured(settings)
            }
        }
    }

    /// An empty table (every key unknown) that is not ready until a rule set is applied:
    /// the start of a router following a control plane with no snapshot on disk.
    pub fn unconfigured(settings: ProxySettings) -> Self {
        let empty = ValidRuleSet::new(RuleSet::default()).expect("an empty rule set is valid");
        Self::try_new(empty, ConfigSource::None, settings)
            .expect("an empty rule set has no TLS files to load")
    }

    /// The receiver of the health-check probers, taken once by the runtime that runs them.
    pub fn take_probers(&self) -> Option<ProbeReceiver> {
        self.probe_receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
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

    /// [`Shared::try_apply`], keeping the table in force (and returning it) when the rule
    /// set's TLS files cannot be loaded; every problem is logged and the reload counted as
    /// failed.
    pub fn apply(&self, rule_set: ValidRuleSet, source: ConfigSource) -> Arc<RouteTable> {
        match self.try_apply(rule_set, source) {
            Ok(table) => table,
            Err(e) => {
                log_rejected(&e);
                self.table.load_full()
            }
        }
    }

    /// Builds a table from `rule_set` (validated once, when it was parsed; its TLS files
    /// are read now) and swaps it in atomically, recording `source` as where it came from.
    /// Requests in flight finish on the table they started with; endpoint state carries
    /// over by address.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when a cluster's TLS files cannot be loaded (each issue
    /// names the cluster and the file): nothing changes, and
    /// `router_config_reloads_total{result="error"}` is incremented.
    pub fn try_apply(
        &self,
        rule_set: ValidRuleSet,
        source: ConfigSource,
    ) -> Result<Arc<RouteTable>, ConfigError> {
        let _one_at_a_time = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.table.load_full();
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let built = build(
            rule_set,
            Some(&current),
            &self.hosts,
            &self.probes,
            generation,
            self.settings.attribution,
        );
        let table = match built {
            Ok(table) => Arc::new(table),
            Err(e) => {
                metrics::record_reload(false);
                return Err(e);
            }
        };
        metrics::record_reload(true);
        self.generation.store(generation, Ordering::Relaxed);
        self.table.store(Arc::clone(&table));
        drop(current);
        self.hosts.prune();
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

/// Logs every problem of a rule set that could not be applied.
fn log_rejected(e: &ConfigError) {
    for issue in e.issues() {
        tracing::error!(at = %issue.path, "config rejected: {}", issue.message);
    }
    tracing::error!("config rejected; keeping the current routes");
}

fn build(
    rule_set: ValidRuleSet,
    previous: Option<&RouteTable>,
    hosts: &HostRegistry,
    probes: &ProbeSpawner,
    generation: u64,
    attribution: bool,
) -> Result<RouteTable, ConfigError> {
    for w in rule_set.warnings() {
        tracing::warn!(path = %w.path, "{}", w.message);
    }
    let canonical = serde_json::to_vec(rule_set.rules()).expect("a rule set serializes to JSON");
    let sha256 = hex(&Sha256::digest(&canonical));
    RouteTable::try_build(
        rule_set,
        previous,
        hosts,
        probes,
        generation,
        sha256,
        attribution,
    )
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
