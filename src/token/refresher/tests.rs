//! The refresher under tokio's paused clock with a scripted refresh client.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use super::*;
use crate::token::{cell::Source, jwt, secret::fingerprint as token_fingerprint, source::Candidate, Token, TokenState};

/// Answers refresh calls from a script (then mints tokens), after `latency`, recording when each call came.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Result<Refreshed, RefreshError>>>,
    calls: Mutex<Vec<Instant>>,
    /// The token each call refreshed.
    tokens: Mutex<Vec<String>>,
    latency: Duration,
    /// `exp` of minted tokens, seconds from now (wall clock).
    exp_in: Option<u64>,
}

impl RefreshClient for Arc<Scripted> {
    async fn refresh(&self, token: &Token) -> Result<Refreshed, RefreshError> {
        self.calls.lock().unwrap().push(Instant::now());
        self.tokens.lock().unwrap().push(token.expose().to_owned());
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
        origin: Some(token_fingerprint(text)),
    }
}

fn scripted(script: impl IntoIterator<Item = Result<Refreshed, RefreshError>>) -> Arc<Scripted> {
    Arc::new(Scripted {
        script: Mutex::new(script.into_iter().collect()),
        ..Scripted::default()
    })
}

fn calls(client: &Scripted) -> usize {
    client.calls.lock().unwrap().len()
}

/// Start a refresher over `client`; returns the cell and handle.
fn start(settings: Settings, client: Arc<Scripted>, initial: &str) -> (Arc<TokenCell>, RefreshHandle) {
    let (cell, handle, _) = start_counted(settings, client, initial);
    (cell, handle)
}

/// [`start`], also handing back the metrics the refresher counts into.
fn start_counted(
    settings: Settings,
    client: Arc<Scripted>,
    initial: &str,
) -> (Arc<TokenCell>, RefreshHandle, Arc<Metrics>) {
    let cell = TokenCell::new();
    let metrics = Arc::new(Metrics::new());
    let (mut refresher, handle) = Refresher::new(settings, cell.clone(), client, metrics.clone());
    refresher = refresher.with_jitter(|| 1.0);
    refresher.adopt_initial(candidate(initial));
    tokio::spawn(refresher.run(std::future::pending()));
    (cell, handle, metrics)
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
async fn nudges_from_a_burst_of_401s_cause_one_refresh() {
    let client = Arc::new(Scripted {
        latency: Duration::from_secs(1),
        ..Scripted::default()
    });
    let mut s = settings();
    s.min_refresh_gap = Duration::ZERO;
    let (cell, handle) = start(s, client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = cell.load().unwrap().generation;
    for _ in 0..100 {
        handle.nudge(seen);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(calls(&client), 2, "the start-up refresh and one for 100 nudges");
    assert_eq!(cell.load().unwrap().token().expose(), "minted-2");
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

#[tokio::test(start_paused = true)]
async fn a_401_while_a_failed_refresh_backs_off_causes_no_call() {
    let client = scripted(std::iter::repeat_with(|| Err(RefreshError::Transient("503".into()))).take(10));
    let mut s = settings();
    s.min_refresh_gap = Duration::ZERO;
    let (cell, handle) = start(s, client.clone(), "initial");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls(&client), 1, "the start-up refresh failed; the retry is 1 s out");
    let seen = cell.load().unwrap().generation;
    for _ in 0..30 {
        let outcome = handle.refresh_now(Trigger::Upstream401, Some(seen)).await.unwrap();
        assert!(!outcome.refreshed);
    }
    assert_eq!(calls(&client), 1, "30 upstream 401s during the back-off: no extra call");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls(&client), 2, "the retry comes on its schedule");
    // An operator's POST /refresh still goes through.
    assert!(handle.refresh_now(Trigger::Admin, None).await.is_err());
    assert_eq!(calls(&client), 3);
}

#[tokio::test(start_paused = true)]
async fn a_stated_expiry_already_past_is_ignored() {
    let past = || {
        Ok(Refreshed::New {
            token: Token::parse("opaque-next").unwrap(),
            expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
        })
    };
    let client = scripted(std::iter::repeat_with(past).take(5));
    let (cell, _handle) = start(settings(), client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls(&client), 1, "no refresh loop");
    let current = cell.load().unwrap();
    assert_eq!(current.token().expose(), "opaque-next");
    assert_eq!(current.expires_at, None);
    assert_eq!(current.check(&Stamp::now()), Ok(()), "the new token is usable");
}

#[tokio::test(start_paused = true)]
async fn a_kept_token_is_persisted_and_keeps_its_obtained_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut s = settings();
    s.state_file = Some(path.clone());
    let client = scripted([Ok(Refreshed::Kept)]);
    let (cell, _handle) = start(s, client.clone(), "initial");
    let obtained = cell.load().unwrap().obtained;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls(&client), 1);
    let current = cell.load().unwrap();
    assert_eq!(current.obtained.mono, obtained.mono, "kept, not obtained again");
    let persisted = crate::token::state_file::read(&path).unwrap().expect("written");
    assert_eq!(persisted.token.expose(), "initial");
    let skew = current.confirmed.wall.duration_since(persisted.confirmed_at).unwrap();
    assert!(skew < Duration::from_millis(1), "stored in ms: {skew:?}");
}

