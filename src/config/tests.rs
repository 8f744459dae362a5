//! Unit tests for loading and validating the configuration.

use std::collections::HashMap;

use super::*;

const MINIMAL: &str = r#"
[upstream]
base_url = "https://api.issettled.example/v1/"
member_id = "bankName"
[token]
file = "/var/run/secrets/issettled/token"
"#;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn err_key(result: Result<Config, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { key, .. }) => key,
        Err(ConfigError::Load(msg)) => msg,
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn minimal_file_takes_defaults() {
    let c = load(ConfigFile::Toml(MINIMAL), &HashMap::new()).unwrap();
    assert_eq!(c.listen.address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.listen.admin_address.to_string(), "127.0.0.1:8081");
    assert_eq!(c.upstream.base_url.prefix, "/v1");
    assert_eq!(c.token.refresh_interval, Duration::from_secs(600));
    assert_eq!(c.policy.retry_on_401, vec![Method::GET]);
    assert_eq!(c.policy.max_body_bytes, 10_485_760);
    assert_eq!(c.listen.allowed_hosts, vec!["localhost", "127.0.0.1", "::1"]);
}

#[test]
fn environment_overrides_file_including_lists() {
    let e = env(&[
        ("ISSETTLED_PROXY__UPSTREAM__BASE_URL", "http://127.0.0.1:9999"),
        (
            "ISSETTLED_PROXY__POLICY__ALLOWED_PATH_PREFIXES",
            "/payments,/digital-accounts",
        ),
        ("ISSETTLED_PROXY__TOKEN__REFRESH_INTERVAL", "1s"),
        ("ISSETTLED_PROXY__LISTEN__MAX_CONNECTIONS", "7"),
    ]);
    let c = load(ConfigFile::Toml(MINIMAL), &e).unwrap();
    assert_eq!(c.upstream.base_url.authority.as_str(), "127.0.0.1:9999");
    assert_eq!(c.policy.allowed_path_prefixes, vec!["/payments", "/digital-accounts"]);
    assert_eq!(c.token.refresh_interval, Duration::from_secs(1));
    assert_eq!(c.listen.max_connections, 7);
}

