//! PLACEHOLDER by the lead so that main compiles: the lease branch's file replaces this one whole (take theirs in a merge). Interface src/cluster.rs uses: Elector::new(api, LeaseSettings, on_api_error) -> (Elector, Leadership), Elector::run(stop); Leadership::{view, is_leader}; LeaderView {role, leader, transitions, api_reachable, lost_for_api_only}; Role::as_str; ApiSettings::from_config(&KubernetesConfig); kube::client(&ApiSettings) -> Result<kube::Client, ClusterError: Display>.

use std::time::Duration;

use crate::config::KubernetesConfig;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("{0}")]
    Client(String),
}

#[derive(Debug, Clone)]
pub(crate) struct ApiSettings {
    kubeconfig: Vec<std::path::PathBuf>,
    namespace: Option<String>,
    #[allow(dead_code)]
    call_timeout: Duration,
}

impl ApiSettings {
    pub(crate) fn from_config(cfg: &KubernetesConfig) -> Self {
        Self {
            kubeconfig: cfg.kubeconfig.clone(),
            namespace: cfg.namespace.clone(),
            call_timeout: cfg.renew_deadline / 2,
        }
    }
}

pub(crate) async fn client(s: &ApiSettings) -> Result<kube::Client, ClusterError> {
    let path = s
        .kubeconfig
        .first()
        .ok_or_else(|| ClusterError::Client("no KUBECONFIG".into()))?;
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| ClusterError::Client(e.to_string()))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Client(e.to_string()))?;
    if let Some(ns) = &s.namespace {
        cfg.default_namespace.clone_from(ns);
    }
    kube::Client::try_from(cfg).map_err(|e| ClusterError::Client(e.to_string()))
}
