//! The immutable route table: routing key → route → cluster → endpoints.
//!
//! A table is built whole from a validated rule set, off the hot path, then published with
//! one `ArcSwap::store`. Requests read it through a snapshot guard that they drop before any
//! `.await`. Everything a request needs is precomputed here: parsed authorities, the
//! balancer's schedule or hash ring, split weights, timeouts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use http::uri::Authority;
use models_config::spec::{LbPolicy, Protocol, RuleSet};

use crate::balance::Balancer;
use crate::metrics::RouteMetrics;
use crate::rng;
use crate::upstream::Pool;

/// A serving host of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same, parsed once for request URIs and `Host` headers.
    pub authority: Authority,
    /// Relative weight (1 when not configured).
    pub weight: u32,
    /// Requests in flight on this endpoint, from pick until the response body ends (read by
    /// least request and `GET /clusters`).
    pub active: AtomicUsize,
    /// Connections, shared with the previous table's endpoint of the same address.
    pub pool: Arc<Pool>,
}

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
    pub endpoints: Box<[Arc<Endpoint>]>,
    /// Picks an endpoint per request.
    pub balancer: Balancer,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Default time allowed until response headers.
    pub request_timeout: Duration,
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
    /// Used when no endpoint of the chosen target can be reached.
    pub fallback: Option<RouteTarget>,
    /// Time allowed from forwarding until response headers.
    pub timeout: Duration,
}

/// The whole routing state of one generation.
#[derive(Debug)]
pub struct RouteTable {
    routes: HashMap<Box<[u8]>, Arc<Route>>,
    clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    /// The rule set this table was built from.
    pub rule_set: Arc<RuleSet>,
    /// The rule set's version (assigned by the store; 0 for a hand-written file).
    pub version: u64,
    /// Local counter of tables applied by this process, starting at 1.
    pub generation: u64,
    /// Hex SHA-256 of the rule set's canonical JSON.
    pub sha256: String,
}

impl Route {
    /// The target for one request: the primary, or a weighted draw among the split.
    pub fn pick_target(&self) -> &RouteTarget {
        if self.split_cumulative.is_empty() {
            return &self.targets[0];
        }
        let total = *self
            .split_cumulative
            .last()
            .expect("a split is never empty");
        let draw = rng::below(total as usize) as u32;
        let i = self.split_cumulative.partition_point(|&c| c <= draw);
        &self.targets[i.min(self.targets.len() - 1)]
    }
}

