//! The outbound proxy: whether calls to IsSettled go straight to it or through an HTTP proxy's `CONNECT` tunnel.
//!
//! [`decide`] is the one decision, pure: `upstream.proxy`, the environment as curl reads it, and the upstream
//! URL in; a [`Route`] out. The forwarding pool's connector and the refresh client are both built from that one
//! `Route`, so they cannot disagree, and nothing else reads the proxy variables (not reqwest, not the Kubernetes
//! client). The credentials for the proxy are in [`auth`]; the tunnel itself in `proxy::tunnel`.

mod auth;
pub(crate) mod failure;

use std::{collections::HashMap, fmt};

use http::{uri::Authority, Uri};
use hyper_util::client::proxy::matcher::Matcher;

pub(crate) use auth::Credentials;
pub(crate) use auth::ProxyAuth;
pub(crate) use failure::TunnelError;

/// The port of a proxy URL that names none: curl's default.
pub(crate) const DEFAULT_PROXY_PORT: u16 = 1080;

/// `upstream.proxy`'s value meaning "never use a proxy".
const NONE: &str = "none";

/// The variables naming the proxy for `https://` destinations, in curl's order: the lower-case spelling first,
/// the upper-case one only when it is not set; `ALL_PROXY` only when neither `HTTPS_PROXY` spelling is.
const HTTPS_VARIABLES: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
/// The variables for plain `http://` destinations: only ever named in the note that they are not used.
const HTTP_VARIABLES: [&str; 2] = ["http_proxy", "HTTP_PROXY"];
/// The exclusion list, in curl's order.
const NO_PROXY_VARIABLES: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// An `http://` proxy: where to connect, and the credentials the URL carried. Shown (`Display`, `Debug`) as
/// `http://host:port`, never with its credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProxyUrl {
    /// `host:port`, the port always given.
    authority: Authority,
    credentials: Option<Credentials>,
}

/// Where the proxy URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `upstream.proxy`.
    Key,
    /// This environment variable (`upstream.proxy = ""`).
    Variable(&'static str),
}

/// Why a [`Route`] is what it is: for `check-config` and the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Why {
    /// `upstream.proxy = ""` and no proxy variable is set.
    NotConfigured,
    /// `upstream.proxy = "none"`.
    Disabled,
    /// The proxy named here applies.
    Proxied(Origin),
    /// The proxy named here would apply, but `variable` (`NO_PROXY`) has an `entry` that covers the upstream host.
    Excluded {
        proxy: Origin,
        variable: &'static str,
        entry: String,
    },
    /// The upstream is plain `http://`, which never goes through a proxy; `ignored` is the setting that named one.
    PlainHttp { ignored: Origin },
}

/// How every call to IsSettled is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Straight to the upstream.
    Direct { why: Why },
    /// Through `CONNECT host:port` on `proxy`; TLS to the upstream inside the tunnel, end to end.
    Tunnel { proxy: ProxyUrl, why: Why },
}

/// A proxy setting that cannot be used: where it came from, and why. Never repeats the value (it may carry a
/// password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", origin.name())]
pub(crate) struct InvalidProxy {
    pub(crate) origin: Origin,
    pub(crate) reason: String,
}

/// Decide how to reach `upstream` (`scheme://authority`), from `upstream.proxy` (`setting`) and `env`.
///
/// - `"none"`: direct, whatever the variables say.
/// - a URL: that proxy; `""`: `https_proxy`/`HTTPS_PROXY`, else `all_proxy`/`ALL_PROXY`, as curl reads them.
/// - either way, `no_proxy`/`NO_PROXY` entries (host names, domain suffixes, IPs, CIDRs, `*`) that cover the
///   upstream's host make it direct, and a plain `http://` upstream is always direct.
///
/// Only `http://` proxies are supported. The key's value is checked even where it is not used; a variable's
/// only where it would be (another program's `ALL_PROXY=socks5://...` beside a `NO_PROXY` for IsSettled is no
/// error here).
pub(crate) fn decide(setting: &str, env: &HashMap<String, String>, upstream: &Uri) -> Result<Route, InvalidProxy> {
    let setting = setting.trim();
    if setting.eq_ignore_ascii_case(NONE) {
        return Ok(Route::Direct { why: Why::Disabled });
    }
    let (text, origin) = if setting.is_empty() {
        match first_set(env, &HTTPS_VARIABLES) {
            Some((name, value)) => (value, Origin::Variable(name)),
            None => {
                let why = match first_set(env, &HTTP_VARIABLES) {
                    Some((name, _)) if is_plain_http(upstream) => Why::PlainHttp {
                        ignored: Origin::Variable(name),
                    },
                    _ => Why::NotConfigured,
                };
                return Ok(Route::Direct { why });
            }
        }
    } else {
        (setting, Origin::Key)
    };
    let parse = || ProxyUrl::parse(text).map_err(|reason| InvalidProxy { origin, reason });
    let proxy = match origin {
        Origin::Key => Some(parse()?),
        Origin::Variable(_) => None,
    };
    if is_plain_http(upstream) {
        return Ok(Route::Direct {
            why: Why::PlainHttp { ignored: origin },
        });
    }
    if let Some((variable, entry)) = excluded(env, upstream) {
        return Ok(Route::Direct {
            why: Why::Excluded {
                proxy: origin,
                variable,
                entry,
            },
        });
    }
    let proxy = match proxy {
        Some(proxy) => proxy,
        None => parse()?,
    };
    Ok(Route::Tunnel {
        proxy,
        why: Why::Proxied(origin),
    })
}

