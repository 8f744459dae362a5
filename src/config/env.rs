//! Which environment variables override the file (`ISSETTLED_PROXY__SECTION__KEY`), checked before config-rs
//! reads them: a variable naming a section alone (`ISSETTLED_PROXY__TOKEN`) would replace the whole section, and
//! the resulting error would print its value, which may well be a token.

use std::collections::HashMap;

use super::{ConfigError, ENV_PREFIX};

/// The override variables in `env`. Each must name exactly a section and a key; the error for one that does not
/// names the variable, never its value.
pub(super) fn overrides(env: &HashMap<String, String>) -> Result<HashMap<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut names: Vec<&String> = env.keys().filter(|k| k.starts_with(&prefix)).collect();
    // Sorted, so the same environment always reports the same variable.
    names.sort();
    for name in &names {
        let levels: Vec<&str> = name[prefix.len()..].split("__").collect();
        if levels.len() != 2 || levels.iter().any(|l| l.is_empty()) {
            return Err(ConfigError::Invalid {
                key: (*name).clone(),
                reason: format!("an override must name a section and a key, as {prefix}SECTION__KEY (value not shown)"),
            });
        }
    }
    Ok(names.into_iter().map(|k| (k.clone(), env[k].clone())).collect())
}
