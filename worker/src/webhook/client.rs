//! One webhook attempt over HTTP: the Standard Webhooks headers and signature, a bounded time,
//! no redirects, no proxies, and only addresses the URL policy admits, checked when the
//! receiver's name is resolved for the connection itself, so what is called is what was
//! checked (a name that resolves to a public address when checked and to a private one when
//! called cannot slip through).

use refresh_shared::{
    error_chain,
    webhook::{EndpointSecret, UrlPolicy, UrlRefusal},
};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use time::OffsetDateTime;

/// The longest a connection to a receiver may take to open, within the attempt's time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one attempt came to.
#[derive(Debug)]
pub struct Attempted {
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why it did not answer (or was not called).
    pub error: Option<String>,
    pub took: Duration,
}

pub struct WebhookClient {
    http: reqwest::Client,
    policy: UrlPolicy,
}

/// What is sent: the message, its id, and the key it is signed with.
pub struct Signed<'a> {
    pub message_id: &'a str,
    pub body: &'a str,
    pub secret: &'a EndpointSecret,
}

impl WebhookClient {
    pub fn new(policy: UrlPolicy, timeout: Duration) -> reqwest::Result<WebhookClient> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            // A redirect would go to a URL nobody checked; a proxy would resolve the name
            // itself, past the check.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver { policy }))
            .user_agent(concat!(
                "device-refresh-webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(WebhookClient { http, policy })
    }

    /// Posts `message` to `url`, signed now.
    pub async fn attempt(&self, url: &str, message: &Signed<'_>) -> Attempted {
        let started = Instant::now();
        let failed = |error: String| Attempted {
            status: None,
            error: Some(error),
            took: started.elapsed(),
        };
        // The form, and an address literal, here; a name when the connection resolves it.
        let url = match self.policy.check(url) {
            Ok(url) => url,
            Err(refusal) => return failed(format!("not called: url {refusal}")),
        };
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let signature = message
            .secret
            .sign(message.message_id, timestamp, message.body.as_bytes());
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", message.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(message.body.to_owned())
            .send()
            .await;
        match sent {
            // The body is not read: only the status counts, and a receiver cannot make the
            // worker read a large or endless one.
            Ok(response) => Attempted {
                status: Some(response.status().as_u16()),
                error: None,
                took: started.elapsed(),
            },
            Err(error) => failed(describe(&error)),
        }
    }
}

/// An error with its causes, which say what actually went wrong (a refused address, a reset).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        format!("no answer in time: {}", error_chain(error))
    } else {
        error_chain(error)
    }
}

/// Resolves receivers' names and refuses, before any connection, one that resolves to an
/// address the policy does not admit.
struct CheckedResolver {
    policy: UrlPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            // Port 0: the connector puts the URL's own port in.
            let addresses =
                policy
                    .resolve_host(name.as_str(), 0)
                    .await
                    .map_err(|refusal: UrlRefusal| {
                        Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>
                    })?;
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}
