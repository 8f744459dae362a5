//! Path, prefix and refresh-path rules.

use super::*;

#[test]
fn ordinary_paths_pass() {
    for p in [
        "/",
        "/payments",
        "/payments/",
        "/payments/7",
        "/digital-accounts/DA-1001",
        "/a.b/c..d/.e",
        "/x%20y",
        "/%7euser",
    ] {
        assert_eq!(check_path(p), Ok(()), "{p}");
    }
}

#[test]
fn escapes_are_refused() {
    let cases = [
        ("payments", PathError::NotAbsolute),
        ("//evil.example/x", PathError::EmptySegment),
        ("/a//b", PathError::EmptySegment),
        ("/a/../b", PathError::DotSegment),
        ("/a/./b", PathError::DotSegment),
        ("/..", PathError::DotSegment),
        ("/a/%2e%2e/b", PathError::DotSegment),
        ("/a/%2E./b", PathError::DotSegment),
        ("/a/%252e%252e/b", PathError::DotSegment),
        ("/a/..;/b", PathError::DotSegment),
        ("/a\\b", PathError::Backslash),
        ("/a/%2fb", PathError::EncodedSeparator),
        ("/a/%5Cb", PathError::EncodedSeparator),
        ("/a/%zz", PathError::BadEncoding),
        ("/a/%2", PathError::BadEncoding),
        ("/a/%00", PathError::ControlCharacter),
    ];
    for (p, want) in cases {
        assert_eq!(check_path(p), Err(want), "{p}");
    }
}

#[test]
fn prefixes_match_whole_segments() {
    let prefixes = vec!["/payments".to_owned(), "/digital-accounts".to_owned()];
    assert!(prefix_allowed("/payments", &prefixes));
    assert!(prefix_allowed("/payments/7", &prefixes));
    assert!(!prefix_allowed("/payments-x", &prefixes));
    assert!(!prefix_allowed("/admin", &prefixes));
    assert!(prefix_allowed("/anything", &[]));
}

#[test]
fn the_one_pass_check_agrees_with_every_rule() {
    // Every string up to 6 bytes over an alphabet that reaches each rule: the one-pass answer for plain paths
    // and the full answer are the same.
    let alphabet = [b'/', b'a', b'-', b'.', b'%', b'2', b'e', b';', b'\\'];
    let mut plain_seen = 0;
    for len in 1..=6u32 {
        for mut n in 0..alphabet.len().pow(len) {
            let mut bytes = Vec::new();
            for _ in 0..len {
                bytes.push(alphabet[n % alphabet.len()]);
                n /= alphabet.len();
            }
            let p = std::str::from_utf8(&bytes).unwrap();
            if plain(p) {
                plain_seen += 1;
                assert_eq!(check_segments(p), Ok(()), "{p}");
            }
            assert_eq!(check_path(p), check_segments(p), "{p}");
        }
    }
    assert!(plain_seen > 100);
}

fn is_refresh_path(path: &str, refresh: &str) -> bool {
    RefreshPath::new(refresh).matches(path, plain(path))
}

#[test]
fn the_refresh_path_is_recognized_however_it_is_spelled() {
    let refresh = "/oauth-token/refresh";
    for p in [
        "/oauth-token/refresh",
        "/oauth-token/refresh/",
        "/OAuth-Token/REFRESH",
        "/oauth-token/%72efresh",
        "/oauth%2Dtoken/refresh",
        "/oauth-token/refresh;jsessionid=1",
    ] {
        assert!(is_refresh_path(p, refresh), "{p}");
    }
    for p in [
        "/",
        "/oauth-token",
        "/oauth-token/refresh/x",
        "/oauth-token/refreshes",
        "/x/oauth-token/refresh",
    ] {
        assert!(!is_refresh_path(p, refresh), "{p}");
    }
    // (A leading `//` is refused earlier, by check_path; here it is still the refresh path.)
    assert!(is_refresh_path("//oauth-token/refresh", refresh));
    for p in ["/oauth-token//refresh", "/oauth-tokenrefresh"] {
        assert!(!is_refresh_path(p, refresh), "{p}");
    }
    // A refresh path configured with an escape or params is compared segment by segment too.
    assert!(is_refresh_path("/oauth-token/refresh", "/oauth%2Dtoken/refresh;v=1"));
    assert!(is_refresh_path("/token", "/token/?grant=refresh"));
    assert!(is_refresh_path("/", "/"));
    assert!(!is_refresh_path("/payments", "/"));
}
