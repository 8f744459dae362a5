//! The token as a type that cannot leak: redacting `Debug`/`Display`, a fingerprint, a sensitive header value.

use std::{fmt, sync::Arc};

use http::HeaderValue;
use sha2::{Digest, Sha256};

/// Why a token text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
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

/// An OAuth bearer token. Cheap to clone; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// Trim surrounding white space (a trailing newline is normal in Secret files) and check the characters:
    /// visible ASCII only (RFC 6750 `b64token` is stricter; anything else could not travel in a header).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
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
        Ok(Self(Arc::from(t)))
    }

    /// The secret itself. Call sites are the refresh call, the state file and the header value: grep for them.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `sha256:` and the first 8 hex digits of the SHA-256 of the token: safe to log and show.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose())
    }

    /// `Bearer <token>` marked sensitive (HPACK never-indexed; hidden from `Debug` by `http`).
    pub fn bearer_header(&self) -> HeaderValue {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        value.set_sensitive(true);
        value
    }
}

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
}
