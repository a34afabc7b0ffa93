//! Errors: [`ClientError`] from [`Client::resolve`](crate::Client::resolve), [`BuildError`]
//! from [`Builder::build`](crate::Builder::build).
//!
//! Classification lives here, in one place: [`is_retryable`] says which gRPC codes mean
//! "Lightbulb is unreachable or unwell" (retry, then fall back to the last known good answer
//! or the static default) and which mean "Lightbulb answered: this request is wrong" (return
//! the error at once, never mask it with stale data).

use std::time::Duration;

use tonic::Code;

/// Why [`Client::resolve`](crate::Client::resolve) returned no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Lightbulb answered with a status that is not about availability (`NOT_FOUND` for an
    /// unknown objective, `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, ...). Never retried and
    /// never replaced by a fallback answer: it is a configuration or caller error that stale
    /// data would hide.
    #[error("lightbulb rejected the request ({code:?}: {message}) for objective {objective:?}")]
    Rejected {
        /// The objective of the request.
        objective: String,
        /// The gRPC status code.
        code: Code,
        /// The status message from Lightbulb.
        message: String,
    },
    /// Lightbulb was unreachable or failed with a retryable status on every attempt, and
    /// there was neither a last known good answer for the context nor a static default for
    /// the objective.
    #[error(
        "lightbulb unavailable after {attempts} attempt(s) ({code:?}: {message}), no fallback for objective {objective:?}"
    )]
    Unavailable {
        /// The objective of the request.
        objective: String,
        /// Attempts made before giving up (the retry limit, or fewer when the deadline came
        /// first).
        attempts: u32,
        /// The gRPC code of the last failure (`DEADLINE_EXCEEDED` when the last attempt
        /// timed out).
        code: Code,
        /// The message of the last failure.
        message: String,
    },
    /// Lightbulb answered with something the client cannot use (no objective config, or a
    /// routing key that is not a valid header value). Not retried, no fallback: a retry
    /// would get the same answer.
    #[error("lightbulb sent an invalid answer ({reason}) for objective {objective:?}")]
    InvalidResponse {
        /// The objective of the request.
        objective: String,
        /// What was wrong.
        reason: &'static str,
    },
}

impl ClientError {
    /// The objective of the failed request.
    pub fn objective(&self) -> &str {
        match self {
            ClientError::Rejected { objective, .. }
            | ClientError::Unavailable { objective, .. }
            | ClientError::InvalidResponse { objective, .. } => objective,
        }
    }

    /// The gRPC code behind the error; `None` for an invalid answer.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rejected { code, .. } | ClientError::Unavailable { code, .. } => {
                Some(*code)
            }
            ClientError::InvalidResponse { .. } => None,
        }
    }

    /// A short label for the error kind (`"rejected"`, `"unavailable"`,
    /// `"invalid_response"`), e.g. for a metric.
    pub fn as_label(&self) -> &'static str {
        match self {
            ClientError::Rejected { .. } => "rejected",
            ClientError::Unavailable { .. } => "unavailable",
            ClientError::InvalidResponse { .. } => "invalid_response",
        }
    }
}

/// Whether a failure with this gRPC code is worth another attempt (on the next endpoint) and,
/// once attempts run out, a fallback answer.
///
/// Retryable: the codes of an unreachable, overloaded or failing server or transport
/// (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `RESOURCE_EXHAUSTED`,
/// `ABORTED`, `CANCELLED`). Everything else is Lightbulb's considered answer about this
/// request (`NOT_FOUND`, `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `PERMISSION_DENIED`,
/// `UNAUTHENTICATED`, `UNIMPLEMENTED`, ...).
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}

/// Why [`Builder::build`](crate::Builder::build) could not make a client.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No endpoint was given.
    #[error("no lightbulb endpoint given")]
    NoEndpoints,
    /// An endpoint is not a valid `http://host:port` or `https://host:port` URI.
    #[error("invalid lightbulb endpoint {endpoint:?}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why tonic rejected it.
        #[source]
        source: tonic::transport::Error,
    },
    /// A static default's routing key is not a valid header value (visible ASCII).
    #[error("invalid routing key {routing_key:?} in the static default of objective {objective:?}")]
    InvalidStaticDefault {
        /// The objective of the static default.
        objective: String,
        /// The routing key as given.
        routing_key: String,
    },
    /// An `https://` endpoint was given without [`Builder::tls_ca_file`](crate::Builder::tls_ca_file):
    /// there is no fallback to plaintext nor to the system's roots.
    #[error(
        "lightbulb endpoint {endpoint:?} is https:// but no CA file was given (Builder::tls_ca_file)"
    )]
    HttpsWithoutCa {
        /// The endpoint as given.
        endpoint: String,
    },
    /// The CA file could not be read.
    #[error("cannot read the CA file {path}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// tonic refused the TLS settings of an endpoint (a CA file that is not PEM, say).
    #[error("TLS settings of lightbulb endpoint {endpoint:?} refused")]
    Tls {
        /// The endpoint as given.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The request deadline is zero, so no attempt could ever be made.
    #[error("request deadline must be positive, got {0:?}")]
    ZeroDeadline(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_codes_are_retryable_and_answers_are_not() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Internal] {
            assert!(is_retryable(code), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::Ok,
        ] {
            assert!(!is_retryable(code), "{code:?}");
        }
    }

    #[test]
    fn messages_name_the_objective() {
        let err = ClientError::Rejected {
            objective: "Ranking".into(),
            code: Code::NotFound,
            message: "unknown objective".into(),
        };
        assert!(
            err.to_string().ends_with("for objective \"Ranking\""),
            "{err}"
        );
        assert_eq!(err.objective(), "Ranking");
        assert_eq!(err.code(), Some(Code::NotFound));
    }
}
