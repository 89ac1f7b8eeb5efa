//! Webhooks: the events callers subscribe to, the endpoint's signing secret, the Standard
//! Webhooks signature, and which URLs the service may ever call.
//!
//! An endpoint's secret is never stored: it is derived from `WEBHOOK_SIGNING_KEY` and a random
//! salt kept with the endpoint (HMAC-SHA256 of the salt under the key), so the api can show it
//! once and the worker can sign with it, while the database alone gives nobody a secret.

mod delivery;

pub use delivery::{
    DELIVERY_MESSAGE_VERSION, DeliveryDecodeError, MAX_BODY_BYTES, WebhookDelivery,
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use strum::EnumIter;
use url::Url;

/// What a webhook endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, EnumIter)]
pub enum WebhookEvent {
    /// Every category of a job has ended.
    #[serde(rename = "refresh.job.finished")]
    JobFinished,
    /// Every job of a batch has ended.
    #[serde(rename = "refresh.batch.finished")]
    BatchFinished,
    /// The device reported one category of a job.
    #[serde(rename = "refresh.category.reported")]
    CategoryReported,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 3] = [
        WebhookEvent::JobFinished,
        WebhookEvent::BatchFinished,
        WebhookEvent::CategoryReported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::JobFinished => "refresh.job.finished",
            WebhookEvent::BatchFinished => "refresh.batch.finished",
            WebhookEvent::CategoryReported => "refresh.category.reported",
        }
    }

    pub fn parse(name: &str) -> Option<WebhookEvent> {
        WebhookEvent::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Whether an endpoint is delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    Active,
    /// A delivery went through every retry tier without a 2xx; deliveries go on.
    Failing,
    /// The receiver answered 410 Gone: nothing is delivered to it any more.
    Disabled,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Active => "active",
            EndpointState::Failing => "failing",
            EndpointState::Disabled => "disabled",
        }
    }
}

/// Where one event's delivery to one endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not answered with a 2xx yet: waiting for its next attempt.
    Pending,
    /// An attempt was answered with a 2xx.
    Delivered,
    /// Given up: the last retry tier passed without a 2xx (the message is dead-lettered), or
    /// the receiver answered 410 Gone.
    Failed,
    /// Not attempted again: the endpoint was disabled or removed meanwhile.
    Dropped,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Dropped => "dropped",
        }
    }
}

/// The shortest `WEBHOOK_SIGNING_KEY` (decoded) accepted: as many bits as the HMAC's output.
pub const MIN_SIGNING_KEY_BYTES: usize = 32;
const SECRET_PREFIX: &str = "whsec_";
const SALT_BYTES: usize = 16;

/// `WEBHOOK_SIGNING_KEY`: what every endpoint's secret is derived from.
pub struct SigningKey(SecretBox<[u8]>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningKeyError {
    #[error("is not base64")]
    NotBase64,
    #[error("decodes to {0} bytes; at least {MIN_SIGNING_KEY_BYTES} are needed")]
    TooShort(usize),
}

impl SigningKey {
    pub fn from_base64(text: &str) -> Result<SigningKey, SigningKeyError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| SigningKeyError::NotBase64)?;
        if bytes.len() < MIN_SIGNING_KEY_BYTES {
            return Err(SigningKeyError::TooShort(bytes.len()));
        }
        Ok(SigningKey(SecretBox::new(bytes.into_boxed_slice())))
    }

    /// The secret of the endpoint with `salt`.
    pub fn endpoint_secret(&self, salt: &[u8]) -> EndpointSecret {
        let mut mac = keyed(self.0.expose_secret());
        mac.update(b"device-refresh webhook endpoint secret\0");
        mac.update(salt);
        let derived: Box<[u8]> = mac.finalize().into_bytes().to_vec().into_boxed_slice();
        EndpointSecret(SecretBox::new(derived))
    }
}