#[test]
fn list_overrides_may_be_written_as_json_arrays() {
    let e = env(&[
        ("ISSETTLED_PROXY__LISTEN__ALLOWED_HOSTS", " [] "),
        ("ISSETTLED_PROXY__POLICY__ALLOWED_METHODS", r#"["GET", "POST"]"#),
        ("ISSETTLED_PROXY__POLICY__RETRY_ON_401", "[]"),
        ("ISSETTLED_PROXY__POLICY__ALLOWED_PATH_PREFIXES", r#"["/payments"]"#),
    ]);
    let c = load(ConfigFile::Toml(MINIMAL), &e).unwrap();
    assert!(c.listen.allowed_hosts.is_empty(), "[] means any Host");
    assert_eq!(c.policy.allowed_methods, vec![Method::GET, Method::POST]);
    assert!(c.policy.retry_on_401.is_empty());
    assert_eq!(c.policy.allowed_path_prefixes, vec!["/payments"]);
}

#[test]
fn a_blank_list_entry_is_refused_not_read_as_no_restriction() {
    for (section, key) in [
        ("listen", "allowed_hosts"),
        ("listen", "allowed_origins"),
        ("policy", "allowed_path_prefixes"),
        ("policy", "allowed_methods"),
        ("policy", "retry_on_401"),
    ] {
        let text = format!("{MINIMAL}\n[{section}]\n{key} = [\" \"]\n");
        let err = load(ConfigFile::Toml(&text), &HashMap::new()).unwrap_err();
        assert_eq!(err_key(Err(err)), format!("{section}.{key}"));
    }
    let e = env(&[("ISSETTLED_PROXY__LISTEN__ALLOWED_HOSTS", "[]x")]);
    assert!(load(ConfigFile::Toml(MINIMAL), &e).is_err(), "`[]x` is no host");
    // In a variable: a blank piece is refused too; only a blank value is no entries.
    for (var, value, key) in [
        (
            "ISSETTLED_PROXY__POLICY__ALLOWED_PATH_PREFIXES",
            ",",
            "policy.allowed_path_prefixes",
        ),
        (
            "ISSETTLED_PROXY__POLICY__ALLOWED_METHODS",
            "GET,,POST",
            "policy.allowed_methods",
        ),
        (
            "ISSETTLED_PROXY__LISTEN__ALLOWED_HOSTS",
            "localhost, ",
            "listen.allowed_hosts",
        ),
    ] {
        let got = load(ConfigFile::Toml(MINIMAL), &env(&[(var, value)]));
        assert_eq!(err_key(got), key, "{var}={value:?}");
    }
    let c = load(
        ConfigFile::Toml(MINIMAL),
        &env(&[("ISSETTLED_PROXY__LISTEN__ALLOWED_HOSTS", " ")]),
    )
    .unwrap();
    assert!(c.listen.allowed_hosts.is_empty());
}

#[test]
fn unknown_keys_are_refused() {
    let text = format!("{MINIMAL}\nsurprise = 1\n");
    assert!(err_key(load(ConfigFile::Toml(&text), &HashMap::new())).contains("surprise"));
    let text = MINIMAL.replace("member_id", "member_idx");
    assert!(err_key(load(ConfigFile::Toml(&text), &HashMap::new())).contains("member_idx"));
    // An unknown key in a variable: the variable is named.
    let e = env(&[("ISSETTLED_PROXY__UPSTREAM__NOPE", "1")]);
    assert_eq!(
        err_key(load(ConfigFile::Toml(MINIMAL), &e)),
        "ISSETTLED_PROXY__UPSTREAM__NOPE"
    );
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("ISSETTLED_PROXY__LISTEN__IDLE_TIMEOUT", "soon", "listen.idle_timeout"),
        ("ISSETTLED_PROXY__LISTEN__ADDRESS", "nowhere", "listen.address"),
        ("ISSETTLED_PROXY__UPSTREAM__BASE_URL", "ftp://x", "upstream.base_url"),
        (
            "ISSETTLED_PROXY__UPSTREAM__BASE_URL",
            "https://h/a/../b",
            "upstream.base_url",
        ),
        (
            "ISSETTLED_PROXY__TOKEN__REFRESH_INTERVAL",
            "20m",
            "token.refresh_interval",
        ),
        (
            "ISSETTLED_PROXY__POLICY__INBOUND_AUTHORIZATION",
            "keep",
            "policy.inbound_authorization",
        ),
        (
            "ISSETTLED_PROXY__POLICY__ALLOWED_PATH_PREFIXES",
            "payments",
            "policy.allowed_path_prefixes",
        ),
        ("ISSETTLED_PROXY__LOG__FORMAT", "xml", "log.format"),
        (
            "ISSETTLED_PROXY__UPSTREAM__CA_FILE",
            "/nonexistent/ca.pem",
            "upstream.ca_file",
        ),
    ];
    for (k, v, key) in cases {
        let result = load(ConfigFile::Toml(MINIMAL), &env(&[(k, v)]));
        let message = result.as_ref().map(drop).unwrap_err().to_string();
        assert_eq!(err_key(result), key, "{k}={v}");
        // An operator reading the file would not see the value: the message names the variable (not the value).
        assert!(message.ends_with(&format!("(set by {k})")), "{message}");
    }
    // A bad value from the file names no variable.
    let text = MINIMAL.replace("[token]", "[token]\nrefresh_interval = \"20m\"");
    let message = load(ConfigFile::Toml(&text), &HashMap::new()).unwrap_err().to_string();
    assert!(
        message.starts_with("token.refresh_interval") && !message.contains("set by"),
        "{message}"
    );
}

#[test]
fn a_token_source_is_required_and_env_is_read_from_the_map() {
    let text = MINIMAL.replace("file = \"/var/run/secrets/issettled/token\"", "");
    assert_eq!(err_key(load(ConfigFile::Toml(&text), &HashMap::new())), "token.file");
    let e = env(&[("ISSETTLED_PROXY__TOKEN__ENV", "MY_TOKEN"), ("MY_TOKEN", "abc.def\n")]);
    let c = load(ConfigFile::Toml(&text), &e).unwrap();
    let t = c.token.env.unwrap();
    assert_eq!(t.name, "MY_TOKEN");
    // Kept as it was; the token module parses it (and trims the newline).
    assert_eq!(t.value(), Some("abc.def\n"));
}

#[test]
fn shipped_example_files_parse_the_same() {
    let toml = include_str!("../../config/issettled-proxy.example.toml");
    let yaml = include_str!("../../config/issettled-proxy.example.yaml");
    let a = load(ConfigFile::Toml(toml), &HashMap::new()).unwrap();
    let b = load(ConfigFile::Yaml(yaml), &HashMap::new()).unwrap();
    assert_eq!(a.raw, b.raw);
    assert_eq!(a.raw, {
        let mut d = FileConfig::default();
        d.upstream.base_url = "https://api.issettled.example".into();
        d.upstream.member_id = "bankName".into();
        d.token.file = "/var/run/secrets/issettled/token".into();
        d
    });
}

#[test]
fn neither_rendering_nor_debug_shows_the_env_token() {
    let text = MINIMAL.replace("file = \"/var/run/secrets/issettled/token\"", "env = \"MY_TOKEN\"");
    let e = env(&[("MY_TOKEN", "super-secret-token-value")]);
    let c = load(ConfigFile::Toml(&text), &e).unwrap();
    let out = render_effective(&c, &[]);
    assert!(!out.contains("super-secret-token-value"));
    assert!(!format!("{c:?}").contains("super-secret-token-value"));
}

#[test]
fn token_env_must_be_a_variable_name_and_is_never_echoed() {
    let text = MINIMAL.replace("file = \"/var/run/secrets/issettled/token\"", "");
    for name in ["MY_TOKEN", "_t", "a1", &"N".repeat(64)] {
        let e = env(&[("ISSETTLED_PROXY__TOKEN__ENV", name)]);
        assert_eq!(load(ConfigFile::Toml(&text), &e).unwrap().token.env.unwrap().name, name);
    }
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTl9.c2lnbmF0dXJl";
    for bad in [jwt, "1ABC", "MY-TOKEN", "MY TOKEN", &"N".repeat(65)] {
        let e = env(&[("ISSETTLED_PROXY__TOKEN__ENV", bad)]);
        let err = load(ConfigFile::Toml(&text), &e).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "token.env"),
            "{bad}: {err}"
        );
        assert!(!err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn an_override_naming_only_a_section_is_refused_without_its_value() {
    for name in [
        "ISSETTLED_PROXY__TOKEN",
        "ISSETTLED_PROXY__LISTEN",
        "ISSETTLED_PROXY__",
        "ISSETTLED_PROXY__TOKEN__",
        "ISSETTLED_PROXY____ENV",
        "ISSETTLED_PROXY__TOKEN__ENV__X",
    ] {
        let err = load(ConfigFile::Toml(MINIMAL), &env(&[(name, "secret-value")])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == name),
            "{name}: {err}"
        );
        assert!(!err.to_string().contains("secret-value"), "{err}");
    }
    // Variables that only share the start of the prefix are not overrides.
    assert!(load(ConfigFile::Toml(MINIMAL), &env(&[("ISSETTLED_PROXY_TOKEN", "x")])).is_ok());
}

#[test]
fn allowed_hosts_with_a_port_are_refused() {
    for ok in ["localhost", "127.0.0.1", "::1", "[::1]", "api.example"] {
        let e = env(&[("ISSETTLED_PROXY__LISTEN__ALLOWED_HOSTS", ok)]);
        assert!(load(ConfigFile::Toml(MINIMAL), &e).is_ok(), "{ok}");
    }
    for bad in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "[::1"] {
        let e = env(&[("ISSETTLED_PROXY__LISTEN__ALLOWED_HOSTS", bad)]);
        let err = load(ConfigFile::Toml(MINIMAL), &e).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "listen.allowed_hosts"),
            "{bad}: {err}"
        );
        if bad.ends_with(":8080") {
            assert!(err.to_string().contains("port"), "{err}");
        }
    }
}

