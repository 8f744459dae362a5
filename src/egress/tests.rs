//! Unit tests of the one decision: variables as curl reads them, `NO_PROXY`, `"none"`, plain `http://`.

use super::*;

const API: &str = "https://api.issettled.example";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn uri(text: &str) -> Uri {
    text.parse().unwrap()
}

fn route(setting: &str, pairs: &[(&str, &str)], upstream: &str) -> Route {
    decide(setting, &env(pairs), &uri(upstream)).unwrap()
}

fn tunnel_to(route: &Route) -> String {
    route.proxy().map(ToString::to_string).unwrap_or_default()
}

#[test]
fn nothing_set_is_direct() {
    assert_eq!(
        route("", &[], API),
        Route::Direct {
            why: Why::NotConfigured
        }
    );
}

#[test]
fn https_proxy_then_all_proxy_lower_case_first_as_curl_reads_them() {
    let r = route("", &[("HTTPS_PROXY", "http://upper:3128")], API);
    assert_eq!(tunnel_to(&r), "http://upper:3128");
    assert_eq!(
        r,
        Route::Tunnel {
            proxy: r.proxy().unwrap().clone(),
            why: Why::Proxied(Origin::Variable("HTTPS_PROXY"))
        }
    );

    let r = route(
        "",
        &[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
        ],
        API,
    );
    assert_eq!(tunnel_to(&r), "http://lower:3128");

    let r = route("", &[("ALL_PROXY", "http://all:8080")], API);
    assert_eq!(tunnel_to(&r), "http://all:8080");
    assert!(r.describe().contains("from ALL_PROXY"), "{}", r.describe());

    let r = route(
        "",
        &[("ALL_PROXY", "http://all:8080"), ("HTTPS_PROXY", "http://https:3128")],
        API,
    );
    assert_eq!(tunnel_to(&r), "http://https:3128", "HTTPS_PROXY before ALL_PROXY");

    // HTTP_PROXY is for http:// destinations only.
    assert_eq!(route("", &[("HTTP_PROXY", "http://plain:3128")], API).proxy(), None);
    // A blank variable counts as unset.
    let r = route("", &[("https_proxy", " "), ("HTTPS_PROXY", "http://upper:3128")], API);
    assert_eq!(tunnel_to(&r), "http://upper:3128");
}

#[test]
fn a_proxy_url_without_a_port_uses_1080_and_without_a_scheme_is_http() {
    assert_eq!(
        tunnel_to(&route("", &[("HTTPS_PROXY", "http://proxy.corp")], API)),
        "http://proxy.corp:1080"
    );
    assert_eq!(tunnel_to(&route("proxy.corp:3128", &[], API)), "http://proxy.corp:3128");
    assert_eq!(
        tunnel_to(&route("http://proxy.corp:3128/", &[], API)),
        "http://proxy.corp:3128"
    );
    assert_eq!(tunnel_to(&route("HTTP://[::1]:3128", &[], API)), "http://[::1]:3128");
}

#[test]
fn the_key_wins_over_the_variables_and_none_ignores_them() {
    let vars = [
        ("HTTPS_PROXY", "http://from-env:3128"),
        ("ALL_PROXY", "http://all:3128"),
    ];
    let r = route("http://from-key:3128", &vars, API);
    assert_eq!(tunnel_to(&r), "http://from-key:3128");
    assert_eq!(r.describe(), "through http://from-key:3128 (from upstream.proxy)");
    assert_eq!(route("none", &vars, API), Route::Direct { why: Why::Disabled });
    assert_eq!(route(" NONE ", &vars, API), Route::Direct { why: Why::Disabled });
}

#[test]
fn no_proxy_matching_the_upstream_host_bypasses_the_proxy() {
    let proxy = ("HTTPS_PROXY", "http://proxy.corp:3128");
    let excluded = |list: &str, upstream: &str| route("", &[proxy, ("NO_PROXY", list)], upstream).proxy().is_none();
    // Exact host names, any case.
    assert!(excluded("api.issettled.example", API));
    assert!(excluded("API.IsSettled.Example", API));
    // Domain suffixes, with or without the leading dot, on a label boundary only.
    assert!(excluded("issettled.example", API));
    assert!(excluded(".issettled.example", API));
    assert!(excluded(".example", API));
    assert!(!excluded("settled.example", API));
    assert!(!excluded("other.example, api.issettled.example.org", API));
    // IPs and CIDRs, v4 and v6.
    assert!(excluded("10.0.0.7", "https://10.0.0.7:8443"));
    assert!(excluded("10.0.0.0/8", "https://10.0.0.7:8443"));
    assert!(!excluded("10.0.0.0/8", "https://11.0.0.7"));
    assert!(excluded("fd00::/8", "https://[fd00::1]:443"));
    assert!(excluded("::1", "https://[::1]"));
    // `*` covers everything, host names and IP addresses alike.
    assert!(excluded("*", API));
    assert!(excluded("*", "https://127.0.0.1:8443"));
    // Lists: commas, spaces, blank entries.
    assert!(excluded(" localhost, ,10.1.0.0/16 , .issettled.example", API));
    // The first entry that covers the host is named.
    let r = route("", &[proxy, ("no_proxy", "localhost,.example")], API);
    assert_eq!(
        r,
        Route::Direct {
            why: Why::Excluded {
                proxy: Origin::Variable("HTTPS_PROXY"),
                variable: "no_proxy",
                entry: ".example".into()
            }
        }
    );
    assert!(r.describe().contains("no_proxy entry `.example`"), "{}", r.describe());
}

