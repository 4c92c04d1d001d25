//! The signals that ask a service to stop.

use std::pin::pin;

use futures_util::future::{select, Either};

/// Completes on the first Ctrl-C (SIGINT) or, on Unix, SIGTERM: what a
/// terminal, systemd, Docker and Kubernetes send to stop a service.
///
/// # Panics
///
/// When the signal handlers cannot be installed (outside a tokio runtime, or
/// when the OS refuses), as a service that cannot be stopped gracefully
/// should not start.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c()
            .await
            .expect("cannot listen for Ctrl-C");
    };
    #[cfg(unix)]
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot listen for SIGTERM")
            .recv()
            .await;
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    match select(pin!(ctrl_c), pin!(terminate)).await {
        Either::Left(_) => tracing::info!("Ctrl-C received; shutting down"),
        Either::Right(_) => tracing::info!("SIGTERM received; shutting down"),
    }
}
