//! What the client resolves: a request context, either the domain [`RequestContext`] or the
//! proto `ResolveRequest`, both seen through the sealed [`AsContext`] trait so that the cache
//! lookup reads them in place (no conversion, no allocation on a hit).

use std::collections::{BTreeMap, HashMap};

use routing_proto::lightbulb::v1 as pb;

/// Live traffic from real users, or synthetic traffic (load tests, probes).
///
/// The proto's `TRAFFIC_CLASS_UNSPECIFIED` is live traffic, as Lightbulb treats it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TrafficClass {
    /// Real user traffic. The default.
    #[default]
    Live,
    /// Load tests, probes and other synthetic traffic.
    Synthetic,
}

impl TrafficClass {
    /// The proto enum value (`TRAFFIC_CLASS_LIVE` or `TRAFFIC_CLASS_SYNTHETIC`).
    pub fn to_proto(self) -> pb::TrafficClass {
        match self {
            TrafficClass::Live => pb::TrafficClass::Live,
            TrafficClass::Synthetic => pb::TrafficClass::Synthetic,
        }
    }
}

/// The context of one inference request: everything an objective's rules may read.
///
/// Build it field by field with [`RequestContext::new`] and the `with_*` methods. Attributes
/// and allocations are kept sorted by name, so two contexts with the same content are equal
/// (and share a cache entry) whatever order they were built in. An empty tenant or subject
/// id is the same as none.
///
/// ```
/// use lightbulb_client::{RequestContext, TrafficClass};
///
/// let ctx = RequestContext::new("ContinueWatchingRanking")
///     .with_tenant("netflix")
///     .with_subject("user-42")
///     .with_attribute("country", "CA")
///     .with_traffic_class(TrafficClass::Live);
/// assert_eq!(ctx.objective, "ContinueWatchingRanking");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestContext {
    /// The business use case, e.g. `ContinueWatchingRanking`. Required by Lightbulb: an empty
    /// objective is answered with `INVALID_ARGUMENT`.
    pub objective: String,
    /// The calling tenant; `None` (or empty): no tenant.
    pub tenant: Option<String>,
    /// Stable id (user, session, account) that experiment allocation and weighted splits are
    /// sticky on; `None` (or empty): no subject.
    pub subject_id: Option<String>,
    /// Request attributes such as country, device or surface.
    pub attributes: BTreeMap<String, String>,
    /// Experiment id → cell, for a caller that already knows its allocation.
    pub experiment_allocations: BTreeMap<String, String>,
    /// Live or synthetic traffic. Default live.
    pub traffic_class: TrafficClass,
}

impl RequestContext {
    /// A context for `objective` with nothing else set (no tenant, no subject, live traffic).
    pub fn new(objective: impl Into<String>) -> Self {
        Self {
            objective: objective.into(),
            ..Self::default()
        }
    }

    /// Sets the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets the subject id that allocation is sticky on.
    #[must_use]
    pub fn with_subject(mut self, subject_id: impl Into<String>) -> Self {
        self.subject_id = Some(subject_id.into());
        self
    }

    /// Adds (or replaces) one request attribute.
    #[must_use]
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Adds (or replaces) the explicit allocation of one experiment.
    #[must_use]
    pub fn with_allocation(
        mut self,
        experiment: impl Into<String>,
        cell: impl Into<String>,
    ) -> Self {
        self.experiment_allocations
            .insert(experiment.into(), cell.into());
        self
    }

    /// Sets the traffic class.
    #[must_use]
    pub fn with_traffic_class(mut self, traffic_class: TrafficClass) -> Self {
        self.traffic_class = traffic_class;
        self
    }
}

impl From<&RequestContext> for pb::ResolveRequest {
    fn from(ctx: &RequestContext) -> Self {
        ctx.to_request()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::RequestContext {}
    impl Sealed for routing_proto::lightbulb::v1::ResolveRequest {}
}

/// A request context the client can resolve: [`RequestContext`] or the proto
/// `ResolveRequest`.
///
/// The accessors normalise the two representations (an empty tenant is no tenant,
/// `TRAFFIC_CLASS_UNSPECIFIED` is live), so the same context in either form hits the same
/// cache entry. Sealed: the client's cache relies on exactly these semantics.
pub trait AsContext: sealed::Sealed {
    /// The objective.
    fn objective(&self) -> &str;
    /// The tenant, `""` when none.
    fn tenant(&self) -> &str;
    /// The subject id, `""` when none.
    fn subject_id(&self) -> &str;
    /// The proto traffic class value, with unspecified mapped to live. Values the proto
    /// does not know are passed through (Lightbulb rejects them with `INVALID_ARGUMENT`).
    fn traffic_class_value(&self) -> i32;
    /// Number of attributes.
    fn attribute_count(&self) -> usize;
    /// The value of attribute `name`, if the context has it.
    fn attribute(&self, name: &str) -> Option<&str>;
    /// Every attribute, in no particular order.
    fn attributes(&self) -> impl Iterator<Item = (&str, &str)>;
    /// Number of explicit experiment allocations.
    fn allocation_count(&self) -> usize;
    /// The explicit cell of `experiment`, if the context has one.
    fn allocation(&self, experiment: &str) -> Option<&str>;
    /// Every explicit allocation, in no particular order.
    fn allocations(&self) -> impl Iterator<Item = (&str, &str)>;
    /// The proto request sent to Lightbulb on a cache miss (allocates).
    fn to_request(&self) -> pb::ResolveRequest;
}

fn normalise_traffic_class(value: i32) -> i32 {
    if value == pb::TrafficClass::Unspecified as i32 {
        pb::TrafficClass::Live as i32
    } else {
        value
    }
}

impl AsContext for RequestContext {
    fn objective(&self) -> &str {
        &self.objective
    }

    fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or("")
    }

    fn subject_id(&self) -> &str {
        self.subject_id.as_deref().unwrap_or("")
    }

    fn traffic_class_value(&self) -> i32 {
        self.traffic_class.to_proto() as i32
    }

    fn attribute_count(&self) -> usize {
        self.attributes.len()
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn allocation_count(&self) -> usize {
        self.experiment_allocations.len()
    }

    fn allocation(&self, experiment: &str) -> Option<&str> {
        self.experiment_allocations
            .get(experiment)
            .map(String::as_str)
    }

    fn allocations(&self) -> impl Iterator<Item = (&str, &str)> {
        self.experiment_allocations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn to_request(&self) -> pb::ResolveRequest {
        pb::ResolveRequest {
            objective: self.objective.clone(),
            tenant: self.tenant().to_owned(),
            subject_id: self.subject_id().to_owned(),
            attributes: to_hash_map(&self.attributes),
            experiment_allocations: to_hash_map(&self.experiment_allocations),
            traffic_class: self.traffic_class_value(),
        }
    }
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl AsContext for pb::ResolveRequest {
    fn objective(&self) -> &str {
        &self.objective
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn subject_id(&self) -> &str {
        &self.subject_id
    }

    fn traffic_class_value(&self) -> i32 {
        normalise_traffic_class(self.traffic_class)
    }

    fn attribute_count(&self) -> usize {
        self.attributes.len()
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn allocation_count(&self) -> usize {
        self.experiment_allocations.len()
    }

    fn allocation(&self, experiment: &str) -> Option<&str> {
        self.experiment_allocations
            .get(experiment)
            .map(String::as_str)
    }

    fn allocations(&self) -> impl Iterator<Item = (&str, &str)> {
        self.experiment_allocations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn to_request(&self) -> pb::ResolveRequest {
        self.clone()
    }
}
