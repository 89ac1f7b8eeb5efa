//! A TCP proxy a test can cut or pause: the network fault between a service and a real
//! dependency, without stopping the dependency other tests share.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::AbortHandle,
};

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

struct Shared {
    cut: AtomicBool,
    /// Whether bytes flow; while not, they are held, not lost.
    flowing: watch::Sender<bool>,
    links: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            flowing: watch::Sender::new(true),
            links: Mutex::default(),
        });
        let accept = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if shared.cut.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed at once
                    }
                    let flowing = shared.flowing.subscribe();
                    let link = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(target).await {
                            let (from_client, to_client) = inbound.into_split();
                            let (from_server, to_server) = outbound.into_split();
                            tokio::join!(
                                pump(from_client, to_server, flowing.clone()),
                                pump(from_server, to_client, flowing),
                            );
                        }
                    });
                    shared
                        .links
                        .lock()
                        .expect("links lock")
                        .push(link.abort_handle());
                }
            }
        })
        .abort_handle();
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// A proxy in front of the broker at `AMQP_URL` (default: the local one), and the URL
    /// that reaches the broker through it.
    pub async fn rabbitmq() -> (Proxy, String) {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        let proxy = Proxy::start(dependency_addr(&url, 5672)).await;
        let proxied = via(&url, proxy.addr);
        (proxy, proxied)
    }

    /// A proxy in front of the database at `MONGODB_URI` (default: the local one), and the URI
    /// that reaches the database through it.
    pub async fn mongodb() -> (Proxy, String) {
        let uri =
            std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
        let proxy = Proxy::start(dependency_addr(&uri, 27017)).await;
        let mut proxied = url::Url::parse(&via(&uri, proxy.addr)).expect("a URI");
        // Direct: a server that announces replica-set hosts would otherwise be reached around
        // the proxy.
        if !proxied
            .query_pairs()
            .any(|(key, _)| key == "directConnection")
        {
            proxied
                .query_pairs_mut()
                .append_pair("directConnection", "true");
        }
        (proxy, proxied.to_string())
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for link in self.shared.links.lock().expect("links lock").drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Holds every byte in either direction, connections open, until [`Proxy::resume`]: a
    /// dependency that has stopped answering.
    pub fn pause(&self) {
        self.shared.flowing.send_replace(false);
    }

    pub fn resume(&self) {
        self.shared.flowing.send_replace(true);
    }
}

/// Copies `from` to `to`, holding what it read while the proxy is paused.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flowing: watch::Receiver<bool>) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if flowing.wait_for(|flowing| *flowing).await.is_err()
            || to.write_all(&buffer[..read]).await.is_err()
        {
            break;
        }
    }
    // Passes the end on, so each side sees the other close.
    let _ = to.shutdown().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Where RabbitMQ and MongoDB listen, for tests that put a [`Proxy`] in between.
fn dependency_addr(url: &str, default_port: u16) -> SocketAddr {
    let parsed = url::Url::parse(url).expect("service URL");
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let port = parsed.port().unwrap_or(default_port);
    format!("{host}:{port}").parse().expect("host:port")
}

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let mut parsed = url::Url::parse(url).expect("service URL");
    parsed.set_ip_host(addr.ip()).expect("ip host");
    parsed.set_port(Some(addr.port())).expect("port");
    parsed.to_string()
}
