//! The immutable route table: routing key → route → cluster → endpoints.
//!
//! A table is built whole from a validated rule set, off the hot path, then published with
//! one `ArcSwap::store`. Requests read it through a snapshot guard that they drop before any
//! `.await`. Everything a request needs is precomputed here: the balancer's schedule or hash
//! ring, split weights, timeouts, which endpoint flags make an endpoint ineligible, the
//! circuit-breaker limits, the outlier policy and the TLS configurations (their files are
//! read here, once per build, and a file that cannot be loaded fails the build). The
//! endpoints themselves are the [`Host`]s of the [`HostRegistry`]: their pools, in-flight
//! counts, health and ejections carry over from one table to the next.

use std::collections::{BTreeMap, HashMap};

/// The maps the request path looks up: std's, with foldhash instead of SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::Counter;
use models_config::spec::{CircuitBreakerSpec, HealthCheckSpec, LbPolicy, Protocol};
use models_config::{ConfigError, ValidRuleSet, allocation};

use crate::balance::Balancer;
use crate::health::{self, ProbeSpawner};
use crate::host::{ClusterPermit, ClusterState, EJECTED, Host, HostRegistry, UNHEALTHY};
use crate::metrics::{self as router_metrics, RouteMetrics};
use crate::mirror::Mirror;
use crate::outlier::OutlierPolicy;
use crate::retry::RetryPolicy;
use crate::rng;
use crate::tenant::Tenant;
use crate::upstream::PendingLimit;
use crate::upstream::tls::{self, UpstreamTls};

/// Up to this many declared tenants, a tenant is found by comparing names in turn, which
/// costs less than hashing the header value; past it, by a hashed lookup.
const LINEAR_TENANTS: usize = 8;

/// A set of interchangeable endpoints and how to reach them.
#[derive(Debug)]
pub struct Cluster {
    /// Configured name (a metric label).
    pub name: Arc<str>,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// The configured policy, for display.
    pub lb_policy: LbPolicy,
    /// Endpoints in configuration order (the balancer's indices refer to this order).
    pub endpoints: Box<[Arc<Host>]>,
    /// Each endpoint's relative weight, in the same order.
    pub weights: Box<[u32]>,
    /// Picks an endpoint per request.
    pub balancer: Balancer,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Default time allowed until response headers.
    pub request_timeout: Duration,
    /// The host flags that make an endpoint ineligible in this cluster: [`UNHEALTHY`] with
    /// a health check, [`EJECTED`] with outlier detection; 0 when neither is configured, and
    /// then no flag is ever read.
    pub eligibility_mask: u8,
    /// The active health check, when configured (its probers run per host).
    pub health_check: Option<HealthCheckSpec>,
    /// Passive outlier detection, when configured.
    pub outlier: Option<OutlierPolicy>,
    /// The circuit breaker, when configured.
    pub breaker: Option<Breaker>,
    /// The counts of the cluster that outlive tables (breaker, retry budget).
    pub state: Arc<ClusterState>,
    /// `x-served-by` of each endpoint (same order), when attribution is on.
    pub served_by: Option<Box<[HeaderValue]>>,
    /// `x-served-by` of the router's own answers for this cluster, when attribution is on.
    pub served_by_cluster: Option<HeaderValue>,
    /// Whether the endpoints are reached over TLS (the `tls` block).
    pub tls: bool,
}

/// A cluster's circuit breaker: its limits (the counts are the cluster's `state`).
#[derive(Debug)]
pub struct Breaker {
    /// Most requests in flight.
    pub max_requests: usize,
    /// Most requests waiting for a new connection.
    pub max_pending: usize,
    /// The configured block, for display.
    pub spec: CircuitBreakerSpec,
    refused_requests: Counter,
    refused_pending: Counter,
}

/// One cluster a route can send to, with the metric handles of that (route, cluster) pair.
#[derive(Debug)]
pub struct RouteTarget {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Request counters and latency histogram labelled with route and cluster.
    pub metrics: RouteMetrics,
}

