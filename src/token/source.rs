//! Where tokens come from besides a refresh: the token file (watched for Kubernetes Secret rotation), the
//! environment, and the state file; and which of them wins at start (pure).

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{
    cell::Source,
    jwt::{self, Claims},
    secret::{fingerprint, Token, TokenError},
};
use crate::config::TokenEnv;

/// A token found at start, with what tells how new it is.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) token: Token,
    pub(crate) source: Source,
    pub(crate) claims: Claims,
    /// File modification time (state file: the last refresh), if any.
    pub(crate) modified: Option<SystemTime>,
    /// The last upstream confirmation, when the state file recorded it.
    pub(crate) confirmed_at: Option<SystemTime>,
    /// The session start, when the state file recorded it.
    pub(crate) session_started_at: Option<SystemTime>,
    /// The fingerprint of the file or environment token this one descends from by refreshes (its own, for
    /// those two sources; the state file's record, if it has one).
    pub(crate) origin: Option<String>,
}

/// The token in `token.env`, parsed, or why there is none to use.
#[derive(Debug, Clone)]
pub(crate) struct EnvToken {
    /// Name of the variable (checked to be a variable name, so it is safe to print).
    pub(crate) name: String,
    pub(crate) value: Result<Token, EnvTokenError>,
}

/// Why `token.env` gives no token. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvTokenError {
    #[error("not set")]
    NotSet,
    #[error("refused: {0}")]
    Refused(TokenError),
}

// === impl EnvToken ===

impl EnvToken {
    /// Parse the variable's value as the configuration captured it.
    pub(crate) fn parse(var: &TokenEnv) -> Self {
        Self {
            name: var.name.clone(),
            value: match var.value() {
                Some(v) => Token::parse(v).map_err(EnvTokenError::Refused),
                None => Err(EnvTokenError::NotSet),
            },
        }
    }

    /// What `check-config` says about it: set (by its fingerprint) and usable, or why it will be refused.
    pub(crate) fn describe(&self, now: SystemTime) -> String {
        match &self.value {
            Ok(token) => match check(token, now) {
                Ok(_) => format!("set, {}", token.fingerprint()),
                Err(e) => format!("set, {}, refused: {e}", token.fingerprint()),
            },
            Err(e) => e.to_string(),
        }
    }
}

/// Check a token handed over from outside (file, environment, refresh): usable now, or why not.
pub(crate) fn check(token: &Token, now: SystemTime) -> Result<Claims, TokenError> {
    let claims = jwt::claims(token.expose());
    if claims.exp.is_some_and(|exp| exp <= now) {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Read a token file. `Ok(None)` when the file does not exist (yet).
pub(crate) fn read_file(path: &Path) -> Result<Option<(Token, SystemTime)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::now());
    let token = Token::parse(&text).map_err(|e| format!("{}: {e} ({})", path.display(), fingerprint(text.trim())))?;
    Ok(Some((token, modified)))
}

/// Pick the token to start with. A state-file token that records its origin wins exactly when the configured
/// token (file or environment) is that origin: it is the same token, refreshed since. A configured token that
/// is not its origin was supplied after that chain of refreshes began (a new Secret, a new environment value
/// after a revocation), and wins. Without a recorded origin: the newest usable candidate, by JWT `iat`, else
/// `exp`, else file times; a state-file token beats an environment token that carries no time.
pub(crate) fn choose(candidates: Vec<Candidate>) -> Option<Candidate> {
    let state = candidates.iter().position(|c| c.source == Source::StateFile);
    let origin = state.and_then(|i| candidates[i].origin.clone());
    let configured = candidates.iter().position(|c| c.source != Source::StateFile);
    if let (Some(state), Some(origin), Some(configured)) = (state, origin, configured) {
        let descends = candidates[configured].token.fingerprint() == origin;
        let pick = if descends { state } else { configured };
        return candidates.into_iter().nth(pick);
    }
    newest(candidates)
}

/// The newest usable candidate: by JWT `iat`, else `exp`, else file times.
fn newest(mut candidates: Vec<Candidate>) -> Option<Candidate> {
    candidates.sort_by_key(|c| {
        (
            c.claims.iat.or(c.claims.exp),
            c.modified.unwrap_or(SystemTime::UNIX_EPOCH),
            c.source == Source::StateFile,
        )
    });
    // If only some have claims, compare by claims only among those that have them: a token with an iat is
    // newer than an opaque one only if the opaque one is also older by file time.
    let all_have_times = candidates.iter().all(|c| c.claims.iat.or(c.claims.exp).is_some());
    if !all_have_times {
        candidates.sort_by_key(|c| {
            (
                c.modified.unwrap_or(SystemTime::UNIX_EPOCH),
                c.source == Source::StateFile,
            )
        });
    }
    candidates.pop()
}

/// Watches the token file: reports new, stable content (seen the same on two polls in a row, so a file being
/// written is never read half-way). Following the path each time follows Kubernetes' `..data` symlink swap.
#[derive(Debug)]
pub(crate) struct FileWatch {
    path: PathBuf,
    adopted: Option<String>,
    pending: Option<String>,
}

