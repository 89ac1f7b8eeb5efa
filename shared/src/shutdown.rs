//! The signal every binary stops on.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Docker and systemd send).
pub async fn signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Cancels `token` when `shutdown` resolves, so the several parts of a service that must stop
/// together can all watch one token.
pub fn cancel_on(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    token: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        shutdown.await;
        token.cancel();
    });
}
