//! The `CONNECT` tunnel through the outbound proxy (RFC 9110 §9.3.6): ask for `host:port`, read the answer, and
//! hand the socket back for TLS with the upstream, which then runs end to end inside it.
//!
//! Written here rather than taken from hyper-util's `Tunnel` connector: that one reports every refusal but 407 as
//! "unsuccessful", and an operator reading a 502 needs the status the proxy answered (403 from an allow-list,
//! 502 when the proxy cannot reach IsSettled). The tunnel costs one exchange per new upstream connection and
//! nothing per request: the socket it yields is the same [`super::tcp::UpstreamStream`] a direct connection is.

use std::{sync::Arc, time::Duration};

use http::Uri;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::egress::{ProxyAuth, ProxyUrl, TunnelError};

/// The longest answer head read from the proxy. Proxies answer `CONNECT` with a status line and a few headers.
const MAX_ANSWER: usize = 8 * 1024;

/// Headers parsed in the proxy's answer (the rest is refused as malformed).
const MAX_HEADERS: usize = 32;

/// Where tunnels go through, with what credentials, how long a `CONNECT` may take.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// The proxy as errors show it (no credentials), made once.
    shown: String,
    /// `http://host:port/`: where the TCP connector goes.
    uri: Uri,
    auth: Arc<ProxyAuth>,
    timeout: Duration,
}

// === impl Tunnel ===

impl Tunnel {
    /// Tunnels through `proxy`, authenticated by `auth`, each `CONNECT` answered within `timeout`
    /// (`upstream.connect_timeout`; the TCP connect to the proxy has its own).
    pub(crate) fn new(proxy: ProxyUrl, auth: Arc<ProxyAuth>, timeout: Duration) -> Self {
        Self {
            shown: proxy.to_string(),
            uri: proxy.uri(),
            auth,
            timeout,
        }
    }

    /// The proxy, for the TCP connector to connect to.
    pub(crate) fn proxy_uri(&self) -> &Uri {
        &self.uri
    }

    /// The proxy, as errors show it (no credentials).
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Why the TCP connection to the proxy failed.
    pub(crate) fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> TunnelError {
        TunnelError::Unreachable {
            proxy: self.shown.clone(),
            detail: crate::egress::failure::innermost(error),
        }
    }

