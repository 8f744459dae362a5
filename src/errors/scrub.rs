//! Replace a token echoed by the upstream (in an error body or a header) with its fingerprint. Pure.

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue};
use memchr::memmem;

/// `haystack` with every occurrence of `secret` replaced by `replacement`; borrowed when there is none.
pub fn scrub_bytes<'a>(haystack: &'a [u8], secret: &[u8], replacement: &[u8]) -> Cow<'a, [u8]> {
    if secret.is_empty() || memmem::find(haystack, secret).is_none() {
        return Cow::Borrowed(haystack);
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = memmem::find(rest, secret) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(replacement);
        rest = &rest[at + secret.len()..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Scrub every header value in place. Returns whether anything was replaced.
pub fn scrub_headers(headers: &mut HeaderMap, secret: &[u8], replacement: &[u8]) -> bool {
    let mut changed = false;
    for value in headers.values_mut() {
        if let Cow::Owned(clean) = scrub_bytes(value.as_bytes(), secret, replacement) {
            // The replacement is printable ASCII, so the value stays valid; fall back to dropping the text.
            *value = HeaderValue::from_bytes(&clean).unwrap_or_else(|_| HeaderValue::from_static("[redacted]"));
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_occurrence_and_borrows_otherwise() {
        let out = scrub_bytes(b"a SECRET b SECRET", b"SECRET", b"sha256:1234");
        assert_eq!(&*out, b"a sha256:1234 b sha256:1234");
        assert!(matches!(scrub_bytes(b"clean", b"SECRET", b"x"), Cow::Borrowed(_)));
        assert!(matches!(scrub_bytes(b"clean", b"", b"x"), Cow::Borrowed(_)));
    }

    #[test]
    fn headers_are_scrubbed() {
        let mut h = HeaderMap::new();
        h.insert("x-debug", HeaderValue::from_static("Bearer SECRET"));
        h.insert("x-other", HeaderValue::from_static("fine"));
        assert!(scrub_headers(&mut h, b"SECRET", b"sha256:1234"));
        assert_eq!(h["x-debug"], "Bearer sha256:1234");
        assert_eq!(h["x-other"], "fine");
    }
}
