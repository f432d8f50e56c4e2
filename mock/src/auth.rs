//! The admin API's token: required for `/__admin/*` when one is set, and set whenever
//! the server listens beyond loopback.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::response::{Body, problem};

/// The environment variable the standalone binary reads the token from, so that it
/// stays out of process lists.
pub const ADMIN_TOKEN_ENV: &str = "IDEMPOTENT_MOCK_ADMIN_TOKEN";

/// A secret that is never printed: `Debug` shows `[redacted]`.
#[derive(Clone)]
pub(crate) struct AdminToken(Arc<str>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl AdminToken {
    pub(crate) fn new(token: &str) -> Result<Self, String> {
        if token.is_empty() {
            return Err("admin_token is empty; choose a long random string".into());
        }
        if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(
                "admin_token must be visible ASCII (it travels in an Authorization header)".into(),
            );
        }
        Ok(Self(token.into()))
    }

    /// `None` when `headers` carry `Authorization: Bearer <this token>`, else the `401`
    /// to answer.
    pub(crate) fn refusal(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if given.is_some_and(|given| same_secret(given, self.0.as_bytes())) {
            return None;
        }
        let mut answer = problem(
            StatusCode::UNAUTHORIZED,
            "Admin token required",
            "send the server's admin token as `Authorization: Bearer <token>`",
        );
        answer
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(answer)
    }
}

/// Whether `given` equals `expected`, taking the same time whatever `given` holds: every
/// byte of `expected` is compared, so a guess learns nothing from how fast it is refused.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut differ = u8::from(given.len() != expected.len());
    for (i, byte) in expected.iter().enumerate() {
        differ |= byte ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(differ) == 0
}

/// Refuses a server that anyone on the network could reset or fault, when it has no
/// admin token.
pub(crate) fn check_exposure(addr: SocketAddr, token: Option<&AdminToken>) -> Result<(), String> {
    if token.is_some() || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "the server would listen on {addr}, beyond loopback, where anyone who can reach it \
         could reset it or inject faults through /__admin/*; set an admin token \
         (MockServerBuilder::admin_token, or for the binary {ADMIN_TOKEN_ENV}=<token> or \
         --admin-token <token>) and send it as `Authorization: Bearer <token>`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        for guess in [&b""[..], b"s", b"s3cre", b"s3cret!", b"S3cret", b"x3cret"] {
            assert!(!same_secret(guess, b"s3cret"), "{guess:?}");
        }
    }

    #[test]
    fn the_token_is_never_printed() {
        let token = AdminToken::new("s3cret").unwrap();
        assert_eq!(format!("{token:?}"), "[redacted]");
        assert!(AdminToken::new("").is_err());
        assert!(AdminToken::new("has\nnewline").is_err());
    }

    #[test]
    fn beyond_loopback_a_token_is_required() {
        let token = AdminToken::new("s3cret").unwrap();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let err = check_exposure(public, None).unwrap_err();
        assert!(
            err.contains("admin_token") && err.contains(ADMIN_TOKEN_ENV),
            "{err}"
        );
        assert!(check_exposure(public, Some(&token)).is_ok());
        assert!(check_exposure(local, None).is_ok());
        assert!(check_exposure("[::1]:80".parse().unwrap(), None).is_ok());
    }
}
