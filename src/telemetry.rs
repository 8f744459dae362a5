//! Logging: tracing-subscriber, JSON lines by default or `pretty` for people; `RUST_LOG` overrides `log.level`.
//! Lines are written by a background thread (tracing-appender's non-blocking writer), so a request never waits
//! on stdout; the writer applies back-pressure instead of dropping lines when it falls far behind.
//! Nothing logs the token: it is a type whose `Debug`/`Display` print only its fingerprint.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Install the global subscriber (once; later calls are ignored). Logs go to stdout. Keep the returned guard
/// alive until exit: dropping it flushes the lines still queued.
pub fn init(format: LogFormat, level: &str) -> WorkerGuard {
    use std::io::IsTerminal as _;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("issettled-proxy-log")
        .finish(std::io::stdout());
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    guard
}
