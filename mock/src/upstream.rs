//! Proxy mode: every request that is not `/__admin/*` goes on to the caller's own
//! server (the upstream), and the upstream's answer comes back as it came. The proxy
//! stores and replays nothing itself: the point is to see what the upstream does with
//! a key, so faults act on either side of it and the key book (`keys.rs`) records each
//! exchange.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, Uri};

/// Headers that belong to one connection, not to the request or the answer: never
/// passed on (RFC 9110, section 7.6.1), with the length, which the body sets again.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

/// How long the proxy waits for the upstream's whole answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// The upstream server and the client that reaches it.
#[derive(Debug)]
pub(crate) struct Upstream {
    base: reqwest::Url,
    client: reqwest::Client,
    /// Where an answer's JSON body holds the resource it created (`/id`).
    pub(crate) id_pointer: Option<String>,
}

/// The upstream's answer, read whole.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Upstream {
    /// The upstream at `url` (`http` or `https`, any path a prefix of every request's);
    /// the error says what is wrong with it.
    pub(crate) fn new(url: &str, id_pointer: Option<String>) -> Result<Self, String> {
        let base = reqwest::Url::parse(url).map_err(|e| format!("upstream {url:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(format!("upstream {url:?}: an http:// or https:// URL"));
        }
        if let Some(pointer) = &id_pointer {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                return Err(format!(
                    "id pointer {pointer:?}: a JSON pointer starts with '/', as in /id"
                ));
            }
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(UPSTREAM_TIMEOUT)
            .build()
            .map_err(|e| format!("upstream: could not build its HTTP client: {e}"))?;
        Ok(Self {
            base,
            client,
            id_pointer,
        })
    }

    /// The upstream's URL for a request to `uri`: its origin, its path as a prefix.
    fn target(&self, uri: &Uri) -> String {
        let origin = self.base.origin().ascii_serialization();
        let prefix = self.base.path().trim_end_matches('/');
        let rest = uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{origin}{prefix}{rest}")
    }

    /// Sends the request on and reads the whole answer, up to `limit` bytes of body;
    /// the error says why there is no answer.
    pub(crate) async fn forward(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        limit: usize,
    ) -> Result<Answered, String> {
        let mut sent = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            if !HOP_BY_HOP.contains(name) && name != header::HOST {
                sent.append(name.clone(), value.clone());
            }
        }
        let request = self
            .client
            .request(method.clone(), self.target(uri))
            .headers(sent)
            .body(body);
        let mut response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        let mut headers = std::mem::take(response.headers_mut());
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > limit {
                return Err(format!("the upstream's answer is over {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answered {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// A client error with its causes, which say what went wrong on the wire.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
