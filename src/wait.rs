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

/// Why `wait` is still waiting, as last seen: printed when it gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Nothing answered (connection refused, no route, no answer in time).
    NoAnswer(String),
    /// The admin port answers that the sidecar is not ready, and why (`/readyz`'s reason).
    NotReady(String),
    /// Something answered that is not an admin port: the proxy port answers `HEAD /readyz` with 405.
    NotAdmin(u16),
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::NoAnswer(why) => write!(f, "nothing answered: {why}"),
            Waiting::NotReady(reason) => write!(f, "not ready: {reason}"),
            Waiting::NotAdmin(status) => write!(
                f,
                "this is not an admin port (HEAD /readyz answered {status}; the proxy port answers 405): give \
                 --admin the sidecar's listen.admin_address"
            ),
        }
    }
}

/// An `Origin` no proxy configuration lists: the proxy port refuses a request carrying it (403), locally.
const NO_SUCH_ORIGIN: &str = "http://issettled-proxy-wait.invalid";

/// `Ok` as soon as `{admin}/readyz` answers 200; at `timeout`, why it was still waiting.
///
/// It asks `HEAD /readyz`: the admin port answers it as `GET`, and the proxy port, if `--admin` names it by
/// mistake, refuses it itself (HEAD is never in `policy.allowed_methods`), so nothing is ever sent upstream. The
/// reason a sidecar is not ready is read once, at the end, with `GET /readyz` (with an `Origin` the proxy port
/// would refuse, should a proxy port answer 503 to `HEAD` while it shuts down).
pub async fn until_ready(admin: &Url, timeout: Duration) -> Result<(), Waiting> {
    crate::proxy::client::install_crypto_provider();
    let url = format!("{}/readyz", admin.as_str().trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Waiting::NoAnswer(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    let mut waiting = Waiting::NoAnswer("no answer yet".to_owned());
    loop {
        match tokio::time::timeout_at(deadline, client.head(&url).send()).await {
            Ok(Ok(r)) if r.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(Ok(r)) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                waiting = Waiting::NotReady(String::new());
            }
            Ok(Ok(r)) => waiting = Waiting::NotAdmin(r.status().as_u16()),
            Ok(Err(e)) => waiting = Waiting::NoAnswer(no_answer(&e)),
            Err(_) => break,
        }
        if Instant::now() + POLL >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    if waiting == Waiting::NotReady(String::new()) {
        waiting = Waiting::NotReady(reason(&client, &url).await);
    }
    Err(waiting)
}

/// Why a request got no answer, in a few words ("connection refused").
fn no_answer(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer within 2 s".to_owned();
    }
    let detail = std::error::Error::source(e)
        .map(crate::upstream_error::explain)
        .unwrap_or_default();
    if detail.is_empty() {
        e.to_string()
    } else {
        detail
    }
}

/// `/readyz`'s reason (`{"ready": false, "reason": ...}`), or what was answered instead.
async fn reason(client: &reqwest::Client, url: &str) -> String {
    let answer = client
        .get(url)
        .header(reqwest::header::ORIGIN, NO_SUCH_ORIGIN)
        .send()
        .await;
    let body = match answer {
        Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => r.json::<serde_json::Value>().await.ok(),
        Ok(r) => return format!("/readyz answered {} when asked why", r.status().as_u16()),
        Err(e) => return no_answer(&e),
    };
    body.as_ref()
        .and_then(|b| b["reason"].as_str())
        .map_or_else(|| "/readyz gave no reason".to_owned(), str::to_owned)
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
