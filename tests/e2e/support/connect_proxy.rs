//! An in-process outbound proxy that speaks only `CONNECT`, as a bank's egress proxy does for `https://`, on
//! `127.0.0.1:0`. It records everything it could read (each request head, and every byte it relays both ways),
//! can demand Basic credentials, and can be told to refuse (any status) or to hang up instead of answering.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// How the proxy answers the next `CONNECT`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Open the tunnel (after the credentials check, if one is set).
    Tunnel,
    /// Answer this status (and reason) and close.
    Refuse(u16, &'static str),
    /// Close the connection without a word.
    HangUp,
}

#[derive(Debug)]
struct Shared {
    answer: Mutex<Answer>,
    /// The `Proxy-Authorization` value required, if any.
    required: Mutex<Option<String>>,
    heads: Mutex<Vec<String>>,
    relayed: Mutex<Vec<u8>>,
}

/// The running proxy.
pub(crate) struct ConnectProxy {
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    /// Start it, opening tunnels.
    pub(crate) async fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            answer: Mutex::new(Answer::Tunnel),
            required: Mutex::new(None),
            heads: Mutex::default(),
            relayed: Mutex::default(),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(client, serving.clone()));
            }
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:port`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on: answer `answer`.
    pub(crate) fn answer(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// From now on: refuse a `CONNECT` without these Basic credentials with 407.
    pub(crate) fn require(&self, user: &str, password: &str) {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        *self.shared.required.lock().unwrap() = Some(format!("Basic {encoded}"));
    }

    /// Every request head received, as text.
    pub(crate) fn heads(&self) -> Vec<String> {
        self.shared.heads.lock().unwrap().clone()
    }

    /// How many `CONNECT`s were asked for: the tunnels, opened or refused.
    pub(crate) fn connects(&self) -> usize {
        self.heads().len()
    }

    /// Everything the proxy could read: the heads, then every byte relayed either way.
    pub(crate) fn everything_read(&self) -> Vec<u8> {
        let mut all = self.heads().concat().into_bytes();
        all.extend_from_slice(&self.shared.relayed.lock().unwrap());
        all
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing past the head may be taken from the client's side before the tunnel stands.
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) if head.len() < 16 * 1024 => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    shared.heads.lock().unwrap().push(head.clone());
    let answer = *shared.answer.lock().unwrap();
    let required = shared.required.lock().unwrap().clone();
    let target = head
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default()
        .to_owned();
    let given = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    let refuse = |status: u16, reason: &str| format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n");
    let local = target.starts_with("127.0.0.1:") || target.starts_with("localhost:");
    let refusal = match answer {
        Answer::HangUp => return,
        Answer::Refuse(status, reason) => Some(refuse(status, reason)),
        Answer::Tunnel if !local => Some(refuse(403, "Forbidden")),
        Answer::Tunnel if required.is_some() && given != required => Some(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\n\
             Content-Length: 0\r\n\r\n"
                .to_owned(),
        ),
        Answer::Tunnel => None,
    };
    if let Some(refusal) = refusal {
        let _ = client.write_all(refusal.as_bytes()).await;
        return;
    }
    let Ok(upstream) = TcpStream::connect(&target).await else {
        let _ = client.write_all(refuse(502, "Bad Gateway").as_bytes()).await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        relay(client_read, upstream_write, shared.clone()),
        relay(upstream_read, client_write, shared),
    );
}

/// Copy `from` to `to`, recording every byte, until `from` ends; then end `to`.
async fn relay(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                shared.relayed.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
