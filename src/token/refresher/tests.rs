//! The refresher under tokio's paused clock with a scripted refresh client.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use super::*;
use crate::token::{cell::Source, jwt, source::Candidate, Token, TokenState};

/// Answers refresh calls from a script (then mints tokens), after `latency`, recording when each call came.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Result<Refreshed, RefreshError>>>,
    calls: Mutex<Vec<Instant>>,
    latency: Duration,
    /// `exp` of minted tokens, seconds from now (wall clock).
    exp_in: Option<u64>,
}

impl RefreshClient for Arc<Scripted> {
    async fn refresh(&self, _token: &Token) -> Result<Refreshed, RefreshError> {
        self.calls.lock().unwrap().push(Instant::now());
        tokio::time::sleep(self.latency).await;
        let next = self.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| {
            let n = self.calls.lock().unwrap().len();
            let token = match self.exp_in {
                Some(secs) => jwt_with_exp(secs, n),
                None => format!("minted-{n}"),
            };
            Ok(Refreshed::New {
                token: Token::parse(&token).unwrap(),
                expires_at: None,
            })
        })
    }
}

fn jwt_with_exp(secs_from_now: u64, n: usize) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + secs_from_now;
    format!(
        "{}.{}.sig{n}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
    )
}

fn settings() -> Settings {
    Settings {
        refresh_interval: Duration::from_secs(600),
        revoke_after: Duration::from_secs(900),
        refresh_before_expiry: Duration::from_secs(120),
        session_ttl: Duration::from_secs(86_400),
        min_refresh_gap: Duration::from_secs(5),
        token_file: None,
        state_file: None,
    }
}

fn candidate(text: &str) -> Candidate {
    let token = Token::parse(text).unwrap();
    Candidate {
        claims: jwt::claims(token.expose()),
        token,
        source: Source::Env,
        modified: None,
        confirmed_at: None,
        session_started_at: None,
    }
}

/// Start a refresher over `client`; returns the cell and handle.
fn start(settings: Settings, client: Arc<Scripted>, initial: &str) -> (Arc<TokenCell>, RefreshHandle) {
    let cell = TokenCell::new();
    let (mut refresher, handle) = Refresher::new(settings, cell.clone(), client, Arc::new(Metrics::new()));
    refresher = refresher.with_jitter(|| 1.0);
    refresher.adopt_initial(candidate(initial));
    tokio::spawn(refresher.run(std::future::pending()));
    (cell, handle)
}

fn gaps(calls: &[Instant]) -> Vec<u64> {
    calls.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect()
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_start_then_every_interval() {
    let client = Arc::new(Scripted::default());
    let (cell, _handle) = start(settings(), client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(1800 + 5)).await;
    let calls = client.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "start, 600 s, 1200 s, 1800 s");
    assert_eq!(gaps(&calls), vec![600, 600, 600]);
    assert_eq!(cell.load().unwrap().token().expose(), "minted-4");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_with_growing_delays_then_recover() {
    let client = Arc::new(Scripted {
        script: Mutex::new(
            std::iter::repeat_with(|| Err(RefreshError::Transient("500".into())))
                .take(3)
                .collect(),
        ),
        ..Scripted::default()
    });
    let (cell, _handle) = start(settings(), client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = client.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4);
    assert_eq!(
        gaps(&calls),
        vec![1, 2, 4],
        "exponential backoff (jitter pinned to 1.0)"
    );
    let current = cell.load().unwrap();
    assert_eq!(current.token().expose(), "minted-4");
    assert_eq!(cell.status().consecutive_failures, 0);
    assert_eq!(crate::token::snapshot(&cell).state, TokenState::Valid);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_join_one_refresh() {
    let client = Arc::new(Scripted {
        latency: Duration::from_secs(1),
        ..Scripted::default()
    });
    let mut s = settings();
    s.min_refresh_gap = Duration::ZERO;
    let (_cell, handle) = start(s, client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(client.calls.lock().unwrap().len(), 1, "the start-up refresh");
    let seen = _cell.load().unwrap().generation;
    let joins: Vec<_> = (0..100)
        .map(|_| {
            let h = handle.clone();
            tokio::spawn(async move { h.refresh_now(Trigger::Upstream401, Some(seen)).await })
        })
        .collect();
    for j in joins {
        let outcome = j.await.unwrap().unwrap();
        assert!(outcome.refreshed);
        assert_eq!(outcome.current.token().expose(), "minted-2");
    }
    assert_eq!(client.calls.lock().unwrap().len(), 2, "one refresh for 100 callers");
}

#[tokio::test(start_paused = true)]
async fn a_401_within_min_refresh_gap_causes_no_call() {
    let client = Arc::new(Scripted::default());
    let (cell, handle) = start(settings(), client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = cell.load().unwrap().generation;
    for _ in 0..50 {
        let outcome = handle.refresh_now(Trigger::Upstream401, Some(seen)).await.unwrap();
        assert!(!outcome.refreshed);
    }
    assert_eq!(client.calls.lock().unwrap().len(), 1, "only the start-up refresh");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        handle
            .refresh_now(Trigger::Upstream401, Some(seen))
            .await
            .unwrap()
            .refreshed
    );
    assert_eq!(client.calls.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn revoked_empties_the_cell() {
    let client = Arc::new(Scripted {
        script: Mutex::new(VecDeque::from([Err(RefreshError::Revoked(401))])),
        ..Scripted::default()
    });
    let (cell, handle) = start(settings(), client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(cell.load().is_none());
    let snap = crate::token::snapshot(&cell);
    assert_eq!(snap.state, TokenState::Revoked);
    assert!(snap.fingerprint.is_some());
    assert_eq!(
        handle.refresh_now(Trigger::Admin, None).await.unwrap_err(),
        RefreshError::NoToken
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(client.calls.lock().unwrap().len(), 1, "no retries on a revoked token");
}

#[tokio::test(start_paused = true)]
async fn a_near_exp_comes_before_the_interval() {
    // Every token expires 300 s after it is minted: refresh at exp - 120 s = 180 s, not at 600 s.
    let client = Arc::new(Scripted {
        exp_in: Some(300),
        ..Scripted::default()
    });
    let (_cell, _handle) = start(settings(), client.clone(), &jwt_with_exp(60, 0));
    tokio::time::sleep(Duration::from_secs(400)).await;
    let calls = client.calls.lock().unwrap().clone();
    let gaps = gaps(&calls);
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(gaps.iter().all(|g| (179..=180).contains(g)), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn kept_token_counts_as_refreshed() {
    let client = Arc::new(Scripted {
        script: Mutex::new(VecDeque::from([Ok(Refreshed::Kept)])),
        ..Scripted::default()
    });
    let (cell, _handle) = start(settings(), client.clone(), "initial");
    let before = cell.load().unwrap().confirmed.mono;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = cell.load().unwrap();
    assert_eq!(after.token().expose(), "initial");
    assert!(after.confirmed.mono > before || client.calls.lock().unwrap().len() == 1);
    assert!(cell.status().last_refresh_at.is_some());
}
