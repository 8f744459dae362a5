//! The token as a type that cannot leak: redacting `Debug`/`Display`, a fingerprint, and its sensitive
//! `Authorization` value, built and checked once when the token is parsed.

// A panic aborts the process (`panic = "abort"`): nothing on the request path may unwrap or expect.
#![deny(clippy::expect_used, clippy::unwrap_used)]

use std::{fmt, sync::Arc};

use http::HeaderValue;
use sha2::{Digest, Sha256};

/// Why a token text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error(
        "the token contains characters not allowed in a bearer token (white space, control characters or non-ASCII)"
    )]
    InvalidCharacters,
    #[error("the token starts with `Bearer `: store the token alone; the proxy adds the scheme")]
    SchemeIncluded,
    #[error("the token is a JWT whose exp has passed")]
    Expired,
}

/// An OAuth bearer token and its `Authorization` value. Cheap to clone; never printed. Only [`Token::parse`]
/// makes one, so every token has a valid header value: the request path never builds or checks one.
#[derive(Clone)]
pub(crate) struct Token(Arc<Parsed>);

struct Parsed {
    text: Box<str>,
    /// `Bearer <text>`, marked sensitive.
    header: HeaderValue,
}

impl Token {
    /// Trim surrounding white space (a trailing newline is normal in Secret files) and check the characters:
    /// visible ASCII only (RFC 6750 `b64token` is stricter; anything else could not travel in a header). Builds
    /// the `Authorization` value once.
    pub(crate) fn parse(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            let scheme = t.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer "));
            return Err(if scheme {
                TokenError::SchemeIncluded
            } else {
                TokenError::InvalidCharacters
            });
        }
        // Visible ASCII is a valid header value, so this holds; it is checked here, once, rather than assumed.
        let mut header = HeaderValue::try_from(format!("Bearer {t}")).map_err(|_| TokenError::InvalidCharacters)?;
        header.set_sensitive(true);
        Ok(Self(Arc::new(Parsed { text: t.into(), header })))
    }

    /// The secret itself. Call sites are the refresh call, the state file and scrubbing: grep for them.
    pub(crate) fn expose(&self) -> &str {
        &self.0.text
    }

    /// `sha256:` and the first 8 hex digits of the SHA-256 of the token: safe to log and show.
    pub(crate) fn fingerprint(&self) -> String {
        fingerprint(self.expose())
    }

    /// `Bearer <token>` marked sensitive (HPACK never-indexed; hidden from `Debug` by `http`), built once.
    pub(crate) fn bearer_header(&self) -> &HeaderValue {
        &self.0.header
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Token {}

/// The fingerprint of any secret text.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(15);
    out.push_str("sha256:");
    for b in &digest[..4] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.fingerprint())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_trims_and_refuses_bad_text() {
        assert_eq!(Token::parse("  abc.def\n").unwrap().expose(), "abc.def");
        assert_eq!(Token::parse(" \n"), Err(TokenError::Empty));
        assert_eq!(Token::parse("a b"), Err(TokenError::InvalidCharacters));
        assert_eq!(Token::parse("a\u{7f}b"), Err(TokenError::InvalidCharacters));
        assert_eq!(Token::parse("ä"), Err(TokenError::InvalidCharacters));
        assert_eq!(Token::parse("Bearer abc.def\n"), Err(TokenError::SchemeIncluded));
        assert_eq!(Token::parse("bearer  abc"), Err(TokenError::SchemeIncluded));
    }

    #[test]
    fn never_printed() {
        let t = Token::parse("very-secret").unwrap();
        for text in [format!("{t:?}"), format!("{t}"), format!("{:?}", t.bearer_header())] {
            assert!(!text.contains("very-secret"), "{text}");
        }
        assert_eq!(t.fingerprint().len(), "sha256:".len() + 8);
        assert!(t.bearer_header().is_sensitive());
    }

    #[test]
    fn the_header_value_is_built_once_with_the_token() {
        let t = Token::parse(" abc.def\n").unwrap();
        assert_eq!(t.bearer_header(), "Bearer abc.def");
        // Clones share it: the request path copies a reference, never rebuilds the value.
        let copy = t.clone();
        assert!(std::ptr::eq(t.bearer_header(), copy.bearer_header()));
        assert_eq!(copy, t);
        assert_ne!(Token::parse("other").unwrap(), t);
    }
}
