//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod postgres;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotent_retry::{
    Attempt, IdempotentClient, IdempotentClientBuilder, Jitter, RetryBudget, RetryPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A policy with millisecond delays, no jitter and a generous deadline, so that tests
/// are fast and their schedules exact.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy::exponential()
        .max_attempts(5)
        .initial_delay(Duration::from_millis(5))
        .multiplier(2.0)
        .max_delay(Duration::from_millis(20))
        .jitter(Jitter::None)
        .deadline(Duration::from_secs(10))
}

pub fn fast_builder() -> IdempotentClientBuilder {
    IdempotentClient::builder()
        .retry_policy(fast_policy())
        .attempt_timeout(Duration::from_secs(5))
        .retry_budget(RetryBudget::unlimited())
}

pub fn fast_client() -> IdempotentClient {
    fast_builder().build().expect("valid test configuration")
}

/// What an `on_retry` recorder has seen, one entry per retry.
pub type Recorded<T> = Arc<Mutex<Vec<T>>>;

/// An `on_retry` hook that records `see(attempt, delay)` before each retry, and what it
/// recorded.
pub fn retry_recorder<T: Send + 'static>(
    see: impl Fn(&Attempt<'_>, Duration) -> T + Send + Sync + 'static,
) -> (
    Recorded<T>,
    impl Fn(&Attempt<'_>, Duration) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |attempt: &Attempt<'_>, delay: Duration| {
        sink.lock().unwrap().push(see(attempt, delay))
    })
}

/// An `on_retry` hook that records the delay chosen before each retry.
pub fn delay_recorder() -> (
    Recorded<Duration>,
    impl Fn(&Attempt<'_>, Duration) + Send + Sync + 'static,
) {
    retry_recorder(|_, delay| delay)
}

/// The `Idempotency-Key` of every request a wiremock server received, in order.
pub async fn keys_received(server: &wiremock::MockServer) -> Vec<Option<String>> {
    header_received(server, "idempotency-key").await
}

/// Mounts `first` for the first `times` POSTs and `201 {"id": "ord_1"}` afterwards.
pub async fn server_failing(first: ResponseTemplate, times: u64) -> MockServer {
    let server = MockServer::start().await;
    if times > 0 {
        Mock::given(method("POST"))
            .respond_with(first)
            .up_to_n_times(times)
            .with_priority(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": "ord_1"})))
        .mount(&server)
        .await;
    server
}

/// The status `client` ends with against a server that answers `first` once, then 201.
pub async fn final_status(client: &IdempotentClient, first: ResponseTemplate) -> u16 {
    let server = server_failing(first, 1).await;
    let resp = client.post_idempotent(server.uri()).send().await.unwrap();
    resp.status().as_u16()
}

/// Asserts `expected_len` requests, all with the same key; returns it.
pub fn assert_one_key(keys: &[Option<String>], expected_len: usize) -> String {
    assert_eq!(keys.len(), expected_len, "requests received: {keys:?}");
    let first = keys[0].clone().expect("every attempt carries a key");
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(first.as_str())),
        "keys differ: {keys:?}"
    );
    first
}

pub async fn header_received(server: &wiremock::MockServer, name: &str) -> Vec<Option<String>> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .iter()
        .map(|r| r.headers.get(name).map(|v| v.to_str().unwrap().to_owned()))
        .collect()
}

/// What the scripted server does with one connection.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Answer with this status and a small JSON body, then close.
    Respond(u16),
    /// Send the status line, headers and half the body, then reset the connection.
    ResetMidResponse,
    /// Read the request and close the connection without a byte of response.
    CloseWithoutResponse,
    /// Read the request and answer only after this long.
    RespondAfter(u16, Duration),
    /// Answer `201` with a chunked body: these chunks, each written and flushed on its
    /// own, 2 ms apart, then the last chunk.
    RespondChunked(&'static [&'static str]),
    /// Answer `200` with a body of this many bytes, in 64 KiB writes, declared in
    /// `content-length` or chunked; the bytes written are counted.
    StreamBody { bytes: usize, declared: bool },
}

/// One request the scripted server read.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub key: Option<String>,
}

/// A raw HTTP/1.1 server on 127.0.0.1 that gives each connection the next scripted
/// action (the last one repeats), answering with `Connection: close` so that each
/// attempt arrives on a new connection. It runs on its own thread and runtime, so the
/// times it records do not wait for the test's runtime, and it stops when dropped.
pub struct ScriptedServer {
    pub addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    written: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedServer {
    pub async fn start(script: Vec<Action>) -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap(), script)
    }

    /// Like `start`, on a chosen address, without needing a runtime (callable from a hook).
    pub fn bind(addr: std::net::SocketAddr, script: Vec<Action>) -> Self {
        assert!(!script.is_empty());
        let std_listener = std::net::TcpListener::bind(addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = written.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                for n in 0.. {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => return,
                        },
                    };
                    let action = script[n.min(script.len() - 1)];
                    let log = log.clone();
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let _ = serve(stream, action, log, counter).await;
                    });
                }
            });
        });
        Self {
            addr,
            seen,
            written,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Body bytes the server managed to write, over all connections.
    pub fn body_bytes_written(&self) -> usize {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    action: Action,
    log: Arc<Mutex<Vec<Seen>>>,
    written: Arc<std::sync::atomic::AtomicUsize>,
) -> std::io::Result<()> {
    let head = read_request(&mut stream).await?;
    let key = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("idempotency-key: ")
                .or_else(|| l.strip_prefix("Idempotency-Key: "))
        })
        .map(|k| k.trim().to_owned());
    log.lock().unwrap().push(Seen {
        at: Instant::now(),
        key,
    });
    let respond = |status: u16| {
        let body = format!("{{\"status\":{status}}}");
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match action {
        Action::Respond(status) => stream.write_all(respond(status).as_bytes()).await?,
        Action::RespondAfter(status, delay) => {
            tokio::time::sleep(delay).await;
            stream.write_all(respond(status).as_bytes()).await?;
        }
        Action::ResetMidResponse => {
            stream
                .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 100\r\n\r\n{\"partial\":")
                .await?;
            stream.flush().await?;
            // Zero linger turns the close into a TCP RST.
            stream.set_zero_linger()?;
        }
        Action::RespondChunked(chunks) => {
            stream
                .write_all(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                .await?;
            for chunk in chunks {
                stream.flush().await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                stream.write_all(framed.as_bytes()).await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Action::StreamBody { bytes, declared } => {
            let framing = if declared {
                format!("content-length: {bytes}")
            } else {
                "transfer-encoding: chunked".to_owned()
            };
            let head = format!("HTTP/1.1 200 OK\r\n{framing}\r\nconnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            let block = vec![b'x'; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(block.len());
                if declared {
                    stream.write_all(&block[..n]).await?;
                } else {
                    stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    stream.write_all(&block[..n]).await?;
                    stream.write_all(b"\r\n").await?;
                }
                written.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                left -= n;
            }
            if !declared {
                stream.write_all(b"0\r\n\r\n").await?;
            }
        }
        Action::CloseWithoutResponse => {}
    }
    Ok(())
}

/// Reads one request's head and its `content-length` body; returns the head.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// A loopback URL nothing listens on: every connection is refused.
pub async fn refusing_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/charges")
}
