//! The chain's Secret (`cluster.state_secret`, key `state`) as the durable store and the fence: every write is an
//! `update` carrying the resourceVersion last read, so of two writers only the first lands and the other re-reads
//! and adopts; a higher generation is never overwritten. Also the watches (list, then watch with a field selector
//! on the one name, resumed from the last resourceVersion, relisted after 410 Gone) that bring every replica each
//! new link, and the administrator's Secret (key `token`), which the proxy only reads.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use futures_util::{future::BoxFuture, StreamExt};
use k8s_openapi::{api::core::v1::Secret, ByteString};
use kube::{
    api::{ListParams, PostParams, WatchEvent, WatchParams},
    Api,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    clock::rfc3339,
    metrics::Metrics,
    token::{
        state_file::Persisted,
        store::{ChainEvent, ChainStore, SaveError, StateFileStore},
        Token,
    },
};

/// The longest pause between two attempts to list or watch: a replica learns of the API's return this soon.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The key of the chain in the state Secret, and of the administrator's token in its Secret.
pub(crate) const STATE_KEY: &str = "state";
pub(crate) const TOKEN_KEY: &str = "token";

/// The `state` JSON, as the contract fixes it.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    format: u32,
    token: String,
    #[serde(default)]
    origin: Option<String>,
    generation: u64,
    refreshed_at: String,
    revoke_deadline: String,
    #[serde(default)]
    holder: String,
}

/// The state Secret, read and written through the API.
pub(crate) struct SecretStore {
    api: Api<Secret>,
    name: String,
    holder: String,
    revoke_after: Duration,
    /// A local copy (`token.state_file`), written first: the only valid token must survive an API outage.
    state_file: Option<PathBuf>,
    /// The object as last read (for its resourceVersion), shared with the watch. Never held across an await.
    last: Arc<Mutex<Option<Secret>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

// === impl SecretStore ===

impl SecretStore {
    pub(crate) fn new(
        api: Api<Secret>,
        name: String,
        holder: String,
        revoke_after: Duration,
        state_file: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            api,
            name,
            holder,
            revoke_after,
            state_file,
            last: Arc::default(),
            metrics,
        }
    }

    /// The shared "last read" slot, for the watch to keep current.
    pub(crate) fn last(&self) -> Arc<Mutex<Option<Secret>>> {
        self.last.clone()
    }

    async fn read(&self) -> Result<Secret, String> {
        match self.api.get(&self.name).await {
            Ok(secret) => {
                remember(&self.last, &secret);
                Ok(secret)
            }
            Err(e) => {
                self.metrics.cluster_api_error("secret_get");
                Err(api_error(&e))
            }
        }
    }

    fn encode(&self, link: &Persisted) -> Vec<u8> {
        let state = State {
            format: 1,
            token: link.token.expose().to_owned(),
            origin: link.origin.clone(),
            generation: link.generation,
            refreshed_at: rfc3339(link.confirmed_at),
            revoke_deadline: rfc3339(link.confirmed_at + self.revoke_after),
            holder: self.holder.clone(),
        };
        serde_json::to_vec(&state).unwrap_or_default()
    }
}

