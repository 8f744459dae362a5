//! `X-Request-Id`: keep a sane one the app sent, else mint one (a per-process random prefix and a counter). Pure
//! apart from the counter.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    OnceLock,
};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header name.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id kept.
const MAX_LEN: usize = 128;

/// Whether an app-sent id is safe to forward and log: 1 to 128 of `A-Z a-z 0-9 - _ . :`.
pub(crate) fn is_sane(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// The app's id if there is exactly one and it is sane, else a new one.
pub(crate) fn pick(headers: &HeaderMap) -> HeaderValue {
    let mut all = headers.get_all(&HEADER).iter();
    match (all.next(), all.next()) {
        (Some(v), None) if is_sane(v) => v.clone(),
        _ => mint(),
    }
}

/// A new id, unique within the process and, by its random prefix, across restarts.
pub(crate) fn mint() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix:016x}-{n:08x}` (or more digits once the counter passes 2^32), written without `format!`.
    let mut text = [0u8; 33];
    hex(&mut text[..16], prefix);
    text[16] = b'-';
    let digits = (16 - (n | 0xffff_ffff).leading_zeros() as usize / 4).max(8);
    hex(&mut text[17..17 + digits], n);
    HeaderValue::from_bytes(&text[..17 + digits]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Write `value` as lower-case hex filling `out` (the low `out.len()` nibbles).
fn hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_mints_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123.X:y_z"));
        assert_eq!(pick(&h), "abc-123.X:y_z");
        h.insert(HEADER, HeaderValue::from_static("bad id<script>"));
        assert_ne!(pick(&h), "bad id<script>");
        h.insert(HEADER, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(pick(&h).len(), 25);
        assert_ne!(mint(), mint());
        let mut buf = [0u8; 8];
        hex(&mut buf, 0xdead_beef);
        assert_eq!(&buf, b"deadbeef");
        let minted = mint();
        let (prefix, counter) = minted.to_str().unwrap().split_once('-').unwrap();
        assert_eq!((prefix.len(), counter.len()), (16, 8));
    }
}
