//! The HTTP/1 accept loop. `axum::serve` offers neither a header read timeout nor a connection
//! limit; this loop is the few lines that add both, with a graceful shutdown.

use crate::error::ApiError;
use crate::settings::ApiSettings;
use axum::{Router, extract::ConnectInfo, response::IntoResponse};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use refresh_shared::metric;
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long to wait before accepting again after `accept` failed (out of file descriptors,
/// most likely): retrying at once would spin while nothing has been freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub struct Server {
    listener: TcpListener,
    router: Router,
    http: http1::Builder,
    connections: Arc<Semaphore>,
}

impl Server {
    pub fn new(listener: TcpListener, router: Router, settings: &ApiSettings) -> Server {
        let mut http = http1::Builder::new();
        // The timer drives the header read timeout; hyper applies it from the moment the
        // connection waits for a request, so it also ends idle keep-alive connections.
        http.timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout);
        Server {
            listener,
            router,
            http,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
        }
    }

    /// Serves until `stop` is cancelled, then lets the open connections finish their requests
    /// for up to `grace`.
    pub async fn run(self, stop: CancellationToken, grace: Duration) {
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, client) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "could not accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            // Answers are small and written at once: no reason to hold them back (Nagle).
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let io = TokioIo::new(stream);
            let Ok(open) = self.connections.clone().try_acquire_owned() else {
                metrics::counter!(metric::HTTP_CONNECTIONS_REFUSED).increment(1);
                tokio::spawn(refuse(self.http.clone(), io));
                continue;
            };
            let router = self.router.clone();
            let service = router.map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(client));
                request
            });
            let connection = self
                .http
                .serve_connection(io, TowerToHyperService::new(service));
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    // Clients that hang up, stall their headers or send garbage end here.
                    tracing::debug!(%error, %client, "connection ended with an error");
                }
                drop(open);
            });
        }
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!(?grace, "requests still in flight at the shutdown deadline are dropped");
            }
        }
    }
}

/// A connection over `MAX_CONNECTIONS`: its first request is answered 503 5030, then it closes.
/// It costs a task only until that request's head is read, `HEADER_READ_TIMEOUT_MS` at most.
async fn refuse(mut http: http1::Builder, io: TokioIo<tokio::net::TcpStream>) {
    http.keep_alive(false);
    let busy = service_fn(|_| async { Ok::<_, Infallible>(ApiError::Overloaded.into_response()) });
    if let Err(error) = http.serve_connection(io, busy).await {
        tracing::debug!(%error, "refused connection ended with an error");
    }
}
