//! `check-config`: the checks `run` makes at start beyond parsing, and the effective configuration it prints.

use crate::{
    config::{Config, ConfigError},
    proxy::client,
    token,
};

/// Checks `check-config` does beyond parsing: the TLS material loads, and `token.state_file` can be a file in a
/// directory (a missing directory is fine: `run` creates it).
pub fn check(cfg: &Config) -> Result<(), ConfigError> {
    client::tls_config(&cfg.upstream)?;
    state_file_place(cfg, token::state_file::check_place)
}

/// What `check-config` prints: the effective configuration, and what the token in `token.env` (if any) will be,
/// by its fingerprint only.
pub fn render_effective(cfg: &Config) -> String {
    let notes: Vec<String> = cfg
        .token
        .env
        .iter()
        .map(|var| {
            let env = token::source::EnvToken::parse(var);
            format!("token.env {}: {}", env.name, env.describe(std::time::SystemTime::now()))
        })
        .collect();
    crate::config::render_effective(cfg, &notes)
}

/// Apply `rule` to `token.state_file`, if set; its refusal is a configuration error naming the key.
pub(super) fn state_file_place(
    cfg: &Config,
    rule: fn(&std::path::Path) -> Result<(), String>,
) -> Result<(), ConfigError> {
    match &cfg.token.state_file {
        Some(path) => rule(path).map_err(|reason| ConfigError::invalid("token.state_file", reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{load, ConfigFile};

    const WITH_ENV_TOKEN: &str = r#"
[upstream]
base_url = "https://api.issettled.example/v1/"
member_id = "bankName"
[token]
env = "MY_TOKEN"
"#;

    fn rendered(value: &str) -> String {
        let env: HashMap<String, String> = [("MY_TOKEN".to_owned(), value.to_owned())].into();
        render_effective(&load(ConfigFile::Toml(WITH_ENV_TOKEN), &env).unwrap())
    }

    #[test]
    fn check_config_shows_the_env_token_by_its_fingerprint_only() {
        let out = rendered("super-secret-token-value");
        assert!(!out.contains("super-secret-token-value"), "{out}");
        assert!(out.contains("# token.env MY_TOKEN: set, sha256:"), "{out}");
    }

    #[test]
    fn check_config_says_why_the_env_token_will_be_refused() {
        let out = rendered("has spaces in it");
        assert!(
            out.contains("# token.env MY_TOKEN: refused: the token contains characters"),
            "{out}"
        );
        assert!(!out.contains("has spaces"), "{out}");
        // A JWT past its exp (1 s after the epoch): parsed, but check-config says it will be refused.
        let expired = "eyJhbGciOiJub25lIn0.eyJleHAiOjF9.";
        let out = rendered(expired);
        assert!(
            out.contains("refused: the token is a JWT whose exp has passed"),
            "{out}"
        );
        assert!(!out.contains(expired), "{out}");
    }
}
