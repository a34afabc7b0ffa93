//! Protocol buffers of the platform, package `lightbulb.v1`.
//!
//! The Lightbulb resolver and routing-config services are defined here once Lightbulb lands;
//! until then the crate only reserves its place in the workspace so that the router and
//! Lightbulb can depend on it without depending on each other.
