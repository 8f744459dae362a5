//! The checks after loading the configuration that need the file system, and the effective configuration
//! `check-config` prints. What `run` refuses at start ([`startup`]), `check-config` refuses too ([`check`]): one set
//! of checks for both, so a configuration `check-config` passes is one `run` starts with; neither binds a socket
//! or contacts the network.

use std::{io::ErrorKind, path::Path, time::SystemTime};

use crate::{
    config::{Config, ConfigError},
    proxy::client,
    token::{self, source},
};

/// What `run` refuses at start (exit 2, the key named): TLS material that does not load, a `token.state_file` that
/// cannot be a file, a `listen.unix_socket` whose directory is missing or not writable. (A log level that is not
/// one is refused when the configuration is loaded.)
pub fn startup(cfg: &Config) -> Result<(), ConfigError> {
    client::tls_config(&cfg.upstream)?;
    state_file_place(cfg, token::state_file::check_place)?;
    if let Some(path) = &cfg.listen.unix_socket {
        unix_socket_place(path).map_err(|reason| ConfigError::invalid("listen.unix_socket", reason))?;
    }
    Ok(())
}

/// `check-config`: [`startup`], and the initial token: one in `token.file` or `token.env` that the proxy would
/// refuse (`Bearer …`, characters not allowed in a header, empty, a JWT past its `exp`) is an error here.
/// `run` refuses such a token too, but logs it and keeps going rather than exit: a chain in `token.state_file`
/// may still be good, and a corrected Secret is taken up without a restart.
pub fn check(cfg: &Config) -> Result<(), ConfigError> {
    startup(cfg)?;
    initial_token(cfg)
}

/// A token file or variable holding a token that can never be used. A token file that does not exist (yet) is
/// fine: a Secret may be mounted later. (In cluster mode neither is read.)
fn initial_token(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.cluster.is_some() {
        return Ok(());
    }
    let now = SystemTime::now();
    if let Some(path) = &cfg.token.file {
        // With a token file, token.env is not read.
        return source::read_file(path)
            .and_then(|read| match read {
                Some((token, _)) => source::check(&token, now)
                    .map(drop)
                    .map_err(|e| format!("{}: {e} ({})", path.display(), token.fingerprint())),
                None => Ok(()),
            })
            .map_err(|reason| ConfigError::invalid("token.file", format!("{reason}; the proxy would refuse it")));
    }
    let Some(var) = &cfg.token.env else {
        return Ok(());
    };
    let env = source::EnvToken::parse(var);
    let usable = match &env.value {
        Ok(token) => source::check(token, now).map(drop).map_err(|e| e.to_string()),
        Err(source::EnvTokenError::NotSet) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    usable.map_err(|e| {
        ConfigError::invalid(
            "token.env",
            format!(
                "the variable {}: {e} (value not shown); the proxy would refuse it",
                env.name
            ),
        )
    })
}

/// A Unix socket can be created at `path`: its directory exists and a file can be made in it (probed with a file
/// created and removed at once: permissions alone do not tell, under another user or a read-only mount).
fn unix_socket_place(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory; name a socket file in it", path.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!("the directory {} does not exist", dir.display()))
        }
        Err(e) => return Err(format!("cannot use the directory {}: {e}", dir.display())),
    }
    let probe = dir.join(format!(".issettled-proxy-probe-{:016x}", rand::random::<u64>()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("cannot create a socket in {}: {e}", dir.display())),
    }
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
    fn a_unix_socket_needs_an_existing_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unix_socket_place(&dir.path().join("proxy.sock")).is_ok());
        let missing = unix_socket_place(&dir.path().join("absent/proxy.sock")).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        assert!(unix_socket_place(dir.path()).unwrap_err().contains("is a directory"));
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        assert!(unix_socket_place(&file.join("proxy.sock"))
            .unwrap_err()
            .contains("not a directory"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the probe is removed"
        );
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
