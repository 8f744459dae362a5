//! Graceful shutdown. With 50 slow requests in flight, SIGTERM (or `POST /quitquitquit`, when
//! enabled) turns `/readyz` 503 at once, keeps serving for `shutdown.delay`, then refuses new connections, lets
//! all 50 finish with 200 and exits 0 within `shutdown.delay` + `shutdown.grace`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::support::binary::{BinConfig, Running};
use crate::support::{client, ProxyBuilder, TestProxy, Upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt, net::TcpStream, task::JoinHandle};

/// `shutdown.delay`: what must happen inside it (readiness off, a request still served) gets a second, which a
/// loaded machine needs more than the few milliseconds it takes on an idle one.
const DELAY: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(5);
const SLOW: usize = 50;
/// When, after the delay, the listener is checked to be closed (the proxy's own timer may fire a little late).
const AFTER_DELAY: Duration = Duration::from_millis(300);
/// The requests in flight across the shutdown: still running at `DELAY + AFTER_DELAY`, with a second to spare,
/// and well within the request time-out (5 s).
const SLOW_PATH: &str = "/slow?ms=2500";

/// `shutdown.delay` as configuration text.
fn delay() -> String {
    format!("{}ms", DELAY.as_millis())
}

/// Start `n` requests to `url` at once, each on its own connection; each task returns the status.
fn fire(url: &str, n: usize) -> Vec<JoinHandle<Result<u16, String>>> {
    let c = client();
    (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), url.to_owned());
            tokio::spawn(async move {
                let r = c.get(&url).send().await.map_err(|e| e.to_string())?;
                let status = r.status().as_u16();
                r.bytes().await.map_err(|e| e.to_string())?;
                Ok(status)
            })
        })
        .collect()
}

/// How many `/slow` requests the sim has received.
fn slow_seen(upstream: &Upstream) -> usize {
    upstream
        .sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/slow"))
        .count()
}

/// Wait until the sim has received `n` slow requests (so they are truly in flight).
async fn until_in_flight(upstream: &Upstream, n: usize) {
    assert!(
        crate::support::wait_for(|| async { slow_seen(upstream) >= n }).await,
        "only {} of {n} slow requests reached the upstream",
        slow_seen(upstream)
    );
}

/// Every request ended with 200.
async fn all_ok(tasks: Vec<JoinHandle<Result<u16, String>>>) {
    let mut failures = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(200))) => {}
            other => failures.push(format!("{other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} in-flight requests failed: {failures:?}",
        failures.len()
    );
}

/// `/readyz` status at `admin` (0 if unreachable).
async fn readyz_at(admin: &str) -> u16 {
    client().get(admin).send().await.map_or(0, |r| r.status().as_u16())
}

/// `/readyz` turns 503 within half the delay (at once: on an idle machine within a few milliseconds).
async fn becomes_unready_at_once(admin: &str) {
    let started = Instant::now();
    while started.elapsed() < DELAY / 2 {
        if readyz_at(admin).await == 503 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("/readyz still not 503 {:?} after the shutdown started", DELAY / 2);
}

/// A new connection to `addr` is refused.
async fn refuses_connections(addr: SocketAddr) {
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(Ok(_)) => panic!("a new connection was accepted after shutdown.delay"),
        Err(_) => panic!("connect hung instead of being refused"),
    }
}

/// A proxy with this file's shutdown timings (and the quit endpoint if asked), ready.
async fn spawn_draining(upstream: &Upstream, quit: bool) -> TestProxy {
    let mut builder = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("SHUTDOWN__DELAY", &delay())
        .set("SHUTDOWN__GRACE", "5s");
    if quit {
        builder = builder.set("SHUTDOWN__ENABLE_QUIT_ENDPOINT", "true");
    }
    let proxy = builder.spawn().await;
    proxy.wait_ready().await;
    proxy
}

