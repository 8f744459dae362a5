//! `check-config` output: the effective configuration (file merged with the environment) as TOML. The initial
//! token is never in it; the caller adds what the token module says about it, by fingerprint only. The
//! outbound-proxy decision is shown with its reason, the proxy's credentials never.

use super::Config;
use crate::egress::Route;

/// Render the effective configuration, with `notes` as comment lines under the heading. No token is in
/// [`Config::raw`] (`token.env` is a variable's name), so none is printed.
pub(crate) fn render_effective(config: &Config, notes: &[String]) -> String {
    let body = toml::to_string_pretty(&config.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    let mut out =
        String::from("# effective configuration of issettled-proxy (file + ISSETTLED_PROXY__* environment)\n");
    for note in notes {
        out.push_str(&format!("# {note}\n"));
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
