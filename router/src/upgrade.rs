//! HTTP/1.1 upgrades (WebSockets, and any other `Upgrade` protocol): the request is routed
//! and admitted like any other, sent to the endpoint on a connection of its own with its
//! `Connection: upgrade` and `Upgrade` headers, and when the endpoint answers `101` the
//! answer goes back to the client and the bytes are tunnelled both ways until either side
//! closes. The tunnel holds the request's in-flight counts (endpoint, cluster, tenant) for as
//! long as it is open, so `max_concurrent` and the balancers see open WebSockets.
//!
//! h2 has no `Upgrade`; an extended CONNECT (RFC 8441) is not offered (the router does not
//! announce it), and a CONNECT request of either protocol is answered
//! `501 upgrade_not_supported`.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use http::{Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The client's side of an upgrade a request asks for.
#[derive(Debug)]
pub struct Upgrade {
    downstream: OnUpgrade,
}

/// What a request's head asks for: an upgrade to pass on, or nothing of the kind.
///
/// `asked` is the `Upgrade` value [`crate::headers::strip_hop_by_hop`] found. When the
/// request is HTTP/1.1 and the connection can be handed over, the upgrade headers are put
/// back for the endpoint (they were stripped as hop-by-hop) and the client's side is taken.
pub fn requested(
    version: Version,
    headers: &mut HeaderMap,
    extensions: &mut http::Extensions,
    asked: Option<HeaderValue>,
) -> Option<Upgrade> {
    let protocol = asked?;
    if version != Version::HTTP_11 {
        return None;
    }
    let downstream = extensions.remove::<OnUpgrade>()?;
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
    Some(Upgrade { downstream })
}

/// How a tunnel ended: bytes each way.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tunnelled {
    /// Bytes from the client to the endpoint.
    pub to_upstream: u64,
    /// Bytes from the endpoint to the client.
    pub to_client: u64,
}

/// After the endpoint's `101`: puts the upgrade headers of its answer back (stripped as
/// hop-by-hop) and starts the tunnel, which runs until either side closes and then calls
/// `done` with what it carried (`done` also drops what the tunnel held). An answer other
/// than `101` leaves the upgrade unused: the client's connection stays plain HTTP.
pub fn start<F>(
    upgrade: Upgrade,
    resp: &mut Response<Incoming>,
    protocol: Option<HeaderValue>,
    done: F,
) where
    F: FnOnce(Tunnelled) + Send + 'static,
{
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(&mut *resp);
    let headers = resp.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        headers.insert(UPGRADE, protocol);
    }
    tokio::spawn(async move {
        let carried = match tokio::try_join!(upgrade.downstream, upstream) {
            Ok((client, endpoint)) => tunnel(TokioIo::new(client), TokioIo::new(endpoint)).await,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade not completed");
                Tunnelled::default()
            }
        };
        done(carried);
    });
}

/// Bytes read at once from either side.
const TUNNEL_BUFFER: usize = 16 * 1024;

/// Copies bytes both ways until either side closes (or fails): then the other side's write
/// half is shut down and both connections end.
async fn tunnel<C, E>(client: C, endpoint: E) -> Tunnelled
where
    C: AsyncRead + AsyncWrite,
    E: AsyncRead + AsyncWrite,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut endpoint_read, mut endpoint_write) = tokio::io::split(endpoint);
    let (to_upstream, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    {
        let up = pump(&mut client_read, &mut endpoint_write, &to_upstream);
        let down = pump(&mut endpoint_read, &mut client_write, &to_client);
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    }
    let _ = endpoint_write.shutdown().await;
    let _ = client_write.shutdown().await;
    Tunnelled {
        to_upstream: to_upstream.into_inner(),
        to_client: to_client.into_inner(),
    }
}

/// Copies from `from` to `to` until `from` ends or either fails, counting into `count`.
async fn pump<R, W>(from: &mut R, to: &mut W, count: &AtomicU64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; TUNNEL_BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "upgraded connection read failed");
                return;
            }
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            tracing::debug!(error = %e, "upgraded connection write failed");
            return;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