#[tokio::test(start_paused = true)]
async fn a_state_file_that_cannot_be_written_shows_in_last_error() {
    let mut s = settings();
    s.state_file = Some("/proc/issettled-proxy-test/no/such/dir/state".into());
    let client = Arc::new(Scripted::default());
    let (cell, _handle, metrics) = start_counted(s, client.clone(), "initial");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        cell.load().unwrap().token().expose(),
        "minted-1",
        "the refreshed token is used anyway"
    );
    let error = cell.status().last_error.clone().expect("the failed write is visible");
    assert!(error.contains("token.state_file"), "{error}");
    let text = metrics.render(&Default::default());
    assert!(
        text.contains("issettled_proxy_token_state_file_errors_total 1"),
        "and countable, so it can be alerted on"
    );
}

/// Real time: the token file is read from disk.
#[tokio::test]
async fn the_token_file_is_watched_while_401s_keep_arriving_and_a_new_file_token_is_confirmed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "initial\n").unwrap();
    let mut s = settings();
    s.token_file = Some(path.clone());
    s.min_refresh_gap = Duration::from_secs(3600);
    let client = scripted([Ok(Refreshed::Kept), Ok(Refreshed::Kept)]);
    let (cell, handle) = start(s, client.clone(), "initial");
    let seen = cell.load().unwrap().generation;
    let asking = tokio::spawn(async move {
        loop {
            let _ = handle.refresh_now(Trigger::Upstream401, Some(seen)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, "rotated\n").unwrap();
    // The check (a refresh made with the new token) is recorded by the client before its answer reaches the
    // cell: wait for both.
    let adopted = tokio::time::timeout(Duration::from_secs(3), async {
        while client.tokens.lock().unwrap().last().map(String::as_str) != Some("rotated")
            || cell.load().is_none_or(|c| c.token().expose() != "rotated")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    asking.abort();
    assert!(adopted.is_ok(), "refreshed: {:?}", client.tokens.lock().unwrap());
    assert_eq!(*client.tokens.lock().unwrap(), ["initial", "rotated"]);
}

/// Real time: the token file is read from disk. The file is absent at start (a secrets agent that writes it
/// later); the state file's token, refreshed from "original", is in use.
#[tokio::test]
async fn a_late_token_file_holding_the_original_does_not_replace_its_refreshed_successor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let mut s = settings();
    s.token_file = Some(path.clone());
    let client = scripted([Ok(Refreshed::Kept), Ok(Refreshed::Kept)]);
    let cell = TokenCell::new();
    let (mut refresher, _handle) = Refresher::new(s, cell.clone(), client.clone(), Arc::new(Metrics::new()));
    refresher.adopt_initial(Candidate {
        source: Source::StateFile,
        origin: Some(token_fingerprint("original")),
        ..candidate("refreshed")
    });
    tokio::spawn(refresher.run(std::future::pending()));

    std::fs::write(&path, "original\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cell.load().unwrap().token().expose(), "refreshed");

    std::fs::write(&path, "issued-later\n").unwrap();
    let adopted = tokio::time::timeout(Duration::from_secs(3), async {
        while cell.load().unwrap().token().expose() != "issued-later" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(adopted.is_ok(), "a different token in the file is adopted");
}

/// A refresher with a token file at `path` (holding "initial"), started on "initial"; the first refresh (the
/// start-up confirmation) is scripted as kept, the rest by `script`. Keep the handle: the refresher stops when
/// the last one is dropped.
fn start_on_a_file(
    path: &std::path::Path,
    state_file: Option<std::path::PathBuf>,
    script: Vec<Result<Refreshed, RefreshError>>,
    latency: Duration,
) -> (Arc<TokenCell>, Arc<Scripted>, Arc<Metrics>, RefreshHandle) {
    std::fs::write(path, "initial\n").unwrap();
    let mut s = settings();
    s.token_file = Some(path.to_path_buf());
    s.state_file = state_file;
    let client = Arc::new(Scripted {
        script: Mutex::new(std::iter::once(Ok(Refreshed::Kept)).chain(script).collect()),
        latency,
        ..Scripted::default()
    });
    let (cell, handle, metrics) = start_counted(s, client.clone(), "initial");
    (cell, client, metrics, handle)
}

/// Wait (real time, bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// Real time: the token file is read from disk. A two-segment token (opaque to the proxy) that the upstream
/// refuses never replaces a working token: the chain goes on, the refusal is reported and counted.
#[tokio::test]
async fn a_new_token_file_the_upstream_refuses_leaves_the_current_chain_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (path, state) = (dir.path().join("token"), dir.path().join("state"));
    let (cell, client, metrics, _handle) = start_on_a_file(
        &path,
        Some(state.clone()),
        vec![Err(RefreshError::Revoked(401))],
        Duration::ZERO,
    );
    // The call is recorded before its answer is persisted (on the blocking pool): wait for both.
    until("the start-up refresh", || {
        calls(&client) == 1 && cell.status().last_refresh_at.is_some()
    })
    .await;
    let before = crate::token::state_file::read(&state)
        .unwrap()
        .expect("the confirmed token is persisted");
    std::fs::write(&path, "abc.typo\n").unwrap();
    until("the check of the new token", || calls(&client) == 2).await;
    until("the refusal is reported", || cell.status().last_error.is_some()).await;
    assert_eq!(
        client.tokens.lock().unwrap()[1],
        "abc.typo",
        "the check is a refresh made with the new token"
    );
    let current = cell.load().expect("the current token stays");
    assert_eq!(current.token().expose(), "initial");
    assert!(current.check(&Stamp::now()).is_ok());
    let error = cell.status().last_error.clone().unwrap();
    assert!(
        error.contains("was refused") && error.contains("current token stays"),
        "{error}"
    );
    assert!(!error.contains("abc.typo"), "no token text in last_error: {error}");
    let text = metrics.render(&crate::metrics::TokenGauges::default());
    assert!(
        text.contains("issettled_proxy_token_handover_refused_total 1"),
        "{text}"
    );
    let after = crate::token::state_file::read(&state).unwrap().unwrap();
    assert_eq!(
        after.token.expose(),
        before.token.expose(),
        "the state file still holds the good chain"
    );
}

/// Real time. While the upstream is still checking the new token, requests carry the current one; the state
/// file learns of the new chain only once it is accepted, and then holds its first refreshed token.
#[tokio::test]
async fn a_new_token_file_is_used_only_once_a_refresh_made_with_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (path, state) = (dir.path().join("token"), dir.path().join("state"));
    let successor = Ok(Refreshed::New {
        token: Token::parse("successor").unwrap(),
        expires_at: None,
    });
    let (cell, client, _metrics, _handle) =
        start_on_a_file(&path, Some(state.clone()), vec![successor], Duration::from_millis(800));
    until("the start-up refresh", || cell.status().last_refresh_at.is_some()).await;
    std::fs::write(&path, "rotated\n").unwrap();
    until("the check of the new token", || calls(&client) == 2).await;
    // The check is in flight (800 ms): nothing has moved yet.
    assert_eq!(cell.load().unwrap().token().expose(), "initial");
    let persisted = crate::token::state_file::read(&state).unwrap().unwrap();
    assert_eq!(
        persisted.token.expose(),
        "initial",
        "the unproven token is not persisted"
    );
    until("the successor is adopted", || {
        cell.load().is_some_and(|c| c.token().expose() == "successor")
    })
    .await;
    let current = cell.load().unwrap();
    assert_eq!(current.origin.as_deref(), Some(token_fingerprint("rotated").as_str()));
    let persisted = crate::token::state_file::read(&state).unwrap().unwrap();
    assert_eq!(persisted.token.expose(), "successor");
    assert!(cell.status().last_error.is_none());
}

/// Real time. With no usable token (the start-up refresh was refused), a new token file is used at once.
#[tokio::test]
async fn a_new_token_file_is_used_at_once_when_there_is_no_usable_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "initial\n").unwrap();
    let mut s = settings();
    s.token_file = Some(path.clone());
    // Its confirmation keeps failing transiently, so the new token stays in the cell for seconds (after one
    // failure the retry would replace it 1 s later, which a loaded machine may let pass between two looks).
    let client = scripted(
        std::iter::once(Err(RefreshError::Revoked(401)))
            .chain(std::iter::repeat_with(|| Err(RefreshError::Transient("slow".into()))).take(5)),
    );
    let (cell, _handle) = start(s, client.clone(), "initial");
    until("the start-up refresh is refused", || cell.load().is_none()).await;
    std::fs::write(&path, "rescue\n").unwrap();
    until("the new token is in use", || {
        cell.load().is_some_and(|c| c.token().expose() == "rescue")
    })
    .await;
}

// --- a shared chain (cluster mode): one test store and one authority ---

/// Who may refresh a shared chain, as the Lease would say.
struct Shared {
    may_refresh: bool,
    last_resort: bool,
    grace: Duration,
}

/// A replica cut off from the Kubernetes API: it may not refresh, except as a last resort.
const CUT_OFF: Shared = Shared {
    may_refresh: false,
    last_resort: true,
    grace: Duration::ZERO,
};
/// A follower: it may never refresh.
const FOLLOWER: Shared = Shared {
    may_refresh: false,
    last_resort: false,
    grace: Duration::ZERO,
};
/// The Lease holder (`lease_duration` 15 s).
const LEADER: Shared = Shared {
    may_refresh: true,
    last_resort: false,
    grace: Duration::from_secs(15),
};

impl crate::token::store::Authority for Shared {
    fn may_refresh(&self) -> bool {
        self.may_refresh
    }
    fn shared(&self) -> bool {
        true
    }
    fn last_resort(&self, _remaining: Duration) -> bool {
        self.last_resort
    }
    fn handover_grace(&self) -> Duration {
        self.grace
    }
}

/// The state Secret behind an API that answers while `answers` is set, holding `holds`; counts its reads.
#[derive(Clone)]
struct Store {
    answers: Arc<std::sync::atomic::AtomicBool>,
    holds: Option<crate::token::state_file::Persisted>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
}

impl Store {
    fn answering(holds: Option<crate::token::state_file::Persisted>) -> Store {
        Store {
            answers: Arc::new(true.into()),
            holds,
            reads: Arc::default(),
        }
    }

    fn unreachable() -> Store {
        let store = Store::answering(None);
        store.set_answering(false);
        store
    }

    fn set_answering(&self, answers: bool) {
        self.answers.store(answers, std::sync::atomic::Ordering::SeqCst);
    }

    fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl crate::token::store::ChainStore for Store {
    fn save<'a>(
        &'a self,
        _link: &'a crate::token::state_file::Persisted,
    ) -> futures_util::future::BoxFuture<'a, Result<(), crate::token::store::SaveError>> {
        let answers = self.answers.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            answers
                .then_some(())
                .ok_or_else(|| crate::token::store::SaveError::Failed("the API cannot be reached".into()))
        })
    }
    fn load(&self) -> futures_util::future::BoxFuture<'_, Result<Option<crate::token::state_file::Persisted>, String>> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answers = self.answers.load(std::sync::atomic::Ordering::SeqCst);
        let holds = self.holds.clone();
        Box::pin(async move {
            answers
                .then_some(holds)
                .ok_or_else(|| "the API cannot be reached".into())
        })
    }
    fn key(&self) -> &'static str {
        "cluster.state_secret"
    }
}

