//! The admin port: readiness through a revoked token and a new token file, every
//! `/status` field of the contract, `/metrics` as valid Prometheus text that counts requests by status, no token in
//! either, `POST /refresh` answering the token object, and the error schema on unknown paths.

use std::{collections::HashMap, time::SystemTime};

use crate::support::{assert_schema, client, get_json, readyz, wait_for, ProxyBuilder, TestProxy, Upstream};
use issettled_proxy::token::secret::fingerprint;
use serde_json::Value;

/// The fields of the `/status` token object, as the contract lists them.
const TOKEN_FIELDS: [&str; 11] = [
    "state",
    "fingerprint",
    "source",
    "obtained_at",
    "last_refresh_at",
    "next_refresh_at",
    "revoke_deadline",
    "expires_at",
    "session_expires_at",
    "consecutive_failures",
    "last_error",
];

/// The time fields among them (RFC 3339 or null).
const TIME_FIELDS: [&str; 6] = [
    "obtained_at",
    "last_refresh_at",
    "next_refresh_at",
    "revoke_deadline",
    "expires_at",
    "session_expires_at",
];

/// The metric families the contract requires, with their Prometheus type.
const METRICS: [(&str, &str); 8] = [
    ("issettled_proxy_requests_total", "counter"),
    ("issettled_proxy_request_duration_seconds", "histogram"),
    ("issettled_proxy_upstream_errors_total", "counter"),
    ("issettled_proxy_token_refresh_total", "counter"),
    ("issettled_proxy_token_ready", "gauge"),
    ("issettled_proxy_token_revoke_deadline_seconds", "gauge"),
    ("issettled_proxy_token_session_remaining_seconds", "gauge"),
    ("issettled_proxy_in_flight_requests", "gauge"),
];

/// One sample line of the text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// The metric families (`# TYPE`) and samples of a Prometheus text exposition (format 0.0.4); panics on any line
/// that is not valid.
fn parse_prometheus(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| -> ! { panic!("line {}: {why}: {line:?}", n + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().unwrap_or_else(|| bad("TYPE without a name"));
                    let kind = words.next().unwrap_or_else(|| bad("TYPE without a type"));
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        bad("unknown type");
                    }
                    if !valid_name(name) {
                        bad("invalid metric name");
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        bad("a second TYPE line for the family");
                    }
                }
                Some("HELP") => {
                    let name = words.next().unwrap_or_else(|| bad("HELP without a name"));
                    if !valid_name(name) {
                        bad("invalid metric name");
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if !valid_name(name) {
            bad("invalid metric name");
        }
        let mut rest = &line[name_end..];
        let mut labels = HashMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner;
            loop {
                rest = rest.trim_start_matches(',');
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest.find('=').unwrap_or_else(|| bad("label without ="));
                let label = &rest[..eq];
                if !valid_name(label) || label.contains(':') {
                    bad("invalid label name");
                }
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| bad("label value not quoted"));
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => bad("invalid escape in a label value"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                };
                rest = &rest[end + 1..];
                if labels.insert(label.to_owned(), value).is_some() {
                    bad("duplicate label");
                }
            }
        }
        let mut fields = rest.split_whitespace();
        let value = fields.next().unwrap_or_else(|| bad("no value"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| bad("value is not a number")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| bad("timestamp is not an integer"));
        }
        if fields.next().is_some() {
            bad("trailing text");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    (types, samples)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample belongs to (histogram samples carry a suffix).
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| types.get(*base).is_some_and(|t| t == "histogram" || t == "summary"))
}

/// The sum of the samples named `name` whose labels include `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn metrics(proxy: &TestProxy) -> (HashMap<String, String>, Vec<Sample>, String) {
    let r = client().get(proxy.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = r.text().await.unwrap();
    let (types, samples) = parse_prometheus(&text);
    (types, samples, text)
}