/// Where the requests of one routing key go.
#[derive(Debug)]
pub struct Route {
    /// The routing key (a metric label).
    pub key: Arc<str>,
    /// The primary cluster, or the clusters of a weighted split.
    pub targets: Box<[RouteTarget]>,
    /// Cumulative split weights, one per target (empty without a split).
    split_cumulative: Box<[u32]>,
    /// Tried in order when the cluster before has no eligible endpoint, is overloaded, or
    /// could not be connected to.
    pub fallbacks: Box<[RouteTarget]>,
    /// Time allowed from forwarding until response headers.
    pub timeout: Duration,
    /// The header that makes the split (and the mirror's sample) sticky.
    pub sticky_header: Option<HeaderName>,
    /// Retries, when configured.
    pub retry: Option<RetryPolicy>,
    /// The mirror, when configured.
    pub mirror: Option<Mirror>,
    /// Tenants allowed, by their place among the table's tenants ([`Tenant::index`];
    /// empty: every request).
    pub tenants: Box<[usize]>,
    /// Where synthetic and replay traffic goes, when the route separates it.
    pub synthetic: Option<RouteTarget>,
    /// The largest request body taken (`max_request_body_bytes`), when limited.
    pub max_body: Option<u64>,
    /// Request body bytes of this route (registered on first use).
    request_bytes: std::sync::OnceLock<metrics::Counter>,
}

/// The whole routing state of one generation.
#[derive(Debug)]
pub struct RouteTable {
    /// Routes by key. Keys come from clients but the table never grows from them, so a fast
    /// hasher (seeded per process) is safe here.
    routes: FastMap<Box<[u8]>, Arc<Route>>,
    clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    /// Declared tenants, in the rule set's order (each at its [`Tenant::index`]).
    tenant_list: Box<[Arc<Tenant>]>,
    /// The same by name, when there are more than [`LINEAR_TENANTS`] (empty otherwise).
    tenants: FastMap<Box<[u8]>, Arc<Tenant>>,
    /// `x-served-by` of the router's answers that reach no cluster, when attribution is on.
    pub served_by_version: Option<HeaderValue>,
    /// The rule set this table was built from.
    pub rule_set: ValidRuleSet,
    /// The rule set's version (assigned by the store; 0 for a hand-written file).
    pub version: u64,
    /// Local counter of tables applied by this process, starting at 1.
    pub generation: u64,
    /// Hex SHA-256 of the rule set's canonical JSON.
    pub sha256: String,
}

/// What a host is probed with: the check, whether over h2c, and the cluster that asked.
type Probed<'a> = (Arc<Host>, &'a HealthCheckSpec, bool, Arc<str>);

/// A host of the table being built and its TLS settings (`None`: plaintext).
type Reached = (Arc<Host>, Option<Arc<UpstreamTls>>);

// === impl Cluster ===

impl Cluster {
    /// Picks an endpoint for a request with `headers`, never `exclude` (an endpoint that
    /// just failed to connect) and never one that is not eligible here. `None` when no
    /// endpoint qualifies.
    #[inline]
    pub fn pick(&self, headers: &HeaderMap, exclude: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 1 && exclude.is_some() {
            return None;
        }
        let i = self
            .balancer
            .pick(n, headers, exclude, |i| self.endpoints[i].active_requests());
        if self.eligibility_mask == 0 {
            return Some(i);
        }
        self.pick_eligible(i, exclude)
    }

    /// `first` when it is eligible, else the next eligible endpoint after it (in
    /// configuration order, so hash policies stay deterministic for a key).
    fn pick_eligible(&self, first: usize, exclude: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        let mask = self.eligibility_mask;
        (0..n)
            .map(|k| (first + k) % n)
            .find(|&j| Some(j) != exclude && self.endpoints[j].eligible(mask))
    }

    /// Whether endpoint `i` may get new requests in this cluster.
    pub fn is_eligible(&self, i: usize) -> bool {
        self.endpoints[i].eligible(self.eligibility_mask)
    }
}

