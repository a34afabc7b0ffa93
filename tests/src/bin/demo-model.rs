//! A demo model server for trying the platform locally (`scripts/dev.sh`) and for the
//! end-to-end tests with stock clients (tritonclient, the openai SDK).
//!
//! One port speaks HTTP/1.1 and h2c: the Open Inference Protocol (KServe V2) over REST (with
//! the binary tensor extension) and gRPC, gRPC health, and the OpenAI-compatible completions
//! API (streamed as server-sent events on request). Every model answers `OUTPUT0 = INPUT0 × 2`;
//! every answer names the instance (header `x-model-instance`) and the bodies name the model
//! and its version, so a request sent through the router shows where it went. See
//! `integration_tests::demo_model`.
//!
//! ```text
//! demo-model --listen 127.0.0.1:9003 --instance ranker-v2-a --model ranker:2
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use integration_tests::demo_model::{Catalog, DemoModel, ModelSpec, Pacing};

/// Demo model server: V2 REST and gRPC inference, gRPC health and OpenAI-compatible
/// completions on one port (HTTP/1.1 and h2c).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (HTTP/1.1 and h2c); port 0 picks a free one, printed at start.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Instance name every answer carries (header `x-model-instance`, response bodies).
    #[arg(
        long,
        alias = "name",
        value_name = "NAME",
        default_value = "demo-model"
    )]
    instance: String,
    /// A model to serve, as NAME:VERSION, or NAME for version 1; repeat for more.
    #[arg(
        long = "model",
        value_name = "NAME[:VERSION]",
        default_value = "demo:1"
    )]
    models: Vec<ModelSpec>,
    /// Delay between the server-sent events of a streamed completion, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 50)]
    token_delay_ms: u64,
    /// Send each event of a streamed completion after the first only when `POST /demo/step`
    /// releases it, instead of after the token delay (for tests: one stream at a time).
    #[arg(long, conflicts_with = "token_delay_ms")]
    stepped_tokens: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let catalog = Catalog {
        instance: args.instance,
        models: args.models,
    };
    let models: Vec<String> = catalog.models.iter().map(ToString::to_string).collect();
    let pacing = if args.stepped_tokens {
        Pacing::Stepped(Default::default())
    } else {
        Pacing::Delay(Duration::from_millis(args.token_delay_ms))
    };
    let server = DemoModel::new(catalog, pacing).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // The address comes last: scripts and tests read it from there.
    println!(
        "demo-model instance={} models={} listening on {}",
        server.catalog().instance,
        models.join(","),
        listener.local_addr()?
    );
    server.serve(listener).await
}
