//! A raw-TCP upstream that misbehaves on purpose: never answers, resets mid-body, sends garbage, a huge or
//! trickled error body, a truncated chunked response, a chunked response that also states a length, or a
//! gzipped error. Counts the requests it received.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How the upstream misbehaves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Reads the request, never answers.
    Hang,
    /// 200 with a Content-Length of 1000, sends 10 bytes, then resets.
    ResetMidBody,
    /// Answers a line that is not HTTP.
    GarbageStatus,
    /// 500 with a 10 MiB body.
    HugeErrorBody,
    /// 500 whose body arrives one byte every 200 ms, forever.
    TrickleErrorBody,
    /// 200 chunked, one chunk, then the connection closes without the last chunk.
    TruncatedChunked,
    /// Closes the connection as soon as the request arrived.
    CloseImmediately,
    /// 200 with a Content-Length of 1000, sends 10 bytes, then nothing more (the connection stays open).
    StallMidBody,
    /// 200 with both `Content-Length: 3` and `Transfer-Encoding: chunked`, a 5-byte chunked body `hello`
    /// (RFC 9112 §6.3: the chunked framing wins).
    ChunkedWithLength,
    /// 409 with a gzipped JSON error ([`GZIP_ERROR_JSON`]), `Content-Encoding: gzip`, whatever the request
    /// accepted (as a gateway in front of the upstream may do).
    GzipError,
}

/// The JSON error [`Fault::GzipError`] gzips; it echoes the token the faulty tests use (`opaque-token`).
pub(crate) const GZIP_ERROR_JSON: &str =
    r#"{"code":"PAYMENT_CONFLICT","short_message":"Conflict","long_message":"token opaque-token already used"}"#;

/// The faulty upstream.
pub(crate) struct Faulty {
    pub(crate) addr: SocketAddr,
    /// The head of each request received (request line and header lines), refresh calls included.
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Faulty {
    /// Listen on `127.0.0.1:0` with `fault`.
    pub(crate) async fn spawn(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (counter, log) = (requests, heads.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (counter, log) = (counter.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, fault, counter, log).await;
                });
            }
        });
        Self { addr, heads, task }
    }

    /// `http://127.0.0.1:port`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// The request lines received so far, in order (the proxy's start-up refresh call included).
    pub(crate) fn request_lines(&self) -> Vec<String> {
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The request heads received so far, in order (the proxy's start-up refresh call included).
    pub(crate) fn request_heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// How many requests for exactly this path (query excluded) arrived.
    pub(crate) fn count_path(&self, path: &str) -> usize {
        self.request_lines()
            .iter()
            .filter(|l| l.split(' ').nth(1).and_then(|t| t.split('?').next()) == Some(path))
            .count()
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read a request head; returns it as text.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn serve(
    mut stream: TcpStream,
    fault: Fault,
    counter: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    log.lock().unwrap().push(head);
    counter.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Fault::ResetMidBody => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n0123456789",
                )
                .await?;
            #[allow(deprecated)] // a reset is exactly what this fault is for
            stream.set_linger(Some(Duration::ZERO))?;
        }
        Fault::GarbageStatus => {
            stream.write_all(b"NOT-HTTP garbage\r\n\r\n").await?;
        }
        Fault::HugeErrorBody => {
            let size = 10 * 1024 * 1024;
            let head = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: {size}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..(size / chunk.len()) {
                stream.write_all(&chunk).await?;
            }
        }
        Fault::TrickleErrorBody => {
            stream
                .write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\n",
                )
                .await?;
            loop {
                stream.write_all(b"x").await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Fault::TruncatedChunked => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await?;
        }
        Fault::ChunkedWithLength => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\
                      transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                )
                .await?;
        }
        Fault::CloseImmediately => {}
        Fault::GzipError => {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(GZIP_ERROR_JSON.as_bytes())?;
            let body = gz.finish()?;
            let head = format!(
                "HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n\
                 vary: accept-encoding\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
        }
        Fault::StallMidBody => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n0123456789",
                )
                .await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    Ok(())
}