impl Route {
    /// The counter of this route's request body bytes.
    pub fn request_meter(&self) -> metrics::Counter {
        self.request_bytes
            .get_or_init(|| router_metrics::request_bytes(&self.key))
            .clone()
    }

    /// Whether a request of `tenant` (the declared tenant its header names, if any) may
    /// use this route: a name not declared is never among a route's tenants.
    #[inline]
    pub fn allows(&self, tenant: Option<&Tenant>) -> bool {
        self.tenants.is_empty() || tenant.is_some_and(|t| self.tenants.contains(&t.index))
    }
}

// === impl Breaker ===

impl Breaker {
    /// Admits one more request in flight to the cluster whose counts are `state`, or counts
    /// a refusal.
    #[inline]
    pub fn admit(&self, state: &Arc<ClusterState>) -> Option<ClusterPermit> {
        let permit = ClusterPermit::try_acquire(state, self.max_requests);
        if permit.is_none() {
            self.refused_requests.increment(1);
        }
        permit
    }

    /// The limit on requests waiting for a connection, for the upstream pool.
    #[inline]
    pub fn pending_limit<'a>(&self, state: &'a ClusterState) -> PendingLimit<'a> {
        PendingLimit {
            count: &state.pending,
            max: self.max_pending,
        }
    }

    /// Counts a request refused because `max_pending` were already waiting.
    pub fn refused_pending(&self) {
        self.refused_pending.increment(1);
    }
}

// === impl Route ===

impl Route {
    /// The target for one request: the primary, or a draw among the split. With a sticky
    /// header on the request, the draw is Lightbulb's allocation of its value (salt = the
    /// routing key; clusters laid out in ascending byte order of their names, each over
    /// weight × 100 of the 10,000 buckets), so one subject always gets the same cluster.
    pub fn pick_target(&self, headers: &HeaderMap) -> &RouteTarget {
        if self.split_cumulative.is_empty() {
            return &self.targets[0];
        }
        let total = *self
            .split_cumulative
            .last()
            .expect("a split is never empty");
        let draw = match self.sticky_header.as_ref().and_then(|h| headers.get(h)) {
            Some(value) => {
                // Weights sum to 100 (validated): bucket / 100 is the position in percent.
                allocation::bucket_bytes(&self.key, value.as_bytes()) * total / allocation::BUCKETS
            }
            None => rng::below(total as usize) as u32,
        };
        let i = self.split_cumulative.partition_point(|&c| c <= draw);
        &self.targets[i.min(self.targets.len() - 1)]
    }
}

// === impl RouteTable ===

impl RouteTable {
    /// [`RouteTable::try_build`] for a rule set whose TLS files are known to load (tests,
    /// benches).
    ///
    /// # Panics
    ///
    /// When a cluster's TLS files cannot be loaded.
    pub fn build(
        rule_set: ValidRuleSet,
        previous: Option<&RouteTable>,
        hosts: &HostRegistry,
        probes: &ProbeSpawner,
        generation: u64,
        sha256: String,
        attribution: bool,
    ) -> Self {
        Self::try_build(
            rule_set,
            previous,
            hosts,
            probes,
            generation,
            sha256,
            attribution,
        )
        .unwrap_or_else(|e| panic!("the TLS files of the rule set must load: {e}"))
    }

