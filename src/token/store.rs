//! The two seams of the token chain: *where it is kept* ([`ChainStore`]: the state file in mode `off`, the
//! state Secret in cluster mode) and *who may refresh it* ([`Authority`]: this process alone, or only the Lease
//! holder). The refresher writes every new token to the store before it uses it, and takes in what the store
//! reports ([`ChainEvent`]) when others write.

use std::{path::PathBuf, time::Duration};

use futures_util::future::BoxFuture;

use super::{
    secret::{Token, TokenError},
    state_file::{self, Persisted},
};

/// Why a write to the store did not take.
#[derive(Debug)]
pub(crate) enum SaveError {
    /// Another writer came first (a resourceVersion conflict): what the store holds now, if it could be read.
    /// Adopt it; never retry the write over it.
    Conflict(Option<Persisted>),
    /// The store did not answer or refused for another reason: the token is the only valid one there is, so it
    /// is used anyway and the write retried.
    Failed(String),
}

/// Where the chain is kept. Off the hot path: boxed futures are fine here.
pub(crate) trait ChainStore: Send + Sync {
    /// Write `link` durably, before anyone uses its token.
    fn save<'a>(&'a self, link: &'a Persisted) -> BoxFuture<'a, Result<(), SaveError>>;
    /// Read what the store holds now (`None`: nothing, or nothing readable).
    fn load(&self) -> BoxFuture<'_, Result<Option<Persisted>, String>>;
    /// The configuration key that names the store, for messages.
    fn key(&self) -> &'static str;
}

/// Who may refresh the chain.
pub(crate) trait Authority: Send + Sync {
    /// Whether this process may call the refresh endpoint now.
    fn may_refresh(&self) -> bool;
    /// Whether other processes share this chain (cluster mode): a refused refresh may then mean that someone
    /// else refreshed it, and a newer token may arrive through [`ChainEvent::Stored`].
    fn shared(&self) -> bool {
        false
    }
    /// Whether a token whose revoke deadline is `remaining` away must be refreshed although this process may not
    /// (the Lease was lost only because the API cannot be reached: a chain that would certainly die is kept
    /// alive). Never in mode `off`.
    fn last_resort(&self, _remaining: Duration) -> bool {
        false
    }
    /// How long, after the upstream refused a shared chain's token, a newer link may take to reach the store
    /// before the chain is treated as revoked: a deposed leader or a last-resort refresher may still be writing.
    fn handover_grace(&self) -> Duration {
        Duration::ZERO
    }
}

/// What the store or the administrator's source reports to the refresher.
#[derive(Debug)]
pub(crate) enum ChainEvent {
    /// The store holds this now (`None`: empty or unreadable), as a watch saw it or a re-read found it.
    Stored(Option<Persisted>),
    /// A new administrator-issued token (the administrator's Secret changed).
    Offered(Result<Token, TokenError>),
}

/// Mode `off`: this process alone refreshes its chain.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sole;

impl Authority for Sole {
    fn may_refresh(&self) -> bool {
        true
    }
}

/// Mode `off`: the chain in `token.state_file`, or nowhere when it is unset. Never conflicts.
#[derive(Debug, Clone, Default)]
pub(crate) struct StateFileStore {
    pub(crate) path: Option<PathBuf>,
}

// === impl StateFileStore ===

impl StateFileStore {
    /// Write `link` to `path` (atomic, durable, 0600) on the blocking pool.
    pub(crate) async fn write(path: PathBuf, link: &Persisted) -> Result<(), String> {
        let link = link.clone();
        let written = tokio::task::spawn_blocking(move || state_file::write(&path, &link)).await;
        written
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| format!("cannot write token.state_file: {e}"))
    }
}

impl ChainStore for StateFileStore {
    fn save<'a>(&'a self, link: &'a Persisted) -> BoxFuture<'a, Result<(), SaveError>> {
        Box::pin(async move {
            match &self.path {
                Some(path) => Self::write(path.clone(), link).await.map_err(SaveError::Failed),
                None => Ok(()),
            }
        })
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Persisted>, String>> {
        Box::pin(async move {
            match self.path.clone() {
                Some(path) => tokio::task::spawn_blocking(move || state_file::read(&path))
                    .await
                    .map_err(|e| e.to_string())?,
                None => Ok(None),
            }
        })
    }

    fn key(&self) -> &'static str {
        "token.state_file"
    }
}
