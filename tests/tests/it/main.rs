//! Integration tests: the real `router` binary between test clients and fake upstreams.
//!
//! One test binary (fast linking); each module covers one part of the router's contract
//! (DESIGN.md §6, §10, §11 and §12). Every test starts its own router process and fakes on
//! `127.0.0.1:0`, so tests run in parallel; dropping them stops them.
//!
//! Build the binaries first: `cargo build --workspace --bins && cargo nextest run -p
//! integration-tests`.

mod balance;
mod body_limit;
mod config_api;
mod config_store;
mod control_plane;
mod demo_model;
mod errors;
mod etcd_store;
mod grpc;
mod headers;
mod health;
mod identity;
mod lightbulb;
mod lightbulb_tls;
mod limits;
mod listener_tls;
mod mirror;
mod otlp_export;
mod reload;
mod retry;
mod routing;
mod secrets;
mod shutdown;
mod smuggling;
mod streaming;
mod support;
mod telemetry;
mod tenancy;
mod upstream_tls;
mod websocket;
mod xds;
