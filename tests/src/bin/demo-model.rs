//! A small demo model server for trying the platform locally (`scripts/dev.sh`).
//!
//! It speaks HTTP/1.1 and h2c on one port and answers every request with a JSON document
//! naming itself, the path and how many body bytes it received (read streaming), so a
//! request sent through the router shows which cluster served it.
//!
//! `demo-model --listen 127.0.0.1:9001 --name ranker-v1`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Demo model server: answers every request with its name and what it received.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in every answer (use the model or cluster name).
    #[arg(long, default_value = "demo-model")]
    name: String,
}

async fn answer(
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let routing_key = req
        .headers()
        .get("x-routing-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = req.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let doc = serde_json::json!({
        "model": &*name,
        "path": path,
        "routing_key": routing_key,
        "bytes_received": received,
        "outputs": [{ "name": "score", "datatype": "FP32", "shape": [1], "data": [0.87] }],
    });
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let name: Arc<str> = Arc::from(args.name.as_str());
    println!(
        "demo-model {} listening on {}",
        name,
        listener.local_addr()?
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let name = Arc::clone(&name);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(Arc::clone(&name), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
