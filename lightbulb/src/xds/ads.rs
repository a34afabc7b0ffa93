//! The Aggregated Discovery Service (`envoy.service.discovery.v3`), state of the world and
//! incremental, over the resources [`super::mapping`] makes of the rule set in force.
//!
//! One task maps each accepted rule set once, for every stream, and logs what Envoy cannot
//! express (once per rule set). Each stream then follows the published resources with a
//! [`Session`], a plain state machine (no IO) per stream that keeps, for each resource type:
//! what Envoy subscribed to, the nonce and generation of the last response, whether Envoy
//! has answered it (ACK or NACK), and for delta streams the version of every resource Envoy
//! holds.
//!
//! - **Versions**: `version_info` (state of the world) and `system_version_info` (delta)
//!   are the rule-set version; a delta resource's version is a hash of its encoded bytes, so
//!   an unchanged resource is not sent again and every replica gives the same versions.
//! - **ACK and NACK**: a request carrying the nonce of the last response answers it; with
//!   `error_detail` it is a NACK, logged with Envoy's message and counted per node, and the
//!   rejected version is not sent again (the next change is). A request with an older nonce
//!   is stale: a state-of-the-world one is ignored (a newer response is on its way), a
//!   delta one still changes the subscription.
//! - **Subscriptions**: clusters are wildcard unless named; endpoints and routes are sent
//!   for the names asked. A delta stream is told of resources that went away or that do not
//!   exist (`removed_resources`).
//! - **Make before break**: a change goes out as clusters and endpoints first, and routes
//!   only once Envoy has answered the clusters and endpoints of that change (Envoy answers
//!   new clusters once they have warmed), so a route never names a cluster Envoy cannot
//!   use yet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use models_config::ValidRuleSet;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::mapping::{self, CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE, Resources};

/// The types served, in the order a change goes out.
pub const TYPES: [&str; 3] = [CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE];
/// The short names of [`TYPES`], as metric labels.
pub const TYPE_LABELS: [&str; 3] = ["cds", "eds", "rds"];
/// Where the routes are in [`TYPES`].
const ROUTES: usize = 2;
/// Responses buffered per stream ahead of a slow Envoy.
const STREAM_BUFFER: usize = 16;
/// Longest node id kept as a metric label.
const NODE_LABEL_MAX: usize = 128;

/// The resources of one accepted rule set, as every stream sees them.
#[derive(Debug)]
pub struct Published {
    /// Counts the rule sets published since start (a file-based rule set may keep its
    /// version across edits; this always moves).
    pub generation: u64,
    /// The resources.
    pub resources: Resources,
}

/// The ADS service over the rule sets published on a `watch` channel.
#[derive(Debug, Clone)]
pub struct AdsService {
    published: watch::Receiver<Arc<Published>>,
}

// === impl AdsService ===

impl AdsService {
    /// Maps the rule set in force now, and each one published on `rules` after it (once
    /// per rule set, in a task of its own). Call inside a tokio runtime.
    pub fn new(mut rules: watch::Receiver<ValidRuleSet>) -> Self {
        let first = Arc::new(publish(1, &rules.borrow_and_update()));
        let (tx, published) = watch::channel(first);
        tokio::spawn(async move {
            let mut generation = 1;
            // Ends when the rule sets' sender goes (shutdown); dropping `tx` then ends
            // every stream.
            while rules.changed().await.is_ok() {
                generation += 1;
                let next = publish(generation, &rules.borrow_and_update());
                if tx.send(Arc::new(next)).is_err() {
                    break;
                }
            }
        });
        AdsService { published }
    }

