//! PLACEHOLDER until the lease branch lands.
