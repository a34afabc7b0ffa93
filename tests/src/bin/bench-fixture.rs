//! Fixtures for the benchmark scripts in `benches/`, built from the same helpers the
//! integration tests use.
//!
//! - `bench-fixture jwt DIR`: generates a signing key (with `openssl`), writes its JWKS to
//!   `DIR/jwks.json`, and prints a token valid for an hour for issuer `bench` and audience
//!   `router` (claim `tenant` = `bench`).
//! - `bench-fixture otlp-sink --listen ADDR`: an OTLP/gRPC trace receiver that accepts and
//!   counts spans; prints `otlp sink listening on ADDR`, then the spans received at exit.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use integration_tests::jwt::{self, KeyKind, SigningKey};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write DIR/jwks.json and print a valid token.
    Jwt {
        /// Where the JWKS goes.
        dir: PathBuf,
    },
    /// Receive and count OTLP spans until interrupted.
    OtlpSink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:4317")]
        listen: SocketAddr,
    },
}

fn main() {
    match Args::parse().command {
        Command::Jwt { dir } => {
            let key = SigningKey::generate(KeyKind::EdDsa, "bench-1");
            let jwks = jwt::jwks(&[&key]);
            std::fs::create_dir_all(&dir).expect("create the JWKS dir");
            std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("write jwks.json");
            let claims = jwt::with_claims(
                jwt::claims("bench", "router"),
                &json!({ "tenant": "bench", "sub": "bench-client" }),
            );
            println!("{}", key.sign(&claims));
        }
        Command::OtlpSink { listen } => otlp_sink(listen),
    }
}

fn otlp_sink(listen: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let sink = integration_tests::otlp::OtlpReceiver::start_on(listen).await;
        println!("otlp sink listening on {}", sink.url());
        let _ = tokio::signal::ctrl_c().await;
        println!("spans received: {}", sink.spans().len());
    });
}
