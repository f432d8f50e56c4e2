//! The values of a recorded operation's secret headers, which the journal never holds:
//! from the request at hand, else from the client's resume credentials.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::settings::JournalSettings;
use crate::journal::{JournalEntry, PendingOperation};

/// The values of a recorded operation's secret headers: from the request at hand, and
/// for those it lacks, from the client's resume credentials (asked only then). `Err`
/// with the names that have no value anywhere.
pub(super) async fn secrets_for(
    entry: &JournalEntry,
    at_hand: &HeaderMap,
    js: &JournalSettings,
) -> Result<HeaderMap, Vec<String>> {
    let mut secrets = HeaderMap::new();
    let mut missing = Vec::new();
    for name in &entry.request.secret_headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            missing.push(name.clone());
            continue;
        };
        let values: Vec<&HeaderValue> = at_hand.get_all(&name).iter().collect();
        if values.is_empty() {
            missing.push(name.as_str().to_owned());
        }
        for value in values {
            secrets.append(name.clone(), value.clone());
        }
    }
    if missing.is_empty() {
        return Ok(secrets);
    }
    let Some(credentials) = &js.credentials else {
        return Err(missing);
    };
    let given = credentials(&PendingOperation::from(entry.clone())).await;
    let mut still = Vec::new();
    for name in missing {
        let values: Vec<&HeaderValue> = given.get_all(name.as_str()).iter().collect();
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) if !values.is_empty() => {
                for value in values {
                    secrets.append(header.clone(), value.clone());
                }
            }
            _ => still.push(name),
        }
    }
    if still.is_empty() {
        Ok(secrets)
    } else {
        Err(still)
    }
}
