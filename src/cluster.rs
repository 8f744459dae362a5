//! Cluster mode: many replicas share one token chain through the Kubernetes API. The API client, client-go's
//! leader election on a Lease (a pure state machine and the loop that drives it).

mod election;
mod kube;
mod lease;
#[cfg(test)]
mod test_api;
