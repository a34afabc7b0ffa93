//! A server that accepts TCP connections and then does nothing with them: it never reads and
//! never writes, and keeps every connection open until it is dropped.
//!
//! Behind the router it is an upstream (or a mirror) that "accepts and never reads": what
//! the router sends fills the socket buffers and then waits, and no response ever comes.
//! The kernel completes the TCP handshake, so connecting succeeds (unlike
//! [`crate::DeadPort`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running black-hole server on `127.0.0.1:0`. Dropping it closes its listener and every
/// connection it accepted.
#[derive(Debug)]
pub struct BlackHole {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The accept loop; it owns the accepted connections, so aborting it closes them.
    task: JoinHandle<()>,
}

impl BlackHole {
    /// Binds `127.0.0.1:0` and starts accepting.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound.
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the black hole to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the black hole");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            // Held, never read nor written, until the task is aborted.
            let mut open = Vec::new();
            loop {
                match listener.accept().await {
                    Ok((stream, _peer)) => {
                        open.push(stream);
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(error) => tracing::warn!(%error, "black hole accept failed"),
                }
            }
        });
        BlackHole {
            addr,
            accepted,
            task,
        }
    }

    /// The bound address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as written in a rule set.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;
    use crate::{DEADLINE, wait_until, within};

    #[tokio::test]
    async fn a_black_hole_keeps_connections_open_silently_until_dropped() {
        let hole = BlackHole::start().await;
        let mut stream = TcpStream::connect(hole.addr()).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        wait_until("the connection is accepted", DEADLINE, || {
            std::future::ready(hole.accepted() == 1)
        })
        .await;
        let mut buf = [0u8; 16];
        let pending = stream.try_read(&mut buf);
        assert!(
            matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "nothing is written and the connection is open: {pending:?}"
        );

        drop(hole);
        // EOF or a reset: either way the connection is closed.
        let closed = within("the connection to close", DEADLINE, stream.read(&mut buf)).await;
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
}
