//! The final response of an operation.

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use serde::de::DeserializeOwned;

use crate::{Error, IdempotencyKey};

/// The header with which idempotent servers (Stripe, our mock) mark a stored response
/// answered again for a repeated key.
const REPLAYED: &str = "idempotent-replayed";

/// The response that ended an operation, with the key and attempts that led to it.
///
/// The body is already read: an attempt only counts as answered once its whole
/// response arrived, so a connection that breaks mid-body is retried like any other
/// lost response. The body is buffered in memory.
#[derive(Debug, Clone)]
pub struct IdempotentResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) url: reqwest::Url,
    pub(crate) body: Bytes,
    pub(crate) key: IdempotencyKey,
    pub(crate) attempts: u32,
    pub(crate) hedges: u32,
}

/// Whether `headers` mark a stored answer sent again (`Idempotent-Replayed: true`).
pub(crate) fn is_replayed(headers: &HeaderMap) -> bool {
    headers
        .get(REPLAYED)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

impl IdempotentResponse {
    /// The status code.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    #[must_use]
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The HTTP version.
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }

    /// The final URL, after redirects.
    #[must_use]
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The key sent on every attempt of this operation.
    #[must_use]
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// Attempts made, the first one included.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Hedges started for this operation ([`Hedging`](crate::Hedging)), counted in
    /// [`attempts`](Self::attempts) too.
    #[must_use]
    pub fn hedges(&self) -> u32 {
        self.hedges
    }

    /// Whether the server says this is a stored response answered again for a key it
    /// had already executed (`Idempotent-Replayed: true`, as Stripe and the bundled mock
    /// server send), rather than a fresh execution.
    #[must_use]
    pub fn is_replay(&self) -> bool {
        is_replayed(&self.headers)
    }

    /// The response itself if its status is a success (or an informational or
    /// redirect status), else [`Error::Status`] with the key, the status and the whole
    /// answer, as reqwest's `error_for_status` does.
    ///
    /// A 4xx the classifier calls final is an `Ok` response from
    /// [`send`](crate::IdempotentRequestBuilder::send), as with reqwest: without this
    /// check a `402 Payment Required` reads like a success.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] for a 4xx or 5xx answer. Ask it
    /// [`may_have_executed`](Error::may_have_executed): `false` for a 4xx refusal other
    /// than 409, `true` for a 5xx.
    ///
    /// ```
    /// # async fn run() -> Result<(), idempotent_retry::Error> {
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let charge = client
    ///     .post_idempotent("https://api.example/charges")
    ///     .send()
    ///     .await?
    ///     .error_for_status()?;
    /// # drop(charge);
    /// # Ok(())
    /// # }
    /// ```
    pub fn error_for_status(self) -> Result<Self, Error> {
        let status = self.status;
        if status.is_client_error() || status.is_server_error() {
            return Err(Error::Status {
                key: self.key.clone(),
                status,
                attempts: self.attempts,
                response: Box::new(self),
            });
        }
        Ok(self)
    }

    /// Deserializes the body as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] if the body is not valid JSON for `T`, with the key, the
    /// status and the attempts. The operation did get this answer: after a 2xx,
    /// [`Error::may_have_executed`] is `true`, so never start it over with a new key.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|source| Error::Decode {
            key: self.key,
            status: self.status,
            attempts: self.attempts,
            source,
        })
    }

    /// The body as text. Invalid UTF-8 sequences become U+FFFD.
    pub async fn text(self) -> Result<String, Error> {
        Ok(match String::from_utf8(self.body.into()) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The body as bytes.
    pub async fn bytes(self) -> Result<Bytes, Error> {
        Ok(self.body)
    }

    /// The response as an `http::Response`. `reqwest::Response` converts from it with
    /// `From` if you need one.
    #[must_use]
    pub fn into_inner(self) -> http::Response<Bytes> {
        let mut response = http::Response::new(self.body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        response
    }
}
