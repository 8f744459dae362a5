//! Cluster mode: many replicas share one token chain through the Kubernetes API. One replica holds the Lease
//! and refreshes ([`election`]); the chain lives in the state Secret, which every replica watches
//! ([`secret_store`]); the administrator's Secret is only read. [`attach`] wires them to the refresher.
//!
//! The API is reached as kubectl finds it ([`kube`]), never through the proxy settings meant for IsSettled.

mod election;
mod kube;
mod lease;
mod secret_store;
#[cfg(test)]
mod test_api;

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use tokio::{sync::mpsc, task::JoinHandle};

pub(crate) use self::kube::ClusterError;
use self::{
    election::{Elector, Leadership, LeaseSettings},
    kube::ApiSettings,
    secret_store::SecretStore,
};
use crate::{
    admin::{ClusterReport, ClusterStatus},
    config::KubernetesConfig,
    metrics::Metrics,
    token::{refresh::RefreshClient, store::Authority, Refresher, TokenCell},
};

/// How many store events may wait for the refresher.
const EVENTS: usize = 64;

/// Cluster mode, running beside the refresher: the elector and the two watches.
#[derive(Debug)]
pub(crate) struct Cluster {
    report: Arc<LeaseAuthority>,
    elector: Option<Elector>,
    watches: Vec<JoinHandle<()>>,
}

/// Connect to the API and give `refresher` the state Secret as its store, the Lease as its authority, and the
/// two Secrets' watches as its events. Nothing is contacted until [`Cluster::spawn`].
pub(crate) async fn attach<C: RefreshClient>(
    cfg: &KubernetesConfig,
    state_file: Option<std::path::PathBuf>,
    revoke_after: Duration,
    refresher: Refresher<C>,
    metrics: Arc<Metrics>,
) -> Result<(Refresher<C>, Cluster), ClusterError> {
    let settings = ApiSettings::from_config(cfg);
    let client = kube::client(&settings).await?;
    let namespace = client.default_namespace().to_owned();
    let secrets: ::kube::Api<Secret> = ::kube::Api::namespaced(client.clone(), &namespace);
    let leases: ::kube::Api<Lease> = ::kube::Api::namespaced(client, &namespace);
    let store = SecretStore::new(
        secrets.clone(),
        cfg.state_secret.clone(),
        cfg.identity.clone(),
        revoke_after,
        state_file,
        metrics.clone(),
    );
    let on_api_error = {
        let metrics = metrics.clone();
        Arc::new(move |op: &'static str| metrics.cluster_api_error(op)) as Arc<dyn Fn(&'static str) + Send + Sync>
    };
    let (elector, leadership) = Elector::new(
        leases,
        LeaseSettings {
            name: cfg.lease.clone(),
            identity: cfg.identity.clone(),
            lease_duration: cfg.lease_duration,
            renew_deadline: cfg.renew_deadline,
            retry_period: cfg.retry_period,
        },
        on_api_error,
    );
    let authority = Arc::new(LeaseAuthority {
        leadership,
        identity: cfg.identity.clone(),
        lease_duration: cfg.lease_duration,
        retry_period: cfg.retry_period,
    });
    let (tx, rx) = mpsc::channel(EVENTS);
    let watches = vec![
        tokio::spawn(secret_store::watch_state(
            secrets.clone(),
            cfg.state_secret.clone(),
            store.last(),
            tx.clone(),
            metrics.clone(),
        )),
        tokio::spawn(secret_store::watch_admin(secrets, cfg.secret.clone(), tx, metrics)),
    ];
    tracing::info!(
        event = "cluster_mode",
        namespace = %namespace,
        identity = %cfg.identity,
        lease = %cfg.lease,
        secret = %cfg.secret,
        state_secret = %cfg.state_secret,
        "cluster mode: the chain is kept in the state Secret; only the Lease holder refreshes"
    );
    let refresher = refresher.with_chain(Box::new(store), Box::new(authority.clone()), rx);
    Ok((
        refresher,
        Cluster {
            report: authority,
            elector: Some(elector),
            watches,
        },
    ))
}

// === impl Cluster ===

impl Cluster {
    /// What `/status` and `/metrics` read.
    pub(crate) fn report(&self) -> Arc<dyn ClusterReport> {
        self.report.clone()
    }

    /// Start competing for the Lease (once a link `cell`'s refresher kept during an outage is written). When
    /// `release` completes (SIGTERM, once a refresh in flight has been written), the Lease is released if held,
    /// so another replica leads within 2 × `retry_period`.
    pub(crate) fn spawn(
        &mut self,
        cell: Arc<TokenCell>,
        release: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let elector = self.elector.take();
        tokio::spawn(async move {
            if let Some(elector) = elector {
                elector.with_hold(move || cell.status().unsaved).run(release).await;
            }
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for watch in &self.watches {
            watch.abort();
        }
    }
}

/// Wait until no refresh is in flight and no link waits for the store (bounded by `within`): the leader's last
/// refresh is written before the Lease is released.
pub(crate) async fn refresh_settled(cell: Arc<TokenCell>, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        while cell.status().refreshing || cell.status().unsaved {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The Lease as the refresher's [`Authority`] and the admin port's [`ClusterReport`].
#[derive(Debug)]
struct LeaseAuthority {
    leadership: Leadership,
    identity: String,
    lease_duration: Duration,
    retry_period: Duration,
}

impl Authority for Arc<LeaseAuthority> {
    fn may_refresh(&self) -> bool {
        self.leadership.is_leader()
    }

    fn shared(&self) -> bool {
        true
    }

    /// Cut off from the API (not deposed by another holder), and the deadline within two retry periods.
    fn last_resort(&self, remaining: Duration) -> bool {
        let view = self.leadership.view();
        view.lost_for_api_only && !view.api_reachable && remaining < 2 * self.retry_period
    }

    /// A Lease's length: a deposed holder may still be writing for that long.
    fn handover_grace(&self) -> Duration {
        self.lease_duration
    }
}

impl ClusterReport for LeaseAuthority {
    fn report(&self) -> ClusterStatus {
        let view = self.leadership.view();
        ClusterStatus {
            role: view.role.as_str(),
            identity: self.identity.clone(),
            leader: view.leader.clone(),
            lease_transitions: i64::from(view.transitions),
        }
    }
}
