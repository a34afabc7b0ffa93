//! The gRPC server: `lightbulb.v1.Resolver`, `lightbulb.v1.RoutingConfig`, Envoy's
//! `envoy.service.discovery.v3.AggregatedDiscoveryService` ([`crate::xds`]),
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), on one tonic server.
//!
//! Health reports `NOT_SERVING` for the whole server (`""`) and for each lightbulb service
//! from the moment the server is built, `SERVING` once [`Health::serving`] is called (when
//! the listeners are up and the first rule set is in force), and `NOT_SERVING` again when
//! draining starts ([`Health::not_serving`]), so load balancers stop sending new calls;
//! then [`Health::close`] ends the `Health.Watch` streams so they do not hold up the drain.
//!
//! [`serve`] takes plaintext connections from a listener; with `--tls-cert`,
//! [`serve_incoming`] takes the connections [`crate::tls::Tls::accept`] opened (TLS, and
//! plaintext unless `--tls-only`).

use std::future::Future;

use routing_proto::lightbulb::v1 as pb;
use tonic::server::NamedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::grpc::{ResolverService, RoutingConfigService};
use crate::xds::AdsService;

/// The gRPC service names whose health is reported, besides the whole server (`""`).
pub const SERVICES: [&str; 2] = [
    <pb::resolver_server::ResolverServer<ResolverService> as NamedService>::NAME,
    <pb::routing_config_server::RoutingConfigServer<RoutingConfigService> as NamedService>::NAME,
];

/// Why the gRPC server could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the reflection service: {0}")]
pub struct BuildError(#[from] tonic_reflection::server::Error);

/// The health statuses of the server and its services.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
}

// === impl Health ===

impl Health {
    /// Reports every service as `SERVING`.
    pub async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Reports every service as `NOT_SERVING`.
    pub async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    /// Forgets every status, which ends the `Health.Watch` streams (after they deliver the
    /// last status), so they do not hold up the drain.
    pub async fn close(&self) {
        let mut reporter = self.reporter.clone();
        reporter.clear_service_status("").await;
        for service in SERVICES {
            reporter.clear_service_status(service).await;
        }
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// Builds the tonic server with every service, and the health handle that controls what it
/// reports (initially `NOT_SERVING`).
///
/// # Errors
///
/// When the compiled-in descriptor sets cannot be decoded for reflection (a build bug).
pub async fn build(
    resolver: ResolverService,
    routing: RoutingConfigService,
    ads: AdsService,
) -> Result<(Router, Health), BuildError> {
    let reporter = HealthReporter::new();
    let health = Health { reporter };
    health.not_serving().await;
    let health_server =
        HealthServer::new(HealthService::from_health_reporter(health.reporter.clone()));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(routing_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(routing_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let router = tonic::transport::Server::builder()
        .add_service(health_server)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(resolver.into_server())
        .add_service(routing.into_server())
        .add_service(ads.into_server());
    Ok((router, health))
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and waits
/// for the calls in flight (bound the wait from outside).
///
/// # Errors
///
/// When the server fails (not on a single bad connection).
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// [`serve`] on connections opened by [`crate::tls::Tls::accept`] (TLS, and plaintext
/// unless `--tls-only`); the same graceful shutdown.
///
/// # Errors
///
/// When the server fails (not on a single bad connection or handshake).
pub async fn serve_incoming(
    router: Router,
    incoming: crate::tls::Incoming,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
