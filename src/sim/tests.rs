//! Unit tests of the simulated IsSettled, through `Router::oneshot`: tokens, refresh, knobs, routes, errors.

use std::time::Duration;

use axum::body::Body;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::errors::schema::FIELDS;

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn call(sim: &Sim, method: Method, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request.body(Body::from(body.to_owned())).expect("request");
    let response = sim.router().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(sim: &Sim, path: &str, token: Option<&str>) -> Answer {
    call(sim, Method::GET, path, token, "").await
}

async fn refresh(sim: &Sim, token: &str) -> Answer {
    call(sim, Method::POST, "/oauth-token/refresh", Some(token), "").await
}

fn assert_schema(answer: &Answer) {
    let body = answer.json();
    for field in FIELDS {
        assert!(body.get(field).is_some(), "missing {field} in {body}");
    }
    assert!(body["timestamp"].is_i64(), "timestamp not an integer: {body}");
    assert_eq!(body["service_name"], "issettled");
    assert_eq!(body["member_identification"], "demoBank");
    assert_eq!(body["build_version"], "2.14.3");
    assert!(body["troubleshooting_id"].as_str().is_some_and(|s| !s.is_empty()));
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

#[tokio::test]
async fn minted_tokens_are_unique_jwts() {
    let sim = Sim::new(SimConfig::default());
    let a = sim.mint_admin_token();
    let b = sim.mint_admin_token();
    assert_ne!(a, b);
    assert_eq!(a.split('.').count(), 3);
    assert!(!a.contains('='));
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(a.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    let c = claims(&a);
    assert_eq!(c["sub"], "demoBank");
    assert_eq!(
        c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"),
        15 * 60
    );
    assert_eq!(c["auth_time"], c["iat"]);
    assert_ne!(c["jti"], claims(&b)["jti"]);
    assert_ne!(c["sid"], claims(&b)["sid"]);
    assert_eq!(sim.issued_tokens(), vec![a, b]);
}

#[tokio::test]
async fn refresh_mints_a_new_valid_token_and_the_old_stays_valid() {
    let sim = Sim::new(SimConfig::default());
    let t0 = sim.mint_admin_token();
    let answer = refresh(&sim, &t0).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let t1 = body["access_token"].as_str().expect("access_token").to_owned();
    assert_ne!(t0, t1);
    assert_eq!(claims(&t1)["sid"], claims(&t0)["sid"]);
    assert_eq!(claims(&t1)["auth_time"], claims(&t0)["auth_time"]);
    assert_eq!(get(&sim, "/digital-accounts", Some(&t0)).await.status, StatusCode::OK);
    assert_eq!(get(&sim, "/digital-accounts", Some(&t1)).await.status, StatusCode::OK);
    assert_eq!(sim.issued_tokens(), vec![t0.clone(), t1.clone()]);

    let calls = sim.refresh_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].token.as_deref(), Some(t0.as_str()));
    assert!(calls[0].token_valid);
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].token.as_deref(), Some(t1.as_str()));
    assert_eq!(requests[0].path_and_query, "/digital-accounts");
    sim.clear_log();
    assert!(sim.requests().is_empty() && sim.refresh_calls().is_empty());
}

#[tokio::test]
async fn missing_unknown_and_revoked_tokens_get_401() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    for t in [None, Some("not-a-token")] {
        let answer = get(&sim, "/digital-accounts", t).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_schema(&answer);
        assert_eq!(answer.json()["code"], "UNAUTHORIZED");
    }
    sim.revoke(&token);
    assert!(!sim.is_valid(&token));
    let answer = get(&sim, "/digital-accounts", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_schema(&answer);
    let answer = refresh(&sim, &token).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_schema(&answer);
    assert!(!sim.requests()[2].token_valid);
    assert!(!sim.refresh_calls()[0].token_valid);
}

#[tokio::test]
async fn rejected_api_token_still_refreshes() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    sim.reject_api_token(&token);
    assert_eq!(
        get(&sim, "/digital-accounts", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let answer = refresh(&sim, &token).await;
    assert_eq!(answer.status, StatusCode::OK);
    let fresh = answer.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        get(&sim, "/digital-accounts", Some(&fresh)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tokens_not_refreshed_in_time_and_ended_sessions_are_refused() {
    let sim = Sim::new(SimConfig {
        revoke_after: Duration::from_millis(60),
        ..SimConfig::default()
    });
    let token = sim.mint_admin_token();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(refresh(&sim, &token).await.status, StatusCode::UNAUTHORIZED);

    // The refresh must come within the session (real time, on a loaded machine): a generous one.
    let sim = Sim::new(SimConfig {
        session_ttl: Duration::from_secs(1),
        ..SimConfig::default()
    });
    let token = sim.mint_admin_token();
    let fresh = refresh(&sim, &token).await.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&sim, "/digital-accounts", Some(&fresh)).await.status,
        StatusCode::UNAUTHORIZED
    );

    let sim = Sim::new(SimConfig {
        token_ttl: Duration::from_millis(60),
        ..SimConfig::default()
    });
    let token = sim.mint_admin_token();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sim.is_valid(&token));
}

