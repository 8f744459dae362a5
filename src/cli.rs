//! The command line: `run`, `demo`, `check-config`, `wait`, `--version` (and `--config FILE` alone means `run`).

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

/// Credential sidecar for the IsSettled API: injects and refreshes the OAuth token, normalizes errors.
#[derive(Debug, Parser)]
#[command(name = "issettled-proxy", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file (TOML, or YAML by extension); same as `run --config FILE`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Run {
        /// Configuration file (TOML, or YAML by extension).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run a simulated IsSettled and the sidecar in front of it on the default ports, and print curl lines.
    #[cfg(feature = "demo")]
    Demo,
    /// Validate a configuration and print it, secrets redacted. Exit 0 if valid, 2 if not.
    CheckConfig {
        /// Configuration file (TOML, or YAML by extension).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Exit 0 as soon as the sidecar is ready, 1 at the time-out.
    Wait {
        /// The sidecar's admin address (an http:// URL).
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8081", value_parser = crate::wait::admin_url)]
        admin: reqwest::Url,
        /// How long to wait.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}
