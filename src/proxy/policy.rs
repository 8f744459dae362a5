//! What may pass the proxy port besides the path (whose rules are in [`crate::path`]): allowed hosts, origins
//! and methods, and header limits. Pure functions, called by the handler and unit-tested directly.

use http::{HeaderMap, Method};

/// The host name of a `Host` value, without port or IPv6 brackets.
pub(crate) fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether a `Host` value names an allowed host. Empty `allowed` accepts any; a trailing dot is not stripped,
/// so `localhost.` is refused like any other name not listed.
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    if name.is_empty() {
        return false;
    }
    allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Whether an `Origin` value is listed (exact, case-insensitive, trailing slash ignored).
pub(crate) fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// Whether the method is allowed.
pub(crate) fn method_allowed(method: &Method, allowed: &[Method]) -> bool {
    allowed.contains(method)
}

/// Most request headers accepted (more: 431 `HEADERS_TOO_LARGE`).
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest request header block, names and values, accepted.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Check the number and total size of request headers.
pub(crate) fn header_limits(headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.len() > MAX_HEADERS {
        return Err("more than 100 headers");
    }
    let total: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if total > MAX_HEADER_BYTES {
        return Err("header block larger than 32 KiB");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
