//! Why a request context could not be resolved.
//!
//! [`ResolveError`] is the one error of the resolution boundary. Each variant has one class
//! ([`ResolveError::code`]), one gRPC status code (the single `impl From<ResolveError> for
//! tonic::Status` below) and one metric label ([`ResolveError::as_label`]).

use std::sync::Arc;

/// Why [`Engine::resolve`](crate::resolve::Engine::resolve) gave no answer.
///
/// The same request against the same rule set always fails the same way: errors depend only
/// on the inputs listed in [`CacheKey`](crate::resolve::CacheKey), like answers do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The request names no objective.
    #[error("objective is empty")]
    EmptyObjective,
    /// The rule set has no objective by this name.
    #[error("unknown objective {objective:?}")]
    UnknownObjective {
        /// The objective the request named.
        objective: String,
    },
    /// The request's traffic class is not one of the enum's values.
    #[error("unknown traffic class {value}")]
    UnknownTrafficClass {
        /// The number the request carried.
        value: i32,
    },
    /// An explicit allocation puts the subject in a cell that an experiment used by the
    /// objective does not have.
    #[error("experiment {experiment:?} has no cell {cell:?}")]
    UnknownCell {
        /// The experiment, from the rule set.
        experiment: Arc<str>,
        /// The cell the request named.
        cell: String,
    },
}

/// The class of a [`ResolveError`]: whose fault it is and which gRPC status it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed (gRPC `INVALID_ARGUMENT`).
    InvalidArgument,
    /// The request names something the rule set does not have (gRPC `NOT_FOUND`).
    NotFound,
    /// The request is well-formed but cannot be resolved against the current rule set (gRPC
    /// `FAILED_PRECONDITION`). No error has this class today: a rule that cannot be
    /// evaluated for a request (an experiment or split rule without a subject id) does not
    /// match, and the objective's default model always resolves.
    FailedPrecondition,
}

// === impl ResolveError ===

impl ResolveError {
    /// The class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ResolveError::EmptyObjective
            | ResolveError::UnknownTrafficClass { .. }
            | ResolveError::UnknownCell { .. } => ErrorCode::InvalidArgument,
            ResolveError::UnknownObjective { .. } => ErrorCode::NotFound,
        }
    }

    /// A short, fixed name for metrics and logs.
    pub fn as_label(&self) -> &'static str {
        match self {
            ResolveError::EmptyObjective => "empty_objective",
            ResolveError::UnknownObjective { .. } => "unknown_objective",
            ResolveError::UnknownTrafficClass { .. } => "unknown_traffic_class",
            ResolveError::UnknownCell { .. } => "unknown_cell",
        }
    }
}

// === impl ErrorCode ===

impl ErrorCode {
    /// The gRPC status code of this class.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        }
    }

    /// The HTTP status of this class, for `POST /v1/resolve`: 400, 404 or 412.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::FailedPrecondition => 412,
        }
    }

    /// The gRPC code's canonical name (`"NOT_FOUND"`), the `code` of HTTP error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
        }
    }
}

/// The one place a [`ResolveError`] becomes a gRPC status: the class's code and the error's
/// message.
impl From<ResolveError> for tonic::Status {
    fn from(err: ResolveError) -> Self {
        tonic::Status::new(err.code().grpc(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status() {
        let cases = [
            (ResolveError::EmptyObjective, tonic::Code::InvalidArgument),
            (
                ResolveError::UnknownObjective {
                    objective: "X".to_owned(),
                },
                tonic::Code::NotFound,
            ),
            (
                ResolveError::UnknownTrafficClass { value: 9 },
                tonic::Code::InvalidArgument,
            ),
            (
                ResolveError::UnknownCell {
                    experiment: Arc::from("e"),
                    cell: "c".to_owned(),
                },
                tonic::Code::InvalidArgument,
            ),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
        assert_eq!(
            ErrorCode::FailedPrecondition.grpc(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(ErrorCode::InvalidArgument.http_status(), 400);
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
        assert_eq!(ErrorCode::FailedPrecondition.http_status(), 412);
        assert_eq!(ErrorCode::NotFound.as_str(), "NOT_FOUND");
    }
}
