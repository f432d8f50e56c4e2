//! Between records and requests: the record of an operation about to be sent, the
//! request a recorded one re-sends (exactly its bytes), and a recorded answer as a
//! response.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};

use super::settings::JournalSettings;
use crate::IdempotencyKey;
use crate::IdempotentResponse;
use crate::journal::equivalent::fingerprint;
use crate::journal::{JournalError, RecordedAnswer, RecordedRequest};
use crate::operation::{Operation, Template};

/// The record of an operation: its template's bytes, secrets left out.
pub(super) fn record_of(operation: &Operation, js: &JournalSettings) -> RecordedRequest {
    let settings = &operation.client.inner.settings;
    let template = &operation.template;
    let headers = template.headers();
    let key_value = headers
        .get(&settings.key_header)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let mut secret_headers: Vec<String> = Vec::new();
    for (name, value) in headers {
        if js.is_secret(name, value) && !secret_headers.iter().any(|n| n == name.as_str()) {
            secret_headers.push(name.as_str().to_owned());
        }
    }
    let mut record = RecordedRequest {
        method: template.method().as_str().to_owned(),
        url: template.url().as_str().to_owned(),
        key: operation.key.as_str().to_owned(),
        key_header: settings.key_header.as_str().to_owned(),
        key_value,
        headers: headers
            .iter()
            .filter(|(name, value)| **name != settings.key_header && !js.is_secret(name, value))
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        secret_headers,
        body: template.body().cloned().unwrap_or_default(),
        fingerprint: None,
    };
    record.fingerprint = Some(fingerprint(&record));
    record
}

/// What every re-send of `request` sends: exactly its recorded bytes, with the values
/// of its secret headers.
pub(super) fn template_of(
    request: &RecordedRequest,
    secrets: &HeaderMap,
) -> Result<Template, JournalError> {
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| JournalError::corrupt(format!("method {:?}", request.method)))?;
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| JournalError::corrupt(format!("URL {:?}: {e}", request.url)))?;
    let mut built = reqwest::Request::new(method, url);
    let headers = built.headers_mut();
    let header = |name: &str, value: &[u8]| -> Result<(HeaderName, HeaderValue), JournalError> {
        Ok((
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| JournalError::corrupt(format!("header name {name:?}")))?,
            HeaderValue::from_bytes(value)
                .map_err(|_| JournalError::corrupt(format!("a value of header {name}")))?,
        ))
    };
    for (name, value) in &request.headers {
        let (name, value) = header(name, value)?;
        headers.append(name, value);
    }
    let (name, value) = header(&request.key_header, &request.key_value)?;
    headers.insert(name, value);
    for (name, value) in secrets {
        headers.append(name.clone(), value.clone());
    }
    let body = (!request.body.is_empty()).then(|| request.body.clone());
    Ok(Template::new(built, body))
}

/// The key of a recorded operation.
pub(super) fn recorded_key(request: &RecordedRequest) -> Result<IdempotencyKey, JournalError> {
    IdempotencyKey::parse(&request.key)
        .map_err(|_| JournalError::corrupt(format!("recorded key {:?}", request.key)))
}

/// A completed operation's recorded answer, as `send()` returns it: no attempt made.
pub(super) fn answer_of(
    request: &RecordedRequest,
    answer: &RecordedAnswer,
    key: IdempotencyKey,
) -> Result<IdempotentResponse, JournalError> {
    let status = http::StatusCode::from_u16(answer.status)
        .map_err(|_| JournalError::corrupt(format!("status {}", answer.status)))?;
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| JournalError::corrupt(format!("URL {:?}: {e}", request.url)))?;
    let mut headers = HeaderMap::with_capacity(answer.headers.len());
    for (name, value) in &answer.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| JournalError::corrupt(format!("answer header {name:?}")))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| JournalError::corrupt(format!("a value of answer header {name}")))?;
        headers.append(name, value);
    }
    Ok(IdempotentResponse {
        status,
        version: Version::HTTP_11,
        headers,
        url,
        body: answer.body.clone(),
        key,
        attempts: 0,
        hedges: 0,
    })
}

/// A recorded answer as a response, its body opened, if it reads.
pub(super) fn opened_answer(
    request: &RecordedRequest,
    answer: &RecordedAnswer,
    key: &IdempotencyKey,
    js: &JournalSettings,
) -> Option<IdempotentResponse> {
    let body = js.open(&answer.body).ok()?;
    let answer = RecordedAnswer {
        body,
        ..answer.clone()
    };
    answer_of(request, &answer, key.clone()).ok()
}