impl ChainStore for SecretStore {
    fn save<'a>(&'a self, link: &'a Persisted) -> BoxFuture<'a, Result<(), SaveError>> {
        Box::pin(async move {
            if let Some(path) = &self.state_file {
                if let Err(e) = StateFileStore::write(path.clone(), link).await {
                    tracing::warn!(event = "state_file_error", error = %e, "cannot keep the local copy of the chain");
                }
            }
            let cached = self.last.lock().ok().and_then(|l| l.clone());
            let mut secret = match cached {
                Some(s) => s,
                None => self.read().await.map_err(SaveError::Failed)?,
            };
            // The fence's second half: a link already there at this generation or higher is never overwritten.
            if let Some(there) = decode(&secret).filter(|s| s.generation >= link.generation) {
                return Err(SaveError::Conflict(Some(there)));
            }
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            data.insert(STATE_KEY.into(), ByteString(self.encode(link)));
            match self.api.replace(&self.name, &PostParams::default(), &secret).await {
                Ok(written) => {
                    remember(&self.last, &written);
                    Ok(())
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::info!(event = "state_conflict", secret = %self.name, "the state Secret changed since it was read: re-reading");
                    let reread = self.read().await.ok().map(|s| decode(&s));
                    Err(after_conflict(reread, link.generation, &self.name))
                }
                Err(e) => {
                    self.metrics.cluster_api_error("secret_update");
                    Err(SaveError::Failed(format!(
                        "cannot write the state Secret {}: {}",
                        self.name,
                        api_error(&e)
                    )))
                }
            }
        })
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Persisted>, String>> {
        Box::pin(async move { Ok(decode(&self.read().await?)) })
    }

    fn key(&self) -> &'static str {
        "cluster.state_secret"
    }
}

/// Keep `secret` as the last read, unless a newer one is already there.
/// What a 409 on writing the link of `generation` means, given the state Secret re-read after it (`None`: the
/// re-read failed; `Some(None)`: no readable link). Another writer's link at this generation or higher is a
/// conflict (adopt it); a Secret that changed otherwise (its labels, a lower link) is not: the re-read refreshed the
/// resourceVersion, and the retry writes over it.
fn after_conflict(reread: Option<Option<Persisted>>, generation: u64, name: &str) -> SaveError {
    match reread {
        Some(Some(there)) if there.generation >= generation => SaveError::Conflict(Some(there)),
        Some(_) => SaveError::Failed(format!(
            "the state Secret {name} changed under the write without a newer link; retrying"
        )),
        None => SaveError::Conflict(None),
    }
}

fn remember(last: &Mutex<Option<Secret>>, secret: &Secret) {
    let version = |s: &Secret| {
        s.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Ok(mut last) = last.lock() {
        let older = match (last.as_ref().and_then(version), version(secret)) {
            (Some(have), Some(new)) => new < have,
            _ => false,
        };
        if !older {
            *last = Some(secret.clone());
        }
    }
}

/// The link in a state Secret (`None`: no `state` key, or not the contract's JSON).
fn decode(secret: &Secret) -> Option<Persisted> {
    let bytes = &secret.data.as_ref()?.get(STATE_KEY)?.0;
    let state: State = serde_json::from_slice(bytes).ok()?;
    let token = Token::parse(&state.token).ok()?;
    let confirmed_at = humantime::parse_rfc3339_weak(&state.refreshed_at).unwrap_or(SystemTime::UNIX_EPOCH);
    Some(Persisted {
        token,
        confirmed_at,
        session_started_at: None,
        origin: state.origin,
        generation: state.generation,
    })
}

/// The token in the administrator's Secret, if any.
fn admin_token(secret: &Secret) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(TOKEN_KEY)?.0;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// An API error for messages and logs: the status code and reason, never a body that could quote a secret.
fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("the API answered {} {}", status.code, status.reason),
        kube::Error::Service(_) | kube::Error::HyperError(_) => "the API cannot be reached".to_owned(),
        _ => "the API call failed".to_owned(),
    }
}

/// Report every version of the state Secret to the refresher, and keep the store's last read current.
pub(crate) async fn watch_state(
    api: Api<Secret>,
    name: String,
    last: Arc<Mutex<Option<Secret>>>,
    tx: mpsc::Sender<ChainEvent>,
    metrics: Arc<Metrics>,
) {
    watch_named(
        api,
        name,
        metrics,
        move |secret| {
            if let Some(s) = secret {
                remember(&last, s);
            }
            Some(ChainEvent::Stored(secret.and_then(decode)))
        },
        tx,
    )
    .await;
}

