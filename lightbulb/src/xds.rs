//! Lightbulb as an xDS server (DESIGN §13): Envoy fleets follow the same rule set as the
//! routers.
//!
//! - [`mapping`]: the pure mapping of a validated rule set to Envoy resources (CDS
//!   `Cluster`s, EDS `ClusterLoadAssignment`s, the RDS `RouteConfiguration` named
//!   `lightbulb`), with what Envoy cannot express listed.
//! - [`ads`]: the Aggregated Discovery Service on the gRPC port, state of the world
//!   (`StreamAggregatedResources`) and incremental (`DeltaAggregatedResources`): versions
//!   are rule-set versions, every accepted change is pushed to every stream, ACKs and NACKs
//!   are followed per stream and type, and clusters go out before the routes that use them.

pub mod ads;
pub mod mapping;

pub use ads::AdsService;
pub use mapping::{Resources, map};
