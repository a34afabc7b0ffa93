//! [`ValidRuleSet`]: a rule set that passed validation, with the parsed forms its consumers
//! build from, so a change is validated once and nothing downstream parses it again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderName;
use http::uri::Authority;

use crate::error::{Issue, ValidationErrors};
use crate::spec::{RetryCondition, RuleSet};

/// A rule set that passed [`validate()`](crate::validate()): every reference resolves and
/// every limit holds. Only this crate makes one, so holding one is the proof.
///
/// It dereferences to the [`RuleSet`] and adds what validation already worked out: each
/// cluster's endpoint addresses as [`Authority`] (and [`SocketAddr`] when the host is an IP
/// address), its hash header as a [`HeaderName`] and its TLS settings with the server name
/// of each endpoint. Cloning is cheap (shared).
#[derive(Debug, Clone)]
pub struct ValidRuleSet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: RuleSet,
    warnings: Vec<Issue>,
    clusters: BTreeMap<String, ValidCluster>,
    routes: BTreeMap<String, ValidRoute>,
}

/// The parsed parts of one validated route (only routes that have any are listed).
#[derive(Debug, Clone, Default)]
pub struct ValidRoute {
    /// `sticky_header`, lowercased and parsed.
    pub sticky_header: Option<HeaderName>,
    /// The retry policy's `on` list, parsed.
    pub retry_on: Vec<RetryCondition>,
}

/// The parsed parts of one validated cluster.
#[derive(Debug, Clone)]
pub struct ValidCluster {
    /// The endpoints, in configuration order.
    pub endpoints: Vec<ValidEndpoint>,
    /// `hash_header`, lowercased and parsed.
    pub hash_header: Option<HeaderName>,
    /// The `tls` block, when there is one.
    pub tls: Option<ValidTls>,
}

/// The `tls` block of a validated cluster: its paths are well-formed (whether the files
/// exist and hold usable PEM is for the process that reads them), its client certificate
/// and key come together, and every endpoint has the name its certificate must be valid
/// for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidTls {
    /// The CA certificates trusted for the endpoints (PEM).
    pub ca_file: PathBuf,
    /// The client certificate chain and its private key (PEM), for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name each endpoint's certificate must be valid for, also sent as SNI, in
    /// endpoint order: `server_name`, or the endpoint's host (an IPv6 address without its
    /// brackets).
    pub server_names: Vec<Arc<str>>,
}

/// One validated endpoint address.
#[derive(Debug, Clone)]
pub struct ValidEndpoint {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same as a URI authority (for request URIs and `Host` headers).
    pub authority: Authority,
    /// The socket address when the host is an IP address (no name resolution needed).
    pub socket: Option<SocketAddr>,
    /// Relative weight (1 when not configured).
    pub weight: u32,
}

impl ValidRuleSet {
    /// Validates `rules` completely and keeps its warnings.
    ///
    /// # Errors
    ///
    /// Every error-level problem, in document order.
    pub fn new(rules: RuleSet) -> Result<Self, ValidationErrors> {
        let warnings = crate::validate(&rules)?;
        let mut errors = Vec::new();
        let mut clusters = BTreeMap::new();
        for (name, spec) in &rules.clusters {
            let mut endpoints = Vec::with_capacity(spec.endpoints.len());
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                let address = endpoint.address();
                match address.parse::<Authority>() {
                    Ok(authority) => endpoints.push(ValidEndpoint {
                        address: Arc::from(address),
                        authority,
                        socket: address.parse().ok(),
                        weight: endpoint.weight(),
                    }),
                    // Validation accepted it, so this does not happen; reported all the same.
                    Err(e) => errors.push(Issue::new(
                        format!(
                            "$.clusters[{}].endpoints[{i}]",
                            serde_json::to_string(name).unwrap_or_default()
                        ),
                        format!("invalid endpoint address {address:?}: {e}"),
                    )),
                }
            }
            let hash_header = match &spec.hash_header {
                None => None,
                Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                    Ok(header) => Some(header),
                    Err(e) => {
                        errors.push(Issue::new(
                            format!(
                                "$.clusters[{}].hash_header",
                                serde_json::to_string(name).unwrap_or_default()
                            ),
                            format!("invalid hash_header {h:?}: {e}"),
                        ));
                        None
                    }
                },
            };
            let tls = spec.tls.as_ref().map(|tls| ValidTls {
                ca_file: PathBuf::from(&tls.ca_file),
                identity: tls
                    .cert_file
                    .as_ref()
                    .zip(tls.key_file.as_ref())
                    .map(|(cert, key)| (PathBuf::from(cert), PathBuf::from(key))),
                server_names: endpoints
                    .iter()
                    .map(|e| match &tls.server_name {
                        Some(name) => Arc::from(name.as_str()),
                        None => Arc::from(bare_host(e.authority.host())),
                    })
                    .collect(),
            });
            clusters.insert(
                name.clone(),
                ValidCluster {
                    endpoints,
                    hash_header,
                    tls,
                },
            );
        }
        let mut routes = BTreeMap::new();
        for (key, spec) in &rules.routes {
            if spec.sticky_header.is_none() && spec.retry.is_none() {
                continue;
            }
            let at = |field: &str| {
                format!(
                    "$.routes[{}].{field}",
                    serde_json::to_string(key).unwrap_or_default()
                )
            };
            let mut route = ValidRoute::default();
            if let Some(h) = &spec.sticky_header {
                match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                    Ok(header) => route.sticky_header = Some(header),
                    Err(e) => errors.push(Issue::new(
                        at("sticky_header"),
                        format!("invalid sticky_header {h:?}: {e}"),
                    )),
                }
            }
            if let Some(retry) = &spec.retry {
                for (i, condition) in retry.on.iter().enumerate() {
                    match RetryCondition::parse(condition) {
                        Ok(c) => route.retry_on.push(c),
                        Err(message) => {
                            errors.push(Issue::new(at(&format!("retry.on[{i}]")), message))
                        }
                    }
                }
            }
            routes.insert(key.clone(), route);
        }
        if !errors.is_empty() {
            return Err(ValidationErrors(errors));
        }
        Ok(ValidRuleSet {
            inner: Arc::new(Inner {
                rules,
                warnings,
                clusters,
                routes,
            }),
        })
    }

    /// The rule set.
    pub fn rules(&self) -> &RuleSet {
        &self.inner.rules
    }

    /// The warnings validation found (legal but almost certainly not meant).
    pub fn warnings(&self) -> &[Issue] {
        &self.inner.warnings
    }

    /// The parsed parts of cluster `name`, which exists in every validated rule set whose
    /// `clusters` names it.
    pub fn cluster(&self, name: &str) -> Option<&ValidCluster> {
        self.inner.clusters.get(name)
    }

    /// The parsed parts of route `key`, when it has a sticky header or a retry policy.
    pub fn route(&self, key: &str) -> Option<&ValidRoute> {
        self.inner.routes.get(key)
    }

    /// The same rule set stamped with `version` (assigned by a store; the version takes no
    /// part in validation, so nothing is checked again).
    #[must_use]
    pub fn with_version(self, version: u64) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.rules.version = version;
                ValidRuleSet {
                    inner: Arc::new(inner),
                }
            }
            Err(shared) => {
                let mut rules = shared.rules.clone();
                rules.version = version;
                ValidRuleSet {
                    inner: Arc::new(Inner {
                        rules,
                        warnings: shared.warnings.clone(),
                        clusters: shared.clusters.clone(),
                        routes: shared.routes.clone(),
                    }),
                }
            }
        }
    }

    /// The rule set itself, for a caller that will change it (and so validate it again).
    pub fn into_rules(self) -> RuleSet {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.rules,
            Err(shared) => shared.rules.clone(),
        }
    }
}

