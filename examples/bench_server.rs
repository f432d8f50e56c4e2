//! A server for the out-of-process benchmark (`benches/out_of_process.sh`), in its own
//! process as users run servers: `wiremock` (wiremock-rs 0.6 with one mounted mock
//! answering 201, as a user would set it up), `wiremock-quiet` (the same with request
//! recording off) or `bare` (a bare hyper server answering 201: the ceiling). Prints its URL, then serves until its standard input closes.
//! (The idempotent mock runs as its own binary, `idempotent-mock-server`.)
//!
//! ```text
//! cargo run --release --example bench_server -- wiremock|wiremock-quiet|bare
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark tool stops on any failure.

#[path = "../benches/support/mod.rs"]
mod support;

use std::io::Write as _;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let kind = std::env::args().nth(1).unwrap_or_default();
    // Held for as long as the process serves.
    let _wiremock;
    let uri = match kind.as_str() {
        "wiremock" | "wiremock-quiet" => {
            let mut builder = wiremock::MockServer::builder();
            if kind == "wiremock-quiet" {
                builder = builder.disable_request_recording();
            }
            let server = builder.start().await;
            wiremock::Mock::given(wiremock::matchers::method("POST"))
                .respond_with(wiremock::ResponseTemplate::new(201).set_body_string("{\"id\":1}"))
                .mount(&server)
                .await;
            let uri = server.uri();
            _wiremock = server;
            uri
        }
        "bare" => format!("http://{}", support::bare_hyper(2)),
        other => {
            eprintln!("bench_server: expected wiremock, wiremock-quiet or bare, not {other:?}");
            std::process::exit(2);
        }
    };
    println!("{uri}");
    let _ = std::io::stdout().flush();
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count())
        .await
        .unwrap();
}
