//! The shutdown signal: SIGTERM or SIGINT, whichever comes first.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Installed SIGTERM and SIGINT handlers. Install them before announcing readiness, so a
/// signal that arrives right after start-up drains instead of killing the process.
#[derive(Debug)]
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Installs the handlers. Must run inside the runtime that will await [`Shutdown::wait`].
    ///
    /// # Errors
    ///
    /// When the handlers cannot be registered.
    pub fn install() -> io::Result<Self> {
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes when the process receives SIGTERM or SIGINT, logging which one.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("received SIGTERM"),
            _ = self.int.recv() => tracing::info!("received SIGINT"),
        }
    }
}
