//! Why a call through the outbound proxy failed, in words that name the proxy (without credentials) and what it
//! answered: the `long_message` of a 502 `UPSTREAM_UNREACHABLE`.

use std::error::Error as StdError;

use http::StatusCode;

/// A failure of the tunnel, or of TLS inside it. Every variant means nothing reached the upstream. It has no
/// `source`: the whole story is in the message (error chains are shown by their innermost cause).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TunnelError {
    /// TCP to the proxy failed (refused, DNS, time-out).
    #[error("cannot connect to the outbound proxy {proxy}: {detail}")]
    Unreachable { proxy: String, detail: String },
    /// The proxy answered `CONNECT` with something other than 2xx.
    #[error("the outbound proxy {proxy} answered {status}{hint}")]
    Refused {
        proxy: String,
        /// `407 Proxy Authentication Required`.
        status: String,
        /// What to do about it, starting with `: `, or empty.
        hint: String,
    },
    /// The proxy closed the connection before its answer was complete.
    #[error("the outbound proxy {proxy} closed the connection before answering CONNECT")]
    Closed { proxy: String },
    /// No complete answer within `upstream.connect_timeout`.
    #[error("the outbound proxy {proxy} did not answer CONNECT within upstream.connect_timeout")]
    Timeout { proxy: String },
    /// An answer that is not HTTP/1.x, or an over-long one.
    #[error("the outbound proxy {proxy} answered CONNECT with something that is not an HTTP/1.1 response")]
    Malformed { proxy: String },
    /// The tunnel stood, but TLS with the upstream inside it failed (the proxy closed the tunnel, or a proxy that
    /// inspects TLS showed a certificate `ca_file` does not trust).
    #[error("TLS with the upstream through the outbound proxy {proxy} failed: {detail}")]
    Inside { proxy: String, detail: String },
    /// Reading or writing the `CONNECT` exchange failed.
    #[error("the connection to the outbound proxy {proxy} failed during CONNECT: {detail}")]
    Io { proxy: String, detail: String },
}

// === impl TunnelError ===

impl TunnelError {
    /// The proxy answered `status` (with `reason`, its own words, used where the status has no standard reason) to
    /// `CONNECT target`; `sent_credentials` says whether a `Proxy-Authorization` went with it.
    pub(crate) fn refused(proxy: &str, status: u16, reason: &str, target: &str, sent_credentials: bool) -> Self {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map_or_else(|| printable(reason), str::to_owned);
        let hint = match status {
            407 if sent_credentials => ": the proxy refused the credentials; check upstream.proxy_auth_file".into(),
            407 => ": set upstream.proxy_auth_file".into(),
            403 => format!(": the proxy does not allow a tunnel to {target}"),
            502..=504 => format!(": the proxy could not reach {target}"),
            _ => String::new(),
        };
        TunnelError::Refused {
            proxy: proxy.to_owned(),
            status: format!("{status} {reason}").trim_end().to_owned(),
            hint,
        }
    }
}

/// The innermost cause's message: what actually went wrong (`Connection refused (os error 111)`).
pub(crate) fn innermost(error: &(dyn StdError + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// A proxy's own reason phrase, shown only as printable ASCII, and not much of it.
fn printable(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_proxy_the_status_and_the_key_to_set() {
        let e = TunnelError::refused("http://proxy.corp:3128", 407, "whatever", "api:443", false);
        assert_eq!(
            e.to_string(),
            "the outbound proxy http://proxy.corp:3128 answered 407 Proxy Authentication Required: set upstream.proxy_auth_file"
        );
        let e = TunnelError::refused("http://p:1", 403, "Forbidden", "api:443", true);
        assert_eq!(
            e.to_string(),
            "the outbound proxy http://p:1 answered 403 Forbidden: the proxy does not allow a tunnel to api:443"
        );
        let e = TunnelError::refused("http://p:1", 599, "Odd\r\nX-Injected: 1", "api:443", false);
        assert_eq!(
            e.to_string(),
            "the outbound proxy http://p:1 answered 599 OddX-Injected: 1"
        );
        assert!(e.source().is_none());
    }
}
