//! `check-config` output: the effective configuration (file merged with the environment) as TOML. The initial
//! token is never in it; the caller adds what the token module says about it, by fingerprint only.

use super::Config;

/// Render the effective configuration, with `notes` as comment lines under the heading. No token is in
/// [`Config::raw`] (`token.env` is a variable's name), so none is printed.
pub fn render_effective(config: &Config, notes: &[String]) -> String {
    let body = toml::to_string_pretty(&config.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    let mut out =
        String::from("# effective configuration of issettled-proxy (file + ISSETTLED_PROXY__* environment)\n");
    for note in notes {
        out.push_str(&format!("# {note}\n"));
    }
    out.push('\n');
    out.push_str(&body);
    out
}