/// A link of the chain as the store holds it.
fn link(token: &str, generation: u64) -> crate::token::state_file::Persisted {
    crate::token::state_file::Persisted {
        token: Token::parse(token).unwrap(),
        confirmed_at: SystemTime::now(),
        session_started_at: None,
        origin: None,
        generation,
    }
}

/// A refresher on `initial` keeping a shared chain in `store` under `authority`; the sender feeds it what the
/// watches would report.
fn start_shared(
    client: Arc<Scripted>,
    store: Store,
    authority: Shared,
    initial: &str,
) -> (
    Arc<TokenCell>,
    mpsc::Sender<crate::token::store::ChainEvent>,
    RefreshHandle,
) {
    let cell = TokenCell::new();
    let (events, rx) = mpsc::channel(4);
    let (refresher, handle) = Refresher::new(settings(), cell.clone(), client, Arc::new(Metrics::new()));
    let mut refresher = refresher
        .with_jitter(|| 1.0)
        .with_chain(Box::new(store), Box::new(authority), rx);
    refresher.adopt_initial(candidate(initial));
    tokio::spawn(refresher.run(std::future::pending()));
    (cell, events, handle)
}

#[tokio::test(start_paused = true)]
async fn a_refused_last_resort_refresh_waits_for_the_chain_instead_of_marking_it_revoked() {
    let client = scripted([Err(RefreshError::Revoked(401))]);
    let (cell, events, _handle) = start_shared(client.clone(), Store::unreachable(), CUT_OFF, "last-known");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls(&client), 1, "the last-resort refresh was made");
    assert!(cell.load().is_none(), "the refused token is not sent");
    let snap = crate::token::snapshot(&cell);
    assert_ne!(
        snap.state,
        TokenState::Revoked,
        "not marked revoked: someone else may have refreshed the chain"
    );
    assert!(snap.last_error.unwrap().contains("waiting for a newer link"));
    // Long past any grace: while the store cannot be read, the wait goes on.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_ne!(crate::token::snapshot(&cell).state, TokenState::Revoked);
    // The API answers again: the chain's newest link is used.
    events
        .send(crate::token::store::ChainEvent::Stored(Some(link("from-state", 3))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(cell.load().unwrap().token().expose(), "from-state");
    assert_eq!(crate::token::snapshot(&cell).state, TokenState::Valid);
}

#[tokio::test(start_paused = true)]
async fn a_follower_answers_401s_by_rereading_the_chain_once_per_gap_and_never_calls_refresh() {
    let client = scripted([]);
    let store = Store::answering(Some(link("newer", 9)));
    let (cell, _events, handle) = start_shared(client.clone(), store.clone(), FOLLOWER, "older");
    let seen = cell.load().unwrap().generation;
    // A burst of 401s: one re-read, the newer token answers all of them.
    let mut answers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let handle = handle.clone();
        answers.spawn(async move { handle.refresh_now(Trigger::Upstream401, Some(seen)).await });
    }
    while let Some(answer) = answers.join_next().await {
        assert_eq!(answer.unwrap().unwrap().current.token().expose(), "newer");
    }
    assert_eq!(store.reads(), 1, "one re-read for the burst");
    // An admin refresh on a follower re-reads too (after min_refresh_gap), and answers with the token.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let outcome = handle.refresh_now(Trigger::Admin, None).await.unwrap();
    assert_eq!(outcome.current.token().expose(), "newer");
    assert_eq!(store.reads(), 2);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(calls(&client), 0, "a follower never calls the refresh endpoint");
}

