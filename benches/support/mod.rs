//! Shared by the benchmarks: a bare hyper server (the ceiling), a raw-TCP load
//! generator (wrk-like, so the load costs as little as possible), and statistics.
//!
//! Not every bench uses every item.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A 200-byte JSON body: `{"pad":"xxx…"}`.
pub fn body_200() -> String {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(200 - 10));
    assert_eq!(body.len(), 200);
    body
}

/// `POST /orders` played by a route whose template reads the body, as a user's stub
/// file would: the routed counterpart of the mock's built-in answer.
pub fn orders_route() -> idempotent_retry::mock::Route {
    idempotent_retry::mock::Route::post("/orders")
        .status(201)
        .id_prefix("ord_")
        .body(r#"{"id": "{{id}}", "path": "/orders", "pad": "{{body.pad}}"}"#)
}

/// A minimal hyper HTTP/1.1 server on its own thread and runtime (`threads` workers):
/// reads the body, answers `201` with `{"id":1}`. Runs until the process ends.
pub fn bare_hyper(threads: usize) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |request: Request<hyper::body::Incoming>| async move {
                            let _ = request.into_body().collect().await;
                            let mut response =
                                Response::new(Full::new(Bytes::from_static(b"{\"id\":1}")));
                            *response.status_mut() = StatusCode::CREATED;
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(response)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

/// What a load run measured; runs of one target in interleaved rounds are merged.
#[derive(Default)]
pub struct Run {
    /// One latency per completed request.
    pub latencies: Vec<Duration>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Responses that were not 2xx.
    pub non_2xx: u64,
    /// CPU time the servers (every thread but the main one) used during the run.
    pub server_cpu: Duration,
}

/// A run's figures, for tables.
pub struct Summary {
    /// Completed requests.
    pub requests: usize,
    /// Completed requests per second of wall time.
    pub rate: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th-percentile latency, µs.
    pub p99_us: f64,
    /// Servers' CPU time per request, µs.
    pub server_cpu_us_per_request: f64,
}

impl Run {
    /// Adds another run of the same target.
    pub fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
        self.non_2xx += other.non_2xx;
        self.server_cpu += other.server_cpu;
    }

    /// Sorts the latencies and reads the figures off them.
    pub fn summary(&mut self) -> Summary {
        self.latencies.sort_unstable();
        let requests = self.latencies.len();
        Summary {
            requests,
            rate: requests as f64 / self.elapsed.as_secs_f64(),
            p50_us: us(quantile(&self.latencies, 0.5)),
            p99_us: us(quantile(&self.latencies, 0.99)),
            server_cpu_us_per_request: us(self.server_cpu) / requests as f64,
        }
    }
}

/// The runtime the benchmarks drive their load or clients from: one thread, so that
/// the servers, on their own threads, get the other core.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// How each request's idempotency key is chosen.
#[derive(Clone, Copy)]
pub enum Keys {
    /// No key header.
    None,
    /// A new key for every request: `k-{base + n}` for the run's n-th request.
    Unique(u64),
    /// One key per connection, sent again and again: after the first, replays.
    PerConnection(&'static str),
}

/// Sends `total` POSTs of `body` to `addr` + `path` over `connections` keep-alive
/// HTTP/1.1 connections, one request in flight per connection, like wrk. Raw TCP: the
/// load generator allocates nothing per request beyond its reused buffers.
pub async fn load(
    addr: SocketAddr,
    path: &str,
    body: &str,
    keys: Keys,
    connections: usize,
    total: u64,
) -> Run {
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = server_cpu();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..connections {
        let (next, path, body) = (next.clone(), path.to_owned(), body.to_owned());
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut out = Vec::with_capacity(512);
            let mut input = vec![0u8; 16 * 1024];
            let mut latencies = Vec::new();
            let mut non_2xx = 0;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                out.clear();
                write!(
                    out,
                    "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                )
                .expect("write to vec");
                match keys {
                    Keys::None => {}
                    Keys::Unique(base) => {
                        write!(out, "idempotency-key: k-{}\r\n", base + n).expect("write")
                    }
                    Keys::PerConnection(prefix) => {
                        write!(out, "idempotency-key: {prefix}-conn-{conn}\r\n").expect("write")
                    }
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body.as_bytes());
                let sent = Instant::now();
                stream.write_all(&out).await.expect("send");
                let status = read_response(&mut stream, &mut input).await;
                latencies.push(sent.elapsed());
                if !(200..300).contains(&status) {
                    non_2xx += 1;
                }
            }
            (latencies, non_2xx)
        });
    }
    let mut run = Run {
        latencies: Vec::with_capacity(total as usize),
        ..Run::default()
    };
    while let Some(done) = tasks.join_next().await {
        let (latencies, non_2xx) = done.expect("load task");
        run.latencies.extend(latencies);
        run.non_2xx += non_2xx;
    }
    run.elapsed = started.elapsed();
    run.server_cpu = server_cpu().saturating_sub(cpu_before);
    run
}

/// Reads one HTTP/1.1 response with a `content-length` body; returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> u16 {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.expect("read");
        assert!(n > 0, "server closed the connection");
        filled += n;
        let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).expect("ascii head");
        let status: u16 = head[9..12].parse().expect("status");
        let length: usize = head
            .split("\r\n")
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let want = end + 4 + length;
        while filled < want {
            let n = stream.read(&mut buf[filled..]).await.expect("read body");
            assert!(n > 0, "server closed the connection mid-body");
            filled += n;
        }
        return status;
    }
}

