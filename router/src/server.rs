//! The proxy listener: one worker thread per core, each with its own single-threaded runtime,
//! its own `SO_REUSEPORT` socket on the shared address, and its own slot in every upstream
//! pool. The kernel spreads new connections across the sockets; nothing is shared between
//! workers on the request path except the route table snapshot.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Socket, Type};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;
use crate::state::Shared;
use crate::upstream;

/// Settings of the proxy listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time allowed for a complete HTTP/1.1 request head (`None`: no limit).
    pub header_read_timeout: Option<Duration>,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Most connections this worker holds open at once.
    pub max_connections: usize,
}

/// Binds `count` sockets to `addr` with `SO_REUSEPORT`. With port 0 the first socket picks
/// the port and the rest join it.
///
/// # Errors
///
/// When a socket cannot be created or bound.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = reuseport_socket(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(reuseport_socket(bound)?);
    }
    Ok(listeners)
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts worker `index` on its own thread, serving `listener` until `shutdown` is
/// cancelled, then draining.
///
/// # Errors
///
/// When the thread or its runtime cannot be created.
pub fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    options: ServeOptions,
) -> io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("router-worker-{index}"))
        .spawn(move || {
            upstream::set_worker_index(index);
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, shared, shutdown, options).await,
                    Err(e) => {
                        tracing::error!(worker = index, error = %e, "cannot register listener")
                    }
                }
            });
        })
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    options: ServeOptions,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and similar: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            Proxy::new(Arc::clone(&shared), remote),
        );
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %remote, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(connections = open, "draining");
    }
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(deadline = ?options.drain_timeout, "drain deadline passed; closing remaining connections");
    }
}
