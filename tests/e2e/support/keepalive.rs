//! A raw-TCP upstream that keeps connections alive: every request on a connection gets `200 {"ok":true}`, and a
//! connection idle for `idle_close` is closed by the upstream (as servers close idle keep-alive connections).
//! It records which connection each request came on.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The keep-alive upstream.
pub(crate) struct KeepAlive {
    pub(crate) addr: SocketAddr,
    /// (connection number, request line) of each request, in arrival order.
    log: Arc<Mutex<Vec<(usize, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// Listen on `127.0.0.1:0`; close connections idle for `idle_close`.
    pub(crate) async fn spawn(idle_close: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            for number in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, number, idle_close, shared.clone()));
            }
        });
        Self { addr, log, task }
    }

    /// `http://127.0.0.1:port`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// How many connections carried requests for `path` (query excluded).
    pub(crate) fn connections_for(&self, path: &str) -> usize {
        self.connection_ids_for(path).len()
    }

    /// The numbers of the connections that carried requests for `path`, ascending.
    pub(crate) fn connection_ids_for(&self, path: &str) -> Vec<usize> {
        let log = self.log.lock().unwrap();
        let mut seen: Vec<usize> = log
            .iter()
            .filter(|(_, line)| line.split(' ').nth(1).and_then(|t| t.split('?').next()) == Some(path))
            .map(|(n, _)| *n)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    /// How many requests for `path` arrived.
    pub(crate) fn requests_for(&self, path: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, line)| line.split(' ').nth(1).and_then(|t| t.split('?').next()) == Some(path))
            .count()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, number: usize, idle_close: Duration, log: Arc<Mutex<Vec<(usize, String)>>>) {
    const BODY: &[u8] = br#"{"ok":true}"#;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            log.lock()
                .unwrap()
                .push((number, head.lines().next().unwrap_or_default().to_owned()));
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                BODY.len()
            );
            if stream.write_all(&[response.as_bytes(), BODY].concat()).await.is_err() {
                return;
            }
        }
        match tokio::time::timeout(idle_close, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}
