//! HTTP/1.1 upgrades through the router (DESIGN §6): a real WebSocket client and server
//! (tokio-tungstenite) on both sides; the 101 comes back, messages flow both ways until
//! either side closes, and the routing and tenant rules apply to the upgrade request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use integration_tests::{DEADLINE, RouterProcess, within};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{TENANT, wait_for_endpoint};

/// The head of one upgrade request as the WebSocket server saw it.
#[derive(Debug, Clone)]
struct SeenUpgrade {
    path: String,
    routing_key: Option<String>,
    forwarded_for: Option<String>,
}

/// A WebSocket server on loopback that answers every text message with `echo: <text>`,
/// every binary one with the same bytes, and closes when told `bye`.
struct EchoServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenUpgrade>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)]
                    let callback =
                        |req: &Request, resp: Response| record_upgrade(&record, req, resp);
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        let reply = match message {
                            Message::Text(text) if text.as_str() == "bye" => {
                                let _ = ws.close(None).await;
                                return;
                            }
                            Message::Text(text) => Message::text(format!("echo: {text}")),
                            Message::Binary(bytes) => Message::Binary(bytes),
                            Message::Close(_) => return,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer { addr, seen, task }
    }

    fn seen(&self) -> Vec<SeenUpgrade> {
        self.seen.lock().unwrap().clone()
    }
}

/// The server's handshake callback: records the upgrade request's head and accepts it.
// The error type is tungstenite's, fixed by its callback trait.
#[allow(clippy::result_large_err)]
fn record_upgrade(
    record: &Mutex<Vec<SeenUpgrade>>,
    req: &Request,
    resp: Response,
) -> Result<Response, ErrorResponse> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    record.lock().unwrap().push(SeenUpgrade {
        path: req.uri().path().to_owned(),
        routing_key: header("x-routing-key"),
        forwarded_for: header("x-forwarded-for"),
    });
    Ok(resp)
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket through the router at `path` with the given headers.
async fn connect(
    router: &RouterProcess,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, WsError> {
    let url = format!("ws://{}{path}", router.proxy_addr);
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    within("the WebSocket handshake", DEADLINE, async {
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| ws)
    })
    .await
}

/// The HTTP status a refused handshake got, and its body as JSON.
fn refused(result: Result<Client, WsError>) -> (u16, Value) {
    match result {
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(body).unwrap_or(Value::Null),
            )
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

async fn next_message(ws: &mut Client) -> Message {
    within("a WebSocket message", DEADLINE, ws.next())
        .await
        .expect("the stream ended")
        .expect("the WebSocket failed")
}

/// Rules: `ws` → an HTTP/1.1 cluster, `ws-auto` → an `auto` one, `ws-h2` → an h2c-only one,
/// `ws-tenant` → HTTP/1.1 allowing only tenant `a`, who may have one request in flight.
fn rules(server: &EchoServer) -> Value {
    let endpoint = server.addr.to_string();
    json!({
        "clusters": {
            "h1": { "endpoints": [endpoint], "protocol": "http1" },
            "auto": { "endpoints": [endpoint], "protocol": "auto" },
            "h2": { "endpoints": [endpoint], "protocol": "http2" },
        },
        "routes": {
            "ws": { "cluster": "h1" },
            "ws-auto": { "cluster": "auto" },
            "ws-h2": { "cluster": "h2" },
            "ws-tenant": { "cluster": "h1", "tenants": ["a"] },
        },
        "tenants": { "a": { "max_concurrent": 1 } },
    })
}

#[tokio::test]
async fn a_websocket_is_tunnelled_both_ways_until_the_client_closes() {
    let server = EchoServer::start().await;
    let router = RouterProcess::start(&rules(&server)).await;
    for key in ["ws", "ws-auto"] {
        let path = format!("/v1/realtime/{key}");
        let mut ws = connect(&router, &path, &[("x-routing-key", key)])
            .await
            .unwrap_or_else(|e| panic!("upgrade via {key}: {e}"));
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text("echo: hello"));
        // A message larger than any single read, both ways.
        let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::binary(big));
        ws.close(None).await.unwrap();
        // The close handshake completes through the tunnel.
        loop {
            match within("the end of the WebSocket", DEADLINE, ws.next()).await {
                None | Some(Err(_)) => break,
                Some(Ok(Message::Close(_))) => continue,
                Some(Ok(other)) => panic!("unexpected message after close: {other:?}"),
            }
        }
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].path, "/v1/realtime/ws");
    assert_eq!(seen[0].routing_key.as_deref(), Some("ws"));
    assert_eq!(seen[0].forwarded_for.as_deref(), Some("127.0.0.1"));
    assert_eq!(seen[1].path, "/v1/realtime/ws-auto");
}