    /// Ask the proxy on `io` for a tunnel to `dst`'s host and port (443 when an `https://` URI names none).
    pub(crate) async fn establish<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        dst: &Uri,
    ) -> Result<(), TunnelError> {
        let host = dst.host().unwrap_or_default();
        let port = dst.port_u16().unwrap_or(443);
        let target = format!("{host}:{port}");
        let auth = self.auth.header();
        let exchange = self.exchange(io, &target, auth.as_ref());
        tokio::time::timeout(self.timeout, exchange).await.unwrap_or_else(|_| {
            Err(TunnelError::Timeout {
                proxy: self.shown.clone(),
            })
        })
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        target: &str,
        auth: Option<&http::HeaderValue>,
    ) -> Result<(), TunnelError> {
        let io_error = |e: std::io::Error| TunnelError::Io {
            proxy: self.shown.clone(),
            detail: e.to_string(),
        };
        // RFC 9110 §9.3.6: the request target is the authority form, and `Host` repeats it. The credentials go
        // only here, in the proxy's own header; nothing of the request to IsSettled is visible to the proxy.
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
        if let Some(auth) = auth {
            request.extend_from_slice(b"Proxy-Authorization: ");
            request.extend_from_slice(auth.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        io.write_all(&request).await.map_err(io_error)?;
        io.flush().await.map_err(io_error)?;

        let mut answer = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = io.read(&mut chunk).await.map_err(io_error)?;
            if n == 0 {
                return Err(TunnelError::Closed {
                    proxy: self.shown.clone(),
                });
            }
            answer.extend_from_slice(&chunk[..n]);
            match self.judge(&answer, target, auth.is_some()) {
                Some(verdict) => return verdict,
                None if answer.len() >= MAX_ANSWER => {
                    return Err(TunnelError::Malformed {
                        proxy: self.shown.clone(),
                    })
                }
                None => {}
            }
        }
    }

    /// The verdict on the answer read so far; `None` while its head is incomplete.
    fn judge(&self, answer: &[u8], target: &str, sent_credentials: bool) -> Option<Result<(), TunnelError>> {
        let malformed = || {
            Err(TunnelError::Malformed {
                proxy: self.shown.clone(),
            })
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(answer) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(malformed()),
        };
        let status = response.code.unwrap_or_default();
        Some(match status {
            // Any 2xx switches the connection to tunnel mode (§9.3.6). Nothing may follow the head before the
            // client speaks: the upstream has not seen a byte yet.
            200..=299 if head_len == answer.len() => Ok(()),
            200..=299 => malformed(),
            _ => Err(TunnelError::refused(
                &self.shown,
                status,
                response.reason.unwrap_or_default(),
                target,
                sent_credentials,
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::Credentials;
    use tokio::io::duplex;

    fn tunnel(auth: ProxyAuth) -> Tunnel {
        Tunnel::new(
            ProxyUrl::parse("http://proxy.corp:3128").unwrap(),
            Arc::new(auth),
            Duration::from_secs(5),
        )
    }

    /// Run `establish` against a scripted proxy that answers `answer`; returns the verdict and what it was sent.
    async fn against(auth: ProxyAuth, answer: &'static [u8]) -> (Result<(), TunnelError>, String) {
        let (mut ours, mut theirs) = duplex(64 * 1024);
        let proxy = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = theirs.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            theirs.write_all(answer).await.unwrap();
            String::from_utf8(seen).unwrap()
        });
        let t = tunnel(auth);
        let verdict = t
            .establish(&mut ours, &"https://api.issettled.example/".parse().unwrap())
            .await;
        (verdict, proxy.await.unwrap())
    }

    #[tokio::test]
    async fn a_2xx_answer_opens_the_tunnel_to_host_and_default_port() {
        let (verdict, sent) = against(ProxyAuth::none(), b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        verdict.unwrap();
        assert_eq!(
            sent,
            "CONNECT api.issettled.example:443 HTTP/1.1\r\nHost: api.issettled.example:443\r\n\r\n"
        );
        let (verdict, _) = against(ProxyAuth::none(), b"HTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\n").await;
        verdict.unwrap();
    }

    #[tokio::test]
    async fn credentials_go_in_proxy_authorization_only() {
        let creds = Credentials::parse("alice:s3cret").unwrap();
        let (verdict, sent) = against(ProxyAuth::new(Some(&creds), None).unwrap(), b"HTTP/1.1 200 OK\r\n\r\n").await;
        verdict.unwrap();
        assert!(
            sent.contains("\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n"),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn refusals_name_the_proxy_and_its_answer() {
        let (verdict, _) = against(
            ProxyAuth::none(),
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(
            verdict.unwrap_err().to_string(),
            "the outbound proxy http://proxy.corp:3128 answered 407 Proxy Authentication Required: set upstream.proxy_auth_file"
        );
        let (verdict, _) = against(ProxyAuth::none(), b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(verdict
            .unwrap_err()
            .to_string()
            .ends_with("answered 503 Service Unavailable: the proxy could not reach api.issettled.example:443"));
        let (verdict, _) = against(ProxyAuth::none(), b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(matches!(verdict, Err(TunnelError::Malformed { .. })));
        let (verdict, _) = against(ProxyAuth::none(), b"HTTP/1.1 200 OK\r\n\r\nearly bytes").await;
        assert!(matches!(verdict, Err(TunnelError::Malformed { .. })));
        let (verdict, _) = against(ProxyAuth::none(), b"HTTP/1.1 200 OK\r\n").await;
        assert!(matches!(verdict, Err(TunnelError::Closed { .. })), "{verdict:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_proxy_that_never_answers_times_out() {
        let (mut ours, _theirs) = duplex(1024);
        let verdict = tunnel(ProxyAuth::none())
            .establish(&mut ours, &"https://api.issettled.example:8443/".parse().unwrap())
            .await;
        assert!(matches!(verdict, Err(TunnelError::Timeout { .. })), "{verdict:?}");
    }
}