#[test]
fn the_admin_address_must_differ_from_the_proxy_address() {
    let conflicts = [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:9000", "127.0.0.1:9000"),
        ("[::1]:9000", "[::]:9000"),
    ];
    let with = |address: &str, admin: &str| {
        let e = env(&[
            ("ISSETTLED_PROXY__LISTEN__ADDRESS", address),
            ("ISSETTLED_PROXY__LISTEN__ADMIN_ADDRESS", admin),
        ]);
        load(ConfigFile::Toml(MINIMAL), &e)
    };
    for (address, admin) in conflicts {
        assert_eq!(
            err_key(with(address, admin)),
            "listen.admin_address",
            "{address} {admin}"
        );
    }
    let fine = [
        ("127.0.0.1:8080", "127.0.0.1:8081"),
        ("127.0.0.1:9000", "10.0.0.1:9000"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ];
    for (address, admin) in fine {
        assert!(with(address, admin).is_ok(), "{address} {admin}");
    }
}

#[test]
fn a_token_in_place_of_a_path_is_refused_and_never_echoed() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTl9.c2lnbmF0dXJl";
    for key in ["FILE", "STATE_FILE"] {
        let e = env(&[(&format!("ISSETTLED_PROXY__TOKEN__{key}") as &str, jwt)]);
        let err = load(ConfigFile::Toml(MINIMAL), &e).unwrap_err();
        let want = format!("token.{}", key.to_lowercase());
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if *key == want),
            "{key}: {err}"
        );
        assert!(!err.to_string().contains(jwt), "{err}");
    }
    // Paths that merely have dots are fine.
    let e = env(&[("ISSETTLED_PROXY__TOKEN__FILE", "/run/secrets/eyJ.token.v2")]);
    assert!(load(ConfigFile::Toml(MINIMAL), &e).is_ok());
}

