//! The upstream request target: `base_url`'s path prefix + the request's path and query, by concatenation
//! (never a URL join). It is origin-form (a path): the host is always `base_url`'s, set by the pool
//! ([`super::pool`]), so a path like `//evil.example/x` cannot change it. The request's own authority
//! (absolute-form, `Host`) is never looked at. Pure.

use bytes::Bytes;
use http::{uri::PathAndQuery, Uri};

use crate::config::BaseUrl;

/// Builds upstream request targets for one `base_url`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Path prefix without a trailing slash (`""` or `"/api/v1"`).
    prefix: String,
}

/// The request target could not be turned into an upstream URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request target is not a valid path")]
pub(crate) struct InvalidTarget;

impl Target {
    /// For `base`.
    pub(crate) fn new(base: &BaseUrl) -> Self {
        Self {
            prefix: base.prefix.clone(),
        }
    }

    /// The upstream request target (origin-form) for a request's path and query (which the caller has checked starts with `/`). Without a
    /// prefix the request's own path-and-query is reused as it is (no copy, no re-parse).
    pub(crate) fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, InvalidTarget> {
        let root = PathAndQuery::from_static("/");
        let pq = path_and_query.unwrap_or(&root);
        if !pq.as_str().starts_with('/') {
            return Err(InvalidTarget);
        }
        let pq = if self.prefix.is_empty() {
            pq.clone()
        } else {
            let mut text = String::with_capacity(self.prefix.len() + pq.as_str().len());
            text.push_str(&self.prefix);
            text.push_str(pq.as_str());
            PathAndQuery::from_maybe_shared(Bytes::from(text)).map_err(|_| InvalidTarget)?
        };
        Ok(Uri::from(pq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(base: &str) -> Target {
        Target::new(&crate::config::parse_base_url(base).unwrap())
    }

    #[test]
    fn concatenates_prefix_path_and_query() {
        let t = target("https://api.example/v1/");
        let pq = PathAndQuery::from_static("/payments/7?expand=true");
        assert_eq!(t.uri(Some(&pq)).unwrap(), "/v1/payments/7?expand=true");
        assert_eq!(t.uri(None).unwrap(), "/v1/");
        assert_eq!(
            target("https://api.example").uri(Some(&pq)).unwrap(),
            "/payments/7?expand=true"
        );
    }

    #[test]
    fn absolute_form_and_double_slash_carry_no_host() {
        let t = target("https://api.example");
        let uri: Uri = "http://evil.example/x".parse().unwrap();
        let out = t.uri(uri.path_and_query()).unwrap();
        assert_eq!((out.host(), out.path()), (None, "/x"));
        let pq = PathAndQuery::from_static("//evil.example/x");
        let out = t.uri(Some(&pq)).unwrap();
        assert_eq!((out.host(), out.path()), (None, "//evil.example/x"));
    }
}
