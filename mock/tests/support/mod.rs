//! Helpers shared by the mock server's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use idempotent_retry::{
    IdempotentClient, IdempotentClientBuilder, Jitter, RetryBudget, RetryPolicy,
};

/// A client policy with millisecond delays, no jitter and a generous deadline, so that
/// tests are fast and their schedules exact.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy::exponential()
        .max_attempts(5)
        .initial_delay(Duration::from_millis(5))
        .multiplier(2.0)
        .max_delay(Duration::from_millis(20))
        .jitter(Jitter::None)
        .deadline(Duration::from_secs(10))
}

/// A client builder with [`fast_policy`] and no retry budget.
pub fn fast_builder() -> IdempotentClientBuilder {
    IdempotentClient::builder()
        .retry_policy(fast_policy())
        .attempt_timeout(Duration::from_secs(5))
        .retry_budget(RetryBudget::unlimited())
}

/// [`fast_builder`], built.
pub fn fast_client() -> IdempotentClient {
    fast_builder().build().expect("valid test configuration")
}

/// A stub file in a directory of its own under the temp dir, removed on drop.
pub struct TempStub {
    dir: std::path::PathBuf,
    /// The file's path, for `stubs_file`.
    pub path: std::path::PathBuf,
}

impl TempStub {
    /// A file `name` in a directory named after `tag` and this process.
    pub fn new(tag: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        Self { dir, path }
    }

    /// Writes `text` as the file's whole content.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
}

impl Drop for TempStub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