/// A new endpoint's salt: random, stored with the endpoint, not secret by itself.
pub fn new_salt() -> Vec<u8> {
    let mut salt = vec![0; SALT_BYTES];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// The key an endpoint's deliveries are signed with.
pub struct EndpointSecret(SecretBox<[u8]>);

impl EndpointSecret {
    /// As the receiver configures it: `whsec_` and the key in base64 (Standard Webhooks).
    pub fn shown(&self) -> SecretString {
        format!("{SECRET_PREFIX}{}", BASE64.encode(self.0.expose_secret())).into()
    }

    /// The secret as [`EndpointSecret::shown`] shows it, read back (a receiver's side).
    pub fn from_shown(text: &str) -> Option<EndpointSecret> {
        let key = BASE64.decode(text.strip_prefix(SECRET_PREFIX)?).ok()?;
        Some(EndpointSecret(SecretBox::new(key.into_boxed_slice())))
    }

    /// The `webhook-signature` header's value for a message: `v1,` and the base64 HMAC-SHA256
    /// of `id.timestamp.body`.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = keyed(self.0.expose_secret());
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

/// The longest webhook URL accepted, in characters: a body carrying one this long, however
/// escaped, stays within the api's default body limit.
pub const MAX_URL_LEN: usize = 1024;

/// Why a webhook URL is not one the service will call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("is not an absolute URL")]
    NotAUrl,
    #[error("is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("must use https")]
    NotHttps,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("must not carry a fragment")]
    Fragment,
    #[error("has no host")]
    NoHost,
    #[error("resolves to {0}, which is not a public address")]
    NotPublic(IpAddr),
    #[error("does not resolve to any address")]
    Unresolved,
    #[error("did not resolve within {} s", RESOLVE_TIMEOUT.as_secs())]
    ResolveTimeout,
}

/// The longest a webhook host's name may take to resolve.
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the service may call: `https` URLs of public addresses; with `allow_insecure`
/// (`WEBHOOK_ALLOW_INSECURE`, tests and the local stack only) `http` and any address too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlPolicy {
    pub allow_insecure: bool,
}

