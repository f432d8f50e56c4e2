//! A journal's settings as a configuration file holds them: [`JournalConfig`].

use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess};

use super::{
    DEFAULT_COMPLETED_RETENTION, DEFAULT_LEASE_DURATION, DEFAULT_MAX_RESUME_AGE,
    DEFAULT_MAX_RESUMES, Limits,
};
use crate::table::{Table, duration, table, unknown, value};

/// The settings of a journal that can live in a configuration file, the same for
/// every store; apply them with the store builder's `config`
/// ([`SqliteJournalBuilder::config`](super::SqliteJournalBuilder::config),
/// `PostgresJournalBuilder::config`) or [`MemoryJournal::config`](super::MemoryJournal::config).
/// The names of the headers the client keeps out of the journal, and of those that
/// scope an operation, are client settings
/// ([`ClientConfig`](crate::ClientConfig)'s `sensitive_headers` and `scope_headers`).
///
/// Every field is optional and defaults as the builders do; durations are strings with
/// a unit (`"30s"`, `"20h"`, `"7d"`). Unknown fields are errors, and every error names
/// its field.
///
/// # Default
///
/// | field | default | why |
/// |---|---|---|
/// | `lease_duration` | `"30s"` | long enough for a 10 s attempt and its answer's record, short enough that a dead worker's operations are taken over within half a minute |
/// | `max_resume_age` | `"20h"` | below the 24 h for which Stripe keeps keys: a resume never reaches a server that forgot the key |
/// | `max_resumes` | `20` | enough to ride out hours of restarts and outages |
/// | `completed_retention` | `"7d"` | far beyond any server's key lifetime: a re-run within it gets the recorded answer without I/O |
/// | `keep_answers` | unset: as long as `completed_retention` | a re-run gets the whole answer for as long as the record is kept; set it shorter to keep only tombstones (status, headers, key, fingerprint) after it |
///
/// ```
/// use idempotent_retry::journal::{JournalConfig, MemoryJournal};
///
/// let config: JournalConfig = toml::from_str(r#"
///     lease_duration = "15s"
///     max_resume_age = "12h"
/// "#)?;
/// let journal = MemoryJournal::new().config(&config);
/// # drop(journal);
///
/// let typo = toml::from_str::<JournalConfig>("lease_duration = \"soon\"");
/// assert!(typo.unwrap_err().to_string().contains("lease_duration"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalConfig {
    /// How long a claim holds an operation unless renewed.
    pub lease_duration: Duration,
    /// The oldest an operation may be when its next attempt could end.
    pub max_resume_age: Duration,
    /// How many times an operation may be taken up again (and sent) without a final
    /// answer.
    pub max_resumes: u32,
    /// How long a completed operation is kept.
    pub completed_retention: Duration,
    /// How long a completed operation keeps its answer's body; after it, and until
    /// `completed_retention`, only a tombstone. `None`: as long as it is kept.
    pub keep_answers: Option<Duration>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            lease_duration: DEFAULT_LEASE_DURATION,
            max_resume_age: DEFAULT_MAX_RESUME_AGE,
            max_resumes: DEFAULT_MAX_RESUMES,
            completed_retention: DEFAULT_COMPLETED_RETENTION,
            keep_answers: None,
        }
    }
}

impl From<&JournalConfig> for Limits {
    fn from(config: &JournalConfig) -> Self {
        // Every field named: a new one does not compile until it is carried here.
        let JournalConfig {
            lease_duration,
            max_resume_age,
            max_resumes,
            completed_retention,
            keep_answers,
        } = *config;
        Limits {
            lease_duration,
            max_resume_age,
            max_resumes,
            completed_retention,
            keep_answers,
        }
    }
}

impl Table for JournalConfig {
    const WHAT: &'static str = "a journal configuration table";
    const FIELDS: &'static [&'static str] = &[
        "lease_duration",
        "max_resume_age",
        "max_resumes",
        "completed_retention",
        "keep_answers",
    ];

    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        // Every field named: a new one does not compile until it is read here.
        let JournalConfig {
            lease_duration,
            max_resume_age,
            max_resumes,
            completed_retention,
            keep_answers,
        } = self;
        match field {
            "lease_duration" => *lease_duration = duration(map, path)?,
            "max_resume_age" => *max_resume_age = duration(map, path)?,
            "max_resumes" => *max_resumes = value(map, path)?,
            "completed_retention" => *completed_retention = duration(map, path)?,
            "keep_answers" => *keep_answers = Some(duration(map, path)?),
            other => return Err(unknown(other, Self::FIELDS)),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if self.lease_duration.is_zero() {
            return Err("lease_duration: must be greater than zero".into());
        }
        if self.max_resume_age.is_zero() {
            return Err("max_resume_age: must be greater than zero".into());
        }
        if Limits::from(self).answers_outlive_records() {
            return Err("keep_answers: must not exceed completed_retention".into());
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for JournalConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        table(deserializer, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_reads_and_every_error_names_its_field() {
        let config: JournalConfig = serde_json::from_str(
            r#"{"lease_duration": "15s", "max_resume_age": "12h", "max_resumes": 3,
                "completed_retention": "48h", "keep_answers": "1h"}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            JournalConfig {
                lease_duration: Duration::from_secs(15),
                max_resume_age: Duration::from_secs(12 * 3600),
                max_resumes: 3,
                completed_retention: Duration::from_secs(48 * 3600),
                keep_answers: Some(Duration::from_secs(3600)),
            }
        );
        let empty: JournalConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, JournalConfig::default());
        for (text, field) in [
            (r#"{"lease_duration": "0s"}"#, "lease_duration"),
            (r#"{"max_resume_age": "soon"}"#, "max_resume_age"),
            (r#"{"max_resumes": -1}"#, "max_resumes"),
            (r#"{"lease": "30s"}"#, "lease"),
            (r#"{"keep_answers": "8d"}"#, "keep_answers"),
        ] {
            let err = serde_json::from_str::<JournalConfig>(text).unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
    }
}