    /// A service serving `published` as it is (tests).
    pub fn from_published(published: watch::Receiver<Arc<Published>>) -> Self {
        AdsService { published }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

/// Maps `rules`, logging once what Envoy cannot express.
fn publish(generation: u64, rules: &ValidRuleSet) -> Published {
    let resources = mapping::map(rules);
    for line in &resources.unmapped {
        tracing::warn!(
            version = resources.version,
            "xds: not expressed in Envoy: {line}"
        );
    }
    tracing::info!(
        version = resources.version,
        clusters = resources.clusters.len(),
        "xds resources ready"
    );
    Published {
        generation,
        resources,
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.open(request, Session::sotw_request, Session::sotw_flush, "sotw"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.open(
            request,
            Session::delta_request,
            Session::delta_flush,
            "delta",
        ))
    }
}

impl AdsService {
    /// Starts serving one ADS stream of either protocol; the answer streams its responses.
    fn open<Req, Resp>(
        &self,
        request: Request<Streaming<Req>>,
        on_request: fn(&mut Session, Req, &Published) -> Vec<Resp>,
        on_change: fn(&mut Session, &Published) -> Vec<Resp>,
        protocol: &'static str,
    ) -> Response<ReceiverStream<Result<Resp, Status>>>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = Stream {
            inbound: request.into_inner(),
            published: self.published.clone(),
            tx,
            peer,
        };
        tokio::spawn(stream.run(on_request, on_change, protocol));
        Response::new(ReceiverStream::new(rx))
    }
}

/// One ADS stream: Envoy's requests in, responses out.
struct Stream<Req, Resp> {
    inbound: Streaming<Req>,
    published: watch::Receiver<Arc<Published>>,
    tx: mpsc::Sender<Result<Resp, Status>>,
    peer: Option<SocketAddr>,
}

impl<Req, Resp> Stream<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Follows requests and published changes until Envoy goes or the server shuts down.
    async fn run(
        mut self,
        on_request: fn(&mut Session, Req, &Published) -> Vec<Resp>,
        on_change: fn(&mut Session, &Published) -> Vec<Resp>,
        protocol: &'static str,
    ) {
        let clients = metrics::gauge!(crate::metrics::XDS_CLIENTS, "protocol" => protocol);
        clients.increment(1.0);
        let mut session = Session::default();
        let mut current = Arc::clone(&self.published.borrow_and_update());
        loop {
            let out = tokio::select! {
                message = self.inbound.message() => match message {
                    Ok(Some(req)) => {
                        let first = session.node.is_none();
                        let out = on_request(&mut session, req, &current);
                        if first && let Some(node) = &session.node {
                            tracing::info!(node_id = %node, peer = ?self.peer, protocol, "xds stream opened");
                        }
                        out
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(peer = ?self.peer, error = %status, "xds stream failed");
                        break;
                    }
                },
                changed = self.published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    current = Arc::clone(&self.published.borrow_and_update());
                    on_change(&mut session, &current)
                }
            };
            for resp in out {
                if self.tx.send(Ok(resp)).await.is_err() {
                    // Envoy went away.
                    clients.decrement(1.0);
                    return;
                }
            }
        }
        tracing::info!(node_id = session.node.as_deref().unwrap_or(""), peer = ?self.peer, protocol, "xds stream closed");
        clients.decrement(1.0);
    }
}

/// What one stream knows of one resource type.
#[derive(Debug, Default)]
struct TypeState {
    /// Envoy asked for this type.
    subscribed: bool,
    /// Every resource of the type, whatever its name.
    wildcard: bool,
    /// The names asked for (besides a wildcard).
    names: BTreeSet<String>,
    /// The nonce of the last response, and the generation it carried.
    last: Option<(String, u64)>,
    /// The last response is not answered yet.
    awaiting: bool,
    /// The generation this type was last brought up to date for.
    synced: Option<u64>,
    /// A request changed what is wanted: respond even if the generation did not move.
    due: bool,
    /// Delta: the version of each resource Envoy holds.
    known: BTreeMap<String, String>,
    /// Delta: subscribed names already reported as not existing.
    reported_missing: BTreeSet<String>,
}

impl TypeState {
    /// Up to date for `generation`, with nothing left unanswered.
    fn settled(&self, generation: u64) -> bool {
        !self.subscribed || (self.synced == Some(generation) && !self.awaiting)
    }

    /// Records Envoy's answer to the response with `nonce`, when it is the last one;
    /// returns whether it was.
    fn answer(&mut self, nonce: &str, error: Option<&str>, ty: usize, node: &str) -> bool {
        let Some((last, generation)) = &self.last else {
            return false;
        };
        if last != nonce {
            return false;
        }
        if !std::mem::replace(&mut self.awaiting, false) {
            // Answered already (a repeated request with the same nonce).
            return true;
        }
        match error {
            None => {
                metrics::counter!(crate::metrics::XDS_ACKS_TOTAL, "type" => TYPE_LABELS[ty])
                    .increment(1);
            }
            Some(message) => {
                let node_label: String = node.chars().take(NODE_LABEL_MAX).collect();
                metrics::counter!(
                    crate::metrics::XDS_NACKS_TOTAL,
                    "type" => TYPE_LABELS[ty],
                    "node" => node_label
                )
                .increment(1);
                tracing::warn!(
                    node_id = node,
                    type_url = TYPES[ty],
                    generation,
                    error = message,
                    "xds: Envoy rejected a response (NACK)"
                );
            }
        }
        true
    }
}

