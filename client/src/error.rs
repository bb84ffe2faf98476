//! Client errors.

use std::time::Duration;

use keel_protocol::ErrorCode;

/// What can go wrong talking to `keeld`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection could not be opened.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection broke or was closed; requests in flight on it have unknown outcomes
    /// (a produce may or may not have become durable).
    #[error("connection to the server lost: {0}")]
    ConnectionLost(String),
    /// The server answered with an error.
    #[error("server error {code:?}: {message}")]
    Server {
        /// What went wrong.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server sent something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer within the request timeout; the request's outcome is unknown.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// A producer gave up on a message after its delivery timeout, retries and reconnections
    /// included.
    #[error("gave up after the delivery timeout ({after:?}): {why}; {}", if *maybe_stored {
        "whether it was stored is unknown (at most once: it was sent as part of a numbered batch)"
    } else {
        "it was not stored"
    })]
    DeliveryTimeout {
        /// The delivery timeout.
        after: Duration,
        /// The last reason it could not be stored.
        why: String,
        /// It was sent, and no answer said whether it was stored: the connection was lost.
        maybe_stored: bool,
    },
    /// The producer was closed, or stopped for good (see the message).
    #[error("the producer stopped: {0}")]
    ProducerStopped(String),
    /// A message that would not fit the largest batch the server takes, even alone.
    #[error(
        "message of {size} bytes (in a batch of its own) exceeds the largest batch the server \
         takes, {limit} bytes (keeld's max_batch_bytes, or its largest frame)"
    )]
    MessageTooLarge {
        /// The batch it would take, alone.
        size: usize,
        /// The server's limit.
        limit: usize,
    },
    /// The request would exceed the server's largest frame.
    #[error("request of {size} bytes exceeds the server's maximum frame of {max} bytes")]
    TooLarge {
        /// Frame size.
        size: usize,
        /// The server's limit.
        max: u32,
    },
}

impl ClientError {
    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Result of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
