//! The end-to-end tests: one binary, one shared harness ([`support`]), one file per subject.
//!
//! Every test drives the proxy through real sockets on `127.0.0.1:0` (in process, or the built binary as a child
//! process where the command line, signals or a kill are the point) against in-process fakes of the upstream.

mod support;

mod admin;
mod bodies;
mod cli;
mod cluster;
mod cluster_lease;
mod connections;
mod egress;
mod egress_errors;
mod errors;
mod forwarding;
mod framing;
mod headers;
mod interop;
mod kube_api_fake;
mod limits;
mod origins;
mod paths;
mod shutdown;
mod token;
mod upstream;
mod upstream_faults;
