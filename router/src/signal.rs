//! The shutdown signal: SIGTERM or SIGINT, whichever comes first.

use tokio::signal::unix::{SignalKind, signal};

/// Completes when the process receives SIGTERM or SIGINT, logging which one.
///
/// # Panics
///
/// When the signal handlers cannot be installed (only possible outside a Tokio runtime).
pub async fn shutdown() {
    let mut term = signal(SignalKind::terminate())
        .expect("installing a SIGTERM handler inside a runtime succeeds");
    let mut int = signal(SignalKind::interrupt())
        .expect("installing a SIGINT handler inside a runtime succeeds");
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
}
