//! The SDK's error: an Ably error the server sent (with its code), or a local condition.

use protocol::ErrorInfo;

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused: NACK, channel ERROR, connection ERROR, or an HTTP error body.
    #[error("{0}")]
    Ably(ErrorInfo),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The connection failed for good (fatal ERROR, or no way to authenticate).
    #[error("connection failed: {0}")]
    Failed(String),
    /// The connection stayed down for longer than the server keeps state (suspended).
    #[error("connection suspended: {0}")]
    Suspended(String),
    /// A transport or HTTP problem.
    #[error("{0}")]
    Transport(String),
}

impl Error {
    /// The Ably error code, when the server gave one.
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Ably(e) => Some(e.code),
            _ => None,
        }
    }
}

impl From<ErrorInfo> for Error {
    fn from(e: ErrorInfo) -> Self {
        Error::Ably(e)
    }
}