/// A leader on "refused-token" whose first refresh the upstream refuses, on a store that holds nothing newer.
fn start_refused_leader() -> (
    Arc<TokenCell>,
    mpsc::Sender<crate::token::store::ChainEvent>,
    RefreshHandle,
) {
    let client = scripted([Err(RefreshError::Revoked(401))]);
    start_shared(client, Store::answering(None), LEADER, "refused-token")
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_whose_first_refresh_is_refused_waits_a_lease_for_a_newer_link_then_treats_the_chain_as_revoked() {
    let (cell, _events, _handle) = start_refused_leader();
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert!(cell.load().is_none(), "the refused token is not sent");
    let snap = crate::token::snapshot(&cell);
    assert_ne!(snap.state, TokenState::Revoked, "a deposed writer may still be writing");
    assert!(snap.last_error.unwrap().contains("waiting for a newer link"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snap = crate::token::snapshot(&cell);
    assert_eq!(snap.state, TokenState::Revoked, "no newer link within lease_duration");
    assert!(snap.last_error.unwrap().contains("the chain is revoked"));
}

#[tokio::test(start_paused = true)]
async fn a_newer_link_within_the_lease_after_a_refusal_is_used_and_the_chain_never_revoked() {
    let (cell, events, _handle) = start_refused_leader();
    tokio::time::sleep(Duration::from_secs(5)).await;
    events
        .send(crate::token::store::ChainEvent::Stored(Some(link(
            "written-by-the-deposed-leader",
            4,
        ))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(cell.load().unwrap().token().expose(), "written-by-the-deposed-leader");
    assert_eq!(crate::token::snapshot(&cell).state, TokenState::Valid);
}

#[tokio::test(start_paused = true)]
async fn a_link_the_store_did_not_take_is_shown_as_unsaved_until_a_retry_writes_it() {
    let store = Store::unreachable();
    let (cell, _events, _handle) = start_shared(scripted([]), store.clone(), LEADER, "initial");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(cell.load().unwrap().token().expose(), "minted-1", "used anyway");
    assert!(cell.status().unsaved, "the elector holds off while this is set");
    store.set_answering(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!cell.status().unsaved, "written by the next retry");
    assert_eq!(cell.status().last_error, None);
}