/// The protocol state of one stream (see the module docs); no IO, so it is tested alone.
#[derive(Debug, Default)]
pub struct Session {
    /// The node id Envoy gave, once it did.
    node: Option<String>,
    /// The last nonce used.
    nonce: u64,
    types: [TypeState; 3],
}

/// Where `type_url` is in [`TYPES`].
fn type_index(type_url: &str) -> Option<usize> {
    TYPES.iter().position(|t| *t == type_url)
}

/// A delta resource's version: a hash of its bytes.
fn resource_version(any: &Any) -> String {
    format!(
        "{:016x}",
        models_config::allocation::hash_bytes("xds", &any.value)
    )
}

impl Session {
    fn note_node(&mut self, node: Option<&envoy_types::pb::envoy::config::core::v3::Node>) {
        if self.node.is_none()
            && let Some(node) = node
        {
            self.node = Some(node.id.clone());
        }
    }

    /// The resources of type `ty` when a response of that type is due for `current`: Envoy
    /// follows the type, has not got this generation (or asked for something new), and the
    /// gate is open.
    fn due<'c>(&self, ty: usize, current: &'c Published) -> Option<&'c BTreeMap<String, Any>> {
        let st = &self.types[ty];
        let generation = current.generation;
        if !st.subscribed || !(st.due || st.synced != Some(generation)) {
            return None;
        }
        if !self.gate_open(ty, generation) {
            return None;
        }
        current.resources.of_type(TYPES[ty])
    }

    /// Records a response of type `ty` for `generation` going out; returns its nonce.
    fn sent(&mut self, ty: usize, generation: u64) -> String {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let st = &mut self.types[ty];
        st.last = Some((nonce.clone(), generation));
        st.awaiting = true;
        st.synced = Some(generation);
        st.due = false;
        metrics::counter!(crate::metrics::XDS_PUSHES_TOTAL, "type" => TYPE_LABELS[ty]).increment(1);
        nonce
    }

    /// Whether type `ty` may get generation `generation` now. Clusters and endpoints go at
    /// once: Envoy asks only for the endpoints of clusters it has, and keeps a new cluster
    /// warming (unused) until they come. Routes wait until Envoy has answered the clusters
    /// and the endpoints of this generation: it answers new clusters once they have warmed,
    /// so a route never names a cluster Envoy cannot use yet.
    fn gate_open(&self, ty: usize, generation: u64) -> bool {
        ty != ROUTES || self.types[..ROUTES].iter().all(|t| t.settled(generation))
    }

    /// A type not served: logged once per stream, otherwise ignored.
    fn unknown_type(&self, type_url: &str) {
        tracing::debug!(
            node_id = self.node.as_deref().unwrap_or(""),
            type_url,
            "xds: resource type not served"
        );
    }

    // === state of the world ===

    /// Handles one `DiscoveryRequest`, returning the responses due.
    pub fn sotw_request(
        &mut self,
        req: DiscoveryRequest,
        current: &Published,
    ) -> Vec<DiscoveryResponse> {
        self.note_node(req.node.as_ref());
        let Some(ty) = type_index(&req.type_url) else {
            self.unknown_type(&req.type_url);
            return Vec::new();
        };
        let node = self.node.clone().unwrap_or_default();
        let st = &mut self.types[ty];
        if !req.response_nonce.is_empty() {
            let error = req.error_detail.as_ref().map(|s| s.message.as_str());
            if !st.answer(&req.response_nonce, error, ty, &node) {
                // Stale: a newer response is on its way and will be answered.
                return Vec::new();
            }
        }
        let wildcard = req.resource_names.iter().any(|n| n == "*")
            || (ty == 0 && req.resource_names.is_empty());
        let names: BTreeSet<String> = req
            .resource_names
            .into_iter()
            .filter(|n| n != "*")
            .collect();
        if !st.subscribed || st.wildcard != wildcard || st.names != names {
            st.due = true;
        }
        st.subscribed = true;
        st.wildcard = wildcard;
        st.names = names;
        self.sotw_flush(current)
    }

    /// The responses due after a change (or a request): each subscribed type that has not
    /// got `current` yet, in order, as far as the gates let it.
    pub fn sotw_flush(&mut self, current: &Published) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        let generation = current.generation;
        for (ty, type_url) in TYPES.iter().enumerate() {
            let Some(all) = self.due(ty, current) else {
                continue;
            };
            let st = &self.types[ty];
            let resources: Vec<Any> = all
                .iter()
                .filter(|(name, _)| st.wildcard || st.names.contains(*name))
                .map(|(_, any)| any.clone())
                .collect();
            let nonce = self.sent(ty, generation);
            out.push(DiscoveryResponse {
                version_info: current.resources.version.to_string(),
                resources,
                type_url: (*type_url).to_owned(),
                nonce,
                control_plane: Some(control_plane()),
                ..DiscoveryResponse::default()
            });
        }
        out
    }

    // === delta ===

    /// Handles one `DeltaDiscoveryRequest`, returning the responses due.
    pub fn delta_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        current: &Published,
    ) -> Vec<DeltaDiscoveryResponse> {
        self.note_node(req.node.as_ref());
        let Some(ty) = type_index(&req.type_url) else {
            self.unknown_type(&req.type_url);
            return Vec::new();
        };
        let node = self.node.clone().unwrap_or_default();
        let st = &mut self.types[ty];
        if !req.response_nonce.is_empty() {
            let error = req.error_detail.as_ref().map(|s| s.message.as_str());
            // A stale answer is dropped, but its subscription changes still count.
            st.answer(&req.response_nonce, error, ty, &node);
        }
        if !st.subscribed {
            st.subscribed = true;
            st.due = true;
            st.wildcard = ty == 0 && req.resource_names_subscribe.is_empty();
            // What Envoy kept from an earlier stream is not sent again unless it changed.
            st.known = req.initial_resource_versions.into_iter().collect();
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.reported_missing.remove(&name);
                st.names.insert(name);
                st.due = true;
            }
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(&name);
                st.reported_missing.remove(&name);
                // Envoy dropped it: it is sent again if asked for again.
                st.known.remove(&name);
            }
            st.due = true;
        }
        self.delta_flush(current)
    }

    /// The delta responses due: per subscribed type, in order and as far as the gates let
    /// it, the resources Envoy does not hold in their current version and the names that
    /// went away.
    pub fn delta_flush(&mut self, current: &Published) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let generation = current.generation;
        for (ty, type_url) in TYPES.iter().enumerate() {
            let Some(all) = self.due(ty, current) else {
                continue;
            };
            let st = &self.types[ty];
            let wanted = |name: &str| st.wildcard || st.names.contains(name);
            let mut resources = Vec::new();
            for (name, any) in all.iter().filter(|(name, _)| wanted(name)) {
                let version = resource_version(any);
                if st.known.get(name) != Some(&version) {
                    resources.push(Resource {
                        name: name.clone(),
                        version,
                        resource: Some(any.clone()),
                        ..Resource::default()
                    });
                }
            }
            let mut removed: Vec<String> = st
                .known
                .keys()
                .filter(|name| !wanted(name) || !all.contains_key(*name))
                .cloned()
                .collect();
            let missing: Vec<String> = st
                .names
                .iter()
                .filter(|name| {
                    !all.contains_key(*name)
                        && !st.known.contains_key(*name)
                        && !st.reported_missing.contains(*name)
                })
                .cloned()
                .collect();
            removed.extend(missing.iter().cloned());
            let first = st.last.is_none();
            let st = &mut self.types[ty];
            st.synced = Some(generation);
            st.due = false;
            if resources.is_empty() && removed.is_empty() && !first {
                // Nothing changed for this type: up to date without a response.
                continue;
            }
            for resource in &resources {
                st.known
                    .insert(resource.name.clone(), resource.version.clone());
            }
            for name in &removed {
                st.known.remove(name);
            }
            st.reported_missing.extend(missing);
            let nonce = self.sent(ty, generation);
            out.push(DeltaDiscoveryResponse {
                system_version_info: current.resources.version.to_string(),
                resources,
                type_url: (*type_url).to_owned(),
                removed_resources: removed,
                nonce,
                control_plane: Some(control_plane()),
                ..DeltaDiscoveryResponse::default()
            });
        }
        out
    }
}

/// Who answers, as Envoy shows it in its config dump.
fn control_plane() -> ControlPlane {
    ControlPlane {
        identifier: "lightbulb".to_owned(),
    }
}

#[cfg(test)]
mod tests;
