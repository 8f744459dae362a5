//! issettled-proxy: a credential sidecar for the IsSettled payments API.
//!
//! Apps call the proxy port with no credentials; the proxy forwards to the one configured upstream with the
//! current OAuth Bearer token, which a background task keeps fresh, and answers every error in IsSettled's
//! nine-field schema.
//!
//! # Layout
//!
//! Data flows one way: [`config`] → state ([`token`] cell and refresher, upstream clients) → [`server`] →
//! [`proxy`] handler → upstream. Only [`app`] knows every part; it builds each component's own settings from the
//! configuration in one place. docs/ARCHITECTURE.md draws the module graph from the code.
//!
//! - [`config`]: load, merge the environment, validate into a typed `Config` (it imports no component).
//! - [`path`]: the request-path rules that both the configuration and the proxy apply.
//! - [`token`]: the token type, the lock-free cell, JWT claims, the schedule, refresh calls, the refresher,
//!   the token file watch and the state file.
//! - [`proxy`]: the proxy port's handler and its pure parts (policy, headers, target, request id, content
//!   codings), the request and response bodies, the clients.
//! - [`egress`]: the one decision whether calls to IsSettled go through the outbound proxy (pure), and the
//!   proxy's credentials.
//! - [`errors`]: `ProxyError` and `AdminError` and their one table of codes, the error schema, normalization, token scrubbing.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics`, `/refresh`, `/quitquitquit`.
//! - [`metrics`], [`shutdown`], [`telemetry`], [`clock`]: leaves.
//! - [`server`]: accept loop, connection limits and timers, graceful drain.
//! - `sim`: the simulated IsSettled used by `demo` and the tests, and `demo`, only with the `demo` feature (on by
//!   default); [`wait`], [`cli`]: commands.
//!
//! The public surface is what the binary (src/main.rs), tests/e2e and fuzz/ use; everything else is `pub(crate)`.

pub(crate) mod admin;
pub mod app;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod cluster;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub(crate) mod egress;
pub mod errors;
pub(crate) mod metrics;
pub mod path;
pub mod proxy;
pub(crate) mod server;
pub(crate) mod shutdown;
#[cfg(feature = "demo")]
pub mod sim;
pub mod telemetry;
pub mod token;
mod upstream_error;
pub mod wait;
