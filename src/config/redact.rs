//! `check-config` output: the effective configuration (file merged with the environment) as TOML, with the
//! initial token described by its fingerprint only, and the outbound-proxy decision with its reason (the proxy's
//! credentials never shown).

use super::Config;
use crate::egress::Route;

/// Render the effective configuration. The token itself is never printed.
pub fn render_effective(config: &Config) -> String {
    let body = toml::to_string_pretty(&config.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    let mut out =
        String::from("# effective configuration of issettled-proxy (file + ISSETTLED_PROXY__* environment)\n");
    if let Some(env) = &config.token.env {
        let what = match &env.value {
            Ok(token) => match crate::token::source::check(token, std::time::SystemTime::now()) {
                Ok(_) => format!("set, {}", token.fingerprint()),
                Err(e) => format!("set, {}, refused: {e}", token.fingerprint()),
            },
            Err(e) => e.to_string(),
        };
        out.push_str(&format!("# token.env {}: {what}\n", env.name));
    }
    out.push_str(&format!("# upstream.proxy: {}\n", egress_line(config)));
    out.push('\n');
    out.push_str(&body);
    out
}

/// Where calls to the upstream go, why, and where the proxy's credentials come from (never what they are).
fn egress_line(config: &Config) -> String {
    let route = &config.upstream.route;
    let credentials = match route {
        Route::Direct { .. } => "",
        Route::Tunnel { proxy, .. } => match (&config.upstream.proxy_auth_file, proxy.credentials()) {
            (Some(_), _) => "; credentials from upstream.proxy_auth_file",
            (None, Some(_)) => "; credentials from the proxy URL (redacted)",
            (None, None) => "; no credentials",
        },
    };
    format!("{}{credentials}", route.describe())
}
