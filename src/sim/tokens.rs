//! The simulated IsSettled's token ledger: minting JWT-shaped tokens and deciding whether one is valid
//! (minted here, not revoked, `exp` not passed, refreshed within `revoke_after`, session not over).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use sha2::{Digest, Sha256};

/// The JOSE header of every minted token.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Every token and session this sim has minted, and the revocations. Lives behind the sim's mutex.
pub(super) struct TokenBook {
    /// Signs tokens. The signature is `sha256(secret || signing input)`: JWT-shaped, not a real HMAC;
    /// nobody verifies it (the proxy has no key and only reads claims).
    secret: [u8; 32],
    member_id: String,
    token_ttl: Duration,
    revoke_after: Duration,
    session_ttl: Duration,
    sessions: HashMap<String, Session>,
    tokens: HashMap<String, Minted>,
    /// Every token in minting order, for tests that search logs for them.
    issued: Vec<String>,
    revoked: HashSet<String>,
    /// Makes `jti` and `sid` unique even within one second.
    counter: u64,
    /// See [`super::SimConfig::retire_refreshed_after`].
    pub(super) retire_refreshed_after: Option<Duration>,
}

/// One administrator-issued session: its tokens share `sid` and `auth_time`.
struct Session {
    started: Instant,
    auth_time: u64,
}

/// What the ledger knows about one token.
struct Minted {
    sid: String,
    /// `exp`, as an instant (never earlier than the claim, which is truncated to whole seconds); `None` when
    /// `token_ttl` is too large to represent.
    expires: Option<Instant>,
    /// Issued or last counted as refreshed (a refresh answered without a new token); the revoke clock starts here.
    refreshed: Instant,
    /// When a successor was minted from it and the upstream retires refreshed-away tokens: no longer valid from then.
    retired: Option<Instant>,
}

/// A freshly minted token and its `exp` claim (epoch seconds).
pub(super) struct NewToken {
    pub(super) token: String,
    pub(super) exp: u64,
}

/// Why a token is refused; the text goes into the 401's `long_message`.
pub(super) type Refusal = &'static str;

// === impl TokenBook ===

impl TokenBook {
    pub(super) fn new(member_id: &str, token_ttl: Duration, revoke_after: Duration, session_ttl: Duration) -> Self {
        Self {
            secret: rand::random(),
            member_id: member_id.to_owned(),
            token_ttl,
            revoke_after,
            session_ttl,
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            revoked: HashSet::new(),
            counter: 0,
            retire_refreshed_after: None,
        }
    }

    /// Start a new session (what an administrator does in the Web Office) and mint its first token.
    pub(super) fn mint_session(&mut self) -> String {
        self.counter += 1;
        let sid = format!("sess-{}-{:08x}", self.counter, rand::random::<u32>());
        let session = Session {
            started: Instant::now(),
            auth_time: epoch_secs(SystemTime::now()),
        };
        self.sessions.insert(sid.clone(), session);
        self.mint(&sid).token
    }

    /// Mint a new token in session `sid` (which must exist).
    fn mint(&mut self, sid: &str) -> NewToken {
        self.counter += 1;
        let now = Instant::now();
        let wall = SystemTime::now();
        let iat = epoch_secs(wall);
        let exp = wall.checked_add(self.token_ttl).map_or(u64::MAX, epoch_secs);
        let auth_time = self.sessions.get(sid).map_or(iat, |s| s.auth_time);
        let payload = serde_json::json!({
            "sub": self.member_id,
            "iat": iat,
            "exp": exp,
            "jti": format!("{:016x}-{}", rand::random::<u64>(), self.counter),
            "sid": sid,
            "auth_time": auth_time,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = Sha256::new()
            .chain_update(self.secret)
            .chain_update(signing_input.as_bytes())
            .finalize();
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
        self.tokens.insert(
            token.clone(),
            Minted {
                sid: sid.to_owned(),
                expires: now.checked_add(self.token_ttl),
                refreshed: now,
                retired: None,
            },
        );
        self.issued.push(token.clone());
        NewToken { token, exp }
    }

    /// Whether `token` is valid now, and if not, why.
    pub(super) fn check(&self, token: &str) -> Result<(), Refusal> {
        let now = Instant::now();
        let Some(minted) = self.tokens.get(token) else {
            return Err("the access token is unknown");
        };
        if self.revoked.contains(token) {
            return Err("the access token has been revoked");
        }
        if minted.expires.is_some_and(|at| now >= at) {
            return Err("the access token has expired");
        }
        if minted.retired.is_some_and(|at| now >= at) {
            return Err("the access token was refreshed into a newer one");
        }
        if now.duration_since(minted.refreshed) >= self.revoke_after {
            return Err("the access token was revoked: not refreshed in time");
        }
        match self.sessions.get(&minted.sid) {
            Some(s) if now.duration_since(s.started) < self.session_ttl => Ok(()),
            _ => Err("the session has ended: an administrator must issue a new token"),
        }
    }

    /// Refresh `token`: with `mint`, a new token in the same session (the old one keeps its own deadlines);
    /// without, the token itself counts as refreshed. Refused if the token is not valid.
    pub(super) fn refresh(&mut self, token: &str, mint: bool) -> Result<Option<NewToken>, Refusal> {
        self.check(token)?;
        if !mint {
            if let Some(minted) = self.tokens.get_mut(token) {
                minted.refreshed = Instant::now();
            }
            return Ok(None);
        }
        let retire = self.retire_refreshed_after;
        let minted = self.tokens.get_mut(token);
        let sid = minted.as_ref().map(|m| m.sid.clone()).unwrap_or_default();
        if let (Some(minted), Some(after)) = (minted, retire) {
            minted.retired.get_or_insert(Instant::now() + after);
        }
        Ok(Some(self.mint(&sid)))
    }

    pub(super) fn revoke(&mut self, token: &str) {
        self.revoked.insert(token.to_owned());
    }

    pub(super) fn issued(&self) -> Vec<String> {
        self.issued.clone()
    }

    pub(super) fn len(&self) -> usize {
        self.issued.len()
    }
}

/// Whole seconds since the Unix epoch (0 before it).
pub(super) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
