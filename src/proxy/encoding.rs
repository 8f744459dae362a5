//! Content codings (RFC 9110 §8.4) on the error path: the proxy must read an upstream error body to normalize it
//! and to scrub the token from it, so the `Accept-Encoding` it forwards lists only codings it can decode, and
//! an error body in one of them is decoded (bounded) before it is normalized. Success bodies pass untouched,
//! still encoded. Pure.

use std::{borrow::Cow, io::Read as _};

use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use http::{header, HeaderMap, HeaderValue};

use super::headers::list_elements;

/// Codings the proxy decodes, as bits of a set.
const GZIP: u8 = 1;
const DEFLATE: u8 = 2;
const IDENTITY: u8 = 4;

/// The `Accept-Encoding` sent for each set of those codings when the app listed them without parameters: a
/// static value, so the usual rewrite (`gzip, deflate, br, zstd` to `gzip, deflate`) allocates nothing. An empty
/// set becomes `identity`.
const BY_SET: [&str; 8] = [
    "identity",
    "gzip",
    "deflate",
    "gzip, deflate",
    "identity",
    "gzip, identity",
    "deflate, identity",
    "gzip, deflate, identity",
];

/// The set bit of a coding the proxy decodes (RFC 9110 §8.4.1.3: `x-gzip` is `gzip`), else `None`.
fn known(coding: &[u8]) -> Option<u8> {
    let coding = coding.trim_ascii();
    if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
        Some(GZIP)
    } else if coding.eq_ignore_ascii_case(b"deflate") {
        Some(DEFLATE)
    } else if coding.eq_ignore_ascii_case(b"identity") {
        Some(IDENTITY)
    } else {
        None
    }
}

/// Limit the app's `Accept-Encoding` to `gzip`, `deflate` and `identity`, keeping their q-values: `br`, `zstd`,
/// `*` and the like are dropped, so an upstream error body is never in a coding the proxy cannot read. Left as
/// it is when there is nothing to drop (no allocation); absent stays absent (the upstream then sends identity).
pub(crate) fn limit_accept_encoding(headers: &mut HeaderMap) {
    let mut set = 0;
    let mut drop_any = false;
    let mut params = false;
    for element in list_elements(headers, header::ACCEPT_ENCODING) {
        let mut parts = element.splitn(2, |b| *b == b';');
        let coding = parts.next().unwrap_or_default();
        params |= parts.next().is_some();
        match known(coding) {
            Some(bit) => set |= bit,
            None => drop_any |= !coding.trim_ascii().is_empty(),
        }
    }
    if !drop_any {
        return;
    }
    let value = if params {
        kept_with_params(headers)
    } else {
        HeaderValue::from_static(BY_SET[usize::from(set)])
    };
    headers.insert(header::ACCEPT_ENCODING, value);
}

/// The known elements of `Accept-Encoding`, parameters (q-values) and all, joined; `identity` if none.
fn kept_with_params(headers: &HeaderMap) -> HeaderValue {
    let kept: Vec<&[u8]> = list_elements(headers, header::ACCEPT_ENCODING)
        .filter(|e| known(e.split(|b| *b == b';').next().unwrap_or_default()).is_some())
        .collect();
    if kept.is_empty() {
        return HeaderValue::from_static("identity");
    }
    HeaderValue::from_bytes(&kept.join(&b", "[..])).unwrap_or_else(|_| HeaderValue::from_static("identity"))
}

/// An upstream error body as text the normalizer can read: decoded if its `Content-Encoding` is `gzip`
/// (`x-gzip`) or `deflate` (zlib, or raw deflate as some servers send it), at most `limit` bytes of output; as it
/// is without a coding. A body that cannot be decoded, or one in another coding, becomes a short note saying so
/// (it would otherwise reach the app as binary garbage in `long_message`).
pub(crate) fn decode_error_body<'a>(headers: &HeaderMap, body: &'a [u8], limit: usize) -> Cow<'a, [u8]> {
    let mut codings = list_elements(headers, header::CONTENT_ENCODING)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"));
    let coding = match (codings.next(), codings.next()) {
        (None, _) => return Cow::Borrowed(body),
        (Some(coding), None) => coding,
        (Some(_), Some(_)) => {
            return Cow::Borrowed(b"the upstream's error body has several content codings and could not be read")
        }
    };
    let decoded = match known(coding) {
        Some(GZIP) => read_bounded(GzDecoder::new(body), limit),
        Some(DEFLATE) if is_zlib(body) => read_bounded(ZlibDecoder::new(body), limit),
        Some(DEFLATE) => read_bounded(DeflateDecoder::new(body), limit),
        _ => None,
    };
    match decoded {
        Some(text) => Cow::Owned(text),
        None => Cow::Owned(
            format!(
                "the upstream's error body (Content-Encoding: {}) could not be decoded",
                String::from_utf8_lossy(coding)
            )
            .into_bytes(),
        ),
    }
}