#[test]
fn allowed_methods_are_those_issettled_supports_in_any_case() {
    let text = format!("{MINIMAL}\n[policy]\nallowed_methods = [\"get\", \"Post\", \"DELETE\"]\n");
    let c = load(ConfigFile::Toml(&text), &HashMap::new()).unwrap();
    assert_eq!(
        c.policy.allowed_methods,
        vec![Method::GET, Method::POST, Method::DELETE]
    );
    for other in ["PUT", "connect", "PATCH", "HEAD", "OPTIONS", "TRACE"] {
        let text = format!("{MINIMAL}\n[policy]\nallowed_methods = [\"GET\", \"{other}\"]\n");
        let message = load(ConfigFile::Toml(&text), &HashMap::new()).unwrap_err().to_string();
        assert!(
            message.starts_with("policy.allowed_methods: ") && message.contains("GET, POST and DELETE"),
            "{other}: {message}"
        );
    }
}

/// Every method `policy.allowed_methods` accepts has its own label in `issettled_proxy_requests_total`.
#[test]
fn every_allowed_method_is_counted_by_its_name() {
    let text = format!("{MINIMAL}\n[policy]\nallowed_methods = [\"GET\", \"POST\", \"DELETE\"]\n");
    let c = load(ConfigFile::Toml(&text), &HashMap::new()).unwrap();
    let metrics = crate::metrics::Metrics::new();
    for m in &c.policy.allowed_methods {
        metrics.request(m, 200, Duration::ZERO);
    }
    let text = metrics.render(&crate::metrics::TokenGauges::default());
    for m in &c.policy.allowed_methods {
        assert!(
            text.contains(&format!("method=\"{m}\",status=\"200\"}} 1")),
            "{m}:\n{text}"
        );
    }
    assert!(!text.contains("OTHER\",status=\"200\""), "{text}");
}