#[tokio::test]
async fn refresh_without_new_token_counts_as_refreshed() {
    // Each refresh comes well within revoke_after of the last (real time, on a loaded machine), all of them
    // together well after it.
    let sim = Sim::new(SimConfig {
        revoke_after: Duration::from_millis(1500),
        ..SimConfig::default()
    });
    let token = sim.mint_admin_token();
    sim.set_refresh_shape(RefreshShape::NoContent);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let answer = refresh(&sim, &token).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert!(answer.body.is_empty());
    }
    assert!(sim.is_valid(&token));
    assert_eq!(sim.issued_tokens().len(), 1);
}

#[tokio::test]
async fn each_refresh_shape() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    let cases = [
        (RefreshShape::Token, "/token"),
        (RefreshShape::AccessTokenCamel, "/accessToken"),
        (RefreshShape::Jwt, "/jwt"),
        (RefreshShape::DataToken, "/data/token"),
        (RefreshShape::AccessToken, "/access_token"),
    ];
    for (shape, pointer) in cases {
        sim.set_refresh_shape(shape);
        let answer = refresh(&sim, &token).await;
        assert_eq!(answer.status, StatusCode::OK, "{shape:?}");
        let body = answer.json();
        let new = body
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{shape:?}: {body}"));
        assert!(sim.is_valid(new), "{shape:?}");
        if shape == RefreshShape::DataToken {
            let at = body["data"]["expires_at"].as_str().expect("expires_at");
            let at = humantime::parse_rfc3339(at).expect("RFC 3339");
            assert_eq!(tokens::epoch_secs(at), claims(new)["exp"].as_u64().expect("exp"));
        }
    }
    sim.set_refresh_shape(RefreshShape::OkNoToken);
    let answer = refresh(&sim, &token).await;
    assert_eq!(
        (answer.status, answer.json()),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(sim.issued_tokens().len(), 6);
}

