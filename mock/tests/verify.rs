//! The verifier finds real idempotency bugs: small servers, each with one planted bug,
//! and one correct server, checked by the suite in 5 seeded runs each. Every planted
//! bug is flagged by the check that names it; the correct server gets no FAIL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use idempotent_retry_mock::{Check, MockError, Outcome, Verifier};

/// The server's one bug, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    /// No store at all: every request executes.
    NoStore,
    /// The answer is stored only a while after it was sent.
    StoreAfterSend,
    /// Check, then insert, with the work between: not atomic.
    CheckThenInsert,
    /// A stored answer is replayed whatever the body.
    IgnoresBody,
    /// One key store for every caller.
    Unscoped,
    /// Atomic claim, stored answer, 409 in flight, 422 on a mismatch.
    None,
}

#[derive(Clone)]
enum Entry {
    InFlight,
    Done { body: Bytes, answer: String },
}

struct Server {
    bug: Bug,
    next_id: AtomicU64,
    store: Mutex<HashMap<String, Entry>>,
}

fn answer(status: u16, body: String, replayed: bool) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            http::HeaderValue::from_static("true"),
        );
    }
    response
}

impl Server {
    fn create(&self) -> String {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        format!(r#"{{"id":"ord_{id}"}}"#)
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let key = request
            .headers()
            .get("idempotency-key")
            .map(|k| k.as_bytes().to_vec());
        let scope = match self.bug {
            Bug::Unscoped => String::new(),
            _ => request
                .headers()
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let Some(key) = key else {
            return answer(400, r#"{"error":"key required"}"#.into(), false);
        };
        if key.len() > 255 || key.iter().any(|b| !(0x21..=0x7e).contains(b)) {
            return answer(400, r#"{"error":"bad key"}"#.into(), false);
        }
        let slot = format!("{scope}\n{}", String::from_utf8_lossy(&key));
        if self.bug == Bug::NoStore {
            return answer(201, self.create(), false);
        }
        // The correct server claims the key atomically: the look and the claim under
        // one lock. The two planted races look first and write later.
        let atomic = !matches!(self.bug, Bug::CheckThenInsert | Bug::StoreAfterSend);
        let found = {
            let mut store = self.store.lock().unwrap();
            let found = store.get(&slot).cloned();
            if found.is_none() && atomic {
                store.insert(slot.clone(), Entry::InFlight);
            }
            found
        };
        match found {
            Some(Entry::Done {
                body: stored,
                answer: text,
            }) => {
                if stored != body && self.bug != Bug::IgnoresBody {
                    return answer(422, r#"{"error":"mismatch"}"#.into(), false);
                }
                answer(201, text, true)
            }
            Some(Entry::InFlight) => answer(409, r#"{"error":"in flight"}"#.into(), false),
            None => self.execute(slot, body).await,
        }
    }

    async fn execute(self: Arc<Self>, slot: String, body: Bytes) -> Response<Full<Bytes>> {
        match self.bug {
            Bug::CheckThenInsert => {
                // The work happens between the check and the insert.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Bug::StoreAfterSend => {
                let text = self.create();
                let server = self.clone();
                let (stored, later) = (text.clone(), body);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let entry = Entry::Done {
                        body: later,
                        answer: stored,
                    };
                    server.store.lock().unwrap().insert(slot, entry);
                });
                return answer(201, text, false);
            }
            _ => {
                // Claimed already, in `handle`: the work.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let text = self.create();
        let entry = Entry::Done {
            body,
            answer: text.clone(),
        };
        self.store.lock().unwrap().insert(slot, entry);
        answer(201, text, false)
    }
}

/// Serves `bug` on a loopback port until the test ends.
async fn serve(bug: Bug) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server {
        bug,
        next_id: AtomicU64::new(0),
        store: Mutex::new(HashMap::new()),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(request).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn verifier(url: &str, seed: u64) -> Verifier {
    Verifier::new(url, "POST /v1/orders")
        .body(r#"{"amount":100}"#)
        .header("Content-Type", "application/json")
        .header("Authorization", "Bearer caller-a")
        .other_authorization("Bearer caller-b")
        .id_pointer("/id")
        .seed(seed)
}

/// The check each planted bug must fail.
fn named(bug: Bug) -> Option<Check> {
    match bug {
        Bug::NoStore => Some(Check::Replay),
        Bug::StoreAfterSend => Some(Check::LostAnswer),
        Bug::CheckThenInsert => Some(Check::ConcurrentDuplicates),
        Bug::IgnoresBody => Some(Check::PayloadMismatch),
        Bug::Unscoped => Some(Check::Scope),
        Bug::None => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_planted_bug_is_flagged_by_its_check_and_the_correct_server_passes() {
    let bugs = [
        Bug::NoStore,
        Bug::StoreAfterSend,
        Bug::CheckThenInsert,
        Bug::IgnoresBody,
        Bug::Unscoped,
        Bug::None,
    ];
    let mut table = String::from(
        "| server | replay | lost answer | concurrent | mismatch | missing key | scope | malformed | expiry |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for bug in bugs {
        let url = serve(bug).await;
        for seed in 1..=5 {
            let report = verifier(&url, seed).run().await.unwrap();
            match named(bug) {
                Some(check) => {
                    assert_eq!(
                        report.outcome(check),
                        Some(Outcome::Fail),
                        "{bug:?}, seed {seed}: {check:?} must fail\n{report}"
                    );
                    assert!(!report.passed(), "{bug:?}: the suite fails");
                }
                None => {
                    let failed: Vec<_> = report
                        .checks
                        .iter()
                        .filter(|c| c.outcome == Outcome::Fail)
                        .collect();
                    assert!(failed.is_empty(), "seed {seed}: {failed:?}\n{report}");
                    assert!(report.passed());
                    assert_eq!(
                        report.outcome(Check::ReplayAfterExpiry),
                        Some(Outcome::NotApplicable)
                    );
                }
            }
            if seed == 1 {
                let cells: Vec<String> = report
                    .checks
                    .iter()
                    .map(|c| format!("{:?}", c.outcome))
                    .collect();
                table.push_str(&format!("| {bug:?} | {} |\n", cells.join(" | ")));
            }
        }
    }
    // The table of servers × checks, for the record (`-- --nocapture`).
    println!("{table}");
}

#[tokio::test]
async fn the_scope_check_needs_both_authorizations() {
    let url = serve(Bug::None).await;
    let report = Verifier::new(&url, "POST /v1/orders")
        .body(r#"{"amount":1}"#)
        .id_pointer("/id")
        .run()
        .await
        .unwrap();
    assert_eq!(report.outcome(Check::Scope), Some(Outcome::NotApplicable));
    let line = report.to_string();
    assert!(line.contains("NOT APPLICABLE"), "{line}");
    assert!(line.contains("every required check passed"), "{line}");
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_is_sent() {
    for (verifier, expected) in [
        (
            Verifier::new("http://127.0.0.1:1", "/v1/orders"),
            "METHOD /path",
        ),
        (Verifier::new("ftp://x", "POST /v1/orders"), "http(s)"),
        (
            Verifier::new("http://127.0.0.1:1", "POST /v1/orders").header("bad header", "x"),
            "header",
        ),
    ] {
        match verifier.run().await {
            Err(MockError::InvalidConfig { reason, .. }) => {
                assert!(reason.contains(expected), "{reason}");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
}

// Multi-threaded: the planted server serves on a worker while this thread waits for
// the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_verifies_a_server_prints_the_report_and_writes_json() {
    // The mock server itself is a correct upstream.
    let upstream = idempotent_retry_mock::MockServer::start().await;
    let json = std::env::temp_dir().join(format!("verify-{}.json", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idempotent-mock-server"))
        .args([
            "verify",
            "--upstream",
            &upstream.uri(),
            "--route",
            "POST /orders",
        ])
        .args([
            "--body",
            r#"{"amount":100}"#,
            "--header",
            "Content-Type: application/json",
        ])
        .args([
            "--header",
            "Authorization: Bearer a",
            "--other-authorization",
            "Bearer b",
        ])
        .args(["--id-pointer", "/id", "--seed", "3", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PASS           replay"), "{stdout}");
    assert!(stdout.contains("| lost answer | yes | Pass |"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert_eq!(report["checks"].as_array().unwrap().len(), 8);
    assert_eq!(report["checks"][0]["outcome"], "pass");
    // The scope check runs its key once for each caller, which the mock counts as a
    // key executed in two scopes; no other key ran twice.
    let twice = upstream.duplicates();
    assert!(twice.iter().all(|k| k.ends_with("-scope")), "{twice:?}");

    // A server that fails: exit status 1; bad flags: 2.
    let failing = serve(Bug::NoStore).await;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_idempotent-mock-server"))
        .args([
            "verify",
            "--upstream",
            &failing,
            "--route",
            "POST /v1/orders",
        ])
        .args(["--id-pointer", "/id"])
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(1));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_idempotent-mock-server"))
        .args(["verify", "--route", "POST /v1/orders"])
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(2));
}