/// The `q`-quantile (0.0..=1.0) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Microseconds, for tables.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// True when `cargo bench` was asked for a quick run (`-- --quick`), e.g. to check the
/// benchmarks still work.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// CPU time used so far by every thread of this process except the main one (which
/// runs the load generator or the clients): the servers' cost, whatever the load
/// generator's. Linux `/proc` clock ticks (10 ms), so use it over runs of seconds.
pub fn server_cpu() -> Duration {
    let pid = std::process::id().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ticks: u64 = tasks
        .filter_map(Result::ok)
        .filter(|task| task.file_name().to_str() != Some(pid.as_str()))
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .map(|stat| {
            // Fields after the parenthesised name; utime and stime are the 14th and 15th.
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            field(11).unwrap_or(0) + field(12).unwrap_or(0)
        })
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The request body: about 200 bytes of JSON, built by each client from this value.
#[derive(serde::Serialize)]
pub struct Order {
    sku: &'static str,
    quantity: u32,
    note: String,
}

/// The HTTP clients compared, each making a POST the way its users would.
#[derive(Clone)]
pub enum Client {
    /// Plain reqwest: the baseline.
    Raw(reqwest::Client),
    /// Raw reqwest with a per-request timeout, as every attempt of ours has.
    RawTimeout(reqwest::Client),
    /// Raw reqwest with a per-request timeout and a fresh UUIDv4 key header: one
    /// attempt of what this crate does, written by hand. The floor for any client that
    /// bounds each attempt and mints keys from the OS.
    RawKeyed(reqwest::Client),
    /// This crate.
    Ours(idempotent_retry::IdempotentClient),
    /// This crate with the circuit breaker, the adaptive rate limiter and hedging (POST
    /// included, after 1 s) on: what holding back costs when nothing fails.
    OursHoldingBack(idempotent_retry::IdempotentClient),
    /// reqwest-middleware with reqwest-retry's transient-error retries.
    Retry(reqwest_middleware::ClientWithMiddleware),
    /// reqwest-retry as it must be used for safe POST retries: a timeout on each attempt
    /// and one key per operation, minted before the retry layer.
    RetryKeyed(reqwest_middleware::ClientWithMiddleware),
}

impl Client {
    /// Its name in tables.
    pub fn name(&self) -> &'static str {
        match self {
            Client::Raw(_) => "raw reqwest",
            Client::RawTimeout(_) => "raw reqwest + timeout",
            Client::RawKeyed(_) => "raw reqwest + timeout + key",
            Client::Ours(_) => "IdempotentClient",
            Client::OursHoldingBack(_) => "IdempotentClient + breaker + limiter + hedging",
            Client::Retry(_) => "reqwest-retry",
            Client::RetryKeyed(_) => "reqwest-retry + timeout + key",
        }
    }

    /// Its name on the command line (`--profile NAME N`).
    pub fn slug(&self) -> &'static str {
        match self {
            Client::Raw(_) => "raw",
            Client::RawTimeout(_) => "raw-timeout",
            Client::RawKeyed(_) => "raw-keyed",
            Client::Ours(_) => "ours",
            Client::OursHoldingBack(_) => "ours-holding-back",
            Client::Retry(_) => "retry",
            Client::RetryKeyed(_) => "retry-keyed",
        }
    }

    /// One POST, its `201` checked and its body read, as a caller would.
    pub async fn post(&self, url: &str, order: &Order) -> bytes::Bytes {
        let response = match self {
            Client::Raw(c) => c.post(url).json(order).send().await.unwrap(),
            Client::RawTimeout(c) => c
                .post(url)
                .json(order)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap(),
            Client::RawKeyed(c) => c
                .post(url)
                .json(order)
                .timeout(Duration::from_secs(10))
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .send()
                .await
                .unwrap(),
            Client::Retry(c) => c.post(url).json(order).send().await.unwrap(),
            Client::RetryKeyed(c) => c
                .post(url)
                .json(order)
                .timeout(Duration::from_secs(10))
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .send()
                .await
                .unwrap(),
            Client::Ours(c) | Client::OursHoldingBack(c) => {
                let response = c.post_idempotent(url).json(order).send().await.unwrap();
                assert_eq!(response.status(), 201);
                return response.bytes().await.unwrap();
            }
        };
        assert_eq!(response.status(), 201);
        response.bytes().await.unwrap()
    }
}

/// The request body every client sends.
pub fn order() -> Order {
    Order {
        sku: "tea-earl-grey-250g",
        quantity: 2,
        note: "x".repeat(150),
    }
}

impl Client {
    /// The seven clients, raw reqwest first, each with its own connection pool.
    pub fn all() -> Vec<Client> {
        use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
        let retrying = || {
            reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(RetryTransientMiddleware::new_with_policy(
                    ExponentialBackoff::builder().build_with_max_retries(2),
                ))
                .build()
        };
        vec![
            Client::Raw(reqwest::Client::new()),
            Client::RawTimeout(reqwest::Client::new()),
            Client::RawKeyed(reqwest::Client::new()),
            Client::Ours(idempotent_retry::IdempotentClient::new()),
            Client::OursHoldingBack(
                idempotent_retry::IdempotentClient::builder()
                    .circuit_breaker(idempotent_retry::CircuitBreaker::new())
                    .adaptive_rate_limit(idempotent_retry::AdaptiveRateLimit::new())
                    .hedging(
                        idempotent_retry::Hedging::after(std::time::Duration::from_secs(1))
                            .keyed_methods(true),
                    )
                    .build()
                    .expect("valid settings"),
            ),
            Client::Retry(retrying()),
            Client::RetryKeyed(retrying()),
        ]
    }
}