#[tokio::test]
async fn scripted_refreshes_answer_in_order_then_normal() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    sim.script_refresh(vec![
        ScriptedResponse::Status(503),
        ScriptedResponse::StatusBody(200, r#"{"token":"scripted"}"#.to_owned()),
        ScriptedResponse::Status(401),
    ]);
    let first = refresh(&sim, &token).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_schema(&first);
    let second = refresh(&sim, &token).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(second.json(), serde_json::json!({"token": "scripted"}));
    assert_eq!(refresh(&sim, &token).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sim.issued_tokens().len(), 1, "scripted answers mint nothing");
    assert_eq!(refresh(&sim, &token).await.status, StatusCode::OK);
    assert_eq!(sim.refresh_calls().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn scripted_hang_and_latency() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    sim.script_refresh(vec![ScriptedResponse::Hang]);
    let hung = tokio::time::timeout(Duration::from_secs(600), refresh(&sim, &token)).await;
    assert!(hung.is_err(), "a hang never answers");
    sim.set_refresh_latency(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    assert_eq!(refresh(&sim, &token).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn error_routes_have_all_nine_fields() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    for status in [400, 401, 403, 404, 406, 409, 429, 500] {
        let answer = get(&sim, &format!("/errors/{status}"), Some(&token)).await;
        assert_eq!(answer.status.as_u16(), status);
        assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
        assert_schema(&answer);
        assert_eq!(answer.json()["endpoint_url"], format!("/errors/{status}"));
    }
    assert_eq!(
        get(&sim, "/errors/404", Some(&token)).await.json()["code"],
        "PAYMENT_NOT_FOUND"
    );
    assert_eq!(
        get(&sim, "/errors/400", Some(&token)).await.json()["code"],
        "INVALID_REQUEST"
    );
    for path in ["/nowhere", "/digital-accounts/DA-9999", "/errors/299"] {
        let answer = get(&sim, path, Some(&token)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_schema(&answer);
    }
    let answer = call(&sim, Method::PUT, "/payments/1", Some(&token), "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_schema(&answer);
}

#[tokio::test]
async fn odd_error_routes() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    let html = get(&sim, "/errors/html-502", Some(&token)).await;
    assert_eq!(html.status, StatusCode::BAD_GATEWAY);
    assert!(html.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    assert_eq!(&html.body[..], b"<html><body><h1>502 Bad Gateway</h1></body></html>");

    let empty = get(&sim, "/errors/empty-503", Some(&token)).await;
    assert_eq!(empty.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(empty.body.is_empty());

    let camel = get(&sim, "/errors/camel", Some(&token)).await;
    assert_eq!(camel.status, StatusCode::CONFLICT);
    let body = camel.json();
    for field in [
        "shortMessage",
        "longMessage",
        "troubleshootingId",
        "serviceName",
        "buildVersion",
        "memberIdentification",
        "endpointUrl",
        "code",
    ] {
        assert!(body[field].is_string(), "{field} in {body}");
    }
    let secs: u64 = body["timestamp"].as_str().expect("string").parse().expect("numeric");
    assert!(secs > 1_600_000_000 && secs < 100_000_000_000);
    assert_eq!(body["details"], serde_json::json!({"field": "amount"}));

    let echoed = get(&sim, "/errors/echo-token", Some(&token)).await;
    assert_eq!(echoed.status, StatusCode::BAD_REQUEST);
    assert_schema(&echoed);
    assert!(echoed.json()["long_message"].as_str().expect("string").contains(&token));
    assert_eq!(echoed.headers["x-debug-token"], token.as_str());
}

#[tokio::test]
async fn api_routes() {
    let sim = Sim::new(SimConfig::default());
    let t = sim.mint_admin_token();
    let t = Some(t.as_str());

    let list = get(&sim, "/digital-accounts", t).await;
    assert_eq!(list.json().as_array().map(Vec::len), Some(2));
    assert_eq!(get(&sim, "/digital-accounts/DA-1002", t).await.json()["id"], "DA-1002");

    let created = call(
        &sim,
        Method::POST,
        "/payments",
        t,
        r#"{"amount":"125.00","currency":"EUR"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let body = created.json();
    assert_eq!(
        (&body["amount"], &body["status"], &body["payment_id"]),
        (&"125.00".into(), &"ACCEPTED".into(), &"PAY-1001".into())
    );
    for bad in ["not json", "[1,2]"] {
        let answer = call(&sim, Method::POST, "/payments", t, bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_schema(&answer);
    }
    assert_eq!(
        get(&sim, "/payments/PAY-1001", t).await.json()["payment_id"],
        "PAY-1001"
    );
    let cancelled = call(&sim, Method::DELETE, "/payments/PAY-1001", t, "").await.json();
    assert_eq!(
        cancelled,
        serde_json::json!({"payment_id": "PAY-1001", "status": "CANCELLED"})
    );
    assert_eq!(sim.requests()[2].body, r#"{"amount":"125.00","currency":"EUR"}"#);

    let echo = call(&sim, Method::POST, "/echo/a/b?x=1&y=2", t, "hello").await.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/a/b");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["body_len"], 5);
    assert!(echo["headers"]["authorization"][0]
        .as_str()
        .expect("value")
        .starts_with("Bearer "));
    let long = "é".repeat(3000);
    let echo = call(&sim, Method::PUT, "/echo", t, &long).await.json();
    assert_eq!(echo["body_len"], 6000);
    assert!(echo["body"].as_str().expect("string").len() <= 4 * 1024 + 3);

    let redirect = get(&sim, "/redirect", t).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(
        redirect.headers[header::LOCATION],
        "https://elsewhere.example/landing?from=issettled"
    );
    assert!(redirect.body.is_empty());

    assert_eq!(
        get(&sim, "/slow?ms=5", t).await.json(),
        serde_json::json!({"slept_ms": 5})
    );
    assert_eq!(get(&sim, "/slow?ms=x", t).await.status, StatusCode::BAD_REQUEST);

    let hop = get(&sim, "/hop", t).await;
    for (name, value) in [
        ("connection", "x-hop"),
        ("x-hop", "should-not-pass"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("x-normal", "kept"),
    ] {
        assert_eq!(hop.headers[name], value);
    }
    assert_eq!(hop.json(), serde_json::json!({"ok": true}));

    for n in [0_usize, 1, 2, 17, 100_000] {
        let big = get(&sim, &format!("/big?bytes={n}"), t).await;
        assert_eq!(big.status, StatusCode::OK);
        assert_eq!(big.body.len(), n);
        if n >= 1 {
            assert!(big.json().is_string() || n == 1);
        }
    }
}

#[tokio::test]
async fn upload_counts_streamed_bytes() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    let progress = sim.upload_progress();
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![b'a'; 1000]))),
    );
    let request = Request::post("/upload")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from_stream(chunks))
        .expect("request");
    let response = sim.router().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"{\"received\":4000}\n");
    assert_eq!(*progress.borrow(), 4000);
    assert!(sim.requests()[0].body.is_empty());
}

#[tokio::test]
async fn prefix_applies_to_api_and_refresh() {
    let sim = Sim::new(SimConfig {
        prefix: "api/v1/".to_owned(),
        ..SimConfig::default()
    });
    let token = sim.mint_admin_token();
    assert_eq!(
        get(&sim, "/api/v1/digital-accounts", Some(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&sim, "/digital-accounts", Some(&token)).await.status,
        StatusCode::NOT_FOUND
    );
    let answer = call(&sim, Method::POST, "/api/v1/oauth-token/refresh", Some(&token), "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(sim.refresh_calls().len(), 1);
    assert_eq!(sim.requests().len(), 2);
    assert_eq!(
        get(&sim, "/api/v1/errors/409", Some(&token)).await.json()["endpoint_url"],
        "/api/v1/errors/409"
    );
}

#[test]
fn sim_is_send_sync_and_debug() {
    fn check<T: Send + Sync + std::fmt::Debug + Clone>() {}
    check::<Sim>();
    check::<SimConfig>();
    check::<RecordedRequest>();
    check::<ScriptedResponse>();
    check::<RefreshShape>();
    let sim = Sim::new(SimConfig::default());
    sim.mint_admin_token();
    assert!(format!("{sim:?}").contains("tokens_issued: 1"));
}
