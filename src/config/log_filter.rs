//! The log filter as `log.level` and `RUST_LOG` give it: a level, or `target=level` directives.
//!
//! tracing-subscriber's `EnvFilter` reads a bare word that is not a level (`warning`, `verbose`) as a target
//! name: the filter then enables that one (non-existent) target and the proxy logs nothing at all. Here such a
//! word is a configuration error instead, naming the key or variable it came from.

use super::ConfigError;

/// The level names a filter may use, alone or after `target=`.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn is_level(word: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word))
}

/// Check a filter: comma-separated directives, each a level (`warn`) or `target=level` (also
/// `target[span{field}]=level`, as `EnvFilter` reads it). Returns it trimmed. `key` names where it came from
/// (`log.level`, `RUST_LOG`).
pub(super) fn filter(key: &str, text: &str) -> Result<String, ConfigError> {
    const EXPECTED: &str = "expected a level (off, error, warn, info, debug, trace) or target=level directives \
                            such as \"warn,issettled_proxy=debug\"";
    let text = text.trim();
    if text.is_empty() {
        return Err(ConfigError::invalid(key, format!("is empty: {EXPECTED}")));
    }
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{directive}` names no target: {EXPECTED}"),
                ))
            }
            None => directive,
        };
        if !is_level(level.trim()) {
            return Err(ConfigError::invalid(
                key,
                format!("`{directive}`: `{}` is not a level; {EXPECTED}", level.trim()),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text)
        .map_err(|e| ConfigError::invalid(key, format!("`{text}` does not parse ({e}); {EXPECTED}")))?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_pass() {
        for ok in [
            "info",
            " WARN ",
            "off",
            "warn,issettled_proxy=debug",
            "issettled_proxy::token=trace",
            "info,hyper=off,",
            "warn,issettled_proxy[request{method=GET}]=debug",
        ] {
            assert_eq!(filter("log.level", ok).unwrap(), ok.trim(), "{ok}");
        }
    }

    #[test]
    fn a_word_that_is_not_a_level_is_refused_naming_the_key() {
        for bad in [
            "warning",
            "verbose",
            "issettled_proxy",
            "info,warning",
            "hyper=loud",
            "=debug",
            "",
            "warn,hyper[=debug",
        ] {
            let e = filter("RUST_LOG", bad).unwrap_err().to_string();
            assert!(e.starts_with("RUST_LOG: "), "{bad}: {e}");
        }
        let e = filter("log.level", "warning").unwrap_err().to_string();
        assert!(e.contains("`warning` is not a level"), "{e}");
    }
}