/// `upstream.proxy` as `check-config` shows it: credentials replaced by `<redacted>`.
pub(crate) fn redacted_setting(setting: &str) -> String {
    match ProxyUrl::parse(setting) {
        Ok(proxy) if proxy.credentials.is_some() => format!("http://<redacted>@{}", proxy.authority),
        _ => setting.to_owned(),
    }
}

fn is_plain_http(upstream: &Uri) -> bool {
    upstream.scheme() == Some(&http::uri::Scheme::HTTP)
}

/// The first of `names` set to something other than blank, with its value.
fn first_set<'a>(env: &'a HashMap<String, String>, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
    names
        .iter()
        .find_map(|name| Some((*name, env.get(*name).map(|v| v.trim()).filter(|v| !v.is_empty())?)))
}

/// The `NO_PROXY` variable and its first entry that covers `upstream`'s host, if any. The entries are matched
/// by hyper-util's matcher (curl's rules: exact names and domain suffixes, with or without a leading dot; IPs;
/// CIDRs); `*` is matched here, since the matcher applies it to host names but not to IP addresses.
fn excluded(env: &HashMap<String, String>, upstream: &Uri) -> Option<(&'static str, String)> {
    let (variable, list) = first_set(env, &NO_PROXY_VARIABLES)?;
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .find(|entry| {
            // The matcher answers for a proxy it was given; which one does not matter for the exclusion.
            *entry == "*"
                || Matcher::builder()
                    .https("http://proxy.invalid")
                    .no(*entry)
                    .build()
                    .intercept(upstream)
                    .is_none()
        })
        .map(|entry| (variable, entry.to_owned()))
}

// === impl Origin ===

impl Origin {
    /// The key's or the variable's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Origin::Key => "upstream.proxy",
            Origin::Variable(name) => name,
        }
    }
}

// === impl Route ===

impl Route {
    /// The proxy every call goes through, if any.
    pub(crate) fn proxy(&self) -> Option<&ProxyUrl> {
        match self {
            Route::Direct { .. } => None,
            Route::Tunnel { proxy, .. } => Some(proxy),
        }
    }

    /// The decision in words, without credentials: `through http://proxy:3128 (from HTTPS_PROXY)`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Route::Tunnel { proxy, why } => format!("through {proxy} ({why})"),
            Route::Direct { why } => format!("direct ({why})"),
        }
    }
}

// === impl Why ===

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::NotConfigured => {
                f.write_str("upstream.proxy is \"\" and none of https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY is set")
            }
            Why::Disabled => f.write_str("upstream.proxy is \"none\""),
            Why::Proxied(Origin::Key) => f.write_str("from upstream.proxy"),
            Why::Proxied(Origin::Variable(name)) => write!(f, "from {name}"),
            Why::Excluded { proxy, variable, entry } => write!(
                f,
                "{variable} entry `{entry}` covers the upstream host; the proxy from {} is not used",
                proxy.name()
            ),
            Why::PlainHttp { ignored } => write!(
                f,
                "the upstream is plain http://, which is never sent through a proxy; {} is not used",
                ignored.name()
            ),
        }
    }
}

// === impl ProxyUrl ===

impl ProxyUrl {
    /// Parse a proxy URL as curl reads one: `[http://][user[:password]@]host[:port][/]`, port 1080 when none is
    /// given. `https://` (TLS to the proxy) and SOCKS proxies are refused, saying so. The reason never repeats the
    /// text.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("http".to_owned(), text),
        };
        match scheme.as_str() {
            "http" => {}
            "https" => {
                return Err(
                    "an https:// proxy (TLS to the proxy itself) is not supported: give its http:// address \
                            (the tunnel to IsSettled is TLS end to end either way)"
                        .into(),
                )
            }
            "socks4" | "socks4a" | "socks5" | "socks5h" => {
                return Err(format!(
                    "a {scheme}:// (SOCKS) proxy is not supported: only http:// proxies, which tunnel with CONNECT"
                ))
            }
            _ => return Err("only http:// proxies are supported, like \"http://proxy.example:3128\"".into()),
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let not_a_url = || "is not a proxy URL like \"http://proxy.example:3128\" (value not shown)".to_owned();
        let parsed: Authority = host_port.parse().map_err(|_| not_a_url())?;
        if parsed.host().is_empty() {
            return Err(not_a_url());
        }
        let port = parsed.port_u16().unwrap_or(DEFAULT_PROXY_PORT);
        let authority = format!("{}:{port}", parsed.host()).parse().map_err(|_| not_a_url())?;
        let credentials = match userinfo {
            Some(userinfo) => Some(Credentials::from_userinfo(userinfo).map_err(|reason| reason.to_owned())?),
            None => None,
        };
        Ok(Self { authority, credentials })
    }

    /// The credentials the URL carried (`user:password@`).
    pub(crate) fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// `http://host:port/`, for connecting.
    pub(crate) fn uri(&self) -> Uri {
        Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a parsed authority makes a URI")
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