#[tokio::test]
async fn readyz_goes_200_503_200_through_a_revoked_token_and_a_new_token_file() {
    let upstream = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let first = upstream.token();
    std::fs::write(&path, format!("{first}\n")).unwrap();
    let proxy = ProxyBuilder::new(&upstream.url, &first).token_file(&path).spawn().await;
    proxy.startup_refresh_done().await;
    let c = client();

    let r = c.get(proxy.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["ready"], true);

    // The upstream revokes the token; the next refresh is refused.
    upstream.sim.revoke(&upstream.newest_token());
    let r = c.post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 503, "a refused refresh leaves no usable token");
    let body: Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["code"], "TOKEN_UNAVAILABLE", "{body}");
    assert_eq!(body["token"]["state"], "revoked", "{body}");

    let r = c.get(proxy.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "a reason: {body}"
    );
    let s = proxy.status().await;
    assert_eq!(s["ready"], false);
    assert_eq!(s["token"]["state"], "revoked");
    assert!(s["token"]["last_error"].is_string());
    let (_, samples, _) = metrics(&proxy).await;
    assert_eq!(sum(&samples, "issettled_proxy_token_ready", &[]), 0.0);
    assert_eq!(
        sum(
            &samples,
            "issettled_proxy_token_refresh_total",
            &[("result", "revoked")]
        ),
        1.0
    );

    // An administrator issues a new token; it lands in the file (atomically, as a writer should).
    let fresh = upstream.sim.mint_admin_token();
    let tmp = dir.path().join(".token.tmp");
    std::fs::write(&tmp, format!("{fresh}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(wait_for(|| async { readyz(&proxy).await == 200 }).await, "ready again");
    // The token from the file is refreshed at once (its age is unknown); then it is the refreshed one.
    let refreshed_from_file = || {
        let calls = upstream.sim.refresh_calls();
        let seen = calls.iter().any(|c| c.token.as_deref() == Some(fresh.as_str()));
        async move { seen }
    };
    assert!(wait_for(refreshed_from_file).await, "the file's token was refreshed");
    assert!(
        wait_for(|| async { proxy.status().await["token"]["source"] == "refresh" }).await,
        "the refreshed token is in use"
    );
    let s = proxy.status().await;
    assert_eq!(s["ready"], true);
    assert_eq!(s["token"]["state"], "valid");
    assert_eq!(s["token"]["fingerprint"], fingerprint(&upstream.newest_token()));
    let (_, samples, _) = metrics(&proxy).await;
    assert_eq!(sum(&samples, "issettled_proxy_token_ready", &[]), 1.0);
    let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn status_has_every_field_the_contract_lists() {
    let (upstream, proxy) = crate::support::refreshed_proxy().await;

    let s = proxy.status().await;
    let top: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    for key in ["version", "ready", "upstream", "token"] {
        assert!(top.contains(&key), "{key} missing in {s}");
    }
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["ready"], true);
    assert!(
        s["upstream"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "{s}"
    );

    let token = s["token"].as_object().unwrap();
    for key in TOKEN_FIELDS {
        assert!(token.contains_key(key), "token.{key} missing in {s}");
    }
    assert!(["valid", "refreshing", "revoked", "missing", "expired"].contains(&token["state"].as_str().unwrap()));
    assert_eq!(token["state"], "valid");
    let fp = token["fingerprint"].as_str().unwrap();
    assert!(
        fp.starts_with("sha256:") && fp.len() == 15 && fp[7..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{fp}"
    );
    assert_eq!(fp, fingerprint(&upstream.newest_token()));
    assert_eq!(token["source"], "refresh");
    assert_eq!(token["consecutive_failures"], 0);
    assert_eq!(token["last_error"], Value::Null);
    // A JWT from a refresh: every time is known, in RFC 3339.
    for key in TIME_FIELDS {
        let text = token[key]
            .as_str()
            .unwrap_or_else(|| panic!("token.{key} not a time in {s}"));
        humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("token.{key} = {text}: {e}"));
    }
    let at = |key: &str| humantime::parse_rfc3339(token[key].as_str().unwrap()).unwrap();
    let now = SystemTime::now();
    assert!(at("obtained_at") <= now && at("last_refresh_at") <= now);
    assert!(at("next_refresh_at") > at("last_refresh_at"));
    assert!(at("revoke_deadline") > now && at("expires_at") > now && at("session_expires_at") > now);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_requests_by_status() {
    let (_upstream, proxy) = crate::support::refreshed_proxy().await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get_json(&proxy.url("/digital-accounts")).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(get_json(&proxy.url("/digital-accounts/DA-9999")).await.0, 404);
    }
    let r = c.post(proxy.url("/payments")).body("{}").send().await.unwrap();
    let post_status = r.status().as_u16().to_string();
    let r = c.put(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    let (types, samples, _) = metrics(&proxy).await;
    for (name, kind) in METRICS {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(kind),
            "{name} declared as a {kind}"
        );
    }
    for s in &samples {
        assert!(family(&s.name, &types).is_some(), "{} has no TYPE line", s.name);
        for (label, value) in &s.labels {
            assert!(!value.starts_with('/'), "no raw path in labels: {label}={value}");
        }
    }
    for (name, _) in METRICS.iter().filter(|(_, kind)| *kind != "histogram") {
        assert!(samples.iter().any(|s| s.name == *name), "no sample of {name}");
    }

    let requests = "issettled_proxy_requests_total";
    assert_eq!(sum(&samples, requests, &[("method", "GET"), ("status", "200")]), 3.0);
    assert_eq!(sum(&samples, requests, &[("method", "GET"), ("status", "404")]), 2.0);
    assert_eq!(
        sum(&samples, requests, &[("method", "POST"), ("status", &post_status)]),
        1.0
    );
    assert_eq!(sum(&samples, requests, &[("status", "405")]), 1.0);
    assert_eq!(sum(&samples, requests, &[]), 7.0);

    let duration = "issettled_proxy_request_duration_seconds";
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == format!("{duration}_bucket"))
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        buckets.len() >= 2 && buckets.last().unwrap().0.is_infinite(),
        "{buckets:?}"
    );
    assert!(
        buckets.iter().any(|(le, _)| *le < 0.001),
        "a bucket below a millisecond"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative buckets: {buckets:?}"
    );
    let count = sum(&samples, &format!("{duration}_count"), &[]);
    assert_eq!(buckets.last().unwrap().1, count);
    assert_eq!(count, 7.0);
    assert!(sum(&samples, &format!("{duration}_sum"), &[]) > 0.0);

    assert_eq!(sum(&samples, "issettled_proxy_token_ready", &[]), 1.0);
    assert!(
        sum(
            &samples,
            "issettled_proxy_token_refresh_total",
            &[("result", "success")]
        ) >= 1.0
    );
    assert!(sum(&samples, "issettled_proxy_token_revoke_deadline_seconds", &[]) > 0.0);
    assert!(sum(&samples, "issettled_proxy_token_session_remaining_seconds", &[]) > 0.0);
    assert!(sum(&samples, "issettled_proxy_in_flight_requests", &[]) >= 0.0);
}