    /// Builds a table from a validated rule set. The TLS files of every cluster are read
    /// first, and nothing changes when one fails. Endpoints come from `hosts` (so the state
    /// of an address carries over from `previous`) and get their cluster's TLS settings
    /// (a pool whose trust changed lets go of its connections), and every endpoint of a
    /// cluster with a health check gets a prober through `probes`; endpoints of `previous`
    /// that no cluster checks any more stop being probed.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] with an issue per cluster whose CA, certificate or key file
    /// cannot be loaded, naming the cluster and the file.
    pub fn try_build(
        rule_set: ValidRuleSet,
        previous: Option<&RouteTable>,
        hosts: &HostRegistry,
        probes: &ProbeSpawner,
        generation: u64,
        sha256: String,
        attribution: bool,
    ) -> Result<Self, ConfigError> {
        let cluster_tls = tls::load_clusters(&rule_set)?;
        // An endpoint that an `auto` cluster reaches over TLS offers both protocols.
        let auto_tls: std::collections::HashSet<&str> = rule_set
            .clusters
            .iter()
            .filter(|(name, spec)| {
                spec.protocol == Protocol::Auto && cluster_tls.contains_key(name.as_str())
            })
            .filter_map(|(name, _)| rule_set.cluster(name))
            .flat_map(|c| c.endpoints.iter().map(|e| &*e.address))
            .collect();
        // Address → its host and TLS settings: the first cluster (by name) decides; clusters
        // sharing an endpoint have the same `tls` block (validated).
        let mut reached: HashMap<Arc<str>, Reached> = HashMap::new();
        let version = rule_set.version;
        let served_by_value = |text: String| {
            HeaderValue::from_str(&text).expect("names, addresses and versions are header-safe")
        };
        let mut clusters = BTreeMap::new();
        // Address → its prober's settings: the first cluster (by name) decides.
        let mut probed: HashMap<Arc<str>, Probed<'_>> = HashMap::new();
        for (name, spec) in rule_set.clusters.iter() {
            let parsed = rule_set
                .cluster(name)
                .expect("a validated rule set has parsed forms of every cluster");
            let name: Arc<str> = Arc::from(name.as_str());
            let endpoints: Box<[Arc<Host>]> =
                parsed.endpoints.iter().map(|e| hosts.host(e)).collect();
            let weights: Box<[u32]> = parsed.endpoints.iter().map(|e| e.weight).collect();
            let tls = cluster_tls.get(&*name);
            for (i, (host, endpoint)) in endpoints.iter().zip(&parsed.endpoints).enumerate() {
                reached.entry(Arc::clone(&host.address)).or_insert_with(|| {
                    let settings = tls.map(|t| {
                        let auto = auto_tls.contains(&*endpoint.address);
                        t.endpoint(i, &endpoint.address, &endpoint.authority, auto)
                    });
                    (Arc::clone(host), settings)
                });
            }
            let balance_input: Vec<(&str, u32)> = parsed
                .endpoints
                .iter()
                .map(|e| (&*e.address, e.weight))
                .collect();
            if let Some(check) = &spec.health_check {
                for host in endpoints.iter() {
                    probed.entry(Arc::clone(&host.address)).or_insert_with(|| {
                        (
                            Arc::clone(host),
                            check,
                            spec.protocol == Protocol::Http2,
                            Arc::clone(&name),
                        )
                    });
                }
            }
            let mut mask = 0;
            if spec.health_check.is_some() {
                mask |= UNHEALTHY;
            }
            if spec.outlier_detection.is_some() {
                mask |= EJECTED;
            }
            let breaker = spec.circuit_breaker.as_ref().map(|b| Breaker {
                max_requests: b.max_requests as usize,
                max_pending: b.max_pending as usize,
                spec: b.clone(),
                refused_requests: router_metrics::circuit_breaker_refused(&name, "max_requests"),
                refused_pending: router_metrics::circuit_breaker_refused(&name, "max_pending"),
            });
            let state = hosts.cluster(&name);
            let served_by = attribution.then(|| {
                endpoints
                    .iter()
                    .map(|h| {
                        served_by_value(format!(
                            "cluster={name}; endpoint={}; version={version}",
                            h.address
                        ))
                    })
                    .collect::<Box<[HeaderValue]>>()
            });
            let served_by_cluster =
                attribution.then(|| served_by_value(format!("cluster={name}; version={version}")));
            clusters.insert(
                Arc::clone(&name),
                Arc::new(Cluster {
                    protocol: spec.protocol,
                    lb_policy: spec.lb_policy,
                    balancer: Balancer::new(
                        spec.lb_policy,
                        &balance_input,
                        parsed.hash_header.clone(),
                    ),
                    endpoints,
                    weights,
                    connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
                    request_timeout: Duration::from_millis(spec.request_timeout_ms),
                    eligibility_mask: mask,
                    health_check: spec.health_check.clone(),
                    outlier: spec.outlier_detection.as_ref().map(OutlierPolicy::new),
                    breaker,
                    state,
                    served_by,
                    served_by_cluster,
                    tls: tls.is_some(),
                    name,
                }),
            );
        }
        // Before the probers start, so that a TLS cluster's first probe uses TLS.
        for (host, settings) in reached.into_values() {
            host.pool.set_tls(settings);
        }
        for (host, check, h2, cluster) in probed.values() {
            probes.ensure(host, check, *h2, cluster);
        }
        if let Some(prev) = previous {
            for host in prev.clusters.values().flat_map(|c| c.endpoints.iter()) {
                if !probed.contains_key(&host.address) {
                    health::stop(host);
                }
            }
        }
        let cluster = |name: &str| -> Arc<Cluster> {
            Arc::clone(
                clusters
                    .get(name)
                    .expect("validated: every cluster reference resolves"),
            )
        };
        // A tenant's place among the declared ones, as `Tenant::index` numbers them below.
        let tenant_index: HashMap<&str, usize> = rule_set
            .tenants
            .iter()
            .enumerate()
            .map(|(index, (name, _))| (name.as_str(), index))
            .collect();
        let mut routes =
            FastMap::with_capacity_and_hasher(rule_set.routes.len(), Default::default());
        for (key, spec) in rule_set.routes.iter() {
            let key_arc: Arc<str> = Arc::from(key.as_str());
            let target = |c: Arc<Cluster>| RouteTarget {
                metrics: RouteMetrics::new(
                    Arc::clone(&key_arc),
                    Arc::clone(&c.name),
                    rule_set.tenants.len(),
                ),
                cluster: c,
            };
            let primary = cluster(&spec.cluster);
            let (targets, split_cumulative) = match &spec.split {
                Some(split) if !split.is_empty() => {
                    let mut targets = Vec::with_capacity(split.len());
                    let mut cumulative = Vec::with_capacity(split.len());
                    let mut sum = 0;
                    for (name, weight) in split {
                        sum += *weight;
                        cumulative.push(sum);
                        targets.push(target(cluster(name)));
                    }
                    (targets, cumulative)
                }
                _ => (vec![target(Arc::clone(&primary))], Vec::new()),
            };
            let fallbacks: Box<[RouteTarget]> = spec
                .fallback
                .iter()
                .flat_map(|f| f.clusters())
                .map(|name| target(cluster(name)))
                .collect();
            let timeout = spec
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(primary.request_timeout);
            let parsed = rule_set.route(key);
            let retry = spec.retry.as_ref().map(|r| {
                let on = parsed.map_or(&[][..], |p| &p.retry_on[..]);
                RetryPolicy::new(r, on)
            });
            let mirror = spec
                .mirror
                .as_ref()
                .map(|m| Mirror::new(key, m, cluster(&m.cluster)));
            routes.insert(
                Box::from(key.as_bytes()),
                Arc::new(Route {
                    key: Arc::clone(&key_arc),
                    targets: targets.into_boxed_slice(),
                    split_cumulative: split_cumulative.into_boxed_slice(),
                    fallbacks,
                    timeout,
                    sticky_header: parsed.and_then(|p| p.sticky_header.clone()),
                    retry,
                    mirror,
                    tenants: spec
                        .tenants
                        .iter()
                        .map(|t| tenant_index[t.as_str()])
                        .collect(),
                    synthetic: spec
                        .synthetic_cluster
                        .as_deref()
                        .map(|name| target(cluster(name))),
                    max_body: spec.max_request_body_bytes,
                    request_bytes: std::sync::OnceLock::new(),
                }),
            );
        }
        let tenant_list: Box<[Arc<Tenant>]> = rule_set
            .tenants
            .iter()
            .enumerate()
            .map(|(index, (name, spec))| {
                let name_arc: Arc<str> = Arc::from(name.as_str());
                let state = hosts.tenant(&name_arc);
                Arc::new(Tenant::new(name, index, spec, state))
            })
            .collect();
        let tenants = if tenant_list.len() > LINEAR_TENANTS {
            let by_name = |t: &Arc<Tenant>| (Box::from(t.name.as_bytes()), Arc::clone(t));
            tenant_list.iter().map(by_name).collect()
        } else {
            FastMap::default()
        };
        Ok(RouteTable {
            routes,
            clusters,
            tenant_list,
            tenants,
            served_by_version: attribution.then(|| served_by_value(format!("version={version}"))),
            version: rule_set.version,
            rule_set,
            generation,
            sha256,
        })
    }

