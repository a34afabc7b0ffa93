//! The whole client-side flow of DESIGN §2, end to end:
//!
//! 1. build a [`Client`] for Lightbulb (with a static default, so the call still goes out if
//!    Lightbulb is down),
//! 2. resolve a request context to a routing key and an `ObjectiveConfig`,
//! 3. put the `ObjectiveConfig` in the request's own body (here a small JSON document) and
//!    stamp the routing key on the request as `x-routing-key`,
//! 4. send it through the router with hyper, which reads only the header and streams the
//!    body to the model's cluster untouched,
//! 5. print the model's answer (or the router's error).
//!
//! Run it against a local platform (`lightbulb --config ...` and `router --config ...`):
//!
//! ```text
//! cargo run -p lightbulb-client --example resolve_and_call -- \
//!     http://127.0.0.1:50051 127.0.0.1:8080 ContinueWatchingRanking user-42
//! ```
//!
//! Arguments: Lightbulb's gRPC URI, the router's `host:port`, the objective (default
//! `ContinueWatchingRanking`), the subject id (default `user-42`).

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lightbulb_client::{Client, ObjectiveConfig, RequestContext};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: resolve_and_call LIGHTBULB_URI ROUTER_HOST:PORT [OBJECTIVE] [SUBJECT]";
    let lightbulb = args.next().context(usage)?;
    let router = args.next().context(usage)?;
    let objective = args
        .next()
        .unwrap_or_else(|| "ContinueWatchingRanking".to_owned());
    let subject = args.next().unwrap_or_else(|| "user-42".to_owned());

    // 1. One client per process; clones share its cache and connections.
    let client = Client::builder([lightbulb])
        .deadline(Duration::from_millis(300))
        .static_default(
            objective.clone(),
            "ranker-v1",
            ObjectiveConfig {
                objective: objective.clone(),
                model_id: "ranker-v1".to_owned(),
                ..ObjectiveConfig::default()
            },
        )
        .build()?;

    // 2. Resolve (a second call for the same context would be a local cache hit).
    let ctx = RequestContext::new(objective)
        .with_subject(subject)
        .with_attribute("country", "CA");
    let resolved = client.resolve(&ctx).await?;
    let config = resolved.config();
    println!(
        "resolved {:?} → routing key {:?}, model {} v{:?} (source {}, rule set v{})",
        config.objective,
        resolved.routing_key(),
        config.model_id,
        config.model_version,
        resolved.source().as_str(),
        resolved.rule_set_version(),
    );

    // 3. The ObjectiveConfig goes in our own body; the routing key in the header.
    let body = serde_json::json!({
        "model": config.model_id,
        "model_version": config.model_version,
        "parameters": config.parameters,
        "inputs": [{ "name": "candidates", "datatype": "INT64", "shape": [3], "data": [1, 2, 3] }],
    });
    // Origin-form URI plus Host: what an HTTP/1.1 client sends on its own connection.
    let path = format!("/v2/models/{}/infer", config.model_id);
    let mut request = http::Request::post(path)
        .header(HOST, router.as_str())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    lightbulb_client::stamp(&resolved, &mut request);

    // 4. Send it through the router (HTTP/1.1; a real service keeps a pooled client).
    let stream = TcpStream::connect(&router)
        .await
        .with_context(|| format!("connect to router {router}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake with the router")?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await?;

    // 5. The model's answer, or the router's JSON error (e.g. 404 unknown_routing_key).
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status}\n{}", String::from_utf8_lossy(&body));
    drop(sender);
    connection.await??;
    Ok(())
}