#[tokio::test]
async fn the_token_appears_in_neither_status_nor_metrics() {
    let (upstream, proxy) = crate::support::refreshed_proxy().await;
    let c = client();
    assert_eq!(get_json(&proxy.url("/digital-accounts")).await.0, 200);
    let refreshed = c
        .post(proxy.admin_url("/refresh"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let mut pages = vec![("POST /refresh".to_owned(), refreshed)];
    for path in ["/status", "/metrics", "/readyz", "/healthz"] {
        let text = c.get(proxy.admin_url(path)).send().await.unwrap().text().await.unwrap();
        pages.push((format!("GET {path}"), text));
    }
    let tokens = upstream.sim.issued_tokens();
    assert!(tokens.len() >= 3, "the admin token and two refreshed ones");
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        for (page, text) in &pages {
            assert!(!text.contains(token.as_str()), "{page} shows a token");
            assert!(!text.contains(signature), "{page} shows a token's signature");
        }
    }
    assert!(
        pages[1].1.contains(&fingerprint(tokens.last().unwrap())),
        "the fingerprint is what /status shows"
    );
}

#[tokio::test]
async fn post_refresh_answers_the_status_token_object() {
    let (upstream, proxy) = crate::support::refreshed_proxy().await;
    let calls = upstream.sim.refresh_calls().len();

    let r = client().post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(upstream.sim.refresh_calls().len(), calls + 1, "one refresh call");
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = TOKEN_FIELDS.to_vec();
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected, "the /status token object: {body}");
    assert_eq!(body["state"], "valid");
    assert_eq!(body["source"], "refresh");
    assert_eq!(body["fingerprint"], fingerprint(&upstream.newest_token()));
    assert_eq!(proxy.status().await["token"]["fingerprint"], body["fingerprint"]);

    // A transient failure: 502 TOKEN_REFRESH_FAILED in the error schema, with the token object, still valid.
    upstream
        .sim
        .script_refresh(vec![issettled_proxy::sim::ScriptedResponse::Status(500)]);
    let r = client().post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["code"], "TOKEN_REFRESH_FAILED", "{body}");
    assert_eq!(body["service_name"], "issettled-proxy", "{body}");
    assert_eq!(body["endpoint_url"], "/refresh", "{body}");
    assert_eq!(body["token"]["state"], "valid", "{body}");
    assert_eq!(body["token"]["consecutive_failures"], 1, "{body}");
}