    /// The route of a routing key, by the raw header bytes (no UTF-8 check, no allocation).
    pub fn route(&self, key: &[u8]) -> Option<&Arc<Route>> {
        self.routes.get(key)
    }

    /// The declared tenant named by the header value `tenant`.
    #[inline]
    pub fn tenant(&self, tenant: &[u8]) -> Option<&Arc<Tenant>> {
        if self.tenant_list.len() > LINEAR_TENANTS {
            return self.tenants.get(tenant);
        }
        self.tenant_list
            .iter()
            .find(|t| t.name.as_bytes() == tenant)
    }

    /// Whether any tenant is declared.
    #[inline]
    pub fn has_tenants(&self) -> bool {
        !self.tenant_list.is_empty()
    }

    /// Declared tenants, in the rule set's order.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenant_list.iter()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Clusters by name.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> ValidRuleSet {
        models_config::parse(json).expect("valid rule set")
    }

    fn build(json: &str, previous: Option<&RouteTable>, hosts: &HostRegistry) -> RouteTable {
        let (probes, _receiver) = ProbeSpawner::new();
        let generation = previous.map_or(1, |p| p.generation + 1);
        RouteTable::build(
            rules(json),
            previous,
            hosts,
            &probes,
            generation,
            String::new(),
            true,
        )
    }

    const RULES: &str = r#"{
        "clusters": {
            "a": { "endpoints": ["127.0.0.1:1", "127.0.0.1:2"] },
            "b": { "endpoints": [{ "address": "127.0.0.1:3", "weight": 2 }], "protocol": "http2", "request_timeout_ms": 700 }
        },
        "routes": {
            "ka": { "cluster": "a", "fallback": "b" },
            "kb": { "cluster": "b" },
            "ks": { "cluster": "a", "split": { "a": 25, "b": 75 }, "timeout_ms": 50 }
        }
    }"#;

    #[test]
    fn lookup_by_header_bytes_finds_the_route() {
        let hosts = HostRegistry::new(2);
        let t = build(RULES, None, &hosts);
        assert_eq!(t.len(), 3);
        let r = t.route(b"ka").unwrap();
        assert_eq!(&*r.targets[0].cluster.name, "a");
        assert_eq!(&*r.fallbacks[0].cluster.name, "b");
        assert!(t.route(b"nope").is_none());
        assert_eq!(t.route(b"kb").unwrap().timeout, Duration::from_millis(700));
        assert_eq!(t.route(b"ks").unwrap().timeout, Duration::from_millis(50));
    }

    #[test]
    fn tenants_are_found_by_name_in_few_and_in_many() {
        let hosts = HostRegistry::new(2);
        for count in [1, LINEAR_TENANTS, LINEAR_TENANTS + 1, 40] {
            let tenants: Vec<String> = (0..count)
                .map(|i| format!(r#""team-{i}": {{ "max_concurrent": {} }}"#, i + 1))
                .collect();
            let json = RULES.replacen(
                r#""routes": {"#,
                &format!(r#""tenants": {{ {} }}, "routes": {{"#, tenants.join(", ")),
                1,
            );
            let t = build(&json, None, &hosts);
            assert!(t.has_tenants());
            assert_eq!(t.tenants().count(), count);
            for i in 0..count {
                let tenant = t.tenant(format!("team-{i}").as_bytes()).expect("declared");
                assert_eq!(&*tenant.name, format!("team-{i}"), "{count} tenants");
                assert_eq!(t.tenants().nth(tenant.index).unwrap().name, tenant.name);
            }
            for other in [&b"team-"[..], b"team-999", b"", b"TEAM-0", b"team-0 "] {
                assert!(t.tenant(other).is_none(), "{count} tenants: {other:?}");
            }
        }
        let t = build(RULES, None, &hosts);
        assert!(!t.has_tenants());
        assert!(t.tenant(b"team-0").is_none());
    }

    #[test]
    fn split_follows_weights() {
        let hosts = HostRegistry::new(1);
        let t = build(RULES, None, &hosts);
        let r = t.route(b"ks").unwrap();
        let to_b = (0..20_000)
            .filter(|_| &*r.pick_target(&HeaderMap::new()).cluster.name == "b")
            .count();
        assert!((14_000..16_000).contains(&to_b), "{to_b}");
    }

    #[test]
    fn endpoint_state_survives_a_rebuild_for_unchanged_addresses() {
        let hosts = HostRegistry::new(1);
        let first = build(RULES, None, &hosts);
        let host =
            |t: &RouteTable| Arc::clone(&t.route(b"kb").unwrap().targets[0].cluster.endpoints[0]);
        let in_flight = crate::host::InFlight::start(&host(&first), None);
        host(&first).set_flag(EJECTED);
        let second = build(RULES, Some(&first), &hosts);
        assert!(Arc::ptr_eq(&host(&first), &host(&second)));
        assert_eq!(host(&second).active_requests(), 1);
        assert!(host(&second).has_flag(EJECTED));
        drop(in_flight);
        drop(first);
        drop(second);
        hosts.prune();
        assert_eq!(hosts.live_hosts(), 0, "nothing uses the addresses any more");
    }

    #[test]
    fn fallback_chains_keep_their_order() {
        let hosts = HostRegistry::new(1);
        let t = build(
            r#"{
                "clusters": {
                    "a": { "endpoints": ["127.0.0.1:1"] },
                    "b": { "endpoints": ["127.0.0.1:2"] },
                    "c": { "endpoints": ["127.0.0.1:3"] }
                },
                "routes": { "k": { "cluster": "a", "fallback": ["c", "b"] } }
            }"#,
            None,
            &hosts,
        );
        let names: Vec<&str> = t
            .route(b"k")
            .unwrap()
            .fallbacks
            .iter()
            .map(|f| &*f.cluster.name)
            .collect();
        assert_eq!(names, ["c", "b"]);
    }

    const CHECKED: &str = r#"{
        "clusters": {
            "a": { "endpoints": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
                   "health_check": { "http_path": "/health" },
                   "outlier_detection": {},
                   "circuit_breaker": { "max_requests": 1 } },
            "plain": { "endpoints": ["127.0.0.1:1"] }
        },
        "routes": { "k": { "cluster": "a" }, "p": { "cluster": "plain" } }
    }"#;

    #[test]
    fn picks_skip_endpoints_that_are_not_eligible() {
        let hosts = HostRegistry::new(1);
        let t = build(CHECKED, None, &hosts);
        let a = &t.route(b"k").unwrap().targets[0].cluster;
        assert_eq!(a.eligibility_mask, UNHEALTHY | EJECTED);
        a.endpoints[0].set_flag(UNHEALTHY);
        a.endpoints[1].set_flag(EJECTED);
        let headers = HeaderMap::new();
        for _ in 0..20 {
            assert_eq!(a.pick(&headers, None), Some(2));
        }
        assert_eq!(
            a.pick(&headers, Some(2)),
            None,
            "the only eligible one failed"
        );
        // The same address in a cluster without checks ignores the flags.
        let plain = &t.route(b"p").unwrap().targets[0].cluster;
        assert_eq!(plain.eligibility_mask, 0);
        assert_eq!(plain.pick(&headers, None), Some(0));
        let breaker = a.breaker.as_ref().unwrap();
        let held = breaker
            .admit(&a.state)
            .expect("the first request is admitted");
        assert!(breaker.admit(&a.state).is_none(), "max_requests 1");
        drop(held);
        assert!(breaker.admit(&a.state).is_some());
    }

    #[test]
    fn a_table_without_the_check_stops_probing() {
        let hosts = HostRegistry::new(1);
        let (probes, _receiver) = ProbeSpawner::new();
        let first = RouteTable::build(
            rules(CHECKED),
            None,
            &hosts,
            &probes,
            1,
            String::new(),
            true,
        );
        let host = Arc::clone(&first.route(b"k").unwrap().targets[0].cluster.endpoints[0]);
        assert!(health::is_probed(&host));
        host.set_flag(UNHEALTHY);
        let bare = CHECKED.replace(r#""health_check": { "http_path": "/health" },"#, "");
        let second = RouteTable::build(
            rules(&bare),
            Some(&first),
            &hosts,
            &probes,
            2,
            String::new(),
            true,
        );
        assert!(!health::is_probed(&host));
        assert!(
            host.eligible(UNHEALTHY),
            "an endpoint nobody checks is not held unhealthy"
        );
        drop(second);
    }

    #[test]
    fn a_build_whose_tls_files_do_not_load_changes_nothing() {
        let hosts = HostRegistry::new(1);
        let (probes, _receiver) = ProbeSpawner::new();
        let first = build(RULES, None, &hosts);
        let before = hosts.live_hosts();
        let with_tls = RULES.replace(
            r#""request_timeout_ms": 700 }"#,
            r#""request_timeout_ms": 700, "tls": { "ca_file": "/nonexistent/ca.pem" } }"#,
        );
        let error = RouteTable::try_build(
            rules(&with_tls),
            Some(&first),
            &hosts,
            &probes,
            2,
            String::new(),
            true,
        )
        .expect_err("the CA file does not exist");
        let issues = error.issues();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, r#"$.clusters["b"].tls.ca_file"#);
        assert!(
            issues[0].message.contains("/nonexistent/ca.pem"),
            "{issues:?}"
        );
        assert_eq!(hosts.live_hosts(), before);
        let b = &first.route(b"kb").unwrap().targets[0].cluster;
        assert!(!b.tls && b.endpoints[0].pool.tls().is_none());
    }

    #[test]
    fn a_sticky_split_follows_lightbulbs_allocation() {
        let hosts = HostRegistry::new(1);
        let t = build(
            r#"{
                "clusters": {
                    "a": { "endpoints": ["127.0.0.1:1"] },
                    "b": { "endpoints": ["127.0.0.1:2"] }
                },
                "routes": { "k": { "cluster": "a", "split": { "b": 30, "a": 70 }, "sticky_header": "x-subject-id" } }
            }"#,
            None,
            &hosts,
        );
        let r = t.route(b"k").unwrap();
        let layout = models_config::allocation::Layout::new([(70, "a"), (30, "b")]).unwrap();
        let mut to_b = 0;
        for subject in 0..5_000 {
            let value = format!("member-{subject}");
            let mut headers = HeaderMap::new();
            headers.insert("x-subject-id", value.parse().unwrap());
            let picked = &*r.pick_target(&headers).cluster.name;
            assert_eq!(picked, *layout.pick("k", &value), "{value}");
            assert_eq!(picked, &*r.pick_target(&headers).cluster.name);
            to_b += usize::from(picked == "b");
        }
        assert!((1_300..1_700).contains(&to_b), "{to_b}");
    }
}
