//! Shared by the benchmarks of both crates (the mock server's includes this file by
//! path): a bare hyper server (the ceiling), a raw-TCP load generator (wrk-like, so the
//! load costs as little as possible), and statistics.
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