#[test]
fn no_proxy_applies_to_the_key_too_lower_case_first() {
    let r = route(
        "http://proxy.corp:3128",
        &[("no_proxy", "api.issettled.example"), ("NO_PROXY", "")],
        API,
    );
    assert!(matches!(
        r,
        Route::Direct {
            why: Why::Excluded {
                proxy: Origin::Key,
                variable: "no_proxy",
                ..
            }
        }
    ));
}

#[test]
fn a_plain_http_upstream_is_never_proxied() {
    let r = route(
        "",
        &[("HTTPS_PROXY", "http://proxy.corp:3128")],
        "http://127.0.0.1:9000",
    );
    assert_eq!(
        r,
        Route::Direct {
            why: Why::PlainHttp {
                ignored: Origin::Variable("HTTPS_PROXY")
            }
        }
    );
    let r = route("", &[("http_proxy", "http://proxy.corp:3128")], "http://127.0.0.1:9000");
    assert_eq!(
        r,
        Route::Direct {
            why: Why::PlainHttp {
                ignored: Origin::Variable("http_proxy")
            }
        }
    );
    let r = route("http://proxy.corp:3128", &[], "http://127.0.0.1:9000");
    assert_eq!(
        r,
        Route::Direct {
            why: Why::PlainHttp { ignored: Origin::Key }
        }
    );
    assert!(r.describe().contains("never sent through a proxy"));
}

#[test]
fn socks_and_https_proxies_are_refused_saying_so() {
    for (setting, vars, says) in [
        (
            "socks5://proxy:1080",
            vec![],
            "socks5:// (SOCKS) proxy is not supported",
        ),
        ("socks5h://proxy", vec![], "socks5h:// (SOCKS)"),
        ("https://proxy:3128", vec![], "https:// proxy"),
        ("ftp://proxy", vec![], "only http:// proxies"),
        ("http://", vec![], "is not a proxy URL"),
        (
            "",
            vec![("HTTPS_PROXY", "socks5://proxy:1080")],
            "HTTPS_PROXY: a socks5://",
        ),
        ("", vec![("ALL_PROXY", "https://proxy")], "ALL_PROXY: an https://"),
    ] {
        let e = decide(setting, &env(&vars), &uri(API)).unwrap_err();
        assert!(e.to_string().contains(says), "{setting} {vars:?}: {e}");
        if !setting.is_empty() {
            assert_eq!(e.origin, Origin::Key);
        }
    }
    // A variable that would not be used is not judged.
    assert!(decide("", &env(&[("ALL_PROXY", "socks5://p"), ("NO_PROXY", "*")]), &uri(API)).is_ok());
    assert!(decide("", &env(&[("ALL_PROXY", "socks5://p")]), &uri("http://127.0.0.1:1")).is_ok());
    // The key is judged always.
    assert!(decide("socks5://p", &env(&[("NO_PROXY", "*")]), &uri(API)).is_err());
}

#[test]
fn credentials_in_the_url_are_kept_but_never_shown() {
    let r = route("", &[("HTTPS_PROXY", "http://alice:s3cr%40t@proxy.corp:3128")], API);
    let proxy = r.proxy().unwrap();
    assert_eq!(proxy.credentials().unwrap().password(), "s3cr@t");
    for shown in [proxy.to_string(), format!("{proxy:?}"), format!("{r:?}"), r.describe()] {
        assert!(!shown.contains("s3cr") && !shown.contains("alice"), "{shown}");
    }
    let e = decide("http://alice:s3cret@", &HashMap::new(), &uri(API)).unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert_eq!(
        redacted_setting("http://alice:s3cret@proxy:3128"),
        "http://<redacted>@proxy:3128"
    );
    assert_eq!(redacted_setting("http://proxy:3128"), "http://proxy:3128");
    assert_eq!(redacted_setting("none"), "none");
}
