//! The verifier: a fixed suite of checks that a server honours idempotency keys, run
//! against the server through its normal API only (no read-back endpoint, no database).
//! Each check uses keys of its own. A lost answer is made by a proxy of this crate in
//! front of the server, which drops the server's answer once the server has finished.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::MockError;
use crate::keys::{digest, resource_id};

/// One check of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Check {
    /// The same request twice gives the same status and resource.
    Replay,
    /// The answer lost after the server processed it; the retry gets the same resource.
    LostAnswer,
    /// Requests with one key at once: at most one resource among the successes.
    ConcurrentDuplicates,
    /// The same key with another body is refused (`422` per the IETF draft).
    PayloadMismatch,
    /// A request without the key (reported: `400` if the server requires keys).
    MissingKey,
    /// The same key under another `Authorization` is not answered with the first
    /// caller's resource.
    Scope,
    /// A key over 255 characters, or with a control character, is refused with `400`.
    MalformedKey,
    /// A replay after the key expired: out of scope (it needs the server's TTL).
    ReplayAfterExpiry,
}

impl Check {
    /// The check's name, as the report prints it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Check::Replay => "replay",
            Check::LostAnswer => "lost answer",
            Check::ConcurrentDuplicates => "concurrent duplicates",
            Check::PayloadMismatch => "payload mismatch",
            Check::MissingKey => "missing key",
            Check::Scope => "scope",
            Check::MalformedKey => "malformed key",
            Check::ReplayAfterExpiry => "replay after expiry",
        }
    }
}

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The server did what the rule says.
    Pass,
    /// It did not: the evidence holds the answers that prove it.
    Fail,
    /// The check could not apply (the evidence says why).
    NotApplicable,
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CheckResult {
    /// Which check.
    pub check: Check,
    /// What it found.
    pub outcome: Outcome,
    /// Whether a failure fails the suite (the missing-key check is reported only).
    pub required: bool,
    /// The answers behind the outcome, or a note on it.
    pub evidence: String,
}

/// The suite's report: one result per check, in the suite's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The server verified.
    pub upstream: String,
    /// Each check's result.
    pub checks: Vec<CheckResult>,
}

impl VerifyReport {
    /// Whether every required check passed (or did not apply).
    #[must_use]
    pub fn passed(&self) -> bool {
        self.checks
            .iter()
            .all(|c| !c.required || c.outcome != Outcome::Fail)
    }

    /// The result of one check.
    #[must_use]
    pub fn outcome(&self, check: Check) -> Option<Outcome> {
        self.checks
            .iter()
            .find(|c| c.check == check)
            .map(|c| c.outcome)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let outcome = match c.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::NotApplicable => "NOT APPLICABLE",
            };
            writeln!(f, "{outcome:<14} {:<22} {}", c.check.name(), c.evidence)?;
        }
        writeln!(f)?;
        writeln!(f, "| check | required | outcome |")?;
        writeln!(f, "|---|---|---|")?;
        for c in &self.checks {
            let required = if c.required { "yes" } else { "no" };
            writeln!(f, "| {} | {required} | {:?} |", c.check.name(), c.outcome)?;
        }
        let verdict = if self.passed() {
            "every required check passed"
        } else {
            "some required check FAILED"
        };
        write!(f, "\n{}: {verdict}", self.upstream)
    }
}

/// The suite's settings: the server and the one request it sends. Build with
/// [`Verifier::new`], then [`run`](Verifier::run).
///
/// ```no_run
/// use idempotent_retry_mock::Verifier;
///
/// # async fn run() -> Result<(), idempotent_retry_mock::MockError> {
/// let report = Verifier::new("http://127.0.0.1:8080", "POST /v1/orders")
///     .body(r#"{"amount":100}"#)
///     .header("Authorization", "Bearer sk_test_1")
///     .other_authorization("Bearer sk_test_2")
///     .id_pointer("/id")
///     .run()
///     .await?;
/// println!("{report}");
/// assert!(report.passed());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Verifier {
    upstream: String,
    route: String,
    body: Bytes,
    headers: Vec<(String, String)>,
    id_pointer: Option<String>,
    key_header: String,
    other_authorization: Option<String>,
    concurrency: usize,
    seed: u64,
}

/// One answer of the server, as the checks compare them.
#[derive(Clone, Debug)]
struct Seen {
    status: u16,
    /// The resource it names, at the id pointer; else a digest of its body.
    identity: String,
    replayed: bool,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.identity)?;
        if self.replayed {
            f.write_str(" (replayed)")?;
        }
        Ok(())
    }
}

impl Seen {
    fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Verifier {
    /// Checks the server at `upstream` with requests to `route` (`"POST /v1/orders"`).
    pub fn new(upstream: impl Into<String>, route: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            route: route.into(),
            body: Bytes::new(),
            headers: Vec::new(),
            id_pointer: None,
            key_header: "Idempotency-Key".into(),
            other_authorization: None,
            concurrency: 8,
            seed: 0,
        }
    }

    /// The request's body (JSON, form, anything the route takes).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// A header every request carries (`Authorization`, `Content-Type`, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Where an answer's JSON names the resource it created (`/id`); without it,
    /// answers are compared by their bodies.
    pub fn id_pointer(mut self, pointer: impl Into<String>) -> Self {
        self.id_pointer = Some(pointer.into());
        self
    }