/// After `shutdown.delay` (counted from `t0`): new connections are refused and not ready while the slow requests
/// still run; then all of them complete with 200 and the app ends cleanly within delay + grace.
async fn drains_after_the_delay(proxy: &mut TestProxy, t0: Instant, tasks: Vec<JoinHandle<Result<u16, String>>>) {
    tokio::time::sleep_until((t0 + DELAY + AFTER_DELAY).into()).await;
    refuses_connections(proxy.addr).await;
    assert_eq!(crate::support::readyz(proxy).await, 503);
    all_ok(tasks).await;
    let ended = tokio::time::timeout(DELAY + GRACE, proxy.join()).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    assert!(t0.elapsed() < DELAY + GRACE, "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_fifty_slow_requests() {
    let upstream = Upstream::spawn().await;
    let mut proxy = spawn_draining(&upstream, false).await;
    let tasks = fire(&proxy.url(SLOW_PATH), SLOW);
    until_in_flight(&upstream, SLOW).await;

    let t0 = Instant::now();
    proxy.trigger_stop();
    becomes_unready_at_once(&proxy.admin_url("/readyz")).await;

    // During shutdown.delay a new connection is still served normally.
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(t0.elapsed() < DELAY, "the check ran past the delay: {:?}", t0.elapsed());

    drains_after_the_delay(&mut proxy, t0, tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quit_endpoint_is_404_unless_enabled() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    proxy.wait_ready().await;
    let r = client().post(proxy.admin_url("/quitquitquit")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(crate::support::readyz(&proxy).await, 200);
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(proxy.stop().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quit_endpoint_shuts_down_in_process() {
    let upstream = Upstream::spawn().await;
    let mut proxy = spawn_draining(&upstream, true).await;
    let tasks = fire(&proxy.url(SLOW_PATH), SLOW);
    until_in_flight(&upstream, SLOW).await;

    let t0 = Instant::now();
    let r = client().post(proxy.admin_url("/quitquitquit")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    becomes_unready_at_once(&proxy.admin_url("/readyz")).await;
    drains_after_the_delay(&mut proxy, t0, tasks).await;
}

/// A request on a keep-alive connection opened before the shutdown: served normally during the delay; after it,
/// while another request is still in flight, the connection stays open and a late request on it gets 503
/// `SHUTTING_DOWN` with `Connection: close`, never forwarded. Idle connections close as soon as nothing is in
/// flight, so the shutdown still ends promptly. With few connections allowed idle ones park between requests,
/// with many they stay active: both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_request_during_stopping() {
    for max_connections in ["16", "10000"] {
        late_request_on_a_kept_alive_connection(max_connections).await;
    }
}

async fn late_request_on_a_kept_alive_connection(max_connections: &str) {
    let upstream = Upstream::spawn().await;
    let mut proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("SHUTDOWN__DELAY", &delay())
        .set("SHUTDOWN__GRACE", "5s")
        .set("LISTEN__MAX_CONNECTIONS", max_connections)
        .spawn()
        .await;
    proxy.wait_ready().await;

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = |path: &str| {
        http::Request::get(path)
            .header(http::header::HOST, "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let r = sender.send_request(request("/digital-accounts")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    // A second kept-alive connection that stays idle throughout.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET /digital-accounts HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        crate::support::raw_status(&crate::support::read_response(&mut idle, GRACE).await),
        200
    );

    // Something in flight keeps the proxy in its stopping phase for a while (past the late request below).
    let slow = fire(&proxy.url("/slow?ms=3000"), 1);
    until_in_flight(&upstream, 1).await;

    let t0 = Instant::now();
    proxy.trigger_stop();
    // Within the delay: normal service on the open connection.
    sender.ready().await.unwrap();
    let r = sender.send_request(request("/digital-accounts/DA-1001")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    assert!(t0.elapsed() < DELAY);

    tokio::time::sleep_until((t0 + DELAY + AFTER_DELAY).into()).await;
    let forwarded_before = upstream.sim.requests().len();
    let late = async {
        sender.ready().await?;
        sender.send_request(request("/digital-accounts")).await
    };
    let r = match tokio::time::timeout(Duration::from_secs(3), late).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("{max_connections}: the open connection was closed before the drain ended: {e}"),
        Err(_) => panic!("{max_connections}: a late request on a kept-alive connection hung"),
    };
    assert_eq!(r.status(), 503, "{max_connections}: a late request was served");
    assert_eq!(r.headers()[http::header::CONNECTION], "close", "{max_connections}");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    crate::support::assert_schema(&body);
    assert_eq!(body["code"], "SHUTTING_DOWN");
    assert_eq!(
        upstream.sim.requests().len(),
        forwarded_before,
        "a late request was forwarded"
    );
    assert!(
        !crate::support::closed_within(&mut idle, Duration::from_millis(100)).await,
        "{max_connections}: an idle connection closed while a request was still in flight"
    );

    all_ok(slow).await;
    let drained_at = Instant::now();
    assert!(
        crate::support::closed_within(&mut idle, Duration::from_secs(2)).await,
        "{max_connections}: the idle connection stayed open after the drain"
    );
    let ended = tokio::time::timeout(DELAY + GRACE, proxy.join()).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    assert!(
        drained_at.elapsed() < Duration::from_secs(2),
        "{max_connections}: the shutdown waited for idle connections: {:?}",
        drained_at.elapsed()
    );
}

/// The binary under SIGTERM or `/quitquitquit` with 50 slow requests in flight: all 200, exit 0 in time.
async fn binary_drains(quit_endpoint: bool) {
    let upstream = Upstream::spawn().await;
    let mut cfg = BinConfig::new(&upstream.url)
        .set("shutdown", "delay", &format!("\"{}\"", delay()))
        .set("shutdown", "grace", "\"5s\"");
    if quit_endpoint {
        cfg = cfg.env("ISSETTLED_PROXY__SHUTDOWN__ENABLE_QUIT_ENDPOINT", "true");
    }
    cfg.write_token(&upstream.token());
    let mut running: Running = cfg.start_ready().await;
    let tasks = fire(&cfg.url(SLOW_PATH), SLOW);
    until_in_flight(&upstream, SLOW).await;

    let t0 = Instant::now();
    if quit_endpoint {
        let r = client().post(cfg.admin_url("/quitquitquit")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    } else {
        running.term();
    }
    becomes_unready_at_once(&cfg.admin_url("/readyz")).await;
    let r = client().get(cfg.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200, "not served normally during shutdown.delay");
    assert!(t0.elapsed() < DELAY, "the check ran past the delay: {:?}", t0.elapsed());
    tokio::time::sleep_until((t0 + DELAY + AFTER_DELAY).into()).await;
    refuses_connections(cfg.address).await;

    all_ok(tasks).await;
    let status = running.wait(DELAY + GRACE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", running.stderr());
    assert!(t0.elapsed() < DELAY + GRACE, "{:?}", t0.elapsed());
    let logs = running.stdout();
    assert!(logs.contains("draining") && logs.contains("stopped"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_sigterm_drains_and_exits_0() {
    binary_drains(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_quitquitquit_drains_and_exits_0() {
    binary_drains(true).await;
}

/// A refresh call that hangs (here: one the operator asked for) does not hold the exit past delay + grace.
#[tokio::test]
async fn a_hanging_refresh_does_not_hold_the_exit_past_the_grace() {
    let upstream = Upstream::spawn().await;
    let mut proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__REQUEST_TIMEOUT", "30s")
        .set("SHUTDOWN__GRACE", "1s")
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let calls = upstream.sim.refresh_calls().len();
    upstream
        .sim
        .script_refresh(vec![issettled_proxy::sim::ScriptedResponse::Hang]);
    let refresh = client().post(proxy.admin_url("/refresh")).send();
    let refresh = tokio::spawn(refresh);
    assert!(
        crate::support::wait_for(|| async { upstream.sim.refresh_calls().len() > calls }).await,
        "the refresh call did not reach the upstream"
    );

    let t0 = Instant::now();
    proxy.trigger_stop();
    let ended = tokio::time::timeout(Duration::from_secs(5), proxy.join()).await;
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "exit took {:?}", t0.elapsed());
    refresh.abort();
}

/// A second signal during the shutdown skips what is left of `shutdown.delay` (here 30 s) and `shutdown.grace`
/// (30 s, with a request in flight), gives a refresh that hangs at most its last 2 s, and exits 1, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_the_shutdown_short_and_exits_1() {
    let upstream = Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url)
        .set("shutdown", "delay", "\"30s\"")
        .set("shutdown", "grace", "\"30s\"")
        .set("upstream", "request_timeout", "\"60s\"");
    cfg.write_token(&upstream.token());
    let mut running: Running = cfg.start_ready().await;
    let slow = fire(&cfg.url("/slow?ms=50000"), 1);
    until_in_flight(&upstream, 1).await;
    let calls = upstream.sim.refresh_calls().len();
    upstream
        .sim
        .script_refresh(vec![issettled_proxy::sim::ScriptedResponse::Hang]);
    let refresh = tokio::spawn(client().post(cfg.admin_url("/refresh")).send());
    assert!(
        crate::support::wait_for(|| async { upstream.sim.refresh_calls().len() > calls }).await,
        "the refresh call did not reach the upstream"
    );

    running.term();
    becomes_unready_at_once(&cfg.admin_url("/readyz")).await;
    running.signal("INT");
    let status = running.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{}", running.stderr());
    let logs = running.stdout();
    for event in ["shutdown_signal", "second_signal", "refresh_abandoned", "stopped_early"] {
        assert!(logs.contains(event), "no {event} in the log:\n{logs}");
    }
    assert!(running.stderr().contains("second signal"), "{}", running.stderr());
    refresh.abort();
    for task in slow {
        task.abort();
    }
}