/// A zlib stream header (RFC 1950 §2.2): compression method 8, and the two bytes a multiple of 31.
fn is_zlib(body: &[u8]) -> bool {
    matches!(body, [cmf, flg, ..] if cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0)
}

/// Up to `limit` decoded bytes; what was decoded before an error (a body cut at the read bound ends in one) is
/// kept, and nothing decoded is `None`.
fn read_bounded(decoder: impl std::io::Read, limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let result = decoder.take(limit as u64).read_to_end(&mut out);
    (result.is_ok() || !out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::{
        write::{DeflateEncoder, GzEncoder, ZlibEncoder},
        Compression,
    };

    use super::*;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        limit_accept_encoding(&mut h);
        h
    }

    fn forwarded(values: &[&str]) -> String {
        let h = accept(values);
        let all: Vec<_> = h
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        all.join(" | ")
    }

    #[test]
    fn accept_encoding_keeps_only_what_the_proxy_decodes() {
        // What curl --compressed and Python requests send.
        assert_eq!(forwarded(&["deflate, gzip, br, zstd"]), "gzip, deflate");
        assert_eq!(forwarded(&["gzip, deflate, br"]), "gzip, deflate");
        assert_eq!(forwarded(&["br"]), "identity");
        assert_eq!(forwarded(&["*"]), "identity");
        assert_eq!(forwarded(&["x-gzip, zstd, identity"]), "gzip, identity");
        // q-values are kept.
        assert_eq!(
            forwarded(&["br;q=1.0, gzip;q=0.8, deflate;q=0.5, *;q=0.1"]),
            "gzip;q=0.8, deflate;q=0.5"
        );
        assert_eq!(forwarded(&["br;q=1.0, zstd"]), "identity");
        // Several lines are one list.
        assert_eq!(forwarded(&["gzip", "br"]), "gzip");
        // Nothing to drop: the app's value as it was, spelling included.
        assert_eq!(forwarded(&["GZIP,deflate ;q=0.5"]), "GZIP,deflate ;q=0.5");
        assert_eq!(forwarded(&["gzip", "identity"]), "gzip | identity");
        assert!(accept(&[]).is_empty());
    }

    fn encoded(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_str(coding).unwrap());
        h
    }

    const JSON: &[u8] = br#"{"code":"PAYMENT_CONFLICT","long_message":"already settled"}"#;

    #[test]
    fn gzip_and_deflate_error_bodies_are_decoded() {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(JSON).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(&*decode_error_body(&encoded("gzip"), &gz, 65_536), JSON);
        assert_eq!(&*decode_error_body(&encoded("X-Gzip"), &gz, 65_536), JSON);
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(JSON).unwrap();
        assert_eq!(
            &*decode_error_body(&encoded("deflate"), &zlib.finish().unwrap(), 65_536),
            JSON
        );
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(JSON).unwrap();
        assert_eq!(
            &*decode_error_body(&encoded("deflate"), &raw.finish().unwrap(), 65_536),
            JSON
        );
        // No coding, or identity: the same bytes, borrowed.
        assert!(matches!(decode_error_body(&HeaderMap::new(), JSON, 65_536), Cow::Borrowed(b) if b == JSON));
        assert!(matches!(decode_error_body(&encoded("identity"), JSON, 65_536), Cow::Borrowed(b) if b == JSON));
    }

    #[test]
    fn decoding_is_bounded_and_failures_say_so() {
        // A gzip bomb: 10 MiB of zeros in about 10 KiB.
        let mut bomb = GzEncoder::new(Vec::new(), Compression::best());
        bomb.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = bomb.finish().unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(decode_error_body(&encoded("gzip"), &bomb, 65_536).len(), 65_536);
        // Cut off (the read bound): what decoded is kept.
        let mut gz = GzEncoder::new(Vec::new(), Compression::none());
        gz.write_all(JSON).unwrap();
        let gz = gz.finish().unwrap();
        let cut = decode_error_body(&encoded("gzip"), &gz[..gz.len() - 12], 65_536);
        assert!(JSON.starts_with(&cut) && !cut.is_empty(), "{cut:?}");
        // Not gzip at all, another coding, several codings.
        for (coding, body) in [
            ("gzip", &b"plain text"[..]),
            ("br", &b"\x0b\x02\x80"[..]),
            ("gzip, br", &b"x"[..]),
        ] {
            let note = decode_error_body(&encoded(coding), body, 65_536);
            let note = String::from_utf8(note.into_owned()).unwrap();
            assert!(note.contains("could not be"), "{coding}: {note}");
        }
    }
}
