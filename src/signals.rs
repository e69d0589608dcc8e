//! SIGINT and SIGTERM. Both one-shot commands (`run`, `demo`) and the daemon
//! wait for them, so they live here and not in `app`, which sits above both.

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Cancels `token` on SIGINT or SIGTERM: running rules roll back and report `failed`.
pub(crate) fn cancel_on_signal(token: &CancellationToken) {
    let token = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        warn!("signal received: cancelling running rules (their transactions roll back)");
        token.cancel();
    });
}

/// Waits for SIGINT or SIGTERM (each call waits for a new one).
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