/// Report each new administrator token (the Secret's `token` key) to the refresher.
pub(crate) async fn watch_admin(api: Api<Secret>, name: String, tx: mpsc::Sender<ChainEvent>, metrics: Arc<Metrics>) {
    let mut seen: Option<String> = None;
    watch_named(
        api,
        name,
        metrics,
        move |secret| {
            let text = secret.and_then(admin_token)?;
            let trimmed = text.trim().to_owned();
            if seen.as_deref() == Some(trimmed.as_str()) {
                return None;
            }
            seen = Some(trimmed);
            Some(ChainEvent::Offered(Token::parse(&text)))
        },
        tx,
    )
    .await;
}

/// List, then watch, one named Secret for ever: resume from the last resourceVersion, relist after 410 Gone or
/// a failure (with a growing pause), and hand every version seen to `on`.
async fn watch_named(
    api: Api<Secret>,
    name: String,
    metrics: Arc<Metrics>,
    mut on: impl FnMut(Option<&Secret>) -> Option<ChainEvent> + Send,
    tx: mpsc::Sender<ChainEvent>,
) {
    let selector = format!("metadata.name={name}");
    let mut pause = Duration::from_millis(200);
    loop {
        let listed = match api.list(&ListParams::default().fields(&selector)).await {
            Ok(list) => list,
            Err(e) => {
                metrics.cluster_api_error("watch");
                tracing::warn!(event = "cluster_api_error", op = "list", secret = %name, error = %api_error(&e), "cannot list the Secret; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                continue;
            }
        };
        let mut version = listed.metadata.resource_version.clone().unwrap_or_default();
        let event = on(listed.items.first());
        if let Some(event) = event {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        // Watch from the list's version until the stream ends (resume) or the version is too old (relist).
        'watch: loop {
            let params = WatchParams::default().fields(&selector).timeout(290);
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(e) => {
                    metrics.cluster_api_error("watch");
                    tracing::warn!(event = "cluster_api_error", op = "watch", secret = %name, error = %api_error(&e), "cannot watch the Secret; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    break 'watch;
                }
            };
            pause = Duration::from_millis(200);
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(WatchEvent::Added(s) | WatchEvent::Modified(s)) => {
                        version = s.metadata.resource_version.clone().unwrap_or(version);
                        on(Some(&s))
                    }
                    Ok(WatchEvent::Deleted(s)) => {
                        version = s.metadata.resource_version.clone().unwrap_or(version);
                        on(None)
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        version = b.metadata.resource_version;
                        None
                    }
                    Ok(WatchEvent::Error(status)) => {
                        if status.code != 410 {
                            metrics.cluster_api_error("watch");
                        }
                        tracing::debug!(event = "watch_relist", secret = %name, code = status.code, "the watch ended with an error; relisting");
                        break 'watch;
                    }
                    Err(e) => {
                        metrics.cluster_api_error("watch");
                        tracing::warn!(event = "cluster_api_error", op = "watch", secret = %name, error = %api_error(&e), "the watch broke; relisting");
                        tokio::time::sleep(pause).await;
                        break 'watch;
                    }
                };
                if let Some(event) = event {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::token::Token;

    fn link(generation: u64) -> Persisted {
        Persisted {
            token: Token::parse("t").expect("a token"),
            confirmed_at: SystemTime::now(),
            session_started_at: None,
            origin: None,
            generation,
        }
    }

    #[test]
    fn a_409_is_a_conflict_only_when_the_secret_holds_a_link_at_least_as_new() {
        let name = "issettled-token-state";
        assert!(matches!(
            after_conflict(Some(Some(link(5))), 5, name),
            SaveError::Conflict(Some(l)) if l.generation == 5
        ));
        assert!(matches!(
            after_conflict(Some(Some(link(9))), 5, name),
            SaveError::Conflict(Some(_))
        ));
        // Labels or another key changed, or a lower link: written again, not given up.
        assert!(matches!(
            after_conflict(Some(Some(link(4))), 5, name),
            SaveError::Failed(_)
        ));
        assert!(matches!(after_conflict(Some(None), 5, name), SaveError::Failed(_)));
        // The re-read failed: what is there is unknown.
        assert!(matches!(after_conflict(None, 5, name), SaveError::Conflict(None)));
    }
}
