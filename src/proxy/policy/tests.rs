//! Host and origin rules.

use super::*;

#[test]
fn hosts() {
    let allowed: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    for h in ["localhost", "LOCALHOST:8080", "127.0.0.1:8080", "[::1]:8080", "[::1]"] {
        assert!(host_allowed(h, &allowed), "{h}");
    }
    for h in [
        "evil.example",
        "localhost.",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "",
        ":8080",
    ] {
        assert!(!host_allowed(h, &allowed), "{h}");
    }
    assert!(host_allowed("anything", &[]));
}

#[test]
fn origins() {
    let allowed = vec!["https://app.bank.example".to_owned()];
    assert!(origin_allowed("https://app.bank.example", &allowed));
    assert!(origin_allowed("HTTPS://APP.BANK.EXAMPLE/", &allowed));
    assert!(!origin_allowed("https://evil.example", &allowed));
    assert!(!origin_allowed("null", &allowed));
    assert!(!origin_allowed("https://app.bank.example", &[]));
}