impl UrlPolicy {
    /// The URL's form, before any resolution: absolute, `https`, a host, no credentials, no
    /// fragment; an IP literal must be public.
    pub fn check(self, text: &str) -> Result<Url, UrlRefusal> {
        if text.chars().count() > MAX_URL_LEN {
            return Err(UrlRefusal::TooLong);
        }
        let url = Url::parse(text).map_err(|_| UrlRefusal::NotAUrl)?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {}
            _ => return Err(UrlRefusal::NotHttps),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefusal::Credentials);
        }
        if url.fragment().is_some() {
            return Err(UrlRefusal::Fragment);
        }
        match url.host() {
            None => Err(UrlRefusal::NoHost),
            Some(url::Host::Ipv4(ip)) => self.admit(IpAddr::V4(ip)).map(|()| url),
            Some(url::Host::Ipv6(ip)) => self.admit(IpAddr::V6(ip)).map(|()| url),
            Some(url::Host::Domain(_)) => Ok(url),
        }
    }

    /// Resolves `url`'s host (at most [`RESOLVE_TIMEOUT`]) and admits it only if every
    /// address is one the service may call: the addresses to connect to, so that what is
    /// called is what was checked.
    pub async fn resolve(self, url: &Url) -> Result<Vec<std::net::SocketAddr>, UrlRefusal> {
        let host = url.host_str().ok_or(UrlRefusal::NoHost)?;
        // An IPv6 literal comes bracketed; the resolver wants it bare.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(443);
        self.resolve_host(host, port).await
    }

    /// Resolves `host` (at most [`RESOLVE_TIMEOUT`]) and admits it only if every address is
    /// one the service may call: the addresses to connect to, on `port`.
    pub async fn resolve_host(
        self,
        host: &str,
        port: u16,
    ) -> Result<Vec<std::net::SocketAddr>, UrlRefusal> {
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| UrlRefusal::ResolveTimeout)?
            .map_err(|_| UrlRefusal::Unresolved)?;
        let addresses: Vec<std::net::SocketAddr> = found.collect();
        let ips: Vec<IpAddr> = addresses.iter().map(std::net::SocketAddr::ip).collect();
        self.admit_all(&ips)?;
        Ok(addresses)
    }

    /// Every address a URL's host resolved to must be one the service may call.
    pub fn admit_all(self, addresses: &[IpAddr]) -> Result<(), UrlRefusal> {
        if addresses.is_empty() {
            return Err(UrlRefusal::Unresolved);
        }
        addresses.iter().try_for_each(|&ip| self.admit(ip))
    }

    fn admit(self, ip: IpAddr) -> Result<(), UrlRefusal> {
        if self.allow_insecure || is_public(ip) {
            Ok(())
        } else {
            Err(UrlRefusal::NotPublic(ip))
        }
    }
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local
/// (cloud metadata services live there), unique-local, shared (carrier NAT), documentation,
/// benchmarking, multicast, broadcast, unspecified or reserved. An IPv4-mapped or -translated
/// IPv6 address is judged by its IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // Shared address space (RFC 6598), IETF protocol assignments, benchmarking, reserved.
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10 (deprecated).
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // Documentation 2001:db8::/32; NAT64 64:ff9b::/96 (reaches IPv4 space unchecked).
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: UrlPolicy = UrlPolicy {
        allow_insecure: false,
    };

    #[test]
    fn only_https_urls_of_public_addresses_are_admitted() {
        assert!(
            POLICY
                .check("https://hooks.example.com/refresh?x=1")
                .is_ok()
        );
        assert!(POLICY.check("https://93.184.216.34/").is_ok());
        for (url, refusal) in [
            ("http://127.0.0.1/", UrlRefusal::NotHttps),
            ("ftp://example.com/", UrlRefusal::NotHttps),
            (
                "https://10.0.0.1/",
                UrlRefusal::NotPublic("10.0.0.1".parse().unwrap()),
            ),
            (
                "https://169.254.169.254/latest/meta-data",
                UrlRefusal::NotPublic("169.254.169.254".parse().unwrap()),
            ),
            (
                "https://[::1]/",
                UrlRefusal::NotPublic("::1".parse().unwrap()),
            ),
            (
                "https://[::ffff:192.168.1.1]/",
                UrlRefusal::NotPublic("::ffff:192.168.1.1".parse().unwrap()),
            ),
            ("https://user:pw@example.com/", UrlRefusal::Credentials),
            ("https://example.com/#x", UrlRefusal::Fragment),
            ("/relative", UrlRefusal::NotAUrl),
        ] {
            assert_eq!(POLICY.check(url).err(), Some(refusal), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(POLICY.check(&long).err(), Some(UrlRefusal::TooLong));
        let insecure = UrlPolicy {
            allow_insecure: true,
        };
        assert!(insecure.check("http://127.0.0.1:8080/hook").is_ok());
    }

    #[test]
    fn resolved_addresses_must_all_be_public() {
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(POLICY.admit_all(&[public]), Ok(()));
        assert_eq!(
            POLICY.admit_all(&[public, loopback]),
            Err(UrlRefusal::NotPublic(loopback))
        );
        assert_eq!(POLICY.admit_all(&[]), Err(UrlRefusal::Unresolved));
        for private in [
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "0.1.2.3",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        assert!(is_public("2606:4700::1111".parse().unwrap()));
    }

    #[test]
    fn a_signature_is_the_standard_webhooks_one() {
        // Standard Webhooks' worked example (secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`);
        // the signature as Python's hmac module computes it.
        let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let secret = EndpointSecret(SecretBox::new(key.into_boxed_slice()));
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            secret.shown().expose_secret(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
    }

    #[test]
    fn an_endpoint_secret_depends_on_the_key_and_the_salt() {
        let key = SigningKey::from_base64(&BASE64.encode([7; 32])).unwrap();
        let other = SigningKey::from_base64(&BASE64.encode([8; 32])).unwrap();
        let (a, b) = (new_salt(), new_salt());
        let shown = |s: EndpointSecret| s.shown().expose_secret().to_owned();
        assert_eq!(
            shown(key.endpoint_secret(&a)),
            shown(key.endpoint_secret(&a))
        );
        assert_ne!(
            shown(key.endpoint_secret(&a)),
            shown(key.endpoint_secret(&b))
        );
        assert_ne!(
            shown(key.endpoint_secret(&a)),
            shown(other.endpoint_secret(&a))
        );
        assert!(shown(key.endpoint_secret(&a)).starts_with("whsec_"));
        assert_eq!(
            SigningKey::from_base64(&BASE64.encode([1; 16])).err(),
            Some(SigningKeyError::TooShort(16))
        );
        assert_eq!(
            SigningKey::from_base64("not base64!").err(),
            Some(SigningKeyError::NotBase64)
        );
    }
}