#[tokio::test]
async fn unknown_admin_paths_and_methods_answer_in_the_error_schema() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    for path in ["/nope", "/status/extra", "/metricsx"] {
        let r = client().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
        let body: Value = r.json().await.unwrap();
        assert_schema(&body);
        assert_eq!(body["code"], "NOT_FOUND", "{path}: {body}");
    }
    // A known path with the wrong method is 405 in the schema too.
    let r = client().get(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
}

/// A web page can make a browser POST to the admin port (no-cors); the browser then sends an `Origin`, which
/// curl, kubectl and probes never do. Such POSTs are refused and change nothing; the same POSTs without it work.
#[tokio::test]
async fn admin_posts_from_a_browser_origin_are_refused() {
    let upstream = Upstream::spawn().await;
    let mut proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("SHUTDOWN__ENABLE_QUIT_ENDPOINT", "true")
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let calls = upstream.sim.refresh_calls().len();
    for path in ["/quitquitquit", "/refresh"] {
        let r = client()
            .post(proxy.admin_url(path))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_schema(&body);
        assert_eq!(body["code"], "ORIGIN_NOT_ALLOWED", "{path}: {body}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(readyz(&proxy).await, 200, "still ready: no shutdown started");
    assert_eq!(upstream.sim.refresh_calls().len(), calls, "no refresh made");
    // GETs with an Origin (a dashboard) and POSTs without one (curl, kubectl, probes) are served.
    let r = client()
        .get(proxy.admin_url("/status"))
        .header("origin", "https://grafana.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client().post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.sim.refresh_calls().len(), calls + 1);
    let r = client().post(proxy.admin_url("/quitquitquit")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), proxy.join()).await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the quit POST without Origin stops the proxy: {ended:?}"
    );
}

/// This machine's address on its default route, if it has one (no packet is sent: a UDP socket is only pointed
/// there to learn the source address the kernel would use).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket
        .connect("192.0.2.255:9")
        .or_else(|_| socket.connect("8.8.8.8:53"))
        .ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// With the admin port on every interface (Kubernetes), state-changing requests come only from this machine or
/// pod: from another address `POST /refresh` is 403 `ADMIN_LOCAL_ONLY` and calls nothing upstream; reads are
/// served to everyone; the same POST over loopback works.
#[tokio::test]
async fn admin_posts_from_another_machine_are_refused_and_local_ones_served() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .admin_on_every_interface()
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let c = client();
    let calls = upstream.sim.refresh_calls().len();

    // Over a real socket from this machine's other address, where there is one (the rule itself is unit-tested
    // in `admin::tests`, which always runs).
    if let Some(ip) = non_loopback_address() {
        let url = format!("http://{ip}:{}/refresh", proxy.admin.port());
        let r = c.post(&url).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert_schema(&body);
        assert_eq!(body["code"], "ADMIN_LOCAL_ONLY", "{body}");
        let r = c
            .get(format!("http://{ip}:{}/readyz", proxy.admin.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "reads are served to everyone");
        assert_eq!(upstream.sim.refresh_calls().len(), calls, "nothing was refreshed");
    } else {
        eprintln!("no non-loopback address here: the socket half of this test did not run");
    }
    let r = c.post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 200, "from loopback it works");
    assert_eq!(upstream.sim.refresh_calls().len(), calls + 1);
}

/// An admin error is filled in like every other: `member_identification` from the configuration,
/// `troubleshooting_id` the request's `X-Request-Id`, or a new id returned in that header.
#[tokio::test]
async fn admin_errors_name_the_member_and_the_request_id() {
    let (upstream, proxy) = crate::support::refreshed_proxy().await;
    // Both POSTs below must fail. The first failure schedules background retries (at least 250 ms apart), which
    // take scripted answers too: enough of them that a slow second POST still finds a 500 left.
    upstream
        .sim
        .script_refresh(vec![issettled_proxy::sim::ScriptedResponse::Status(500); 60]);
    let r = client()
        .post(proxy.admin_url("/refresh"))
        .header("x-request-id", "ops-check-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-request-id"], "ops-check-1");
    let body: Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["member_identification"], "testBank", "{body}");
    assert_eq!(body["troubleshooting_id"], "ops-check-1", "{body}");

    let r = client().post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let minted = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["troubleshooting_id"], minted.as_str(), "{body}");
    assert_eq!(body["member_identification"], "testBank", "{body}");

    let (status, body) = crate::support::get_json(&proxy.admin_url("/nowhere")).await;
    assert_eq!(status, 404);
    assert_eq!(body["member_identification"], "testBank", "{body}");
    assert!(body["troubleshooting_id"].is_string(), "{body}");
}
