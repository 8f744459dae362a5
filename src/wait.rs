//! `issettled-proxy wait`: poll the admin port's `/readyz` until it answers 200, for app entrypoints that must not
//! start before the token is there.

use std::time::Duration;

use reqwest::Url;
use tokio::time::Instant;

/// How often `/readyz` is asked.
const POLL: Duration = Duration::from_millis(100);

/// Parse `--admin`: an `http://` URL with a host, such as `http://127.0.0.1:8081` (the admin port speaks plain
/// HTTP). Checked before waiting, so a mistyped address fails at once instead of at the time-out.
pub(crate) fn admin_url(text: &str) -> Result<Url, String> {
    const EXAMPLE: &str = "an http:// URL such as http://127.0.0.1:8081";
    let url = Url::parse(text.trim()).map_err(|e| format!("not {EXAMPLE}: {e}"))?;
    if url.scheme() != "http" || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("not {EXAMPLE}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(url)
}

/// True as soon as `{admin}/readyz` answers 200; false when `timeout` passes first.
pub async fn until_ready(admin: &Url, timeout: Duration) -> bool {
    crate::proxy::client::install_crypto_provider();
    let url = format!("{}/readyz", admin.as_str().trim_end_matches('/'));
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        let ready = tokio::time::timeout_at(deadline, client.get(&url).send()).await;
        match ready {
            Ok(Ok(r)) if r.status() == reqwest::StatusCode::OK => return true,
            Err(_) => return false,
            _ => {}
        }
        if Instant::now() + POLL >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_url_needs_http_and_a_host() {
        assert_eq!(
            admin_url("http://127.0.0.1:8081").unwrap().as_str(),
            "http://127.0.0.1:8081/"
        );
        assert_eq!(
            admin_url(" http://sidecar:8081/ ").unwrap().as_str(),
            "http://sidecar:8081/"
        );
        for bad in [
            "127.0.0.1:8081",
            "localhost:8081",
            "https://127.0.0.1:8081",
            "http://",
            "",
            "http://h/?x",
        ] {
            assert!(admin_url(bad).is_err(), "{bad}");
        }
    }
}
