//! Exactly once across crashes: a journalled worker killed at random, again and again.
//!
//! Starts the mock server in its own process with random faults, playing an API behind
//! a bearer token (`Bearer sk_demo` creates an order; anything else is a 401), then a
//! worker process that runs N operations, each with an operation id and the token,
//! through an `IdempotentClient` with a SQLite journal. The token is never journalled:
//! resumes get it from the client's `resume_credentials` provider, asked afresh each
//! time. The worker is killed (SIGKILL: no cleanup, no flush) at random
//! moments and restarted each time; every start first resumes what the journal holds,
//! then runs every operation from the top, as an application would after a crash. In the
//! end one worker runs to completion, and the server's own count decides: every
//! operation executed exactly once, no key twice in any scope, no 401, every final
//! answer recorded, nothing left pending. Exits non-zero otherwise.
//!
//! With `--postgres URL` (feature `journal-postgres`), the journal is PostgreSQL and
//! `--workers N` worker processes (a fleet) share it, each killed at random in every
//! round.
//!
//! ```text
//! cargo run --release --features journal-sqlite --example crash -- [--ops 3000] [--kills 20] [--seed 7] [--fault-rate 0.2]
//! cargo run --release --all-features --example crash -- --postgres postgres://user@127.0.0.1/db --workers 3
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotent_retry::journal::{Journal, PendingOperation, SqliteJournal};
use idempotent_retry::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use idempotent_retry::{IdempotentClient, RetryBudget, RetryPolicy};
use idempotent_retry_mock::{MockServer, Route};
use serde_json::{Value, json};

/// A worker's attempt timeout; its journal's lease must outlast it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
const LEASE: Duration = Duration::from_secs(2);
/// How many operations a worker drives at once.
const CONCURRENCY: usize = 16;
/// The API token the server accepts (a real worker would read it from its secret store).
const TOKEN: &str = "sk_demo";

