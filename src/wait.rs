//! `issettled-proxy wait`: poll the admin port's `/readyz` until it answers 200, for app entrypoints that must not
//! start before the token is there.

use std::time::Duration;

use tokio::time::Instant;

/// How often `/readyz` is asked.
const POLL: Duration = Duration::from_millis(100);

/// True as soon as `{admin}/readyz` answers 200; false when `timeout` passes first.
pub async fn until_ready(admin: &str, timeout: Duration) -> bool {
    crate::proxy::client::install_crypto_provider();
    let url = format!("{}/readyz", admin.trim_end_matches('/'));
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
