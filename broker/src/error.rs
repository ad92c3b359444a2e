//! The broker's own errors and the one place they become Ably errors (§11). Client-facing
//! refusals are built as [`protocol::ErrorInfo`] where they arise; internal failures (storage,
//! start-up) are typed here and mapped to a generic code so no internal detail leaks.

use protocol::error::codes;
use protocol::ErrorInfo;

use crate::store::StoreError;

/// Why the broker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The channel log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket or file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<StoreError> for ErrorInfo {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "channel log failure");
        ErrorInfo::new(codes::INTERNAL_CHANNEL, "channel log unavailable")
    }
}
