//! Logging: tracing-subscriber, JSON lines by default or `pretty` for people; the filter is `RUST_LOG` or
//! `log.level`, checked by the configuration.
//!
//! Lines are written by a background thread (tracing-appender's non-blocking writer), so nothing that logs ever
//! waits on stdout: when stdout stalls (a full pipe, a slow log shipper) and [`QUEUE_LINES`] lines are waiting,
//! further lines are dropped and counted ([`dropped_lines`], `issettled_proxy_log_lines_dropped_total`). A
//! sidecar that stops answering because its log reader is slow would take the app down with it.
//! Nothing logs the token: it is a type whose `Debug`/`Display` print only its fingerprint.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Lines that may wait for stdout before new ones are dropped: a burst of a few seconds at full request rate,
/// about 1 MiB of JSON lines (tracing-appender's default, 128,000, would hold some 40 MiB).
pub(crate) const QUEUE_LINES: usize = 4096;

/// The writer's count of dropped lines, once [`init`] has installed it.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Install the global subscriber (once; later calls are ignored) with `filter`, a checked `RUST_LOG` or
/// `log.level` (`LogConfig::filter`). Logs go to stdout. Keep the returned guard alive until exit: dropping it
/// flushes the lines still queued.
pub fn init(format: LogFormat, filter: &str) -> WorkerGuard {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("issettled-proxy-log")
        .finish(std::io::stdout());
    let dropped = writer.error_counter();
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    if installed.is_ok() {
        let _ = DROPPED.set(dropped);
    }
    guard
}

/// Log lines dropped so far because stdout did not keep up (0 before [`init`]).
pub(crate) fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