    /// The header the key travels in (default `Idempotency-Key`).
    pub fn key_header(mut self, name: impl Into<String>) -> Self {
        self.key_header = name.into();
        self
    }

    /// Another caller's `Authorization`, for the scope check (which needs the
    /// `Authorization` header too).
    pub fn other_authorization(mut self, value: impl Into<String>) -> Self {
        self.other_authorization = Some(value.into());
        self
    }

    /// Requests sent at once by the concurrent-duplicates check (default 8).
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(2);
        self
    }

    /// Seeds the keys the checks use (each run also mixes in the time, so that two
    /// runs against one server never share a key).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs every check, in order.
    ///
    /// # Errors
    ///
    /// [`MockError::InvalidConfig`] for a route that is not `METHOD /path`, an upstream
    /// that is not an `http(s)` URL, or a header that is not one; nothing is sent then.
    pub async fn run(self) -> Result<VerifyReport, MockError> {
        let run = Run::new(self)?;
        let checks = vec![
            run.replay().await,
            run.lost_answer().await,
            run.concurrent().await,
            run.mismatch().await,
            run.missing_key().await,
            run.scope().await,
            run.malformed().await,
            Run::result(
                Check::ReplayAfterExpiry,
                Outcome::NotApplicable,
                "out of scope: it needs the server's key TTL to pass",
            ),
        ];
        Ok(VerifyReport {
            upstream: run.settings.upstream.clone(),
            checks,
        })
    }
}

/// A run of the suite: its settings, checked, and the client that sends.
struct Run {
    settings: Verifier,
    method: Method,
    /// The route's path, as every check sends it (to the server, or to a proxy).
    path: String,
    /// The server's URL for it.
    url: String,
    headers: http::HeaderMap,
    key_header: HeaderName,
    client: reqwest::Client,
    nonce: u64,
}

impl Run {
    fn new(settings: Verifier) -> Result<Self, MockError> {
        let invalid = |reason: String| MockError::InvalidConfig { reason };
        let (method, path) = settings
            .route
            .split_once(' ')
            .filter(|(_, path)| path.starts_with('/'))
            .ok_or_else(|| invalid(format!("route {:?}: METHOD /path", settings.route)))?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| invalid(format!("route {:?}: not a method", settings.route)))?;
        let base = reqwest::Url::parse(&settings.upstream)
            .map_err(|e| invalid(format!("upstream {:?}: {e}", settings.upstream)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "upstream {:?}: http(s) only",
                settings.upstream
            )));
        }
        let mut headers = http::HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| invalid(format!("header {name:?}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| invalid(format!("header {name}: {e}")))?;
            headers.append(name, value);
        }
        let key_header = HeaderName::try_from(settings.key_header.as_str())
            .map_err(|e| invalid(format!("key header {:?}: {e}", settings.key_header)))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| invalid(format!("could not build the HTTP client: {e}")))?;
        let url = format!("{}{}", settings.upstream.trim_end_matches('/'), path);
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            method,
            url,
            path: path.to_owned(),
            headers,
            key_header,
            client,
            nonce,
            settings,
        })
    }

    /// A fresh key for `check`.
    fn key(&self, check: &str) -> String {
        format!("verify-{:x}-{:x}-{check}", self.settings.seed, self.nonce)
    }

    /// Sends the request to `url` with `key` (none: without the key header), `body`,
    /// and `authorization` in place of the configured one; the answer, or why there is
    /// none.
    async fn send_to(
        &self,
        url: &str,
        key: Option<&str>,
        body: &Bytes,
        authorization: Option<&str>,
    ) -> Result<Seen, String> {
        let mut headers = self.headers.clone();
        if let Some(key) = key {
            let value = HeaderValue::try_from(key).map_err(|e| e.to_string())?;
            headers.insert(self.key_header.clone(), value);
        }
        if let Some(authorization) = authorization {
            let value = HeaderValue::try_from(authorization).map_err(|e| e.to_string())?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let response = self
            .client
            .request(self.method.clone(), url)
            .headers(headers)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("no body: {e}"))?;
        let pointer = self.settings.id_pointer.as_deref();
        let identity = identity(pointer.and_then(|p| resource_id(&body, p)), &digest(&body));
        Ok(Seen {
            status,
            identity,
            replayed,
        })
    }

    async fn send(&self, key: Option<&str>) -> Result<Seen, String> {
        self.send_to(&self.url, key, &self.settings.body, None)
            .await
    }

    fn result(check: Check, outcome: Outcome, evidence: impl Into<String>) -> CheckResult {
        CheckResult {
            check,
            outcome,
            required: !matches!(check, Check::MissingKey | Check::ReplayAfterExpiry),
            evidence: evidence.into(),
        }
    }
}

/// What an answer is compared by: the resource it names, else its body's digest
/// (the first eight characters, enough to tell answers apart in a report).
fn identity(resource_id: Option<String>, body_digest: &str) -> String {
    resource_id.unwrap_or_else(|| format!("body #{}", body_digest.get(..8).unwrap_or(body_digest)))
}

mod checks;