fn cluster(extra: &str, env_pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let text = format!("{MINIMAL}[cluster]\nmode = \"kubernetes\"\n{extra}");
    load(ConfigFile::Toml(&text), &env(env_pairs))
}

#[test]
fn cluster_mode_off_by_default_and_kubernetes_takes_names_and_identity_from_the_pod() {
    assert!(load(ConfigFile::Toml(MINIMAL), &HashMap::new())
        .unwrap()
        .cluster
        .is_none());
    let c = cluster(
        "",
        &[
            ("POD_NAME", "payments-7d9f-abcde"),
            ("POD_NAMESPACE", "payments"),
            ("KUBECONFIG", "/a:/b"),
        ],
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.identity, "payments-7d9f-abcde");
    assert_eq!(c.namespace.as_deref(), Some("payments"));
    assert_eq!(
        (c.secret.as_str(), c.state_secret.as_str(), c.lease.as_str()),
        ("issettled-token", "issettled-token-state", "issettled-proxy")
    );
    assert_eq!(c.kubeconfig.len(), 2);
    let c = cluster("identity = \"me\"\nnamespace = \"ns\"\n", &[("POD_NAME", "pod")])
        .unwrap()
        .cluster
        .unwrap();
    // The Secrets are the token source: no token.file or token.env needed.
    let text = "[upstream]\nbase_url = \"https://api.issettled.example\"\n[cluster]\nmode = \"kubernetes\"\nidentity = \"a\"\n";
    assert!(load(ConfigFile::Toml(text), &HashMap::new()).is_ok());
    assert_eq!((c.identity.as_str(), c.namespace.as_deref()), ("me", Some("ns")));
}

#[test]
fn cluster_durations_must_be_ordered_like_client_go() {
    let with = |lease: &str, renew: &str, retry: &str| {
        cluster(
            &format!("lease_duration = \"{lease}\"\nrenew_deadline = \"{renew}\"\nretry_period = \"{retry}\"\n"),
            &[("POD_NAME", "p")],
        )
    };
    assert!(with("15s", "10s", "2s").is_ok());
    assert!(with("3s", "2s", "500ms").is_ok());
    assert_eq!(err_key(with("10s", "10s", "2s")), "cluster.lease_duration");
    assert_eq!(err_key(with("15s", "2s", "2s")), "cluster.renew_deadline");
    assert_eq!(err_key(with("15s", "10s", "0s")), "cluster.retry_period");
    assert_eq!(err_key(with("15s", "ten", "2s")), "cluster.renew_deadline");
}

#[test]
fn cluster_names_must_be_valid_kubernetes_names() {
    let named = |key: &str, value: &str| cluster(&format!("{key} = \"{value}\"\n"), &[("POD_NAME", "p")]);
    for (key, bad) in [
        ("secret", "Issettled_Token"),
        ("state_secret", "-state"),
        ("lease", "lease."),
        ("namespace", "pay.ments"),
        ("namespace", &"n".repeat(64)),
        ("secret", ""),
    ] {
        assert_eq!(err_key(named(key, bad)), format!("cluster.{key}"), "{key} = {bad:?}");
    }
    assert!(named("secret", "bank.issettled-token").is_ok());
    assert_eq!(
        err_key(named("state_secret", "issettled-token")),
        "cluster.state_secret",
        "the two Secrets differ"
    );
    let text = format!("{MINIMAL}[cluster]\nmode = \"k8s\"\n");
    assert_eq!(err_key(load(ConfigFile::Toml(&text), &HashMap::new())), "cluster.mode");
}
