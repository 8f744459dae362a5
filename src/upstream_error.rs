//! Why a call to the upstream failed, in words an operator acts on: the innermost cause of an error chain, except
//! where that cause is a library's view of a configuration mistake. The one known so far: `https://` in
//! `upstream.base_url` for an upstream that speaks plain HTTP, which rustls reports as "received corrupt message
//! of type InvalidContentType" (the upstream's `HTTP/1.1 400` read as a TLS record).

use std::error::Error;

/// What the proxy says for an `https://` upstream that answered in plain HTTP.
pub(crate) const NOT_TLS: &str = "the upstream did not answer TLS: check the scheme of upstream.base_url";

/// The message for `e`: [`NOT_TLS`] when the TLS handshake met a plain-HTTP answer, else the innermost cause's
/// own message.
pub(crate) fn explain(e: &(dyn Error + 'static)) -> String {
    let mut source = Some(e);
    let mut detail = String::new();
    while let Some(s) = source {
        if plain_http_answer(s) {
            return NOT_TLS.to_owned();
        }
        detail = s.to_string();
        source = s.source();
    }
    detail
}

/// Whether `e` is rustls meeting bytes that are no TLS record. It travels inside `io::Error`s (tokio-rustls wraps
/// it in one, hyper-rustls that in another), whose `source()` skips the error they wrap: those are unwrapped here.
fn plain_http_answer(mut e: &(dyn Error + 'static)) -> bool {
    while let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        e = inner;
    }
    matches!(
        e.downcast_ref::<rustls::Error>(),
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to the upstream")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_plain_http_answer_to_tls_names_the_scheme() {
        let tls = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone()));
        assert_eq!(explain(&e), NOT_TLS);
        let twice = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert_eq!(explain(&Outer(twice)), NOT_TLS);
    }

    #[test]
    fn other_errors_give_their_innermost_cause() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(explain(&e), "connection refused");
        let other_tls = rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooShort);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::InvalidData, other_tls));
        assert!(explain(&e).contains("MessageTooShort"), "{}", explain(&e));
    }
}
