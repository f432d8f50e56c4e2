//! The mock server's own error: test tooling fails apart from the client.

/// What went wrong with a [`MockServer`](super::MockServer): it did not start, or a
/// route was named that it does not have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// A setting that cannot work: fault rates outside `[0, 1]` or adding up past 1, an
    /// invalid key header.
    #[error("invalid mock server setting: {reason}")]
    #[non_exhaustive]
    InvalidConfig {
        /// Which setting, and why.
        reason: String,
    },

    /// The address could not be bound, or the server's runtime or thread could not start.
    #[error("mock server could not start: {reason}")]
    #[non_exhaustive]
    Io {
        /// What failed.
        reason: String,
        /// The I/O error behind it.
        #[source]
        source: std::io::Error,
    },

    /// No route has this name, or this `METHOD path`.
    #[error("the mock server has no route {route:?}; its routes are {known:?}")]
    #[non_exhaustive]
    UnknownRoute {
        /// The name or `METHOD path` given.
        route: String,
        /// The names of the routes it has.
        known: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<MockError>();
    }
}