/// A URI host as a TLS server name: an IPv6 address loses its brackets.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

impl Deref for ValidRuleSet {
    type Target = RuleSet;

    fn deref(&self) -> &RuleSet {
        &self.inner.rules
    }
}

/// Two validated rule sets are equal when their rule sets are.
impl PartialEq for ValidRuleSet {
    fn eq(&self, other: &Self) -> bool {
        self.inner.rules == other.inner.rules
    }
}

/// Serializes as the rule set itself.
impl serde::Serialize for ValidRuleSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.rules.serialize(serializer)
    }
}

impl TryFrom<RuleSet> for ValidRuleSet {
    type Error = ValidationErrors;

    fn try_from(rules: RuleSet) -> Result<Self, ValidationErrors> {
        ValidRuleSet::new(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_forms_come_with_the_rule_set() {
        let valid = crate::parse(
            r#"{
                "clusters": {
                    "a": { "endpoints": ["127.0.0.1:9001", {"address": "model.internal:80", "weight": 3}],
                           "lb_policy": "maglev", "hash_header": "X-Session" }
                },
                "routes": { "k": { "cluster": "a" } }
            }"#,
        )
        .expect("valid");
        let a = valid.cluster("a").expect("cluster a");
        assert_eq!(a.endpoints[0].authority.as_str(), "127.0.0.1:9001");
        assert_eq!(
            a.endpoints[0].socket,
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(a.endpoints[1].socket, None);
        assert_eq!(a.endpoints[1].weight, 3);
        assert_eq!(
            a.hash_header.as_ref().map(HeaderName::as_str),
            Some("x-session")
        );
        assert_eq!(a.tls, None);
        assert_eq!(valid.with_version(7).version, 7);
    }

    #[test]
    fn tls_server_names_default_to_each_endpoints_host() {
        let valid = crate::parse(
            r#"{
                "clusters": {
                    "own": { "endpoints": ["10.0.0.1:443", "[::1]:443", "Model.Internal:8443"],
                             "tls": { "ca_file": "/etc/router/ca.pem" } },
                    "named": { "endpoints": ["10.0.0.2:443"],
                               "tls": { "ca_file": "ca.pem", "server_name": "fraud.internal",
                                        "cert_file": "client.pem", "key_file": "client.key" } }
                },
                "routes": { "k": { "cluster": "own" }, "n": { "cluster": "named" } }
            }"#,
        )
        .expect("valid");
        let own = valid.cluster("own").unwrap().tls.as_ref().expect("tls");
        assert_eq!(own.ca_file, PathBuf::from("/etc/router/ca.pem"));
        assert_eq!(own.identity, None);
        let names: Vec<&str> = own.server_names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["10.0.0.1", "::1", "Model.Internal"]);
        let named = valid.cluster("named").unwrap().tls.as_ref().expect("tls");
        assert_eq!(
            named.identity,
            Some((PathBuf::from("client.pem"), PathBuf::from("client.key")))
        );
        assert_eq!(&*named.server_names[0], "fraud.internal");
    }
}