struct Args {
    ops: u64,
    kills: u32,
    seed: u64,
    fault_rate: f64,
    postgres: Option<String>,
    workers: usize,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        ops: 3000,
        kills: 20,
        seed: 7,
        fault_rate: 0.2,
        postgres: None,
        workers: 1,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag} {value}: not a valid number");
        match flag.as_str() {
            "--ops" => args.ops = value.parse().map_err(|_| bad())?,
            "--kills" => args.kills = value.parse().map_err(|_| bad())?,
            "--seed" => args.seed = value.parse().map_err(|_| bad())?,
            "--fault-rate" => args.fault_rate = value.parse().map_err(|_| bad())?,
            "--postgres" => args.postgres = Some(value),
            "--workers" => args.workers = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if args.postgres.is_some() && cfg!(not(feature = "journal-postgres")) {
        return Err("--postgres needs the journal-postgres feature".into());
    }
    if !(0.0..1.0).contains(&args.fault_rate) {
        return Err("--fault-rate must be at least 0 and below 1".into());
    }
    if args.workers == 0 || (args.workers > 1 && args.postgres.is_none()) {
        return Err(
            "--workers above 1 needs --postgres (a fleet shares a PostgreSQL journal)".into(),
        );
    }
    Ok(args)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    match argv.peek().map(String::as_str) {
        Some("server") => {
            argv.next();
            server(argv)
        }
        Some("worker") => {
            argv.next();
            worker(argv)
        }
        _ => match parse_args(argv) {
            Ok(args) => orchestrate(&args),
            Err(e) => {
                eprintln!("crash: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// The mock server, in this process, until its standard input closes.
fn server(mut argv: impl Iterator<Item = String>) -> ExitCode {
    let (Some(seed), Some(rate)) = (argv.next(), argv.next()) else {
        return ExitCode::from(2);
    };
    let (Ok(seed), Ok(rate)) = (seed.parse::<u64>(), rate.parse::<f64>()) else {
        return ExitCode::from(2);
    };
    // The API: a valid token creates the order, anything else is refused (not stored).
    let server = match MockServer::builder()
        .route(
            Route::post("/orders")
                .name("create")
                .when("header.authorization", format!("Bearer {TOKEN}"))
                .status(201)
                .id_prefix("ord_")
                .body(r#"{"id": "{{id}}", "op": {{body.op}}}"#),
        )
        .route(
            Route::post("/orders")
                .name("unauthorized")
                .status(401)
                .store(false)
                .body(r#"{"error": "invalid_token"}"#),
        )
        .seed(seed)
        .fault_rate(rate)
        .start_blocking()
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("crash server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", server.uri());
    let _ = std::io::stdout().flush();
    // Runs until the orchestrator closes our input (or dies).
    let _ = std::io::stdin().lines().count();
    ExitCode::SUCCESS
}

/// One worker run: resume what the journal holds, then every operation from the top.
/// Exits 0 once every operation has its final answer.
fn worker(mut argv: impl Iterator<Item = String>) -> ExitCode {
    let (Some(uri), Some(journal), Some(ops)) = (argv.next(), argv.next(), argv.next()) else {
        return ExitCode::from(2);
    };
    let Ok(ops) = ops.parse::<u64>() else {
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("crash worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_worker(&uri, &journal, ops)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("crash worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The journal a worker uses: PostgreSQL for a URL, else the SQLite file at `place`.
async fn open_journal(
    place: &str,
    namespace: &str,
) -> Result<Box<dyn JournalHandle>, idempotent_retry::Error> {
    #[cfg(feature = "journal-postgres")]
    if place.starts_with("postgres://") {
        return Ok(Box::new(
            idempotent_retry::journal::PostgresJournal::builder(place)
                .namespace(namespace)
                .lease_duration(LEASE)
                .connect()
                .await?,
        ));
    }
    Ok(Box::new(
        SqliteJournal::builder(place)
            .lease_duration(LEASE)
            .open()
            .await?,
    ))
}

/// The environment variable that hands a run's namespace in a PostgreSQL journal to
/// its workers: a database that kept an earlier run's operations (under the same ids,
/// for another server's URL) does not mix them in.
const NAMESPACE: &str = "CRASH_DEMO_NAMESPACE";

/// Either journal, to hand to the client builder.
trait JournalHandle {
    fn into_builder(
        self: Box<Self>,
        builder: idempotent_retry::IdempotentClientBuilder,
    ) -> idempotent_retry::IdempotentClientBuilder;
}

impl<J: Journal> JournalHandle for J {
    fn into_builder(
        self: Box<Self>,
        builder: idempotent_retry::IdempotentClientBuilder,
    ) -> idempotent_retry::IdempotentClientBuilder {
        builder.journal(*self)
    }
}

/// The credentials a resumed operation is sent with: asked for at each resume, so a
/// token rotated meanwhile is the one sent (here it never rotates).
async fn current_credentials(_operation: &PendingOperation) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {TOKEN}")) {
        headers.insert(AUTHORIZATION, value);
    }
    headers
}

async fn run_worker(uri: &str, journal: &str, ops: u64) -> Result<bool, idempotent_retry::Error> {
    let namespace = std::env::var(NAMESPACE).unwrap_or_else(|_| "crash-demo".into());
    let journal = open_journal(journal, &namespace).await?;
    let client = journal
        .into_builder(IdempotentClient::builder())
        .resume_credentials(|op: &PendingOperation| {
            let op = op.clone();
            async move { current_credentials(&op).await }
        })
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .retry_policy(
            RetryPolicy::exponential()
                .max_attempts(6)
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(200))
                .deadline(Duration::from_secs(10)),
        )
        .retry_budget(RetryBudget::unlimited())
        .build()?;
    let report = client.resume_pending().await?;
    // For the orchestrator's table: operations this start found pending and finished.
    println!("resumed {}", report.completed.len());
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for op in 0..ops {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, url) = (client.clone(), format!("{uri}/orders"));
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            client
                .post_idempotent(url)
                .bearer_auth(TOKEN)
                .operation_id(format!("order-{op}"))
                .json(&json!({ "op": op }))
                .send()
                .await
                .is_ok_and(|resp| resp.status() == 201)
        }));
    }
    let mut done = true;
    for task in tasks {
        done &= task.await.unwrap_or(false);
    }
    Ok(done)
}

/// A small seeded generator for the kill times (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn spawn_worker(
    exe: &Path,
    uri: &str,
    journal: &str,
    ops: u64,
    namespace: &str,
) -> std::io::Result<Child> {
    Command::new(exe)
        .env(NAMESPACE, namespace)
        .arg("worker")
        .arg(uri)
        .arg(journal)
        .arg(ops.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
}

/// Waits for a worker and adds up the operations it resumed, if it lived to say.
fn reap(mut child: Child, resumed: &mut u64) -> std::io::Result<std::process::ExitStatus> {
    let status = child.wait()?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("resumed ") {
                *resumed += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(status)
}

fn orchestrate(args: &Args) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crash: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let namespace = format!("crash-demo-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("idempotent-retry-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let journal: String = match &args.postgres {
        Some(url) => url.clone(),
        None => dir.join("ops.db").display().to_string(),
    };

    let mut server = Command::new(&exe)
        .arg("server")
        .arg(args.seed.to_string())
        .arg(args.fault_rate.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut first_line = String::new();
    if let Some(out) = server.stdout.take() {
        BufReader::new(out).read_line(&mut first_line)?;
    }
    let uri = first_line.trim().to_owned();
    if !uri.starts_with("http://") {
        let _ = server.kill();
        return Err(format!("the server did not start: {first_line:?}").into());
    }
    println!(
        "{} operations against the mock server at {uri} ({:.0} % of requests faulted, its own \
         process); {} journalled worker(s) sharing a {} journal, killed at random in {} rounds \
         (seed {})",
        args.ops,
        args.fault_rate * 100.0,
        args.workers,
        if args.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.kills,
        args.seed
    );

    let started = Instant::now();
    let mut rng = Rng(args.seed);
    let (mut kills, mut resumed) = (0, 0);
    for _ in 0..args.kills {
        let mut fleet = Vec::new();
        for _ in 0..args.workers {
            fleet.push(spawn_worker(&exe, &uri, &journal, args.ops, &namespace)?);
        }
        for mut child in fleet {
            std::thread::sleep(Duration::from_millis(20 + rng.next() % 250));
            if child.try_wait()?.is_none() {
                child.kill()?; // SIGKILL: the worker gets no chance to clean up.
                kills += 1;
            }
            reap(child, &mut resumed)?;
        }
    }
    let mut finishing_runs = 0;
    let finished = loop {
        finishing_runs += 1;
        let mut fleet = Vec::new();
        for _ in 0..args.workers {
            fleet.push(spawn_worker(&exe, &uri, &journal, args.ops, &namespace)?);
        }
        let mut all = true;
        for child in fleet {
            all &= reap(child, &mut resumed)?.success();
        }
        if all {
            break true;
        }
        if finishing_runs >= 10 {
            break false;
        }
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stats, pending, recorded) = runtime.block_on(async {
        let stats: Value = reqwest::get(format!("{uri}/__admin/stats"))
            .await?
            .json()
            .await?;
        let client = open_journal(&journal, &namespace)
            .await?
            .into_builder(IdempotentClient::builder())
            .attempt_timeout(ATTEMPT_TIMEOUT)
            .build()?;
        let pending = client.pending().await?.len();
        // Every operation's final answer is in the journal: a 201 with its order.
        let mut recorded = 0;
        for op in 0..args.ops {
            let answer = client.recorded_answer(&format!("order-{op}")).await?;
            recorded += u64::from(answer.is_some_and(|a| a.status == 201));
        }
        Ok::<_, Box<dyn std::error::Error>>((stats, pending, recorded))
    })?;
    drop(server.stdin.take());
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let route = |name: &str, field: &str| {
        stats["routes"]
            .as_array()
            .and_then(|routes| routes.iter().find(|r| r["name"] == name))
            .and_then(|r| r[field].as_u64())
            .unwrap_or(0)
    };
    // Orders created; a 401 would be a request that went out without its token.
    let executions = route("create", "executions");
    let unauthorized = route("unauthorized", "requests");
    // Keys executed twice, in one scope or across two.
    let duplicates = stats["duplicates"].as_array().map_or(0, Vec::len);
    println!();
    println!(
        "| kills | operations | executions | duplicates | pending | resumed at a start | requests | 401s | answers recorded | worker runs to finish | time |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {kills} | {} | {executions} | {duplicates} | {pending} | {resumed} | {} | {unauthorized} | {recorded} | {finishing_runs} | {:.1} s |",
        args.ops,
        stats["requests"].as_u64().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    let ok = finished
        && executions == args.ops
        && duplicates == 0
        && pending == 0
        && unauthorized == 0
        && recorded == args.ops;
    if ok {
        println!("\nOK: every operation executed exactly once, across {kills} kills.");
    } else {
        println!(
            "\nFAIL: expected {} executions and recorded answers, 0 duplicates, 0 401s and 0 pending{}",
            args.ops,
            if finished {
                ""
            } else {
                "; the last worker never finished"
            }
        );
    }
    Ok(ok)
}