impl RouteTable {
    /// Builds a table from a rule set that passed validation, carrying over the connection
    /// pools of `previous` for endpoints whose address is unchanged.
    ///
    /// Validation guarantees every reference resolves; an address that still fails to parse
    /// as an authority is reported as an error and nothing is built.
    pub fn build(
        rule_set: Arc<RuleSet>,
        previous: Option<&RouteTable>,
        workers: usize,
        generation: u64,
        sha256: String,
    ) -> Result<Self, String> {
        let mut old_pools: HashMap<&str, &Arc<Pool>> = HashMap::new();
        if let Some(prev) = previous {
            for cluster in prev.clusters.values() {
                for ep in cluster.endpoints.iter() {
                    old_pools.insert(&ep.address, &ep.pool);
                }
            }
        }
        let mut clusters = BTreeMap::new();
        for (name, spec) in rule_set.clusters.iter() {
            let mut endpoints = Vec::with_capacity(spec.endpoints.len());
            for ep in &spec.endpoints {
                let address: Arc<str> = Arc::from(ep.address());
                let authority: Authority = ep
                    .address()
                    .parse()
                    .map_err(|e| format!("cluster {name:?}: endpoint {:?}: {e}", ep.address()))?;
                let pool = match old_pools.get(ep.address()) {
                    Some(pool) => Arc::clone(pool),
                    None => Arc::new(Pool::new(Arc::clone(&address), workers)),
                };
                endpoints.push(Arc::new(Endpoint {
                    address,
                    authority,
                    weight: ep.weight(),
                    active: AtomicUsize::new(0),
                    pool,
                }));
            }
            let weights: Vec<(&str, u32)> = spec
                .endpoints
                .iter()
                .map(|e| (e.address(), e.weight()))
                .collect();
            let hash_header = match &spec.hash_header {
                Some(h) => Some(
                    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                        .map_err(|e| format!("cluster {name:?}: hash_header {h:?}: {e}"))?,
                ),
                None => None,
            };
            let name: Arc<str> = Arc::from(name.as_str());
            clusters.insert(
                Arc::clone(&name),
                Arc::new(Cluster {
                    name,
                    protocol: spec.protocol,
                    lb_policy: spec.lb_policy,
                    balancer: Balancer::new(spec.lb_policy, &weights, hash_header),
                    endpoints: endpoints.into_boxed_slice(),
                    connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
                    request_timeout: Duration::from_millis(spec.request_timeout_ms),
                }),
            );
        }
        let cluster = |name: &str| -> Result<Arc<Cluster>, String> {
            clusters
                .get(name)
                .cloned()
                .ok_or_else(|| format!("unknown cluster {name:?}"))
        };
        let mut routes = HashMap::with_capacity(rule_set.routes.len());
        for (key, spec) in rule_set.routes.iter() {
            let key_arc: Arc<str> = Arc::from(key.as_str());
            let target = |c: Arc<Cluster>| RouteTarget {
                metrics: RouteMetrics::new(Arc::clone(&key_arc), Arc::clone(&c.name)),
                cluster: c,
            };
            let primary = cluster(&spec.cluster)?;
            let (targets, split_cumulative) = match &spec.split {
                Some(split) if !split.is_empty() => {
                    let mut targets = Vec::with_capacity(split.len());
                    let mut cumulative = Vec::with_capacity(split.len());
                    let mut sum = 0;
                    for (name, weight) in split {
                        sum += *weight;
                        cumulative.push(sum);
                        targets.push(target(cluster(name)?));
                    }
                    (targets, cumulative)
                }
                _ => (vec![target(Arc::clone(&primary))], Vec::new()),
            };
            let fallback = spec
                .fallback
                .as_deref()
                .map(cluster)
                .transpose()?
                .map(target);
            let timeout = spec
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(primary.request_timeout);
            routes.insert(
                Box::from(key.as_bytes()),
                Arc::new(Route {
                    key: Arc::clone(&key_arc),
                    targets: targets.into_boxed_slice(),
                    split_cumulative: split_cumulative.into_boxed_slice(),
                    fallback,
                    timeout,
                }),
            );
        }
        Ok(RouteTable {
            routes,
            clusters,
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

impl Endpoint {
    /// Requests in flight right now.
    pub fn active_requests(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Arc<RuleSet> {
        Arc::new(models_config::parse(json).expect("valid rule set"))
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
        let t = RouteTable::build(rules(RULES), None, 2, 1, String::new()).unwrap();
        assert_eq!(t.len(), 3);
        let r = t.route(b"ka").unwrap();
        assert_eq!(&*r.targets[0].cluster.name, "a");
        assert_eq!(&*r.fallback.as_ref().unwrap().cluster.name, "b");
        assert!(t.route(b"nope").is_none());
        assert_eq!(t.route(b"kb").unwrap().timeout, Duration::from_millis(700));
        assert_eq!(t.route(b"ks").unwrap().timeout, Duration::from_millis(50));
    }

    #[test]
    fn split_follows_weights() {
        let t = RouteTable::build(rules(RULES), None, 1, 1, String::new()).unwrap();
        let r = t.route(b"ks").unwrap();
        let to_b = (0..20_000)
            .filter(|_| &*r.pick_target().cluster.name == "b")
            .count();
        assert!((14_000..16_000).contains(&to_b), "{to_b}");
    }

    #[test]
    fn pools_survive_a_rebuild_for_unchanged_addresses() {
        let first = RouteTable::build(rules(RULES), None, 1, 1, String::new()).unwrap();
        let second = RouteTable::build(rules(RULES), Some(&first), 1, 2, String::new()).unwrap();
        let pool = |t: &RouteTable| {
            Arc::clone(&t.route(b"kb").unwrap().targets[0].cluster.endpoints[0].pool)
        };
        assert!(Arc::ptr_eq(&pool(&first), &pool(&second)));
    }
}
