//! Which WNS channel URIs the worker may contact. A channel URI comes from a
//! device, and the worker sends its WNS access token to it: a URI pointing anywhere else would
//! hand that token to whoever listens there. So a channel is `https://` on a host ending in one
//! of `WNS_CHANNEL_HOST_SUFFIXES`, or exactly one of the plain-`http` origins that setting lists
//! for local use (the push-gateway simulator); anything else is refused when the device is
//! written and again before every push.

use std::{fmt, str::FromStr};
use url::{Host, Url};

/// The channel URIs a deployment admits (`WNS_CHANNEL_HOST_SUFFIXES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Lower-case host suffixes, such as `.notify.windows.com`, admitted over https.
    suffixes: Vec<String>,
    /// Origins admitted exactly as listed, over http too (`http://127.0.0.1:8090`).
    origins: Vec<url::Origin>,
}

/// Why a channel URI is not one the worker may contact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WNS channel URI refused: {0}")]
pub struct ChannelRefused(&'static str);

impl ChannelPolicy {
    /// The origins admitted over plain http, to be logged at start: they exist for local use.
    pub fn insecure_origins(&self) -> impl Iterator<Item = String> + '_ {
        self.origins
            .iter()
            .filter(|origin| matches!(origin, url::Origin::Tuple(scheme, ..) if scheme == "http"))
            .map(url::Origin::ascii_serialization)
    }

    /// The URI, parsed, when the worker may send a push (and its WNS token) there.
    pub fn check(&self, uri: &str) -> Result<Url, ChannelRefused> {
        let url = Url::parse(uri).map_err(|_| ChannelRefused("not a URL"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ChannelRefused("a channel URI carries no credentials"));
        }
        if self.origins.contains(&url.origin()) {
            return Ok(url);
        }
        if url.scheme() != "https" {
            return Err(ChannelRefused("not https"));
        }
        let Some(Host::Domain(host)) = url.host() else {
            return Err(ChannelRefused("the host is not a domain name"));
        };
        let host = host.to_ascii_lowercase();
        if self.suffixes.iter().any(|suffix| host.ends_with(suffix)) {
            Ok(url)
        } else {
            Err(ChannelRefused(
                "the host is not one of WNS_CHANNEL_HOST_SUFFIXES",
            ))
        }
    }
}

impl FromStr for ChannelPolicy {
    type Err = String;

    /// A comma-separated list of host suffixes (`.notify.windows.com`) and origins
    /// (`http://127.0.0.1:8090`).
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut policy = ChannelPolicy {
            suffixes: Vec::new(),
            origins: Vec::new(),
        };
        for entry in raw.split(',').map(str::trim) {
            if entry.contains("://") {
                let url = Url::parse(entry).map_err(|e| format!("'{entry}': {e}"))?;
                let bare = url.path() == "/" && url.query().is_none() && url.username().is_empty();
                if !matches!(url.scheme(), "http" | "https") || !bare || url.port().is_none() {
                    return Err(format!(
                        "'{entry}' is not an origin like http://127.0.0.1:8090 (scheme, host and port, nothing else)"
                    ));
                }
                policy.origins.push(url.origin());
            } else if entry.len() > 1 && entry.starts_with('.') && !entry.contains(['/', ':', '@'])
            {
                policy.suffixes.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "'{entry}' is neither a host suffix starting with '.' nor an origin"
                ));
            }
        }
        Ok(policy)
    }
}

impl fmt::Display for ChannelPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origins = self.origins.iter().map(url::Origin::ascii_serialization);
        let entries: Vec<String> = self.suffixes.iter().cloned().chain(origins).collect();
        f.write_str(&entries.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(raw: &str) -> ChannelPolicy {
        raw.parse().expect("a valid policy")
    }

    #[test]
    fn only_https_channels_on_listed_hosts_are_admitted() {
        let policy = policy(".notify.windows.com");
        for admitted in [
            "https://db5p.notify.windows.com/w/?token=AwYAAAD",
            "https://DB5P.Notify.Windows.COM/?token=x",
        ] {
            assert!(policy.check(admitted).is_ok(), "{admitted}");
        }
        for refused in [
            "http://db5p.notify.windows.com/?token=x",
            "https://notify.windows.com.evil.example/",
            "https://evilnotify.windows.com.example/",
            "https://127.0.0.1/steal",
            "http://127.0.0.1:9999/steal",
            "https://[::1]/",
            "https://user:pw@db5p.notify.windows.com/",
            "file:///etc/passwd",
            "not a url",
            "",
        ] {
            assert!(policy.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_listed_origin_admits_exactly_that_origin() {
        let policy = policy(".notify.windows.com, http://127.0.0.1:8090");
        assert!(
            policy
                .check("http://127.0.0.1:8090/wns/channels/abc")
                .is_ok()
        );
        for refused in [
            "http://127.0.0.1:8091/wns/channels/abc",
            "http://localhost:8090/wns/channels/abc",
            "https://127.0.0.1:8090/wns/channels/abc",
        ] {
            assert!(policy.check(refused).is_err(), "{refused}");
        }
        assert_eq!(
            policy.insecure_origins().collect::<Vec<_>>(),
            ["http://127.0.0.1:8090"]
        );
    }

    #[test]
    fn entries_are_suffixes_or_bare_origins() {
        for bad in [
            "notify.windows.com",
            ".",
            "http://127.0.0.1",
            "http://127.0.0.1:8090/path",
            "ftp://127.0.0.1:21",
            "",
        ] {
            assert!(bad.parse::<ChannelPolicy>().is_err(), "{bad}");
        }
        assert_eq!(
            policy(".notify.windows.com,http://127.0.0.1:8090").to_string(),
            ".notify.windows.com,http://127.0.0.1:8090"
        );
    }
}
