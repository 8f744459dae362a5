//! The path check: never panics, and a path it accepts holds no dot-segment, backslash or empty segment however
//! often it is percent-decoded.
#![no_main]

use issettled_proxy::path::check_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if check_path(path).is_err() {
        return;
    }
    assert!(path.starts_with('/'));
    assert!(!path.contains('\\'), "{path:?}");
    let inner = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    for segment in inner.split('/') {
        if path != "/" {
            assert!(!segment.is_empty(), "{path:?}");
        }
        let mut decoded = segment.as_bytes().to_vec();
        for _ in 0..4 {
            let name = decoded.split(|b| *b == b';').next().unwrap_or_default();
            assert!(name != b"." && name != b"..", "{path:?}");
            decoded = decode(&decoded);
        }
    }
});

/// One round of percent-decoding; an invalid escape stays as it is.
fn decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = input
            .get(i + 1..i + 3)
            .filter(|_| input[i] == b'%')
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match byte {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(input[i]);
                i += 1;
            }
        }
    }
    out
}
