//! Protocol buffers of the platform, package `lightbulb.v1`, and the Rust generated from
//! them with tonic and prost.
//!
//! - [`lightbulb::v1`]: the messages, the `Resolver` and `RoutingConfig` service traits
//!   (`resolver_server`, `routing_config_server`) and their clients (`resolver_client`,
//!   `routing_config_client`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! Lightbulb implements the services; the router and other clients use the generated clients.
//! Both depend on this crate and never on each other. The source of truth is
//! `proto/lightbulb/v1/lightbulb.proto`, which documents every message and field.
#![warn(missing_docs, unreachable_pub)]

/// Generated code of the `lightbulb` proto packages.
pub mod lightbulb {
    /// Package `lightbulb.v1`: the resolver and the routing-config stream.
    pub mod v1 {
        // Generated code: every item is documented from the .proto comments (the crate's
        // `missing_docs` lint checks that), but its style is prost's and tonic's, not ours.
        #![allow(clippy::all, clippy::pedantic)]

        tonic::include_proto!("lightbulb.v1");
    }
}

/// The encoded `FileDescriptorSet` of `lightbulb.v1`, for
/// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lightbulb_descriptor");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_set_names_the_services() {
        let text = String::from_utf8_lossy(FILE_DESCRIPTOR_SET);
        for name in [
            "lightbulb.v1",
            "Resolver",
            "RoutingConfig",
            "ResolveRequest",
        ] {
            assert!(
                text.contains(name),
                "{name} missing from the descriptor set"
            );
        }
    }

    #[test]
    fn unspecified_traffic_class_is_the_default() {
        let request = lightbulb::v1::ResolveRequest::default();
        assert_eq!(
            request.traffic_class(),
            lightbulb::v1::TrafficClass::Unspecified
        );
    }
}
