//! `idempotent-mock-server`: the bundled idempotent mock server as a program, for
//! clients in any language. Prints the address it listens on, then serves until killed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use idempotent_retry_mock::parse_duration;
use idempotent_retry_mock::{ADMIN_TOKEN_ENV, MockServer, MockServerBuilder, Verifier};

const USAGE: &str = "\
usage: idempotent-mock-server [options]

  --addr ADDR              listen address (default 127.0.0.1:0, a free port)
  --seed N                 seed for random faults (default 0)
  --fault-rate R           share of POST/PATCH requests given a random fault,
                           spread over all eleven kinds (0 to 1, default 0)
  --require-key            answer 400 to POST/PATCH without Idempotency-Key
  --key-ttl DURATION       how long completed keys are remembered (default 24h)
  --processing-delay DUR   time spent inside each operation (default 0ms)
  --max-keys N             most keys stored at once (default 100000)
  --threads N              worker threads (default: every core, here {cores})
  --stubs FILE             play your API: routes from a TOML or JSON stub file
                           (repeatable; tried in the order given), and optionally
                           an [outage] and [stall] from the start
  --upstream URL           proxy mode: forward every request to your own server
                           at URL and pass its answers back, faults applied on
                           either side; GET /__admin/keys tells per key what it
                           answered and whether it executed a key twice
  --id-pointer POINTER     proxy mode: where an answer's JSON names the resource
                           it created (a JSON pointer, such as /id)
  --admin-token TOKEN      require `Authorization: Bearer TOKEN` on /__admin/*;
                           needed when --addr is not loopback (better: set it in
                           the IDEMPOTENT_MOCK_ADMIN_TOKEN environment variable,
                           out of process lists; the flag wins over it)
  --log-requests           one line per request on stderr: method, path, key,
                           status, replayed or the fault drawn
  --check                  check the settings and stub files, then exit
  -V, --version            the version
  -h, --help               this text

idempotent-mock-server verify --upstream URL --route \"POST /path\" [options]
                           check that your server honours idempotency keys
                           (idempotent-mock-server verify --help)

Durations are a number and a unit: 250ms, 1.5s, 5m, 24h, 2h 30m.
Admin: GET /__admin/stats (with a per-route section), GET /__admin/requests (the log,
headers and bodies), GET /__admin/keys (proxy mode: per key, what the upstream did), GET and POST /__admin/routes (list, add at run time),
POST /__admin/faults (optional \"route\": a name or \"METHOD /path\"), POST /__admin/outage
({\"status\": 503, \"duration\": \"5s\"}), POST /__admin/stall ({\"share\": 0.02, \"duration\": \"1s\"}),
POST /__admin/reset.";

/// The `verify` subcommand's usage.
const VERIFY_USAGE: &str = "\
usage: idempotent-mock-server verify --upstream URL --route \"POST /v1/orders\" [options]

Checks that the server at URL honours idempotency keys, through its normal API only:
replay, lost answer, concurrent duplicates, payload mismatch, missing key, scope,
malformed key (replay after expiry: out of scope). One line per check with its
evidence, then a table. Exit status 0 only if every required check passes.

  --upstream URL             the server to check
  --route \"METHOD /path\"     the request every check sends
  --body TEXT                its body
  --header NAME:VALUE        a header every request carries (repeatable)
  --id-pointer POINTER       where an answer's JSON names its resource (/id)
  --key-header NAME          the key's header (default Idempotency-Key)
  --other-authorization V    another caller's Authorization, for the scope check
  --concurrency N            requests at once in the concurrency check (default 8)
  --seed N                   seeds the keys
  --json FILE                also write the report as JSON";

fn main() -> ExitCode {
    let token = std::env::var(ADMIN_TOKEN_ENV).ok();
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("verify") {
        args.next();
        return verify(args);
    }
    match parse(args, token) {
        Ok(Parsed::Serve(builder)) => run(builder),
        Ok(Parsed::Check(builder)) => check(&builder),
        Ok(Parsed::Help) => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        Ok(Parsed::Version) => {
            println!(
                "idempotent-mock-server {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("CARGO_PKG_NAME")
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("idempotent-mock-server: {message}\n\n{}", usage());
            ExitCode::from(2)
        }
    }
}

fn check(builder: &MockServerBuilder) -> ExitCode {
    match builder.check() {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("idempotent-mock-server: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(builder: MockServerBuilder) -> ExitCode {
    let server = match builder.start_blocking() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("idempotent-mock-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.uri());
    // The server runs on its own threads; this one only has to stay alive.
    loop {
        std::thread::park();
    }
}

/// The verifier and where its JSON report goes, from `verify`'s arguments.
fn verify_args(
    mut args: impl Iterator<Item = String>,
) -> Result<(Verifier, Option<String>), String> {
    let (mut upstream, mut route, mut json) = (None, None, None);
    let mut settings: Vec<(String, String)> = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err("help".into());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upstream" => upstream = Some(value),
            "--route" => route = Some(value),
            "--json" => json = Some(value),
            "--body"
            | "--header"
            | "--id-pointer"
            | "--key-header"
            | "--other-authorization"
            | "--concurrency"
            | "--seed" => settings.push((flag, value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let upstream = upstream.ok_or("--upstream URL is needed")?;
    let route = route.ok_or("--route \"METHOD /path\" is needed")?;
    let mut verifier = Verifier::new(upstream, route);
    for (flag, value) in settings {
        verifier = match flag.as_str() {
            "--body" => verifier.body(value),
            "--header" => {
                let (name, text) = value
                    .split_once(':')
                    .ok_or_else(|| format!("--header {value:?}: NAME:VALUE"))?;
                verifier.header(name.trim(), text.trim())
            }
            "--id-pointer" => verifier.id_pointer(value),
            "--key-header" => verifier.key_header(value),
            "--other-authorization" => verifier.other_authorization(value),
            "--concurrency" => verifier.concurrency(number(&flag, &value)?),
            _ => verifier.seed(number(&flag, &value)?),
        };
    }
    Ok((verifier, json))
}

/// `verify`: runs the suite and prints its report.
fn verify(args: impl Iterator<Item = String>) -> ExitCode {
    let (verifier, json) = match verify_args(args) {
        Ok(parsed) => parsed,
        Err(help) if help == "help" => {
            println!("{VERIFY_USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("idempotent-mock-server verify: {message}\n\n{VERIFY_USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let report = match runtime.map(|r| r.block_on(verifier.run())) {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("idempotent-mock-server verify: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("idempotent-mock-server verify: could not start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{report}");
    if let Some(path) = json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|text| std::fs::write(&path, text).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("idempotent-mock-server verify: could not write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the command line asks for.
enum Parsed {
    Serve(MockServerBuilder),
    Check(MockServerBuilder),
    Help,
    Version,
}

/// What the arguments ask for (`env_token`: the admin token from the environment), or
/// what is wrong.
fn parse(
    mut args: impl Iterator<Item = String>,
    env_token: Option<String>,
) -> Result<Parsed, String> {
    let mut builder = MockServer::builder().threads(cores());
    let mut check = false;
    let mut token = env_token.filter(|t| !t.is_empty());
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        builder = match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--admin-token" => {
                token = Some(value()?);
                builder
            }
            "--log-requests" => builder.log_requests(true),
            "--addr" => {
                let text = value()?;
                builder.addr(
                    text.parse::<SocketAddr>()
                        .map_err(|e| format!("--addr {text}: {e}"))?,
                )
            }
            "--seed" => builder.seed(number(&flag, &value()?)?),
            "--fault-rate" => {
                let text = value()?;
                let rate: f64 = text
                    .parse()
                    .map_err(|_| format!("--fault-rate {text}: not a number"))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("--fault-rate {text}: must be between 0 and 1"));
                }
                builder.fault_rate(rate)
            }
            "--require-key" => builder.require_key(true),
            "--key-ttl" => builder.key_ttl(duration(&flag, &value()?)?),
            "--processing-delay" => builder.processing_delay(duration(&flag, &value()?)?),
            "--max-keys" => builder.max_keys(number(&flag, &value()?)?),
            "--threads" => {
                let threads: usize = number(&flag, &value()?)?;
                if threads == 0 {
                    return Err("--threads must be at least 1".into());
                }
                builder.threads(threads)
            }
            "--stubs" => builder.stubs_file(value()?),
            "--upstream" => builder.upstream(value()?),
            "--id-pointer" => builder.id_pointer(value()?),
            "--check" => {
                check = true;
                builder
            }
            other => return Err(format!("unknown option {other}")),
        };
    }
    if let Some(token) = token {
        builder = builder.admin_token(token);
    }
    Ok(if check {
        Parsed::Check(builder)
    } else {
        Parsed::Serve(builder)
    })
}

/// The help text, with this machine's core count.
fn usage() -> String {
    USAGE.replace("{cores}", &cores().to_string())
}

/// The machine's available parallelism (1 if it cannot be told).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} {text}: not a whole number"))
}

fn duration(flag: &str, text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| format!("{flag}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Parsed, String> {
        parse(list.iter().map(|s| (*s).to_owned()), None)
    }

    #[test]
    fn accepts_every_flag() {
        let parsed = args(&[
            "--addr",
            "127.0.0.1:0",
            "--seed",
            "7",
            "--fault-rate",
            "0.3",
            "--require-key",
            "--key-ttl",
            "1h",
            "--processing-delay",
            "250ms",
            "--max-keys",
            "10",
            "--threads",
            "4",
            "--stubs",
            "api.toml",
            "--admin-token",
            "t0ken",
            "--log-requests",
            "--check",
        ]);
        assert!(matches!(parsed, Ok(Parsed::Check(_))));
        let proxy = args(&[
            "--upstream",
            "http://127.0.0.1:8080",
            "--id-pointer",
            "/id",
            "--check",
        ]);
        assert!(matches!(proxy, Ok(Parsed::Check(_))));
        assert!(matches!(args(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(args(&["-V"]), Ok(Parsed::Version)));
        assert!(matches!(args(&["--version"]), Ok(Parsed::Version)));
    }

    #[test]
    fn beyond_loopback_the_token_comes_from_the_flag_or_the_environment() {
        let public = ["--addr", "0.0.0.0:0"];
        let check = |parsed: Result<Parsed, String>| match parsed {
            Ok(Parsed::Serve(builder)) => builder.check().map_err(|e| e.to_string()),
            _ => Err("not a serve".into()),
        };
        let err = check(args(&public)).unwrap_err();
        assert!(err.contains(ADMIN_TOKEN_ENV), "{err}");
        let from_env = parse(public.iter().map(|s| (*s).to_owned()), Some("t0ken".into()));
        assert!(check(from_env).is_ok());
        let mut with_flag = public.to_vec();
        with_flag.extend(["--admin-token", "t0ken"]);
        assert!(check(args(&with_flag)).is_ok());
    }

    #[test]
    fn rejects_bad_flags_with_a_reason() {
        for (list, needle) in [
            (&["--bogus"][..], "unknown option"),
            (&["--seed"][..], "needs a value"),
            (&["--seed", "x"][..], "not a whole number"),
            (&["--fault-rate", "1.5"][..], "between 0 and 1"),
            (&["--fault-rate", "lots"][..], "not a number"),
            (&["--key-ttl", "forever"][..], "--key-ttl"),
            (&["--addr", "localhost"][..], "--addr"),
            (&["--threads", "0"][..], "at least 1"),
        ] {
            let err = args(list).err().unwrap_or_default();
            assert!(err.contains(needle), "{list:?}: {err}");
        }
    }
}
