//! The HTTP/1 accept loop. `axum::serve` offers neither a header read timeout nor a connection
//! limit; this loop is the few lines that add both, with a graceful shutdown, and TLS for the
//! device listener.

use crate::settings::ApiSettings;
use crate::{
    error::ApiError,
    tls::{ClientCertificate, DeviceTls},
};
use axum::{Router, extract::ConnectInfo, response::IntoResponse};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
    service::TowerToHyperService,
};
use refresh_shared::metric;
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
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
    tls: Option<DeviceTls>,
    /// Longest a TLS handshake may take: `HEADER_READ_TIMEOUT_MS`, like the headers after it.
    handshake_timeout: Duration,
}

impl Server {
    pub fn new(
        listener: TcpListener,
        router: Router,
        settings: &ApiSettings,
        tls: Option<DeviceTls>,
    ) -> Server {
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
            tls,
            handshake_timeout: settings.header_read_timeout,
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
            let Ok(open) = self.connections.clone().try_acquire_owned() else {
                metrics::counter!(metric::HTTP_CONNECTIONS_REFUSED).increment(1);
                let tls = self
                    .tls
                    .as_ref()
                    .map(|tls| (tls.acceptor.clone(), self.handshake_timeout));
                tokio::spawn(refuse(self.http.clone(), stream, tls));
                continue;
            };
            let router = self.router.clone();
            let (http, watcher) = (self.http.clone(), graceful.watcher());
            let (tls, handshake_timeout) = (self.tls.clone(), self.handshake_timeout);
            tokio::spawn(async move {
                let served = match tls {
                    None => serve(&http, watcher, stream, service(router, client, None)).await,
                    Some(tls) => {
                        let handshake = tls.acceptor.accept(stream);
                        match tokio::time::timeout(handshake_timeout, handshake).await {
                            Ok(Ok(stream)) => {
                                let certificate = tls.client_certificate(&stream);
                                let service = service(router, client, certificate);
                                serve(&http, watcher, stream, service).await
                            }
                            Ok(Err(error)) => Err(error.to_string()),
                            Err(_) => Err("TLS handshake timed out".to_owned()),
                        }
                    }
                };
                if let Err(error) = served {
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

/// The router as one connection's service: every request carries the client's address and
/// the certificate it showed, if any.
fn service(
    router: Router,
    client: SocketAddr,
    certificate: Option<ClientCertificate>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ 'static {
    let router = router.map_request(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(client));
        if let Some(certificate) = &certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        request
    });
    TowerToHyperService::new(router)
}

/// Serves one connection's requests until it closes, or the server stops.
async fn serve<S, T>(
    http: &http1::Builder,
    watcher: Watcher,
    stream: T,
    service: S,
) -> Result<(), String>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = axum::response::Response>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = http.serve_connection(TokioIo::new(stream), service);
    watcher
        .watch(connection)
        .await
        .map_err(|error| error.to_string())
}

/// A connection over `MAX_CONNECTIONS`: its first request is answered 503 5030, then it closes.
/// It costs a task only until that request's head is read, `HEADER_READ_TIMEOUT_MS` at most
/// (after the TLS handshake, on a TLS listener, bounded by the same time).
async fn refuse(mut http: http1::Builder, stream: TcpStream, tls: Option<(TlsAcceptor, Duration)>) {
    http.keep_alive(false);
    let busy = service_fn(|_| async { Ok::<_, Infallible>(ApiError::Overloaded.into_response()) });
    let ended = match tls {
        None => http.serve_connection(TokioIo::new(stream), busy).await,
        Some((tls, handshake_timeout)) => {
            match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => http.serve_connection(TokioIo::new(stream), busy).await,
                _ => return,
            }
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "refused connection ended with an error");
    }
}
