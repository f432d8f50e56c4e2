//! The client's journal settings: the journal, the seal of its bodies, which headers
//! are secrets and where a resume finds their values, and the limits of a journalled
//! send.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::journal::{BodySeal, EntryState, Journal, JournalEntry, JournalError, PendingOperation};

/// Headers that are never written to a journal.
pub(super) const SECRETS: [HeaderName; 3] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

/// How long a send waits between looks at an operation another worker holds.
pub(super) const HELD_POLL: Duration = Duration::from_millis(50);

/// Races on one id (a record inserted or completed between our look and our write)
/// tolerated before giving up.
pub(super) const MAX_RACES: u32 = 8;

/// Pending operations `resume_pending` sends at once unless told otherwise.
pub(crate) const DEFAULT_RESUME_CONCURRENCY: usize = 16;

/// What a lease must cover beyond an attempt's timeout: the time to record its answer.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// The values of a resumed operation's secret headers, asked for each resumed send.
pub(crate) type ResumeCredentials = Arc<
    dyn Fn(&PendingOperation) -> std::pin::Pin<Box<dyn Future<Output = HeaderMap> + Send>>
        + Send
        + Sync,
>;

/// The client's journal and what goes with it.
pub(crate) struct JournalSettings {
    pub(crate) journal: Arc<dyn Journal>,
    /// Seals the bodies written to the journal, if the caller gave a seal.
    pub(crate) seal: Option<Arc<dyn BodySeal>>,
    /// Headers left out of the record besides `Authorization`, `Proxy-Authorization`
    /// and `Cookie`.
    pub(crate) sensitive: Vec<HeaderName>,
    /// Where a resumed send finds the values of secret headers the request at hand
    /// does not carry.
    pub(crate) credentials: Option<ResumeCredentials>,
    /// Headers whose values scope an operation at its server (an account): a request
    /// under a recorded id must carry the recorded values.
    pub(crate) scope_headers: Vec<HeaderName>,
    /// Pending operations `resume_pending` sends at once.
    pub(crate) resume_concurrency: usize,
}

impl JournalSettings {
    /// Whether a header is a secret, never written to the journal: one of the three
    /// always kept out, one the caller named, or one flagged sensitive on its value.
    pub(super) fn is_secret(&self, name: &HeaderName, value: &HeaderValue) -> bool {
        SECRETS.contains(name) || self.sensitive.contains(name) || value.is_sensitive()
    }

    /// A body as the journal stores it.
    pub(super) fn seal(&self, body: &Bytes) -> Bytes {
        match &self.seal {
            Some(seal) => Bytes::from(seal.seal(body)),
            None => body.clone(),
        }
    }

    /// A stored body as it was given.
    pub(super) fn open(&self, body: &Bytes) -> Result<Bytes, JournalError> {
        match &self.seal {
            Some(seal) => seal.open(body).map(Bytes::from).map_err(|reason| {
                JournalError::corrupt(format!("a sealed body does not open: {reason}"))
            }),
            None => Ok(body.clone()),
        }
    }

    /// An entry as read, its bodies opened.
    pub(super) fn opened(&self, mut entry: JournalEntry) -> Result<JournalEntry, JournalError> {
        if self.seal.is_some() {
            // A body the store dropped (a completed record's) is empty; a sealed body
            // never is.
            if !entry.request.body.is_empty() {
                entry.request.body = self.open(&entry.request.body)?;
            }
            if let Some(fingerprint) = &entry.request.fingerprint {
                entry.request.fingerprint = Some(self.open(fingerprint)?);
            }
            if let EntryState::Completed(answer) = &mut entry.state {
                answer.body = self.open(&answer.body)?;
            }
        }
        Ok(entry)
    }
}

/// Whether a send waits for an operation another live worker holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Wait within the deadline, and take it over if its lease runs out (`send()`).
    Wait,
    /// Leave it to its worker at once (`resume_pending`).
    Leave,
}
