//! THE table from a gateway's answer (a status and its headers, the WNS token endpoint's
//! answer, or no answer at all) to what the worker does next. Every retry decision in the
//! worker comes from here; nothing else looks at status codes.

use refresh_shared::device::Gateway;
use reqwest::{StatusCode, header::HeaderMap};
use std::time::Duration;

/// The longest wait a gateway can ask for. Its `Retry-After` is outside input: a year, or
/// 2^64 seconds, must neither overflow an `Instant` nor hold anything that long.
pub const MAX_REQUESTED_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The gateway took the push.
    Pushed,
    /// Worth trying the same gateway again, not before `after` when the gateway said so.
    Retry { after: Option<Duration> },
    /// The agent cannot reach the device now: try the next route (WNS) if there is one.
    DeviceUnreachable,
    /// WNS says the channel no longer exists (404, 410): it never will again.
    ChannelDead,
    /// WNS rejected the access token (401): get a new one, then try once more.
    RenewToken,
    /// Retrying cannot help (bad request, wrong app, device unenrolled, …).
    Permanent,
}

/// The agent gateway's answers.
pub fn agent(status: StatusCode, headers: &HeaderMap) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Pushed,
        // The agent has no live session with the device.
        404 => Verdict::DeviceUnreachable,
        429 => Verdict::Retry {
            after: retry_after(headers, "retry-after"),
        },
        408 | 500..=599 => Verdict::Retry {
            after: retry_after(headers, "retry-after"),
        },
        // 400 malformed, 401/403 our credentials, 410 device unenrolled, 413 too large, …
        _ => Verdict::Permanent,
    }
}

/// Windows Push Notification Services' answers to a raw push.
pub fn wns(status: StatusCode, headers: &HeaderMap) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Pushed,
        401 => Verdict::RenewToken,
        404 | 410 => Verdict::ChannelDead,
        // Throttled: this channel (or our app) is over its quota for now.
        406 | 429 => Verdict::Retry {
            after: retry_after(headers, "x-wns-continue-after")
                .or_else(|| retry_after(headers, "retry-after")),
        },
        408 | 500..=599 => Verdict::Retry {
            after: retry_after(headers, "retry-after"),
        },
        // 400 bad headers, 403 wrong app for the channel, 405 wrong method, 413 too large, …
        _ => Verdict::Permanent,
    }
}

/// A gateway that gave no answer (no connection, a timeout, a broken transfer).
pub fn unreachable(gateway: Gateway) -> Verdict {
    match gateway {
        // The agent gateway down is, for this device, the agent not reaching it: the next
        // route (WNS) is tried.
        Gateway::Agent => Verdict::DeviceUnreachable,
        Gateway::Wns => Verdict::Retry { after: None },
    }
}

/// The WNS token endpoint's answer: `None` when it issued a token, else what the push does.
pub fn wns_token(status: StatusCode) -> Option<Verdict> {
    match status.as_u16() {
        200..=299 => None,
        429 | 500..=599 => Some(Verdict::Retry { after: None }),
        // 400/401: our client id or secret is refused; retrying cannot help.
        _ => Some(Verdict::Permanent),
    }
}

/// A header holding a delay in whole seconds, at most [`MAX_REQUESTED_WAIT`].
fn retry_after(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let seconds = headers.get(name)?.to_str().ok()?.trim();
    // All digits but too many for a u64 is still a (very long) wait, not garbage.
    let seconds = match seconds.parse::<u64>() {
        Ok(seconds) => seconds,
        Err(_) if !seconds.is_empty() && seconds.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
        Err(_) => return None,
    };
    Some(Duration::from_secs(seconds).min(MAX_REQUESTED_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_static(k),
                    v.parse().expect("valid"),
                )
            })
            .collect()
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).expect("valid status")
    }

    #[test]
    fn wns_table() {
        let none = HeaderMap::new();
        let rows: &[(u16, Verdict)] = &[
            (200, Verdict::Pushed),
            (400, Verdict::Permanent),
            (401, Verdict::RenewToken),
            (403, Verdict::Permanent),
            (404, Verdict::ChannelDead),
            (405, Verdict::Permanent),
            (406, Verdict::Retry { after: None }),
            (410, Verdict::ChannelDead),
            (413, Verdict::Permanent),
            (500, Verdict::Retry { after: None }),
            (503, Verdict::Retry { after: None }),
        ];
        for (code, verdict) in rows {
            assert_eq!(wns(status(*code), &none), *verdict, "WNS {code}");
        }
        let throttled = headers(&[
            ("x-wns-status", "channelthrottled"),
            ("x-wns-continue-after", "2"),
        ]);
        assert_eq!(
            wns(status(406), &throttled),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn no_answer_and_token_answers() {
        assert_eq!(unreachable(Gateway::Agent), Verdict::DeviceUnreachable);
        assert_eq!(unreachable(Gateway::Wns), Verdict::Retry { after: None });
        assert_eq!(wns_token(status(200)), None);
        assert_eq!(wns_token(status(429)), Some(Verdict::Retry { after: None }));
        assert_eq!(wns_token(status(503)), Some(Verdict::Retry { after: None }));
        assert_eq!(wns_token(status(400)), Some(Verdict::Permanent));
        assert_eq!(wns_token(status(401)), Some(Verdict::Permanent));
    }

    #[test]
    fn requested_waits_are_clamped() {
        for (value, wait) in [
            ("0", Some(0)),
            ("30", Some(30)),
            ("31536000", Some(3600)),
            ("18446744073709551615", Some(3600)),
            ("99999999999999999999999", Some(3600)),
            ("-1", None),
            ("soon", None),
            ("", None),
        ] {
            let verdict = agent(status(429), &headers(&[("retry-after", value)]));
            assert_eq!(
                verdict,
                Verdict::Retry {
                    after: wait.map(Duration::from_secs)
                },
                "Retry-After: {value:?}"
            );
        }
    }

    #[test]
    fn agent_table() {
        let none = HeaderMap::new();
        let rows: &[(u16, Verdict)] = &[
            (200, Verdict::Pushed),
            (202, Verdict::Pushed),
            (400, Verdict::Permanent),
            (403, Verdict::Permanent),
            (404, Verdict::DeviceUnreachable),
            (410, Verdict::Permanent),
            (413, Verdict::Permanent),
            (500, Verdict::Retry { after: None }),
            (503, Verdict::Retry { after: None }),
        ];
        for (code, verdict) in rows {
            assert_eq!(agent(status(*code), &none), *verdict, "agent {code}");
        }
        assert_eq!(
            agent(status(429), &headers(&[("retry-after", "2")])),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
    }
}
