//! PLACEHOLDER by the lead so that main compiles: the lease branch's file replaces this one whole (take theirs in a merge). Interface src/cluster.rs uses: Elector::new(api, LeaseSettings, on_api_error) -> (Elector, Leadership), Elector::run(stop); Leadership::{view, is_leader}; LeaderView {role, leader, transitions, api_reachable, lost_for_api_only}; Role::as_str; ApiSettings::from_config(&KubernetesConfig); kube::client(&ApiSettings) -> Result<kube::Client, ClusterError: Display>.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::{api::PostParams, Api};
use tokio::{sync::watch, time::Instant};

#[derive(Debug, Clone)]
pub(crate) struct LeaseSettings {
    pub(crate) name: String,
    pub(crate) identity: String,
    pub(crate) lease_duration: Duration,
    pub(crate) renew_deadline: Duration,
    pub(crate) retry_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    Follower,
    Candidate,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaderView {
    pub(crate) role: Role,
    pub(crate) leader: Option<String>,
    pub(crate) transitions: i32,
    pub(crate) api_reachable: bool,
    pub(crate) lost_for_api_only: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Leadership {
    rx: watch::Receiver<LeaderView>,
}

impl Leadership {
    pub(crate) fn view(&self) -> LeaderView {
        self.rx.borrow().clone()
    }
    pub(crate) fn is_leader(&self) -> bool {
        self.rx.borrow().role == Role::Leader
    }
}

pub(crate) struct Elector {
    api: Api<Lease>,
    s: LeaseSettings,
    tx: watch::Sender<LeaderView>,
    on_error: Arc<dyn Fn(&'static str) + Send + Sync>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector").finish_non_exhaustive()
    }
}

impl Elector {
    pub(crate) fn new(
        api: Api<Lease>,
        s: LeaseSettings,
        on_error: Arc<dyn Fn(&'static str) + Send + Sync>,
    ) -> (Elector, Leadership) {
        let (tx, rx) = watch::channel(LeaderView {
            role: Role::Candidate,
            leader: None,
            transitions: 0,
            api_reachable: true,
            lost_for_api_only: false,
        });
        (Elector { api, s, tx, on_error }, Leadership { rx })
    }

    pub(crate) async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut observed: Option<(String, Instant)> = None; // (rv-less record key, when seen to change)
        let mut renewed = Instant::now();
        loop {
            let now = Instant::now();
            let leading = self.tx.borrow().role == Role::Leader;
            if leading && now.duration_since(renewed) > self.s.renew_deadline {
                self.tx.send_modify(|v| {
                    v.role = Role::Candidate;
                    v.lost_for_api_only = !v.api_reachable;
                });
            }
            match self.api.get(&self.s.name).await {
                Ok(mut lease) => {
                    let spec = lease.spec.clone().unwrap_or_default();
                    let holder = spec.holder_identity.clone().unwrap_or_default();
                    let key = format!("{holder}/{:?}", spec.renew_time);
                    if observed.as_ref().is_none_or(|(k, _)| *k != key) {
                        observed = Some((key, now));
                    }
                    let since = now.duration_since(observed.as_ref().unwrap().1);
                    let dur = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
                    let mine = holder == self.s.identity;
                    let free = holder.is_empty() || since > dur;
                    if mine || free {
                        let mut spec2 = spec.clone();
                        let t = MicroTime(k8s_openapi::jiff::Timestamp::now());
                        if !mine {
                            spec2.acquire_time = Some(t.clone());
                            spec2.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                        }
                        spec2.holder_identity = Some(self.s.identity.clone());
                        spec2.renew_time = Some(t);
                        spec2.lease_duration_seconds = Some(self.s.lease_duration.as_secs().max(1) as i32);
                        lease.spec = Some(spec2.clone());
                        let sent = Instant::now();
                        match self.api.replace(&self.s.name, &PostParams::default(), &lease).await {
                            Ok(_) => {
                                renewed = sent;
                                self.tx.send_replace(LeaderView {
                                    role: Role::Leader,
                                    leader: Some(self.s.identity.clone()),
                                    transitions: spec2.lease_transitions.unwrap_or(0),
                                    api_reachable: true,
                                    lost_for_api_only: false,
                                });
                            }
                            Err(_) => (self.on_error)("lease_update"),
                        }
                    } else {
                        self.tx.send_replace(LeaderView {
                            role: Role::Follower,
                            leader: Some(holder),
                            transitions: spec.lease_transitions.unwrap_or(0),
                            api_reachable: true,
                            lost_for_api_only: false,
                        });
                    }
                }
                Err(_) => {
                    (self.on_error)("lease_get");
                    self.tx.send_modify(|v| v.api_reachable = false);
                }
            }
            let jitter = self.s.retry_period.mul_f64(rand::random::<f64>() * 0.5);
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(self.s.retry_period + jitter) => {}
            }
        }
        if self.tx.borrow().role == Role::Leader {
            if let Ok(mut lease) = self.api.get(&self.s.name).await {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.lease_duration_seconds = Some(1);
                }
                if self
                    .api
                    .replace(&self.s.name, &PostParams::default(), &lease)
                    .await
                    .is_ok()
                {
                    tracing::info!(event = "lease_released", "released the Lease");
                }
            }
            self.tx.send_modify(|v| v.role = Role::Candidate);
        }
    }
}