#[tokio::test]
async fn the_server_closing_ends_the_tunnel_and_frees_the_endpoint() {
    let server = EchoServer::start().await;
    let router = RouterProcess::start(&rules(&server)).await;
    let mut ws = connect(&router, "/", &[("x-routing-key", "ws")])
        .await
        .unwrap();
    let endpoint = server.addr.to_string();
    wait_for_endpoint(&router, "h1", &endpoint, "holding the open tunnel", |e| {
        e["active_requests"] == 1
    })
    .await;
    server_closes(&router, &server, &mut ws).await;
}

/// Has the server close `ws` and waits until the router shows the tunnel ended.
async fn server_closes(router: &RouterProcess, server: &EchoServer, ws: &mut Client) {
    ws.send(Message::text("bye")).await.unwrap();
    match next_message(ws).await {
        Message::Close(_) => {}
        other => panic!("expected the server's close, got {other:?}"),
    }
    let endpoint = server.addr.to_string();
    wait_for_endpoint(
        router,
        "h1",
        &endpoint,
        "free once the tunnel closed",
        |e| e["active_requests"] == 0,
    )
    .await;
}

#[tokio::test]
async fn upgrade_requests_get_the_routing_and_tenant_rules() {
    let server = EchoServer::start().await;
    let router = RouterProcess::start(&rules(&server)).await;

    let (status, body) = refused(connect(&router, "/", &[]).await);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "missing_routing_key");
    let (status, body) = refused(connect(&router, "/", &[("x-routing-key", "nope")]).await);
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_routing_key");
    let (status, body) = refused(connect(&router, "/", &[("x-routing-key", "ws-tenant")]).await);
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "tenant_not_allowed");

    // Tenant `a` may hold one request in flight: an open WebSocket is one.
    let tenant = [("x-routing-key", "ws-tenant"), (TENANT, "a")];
    let mut first = connect(&router, "/", &tenant).await.unwrap();
    let (status, body) = refused(connect(&router, "/", &tenant).await);
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "overloaded");
    first.send(Message::text("still open")).await.unwrap();
    assert_eq!(
        next_message(&mut first).await,
        Message::text("echo: still open")
    );
    server_closes(&router, &server, &mut first).await;
    let mut again = connect(&router, "/", &tenant)
        .await
        .expect("the tenant's place is free again");
    again.send(Message::text("x")).await.unwrap();
    assert_eq!(next_message(&mut again).await, Message::text("echo: x"));
    // Only the two upgrades that were admitted reached the server.
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn an_upgrade_to_an_h2c_only_cluster_is_a_clear_error() {
    let server = EchoServer::start().await;
    let router = RouterProcess::start(&rules(&server)).await;
    let (status, body) = refused(connect(&router, "/", &[("x-routing-key", "ws-h2")]).await);
    assert_eq!(status, 501);
    assert_eq!(body["error"]["code"], "upgrade_not_supported");
    assert!(server.seen().is_empty(), "nothing reached the server");
}

#[tokio::test]
async fn connect_is_refused_not_forwarded() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = EchoServer::start().await;
    let router = RouterProcess::start(&rules(&server)).await;
    let mut stream = TcpStream::connect(router.proxy_addr).await.unwrap();
    stream
        .write_all(
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nx-routing-key: ws\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the answer to CONNECT", DEADLINE, async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the router closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    assert!(server.seen().is_empty(), "nothing reached the server");
}