impl FileWatch {
    /// Watch `path`. Whatever it holds now was already considered at start (adopted, or beaten by a newer
    /// state-file token, or refused) and is never adopted later: only a change is.
    pub(crate) fn new(path: PathBuf) -> Self {
        let adopted = std::fs::read_to_string(&path).ok().map(|t| t.trim().to_owned());
        Self {
            path,
            adopted,
            pending: None,
        }
    }

    /// The watched path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Look at the file once. `Some` when it holds new content that was already there on the previous poll.
    pub(crate) async fn poll(&mut self) -> Option<Result<Token, TokenError>> {
        let text = tokio::fs::read_to_string(&self.path).await.ok()?;
        let trimmed = text.trim();
        if self.adopted.as_deref() == Some(trimmed) {
            self.pending = None;
            return None;
        }
        if self.pending.as_deref() != Some(trimmed) {
            self.pending = Some(trimmed.to_owned());
            return None;
        }
        self.pending = None;
        self.adopted = Some(trimmed.to_owned());
        Some(Token::parse(trimmed))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;

    #[test]
    fn an_unusable_env_token_keeps_its_reason() {
        let parse = |value: Option<&str>| {
            let env: HashMap<String, String> = value
                .map(|v| ("MY_TOKEN".to_owned(), v.to_owned()))
                .into_iter()
                .collect();
            EnvToken::parse(&TokenEnv::read("MY_TOKEN", &env)).value
        };
        assert_eq!(parse(None).unwrap_err(), EnvTokenError::NotSet);
        assert_eq!(
            parse(Some(" \n")).unwrap_err(),
            EnvTokenError::Refused(TokenError::Empty)
        );
        assert_eq!(
            parse(Some("has spaces in it")).unwrap_err(),
            EnvTokenError::Refused(TokenError::InvalidCharacters)
        );
        assert_eq!(parse(Some("abc.def\n")).unwrap().expose(), "abc.def");
    }

    fn cand(source: Source, iat: Option<u64>, modified: u64) -> Candidate {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        Candidate {
            token: Token::parse(&format!("{source:?}")).unwrap(),
            source,
            claims: Claims {
                iat: iat.map(at),
                ..Claims::default()
            },
            modified: Some(at(modified)),
            confirmed_at: None,
            session_started_at: None,
            origin: None,
        }
    }

    #[test]
    fn a_recorded_origin_decides_between_the_state_file_and_the_configured_token() {
        let configured = |source| Candidate {
            origin: Some(fingerprint(&format!("{source:?}"))),
            ..cand(source, Some(10), 1)
        };
        let state = |origin: &str| Candidate {
            origin: Some(fingerprint(origin)),
            // Older by every clock: the origin decides, not the times.
            ..cand(Source::StateFile, Some(5), 0)
        };
        let pick = |c: Vec<Candidate>| choose(c).unwrap().source;
        // Refreshed from the token still configured: the refreshed one.
        assert_eq!(pick(vec![configured(Source::File), state("File")]), Source::StateFile);
        assert_eq!(pick(vec![configured(Source::Env), state("Env")]), Source::StateFile);
        // Refreshed from another token: the configured one is newer, whatever the clocks say.
        assert_eq!(pick(vec![configured(Source::Env), state("an older Env")]), Source::Env);
        let newer_state = Candidate {
            claims: Claims::default(),
            modified: Some(SystemTime::now()),
            ..state("old")
        };
        assert_eq!(pick(vec![configured(Source::File), newer_state]), Source::File);
        // Only one of them: that one.
        assert_eq!(pick(vec![state("File")]), Source::StateFile);
    }

    #[test]
    fn newest_by_iat_then_file_time() {
        let pick = |c: Vec<Candidate>| choose(c).unwrap().source;
        assert_eq!(
            pick(vec![
                cand(Source::File, Some(10), 99),
                cand(Source::StateFile, Some(20), 1)
            ]),
            Source::StateFile
        );
        assert_eq!(
            pick(vec![
                cand(Source::File, Some(30), 1),
                cand(Source::StateFile, Some(20), 99)
            ]),
            Source::File
        );
        assert_eq!(
            pick(vec![cand(Source::File, None, 5), cand(Source::StateFile, None, 9)]),
            Source::StateFile
        );
        assert_eq!(
            pick(vec![cand(Source::File, None, 9), cand(Source::StateFile, Some(1), 5)]),
            Source::File
        );
        assert!(choose(Vec::new()).is_none());
    }

    #[tokio::test]
    async fn file_watch_reports_stable_new_content_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut watch = FileWatch::new(path.clone());
        assert!(watch.poll().await.is_none());
        std::fs::write(&path, "second\n").unwrap();
        assert!(watch.poll().await.is_none(), "needs to be seen twice");
        assert_eq!(watch.poll().await.unwrap().unwrap().expose(), "second");
        assert!(watch.poll().await.is_none(), "never re-adopted");
        std::fs::write(&path, " \n").unwrap();
        watch.poll().await;
        assert_eq!(watch.poll().await.unwrap(), Err(TokenError::Empty));
    }
}
