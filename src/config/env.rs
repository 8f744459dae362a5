//! Which environment variables override the file (`ISSETTLED_PROXY__SECTION__KEY`), checked before config-rs
//! reads them: a variable naming a section alone (`ISSETTLED_PROXY__TOKEN`) would replace the whole section, and
//! the resulting error would print its value, which may well be a token. A variable that looks meant as an
//! override but names no key (`ISSETTLED_PROXY_UPSTREAM__BASE_URL` with one underscore, a misspelt key) is an
//! error naming the variable, never silently ignored. Variables that merely share the prefix
//! (`ISSETTLED_PROXY_BIN`: no `__`) are left alone.

use std::collections::HashMap;

use super::{ConfigError, FileConfig, ENV_PREFIX};

/// The override variables in `env`. Each must name exactly a section and a key of the file; the error for one
/// that does not names the variable, never its value.
pub(super) fn overrides(env: &HashMap<String, String>) -> Result<HashMap<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut names: Vec<&String> = env
        .keys()
        .filter(|k| k.strip_prefix(ENV_PREFIX).is_some_and(|rest| rest.contains("__")))
        .collect();
    // Sorted, so the same environment always reports the same variable.
    names.sort();
    let known = Known::from_defaults();
    for name in &names {
        let refuse = |reason: String| ConfigError::Invalid {
            key: (*name).clone(),
            reason: format!("{reason} (value not shown)"),
        };
        let Some(rest) = name.strip_prefix(&prefix) else {
            let meant = format!("{prefix}{}", name[ENV_PREFIX.len()..].trim_start_matches('_'));
            return Err(refuse(format!(
                "looks like an override, but overrides start with {prefix} (two underscores): did you mean {meant}?"
            )));
        };
        let levels: Vec<&str> = rest.split("__").collect();
        let [section, key] = levels[..] else {
            return Err(refuse(format!(
                "an override must name a section and a key, as {prefix}SECTION__KEY"
            )));
        };
        if section.is_empty() || key.is_empty() {
            return Err(refuse(format!(
                "an override must name a section and a key, as {prefix}SECTION__KEY"
            )));
        }
        known.check(section, key).map_err(refuse)?;
    }
    Ok(names.into_iter().map(|k| (k.clone(), env[k].clone())).collect())
}

/// The file's sections and keys, read from the serialized defaults of [`FileConfig`]: a key added there is
/// known here without a list to keep in step (every field serializes, defaults included).
struct Known(serde_json::Map<String, serde_json::Value>);

// === impl Known ===

impl Known {
    fn from_defaults() -> Self {
        match serde_json::to_value(FileConfig::default()) {
            Ok(serde_json::Value::Object(sections)) => Self(sections),
            _ => Self(serde_json::Map::new()),
        }
    }

    /// Whether `section.key` (any case, as config-rs lower-cases them) is a key of the file.
    fn check(&self, section: &str, key: &str) -> Result<(), String> {
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let Some(keys) = self.0.get(&section) else {
            let sections: Vec<&str> = self.0.keys().map(String::as_str).collect();
            return Err(format!(
                "names no configuration section: there is no [{section}] (sections: {})",
                sections.join(", ")
            ));
        };
        match keys {
            serde_json::Value::Object(keys) if !keys.contains_key(&key) => {
                let names: Vec<&str> = keys.keys().map(String::as_str).collect();
                Err(format!(
                    "names no configuration key: there is no {section}.{key} (keys of [{section}]: {})",
                    names.join(", ")
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(names: &[&str]) -> HashMap<String, String> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), "secret-value".to_owned()))
            .collect()
    }

    fn refusal(names: &[&str]) -> String {
        overrides(&env(names)).unwrap_err().to_string()
    }

    #[test]
    fn a_variable_meant_as_an_override_that_names_no_key_is_refused_by_name() {
        let e = refusal(&["ISSETTLED_PROXY_UPSTREAM__BASE_URL"]);
        assert!(
            e.starts_with("ISSETTLED_PROXY_UPSTREAM__BASE_URL: ")
                && e.contains("did you mean ISSETTLED_PROXY__UPSTREAM__BASE_URL?"),
            "{e}"
        );
        let e = refusal(&["ISSETTLED_PROXY__TOKEN__FIEL"]);
        assert!(
            e.starts_with("ISSETTLED_PROXY__TOKEN__FIEL: ") && e.contains("no token.fiel") && e.contains("file"),
            "{e}"
        );
        let e = refusal(&["ISSETTLED_PROXY__TOKENS__FILE"]);
        assert!(e.contains("no [tokens]"), "{e}");
        for e in [
            refusal(&["ISSETTLED_PROXY__TOKEN"]),
            refusal(&["ISSETTLED_PROXY__TOKEN__FILE__X"]),
        ] {
            assert!(e.contains("section and a key"), "{e}");
        }
        for name in ["ISSETTLED_PROXY_UPSTREAM__BASE_URL", "ISSETTLED_PROXY__TOKEN__FIEL"] {
            assert!(!refusal(&[name]).contains("secret-value"));
        }
    }

    #[test]
    fn every_key_of_the_file_is_known_and_other_prefixed_variables_are_left_alone() {
        let known = Known::from_defaults();
        let defaults = serde_json::to_value(FileConfig::default()).unwrap();
        let mut count = 0;
        for (section, keys) in defaults.as_object().unwrap() {
            for key in keys.as_object().unwrap().keys() {
                let name = format!("{ENV_PREFIX}__{}__{}", section.to_uppercase(), key.to_uppercase());
                assert!(
                    known.check(section, key).is_ok() && overrides(&env(&[&name])).is_ok(),
                    "{name}"
                );
                count += 1;
            }
        }
        assert!(count > 30, "{count} keys");
        let picked = overrides(&env(&["ISSETTLED_PROXY_BIN", "ISSETTLED_PROXY_HOME", "PATH"])).unwrap();
        assert!(picked.is_empty());
    }
}
