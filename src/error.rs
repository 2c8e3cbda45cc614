//! The crate's one error type, and its one conversion into `tonic::Status`.
//!
//! Variants say what the *caller* can do about a failure. Every status carries a
//! `google.rpc.ErrorInfo` detail (domain `keystone`, an UPPER_SNAKE [`Reason`]); invalid
//! arguments add a `BadRequest` naming the field, rate limits a `RetryInfo`. Internal and
//! unavailable errors are logged here, once, with their cause chain; the caller gets a fixed
//! message and never driver text.
//!
//! Layer: foundation. Uses nothing of Keystone's; every module may use it.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `ErrorInfo` Keystone sends.
pub const ERROR_DOMAIN: &str = "keystone";

/// The machine-readable reason of an error, sent as `ErrorInfo.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The token is not a well-formed JWT of Keystone's.
    TokenMalformed,
    /// The token has expired.
    TokenExpired,
    /// The token was revoked.
    TokenRevoked,
    /// The token failed verification (signature, key, issuer, type, claims).
    TokenInvalid,
    /// No bearer token was sent where one is needed.
    TokenMissing,
    /// A bound token came without the certificate (or proof) it is bound to.
    TokenBindingMismatch,
    /// A DPoP proof sent to the token endpoint is malformed, stale, replayed, or not by the
    /// key the session is bound to (RFC 9449 `invalid_dpop_proof`).
    InvalidDpopProof,
    /// The token lacks a scope the call needs.
    InsufficientScope,
    /// The token's subject lacks a role the call needs.
    MissingRole,
    /// The token is not meant for the audience asked about.
    AudienceMismatch,
    /// Unknown user, wrong password, unknown client or bad secret: all look the same.
    InvalidCredentials,
    /// The account is locked.
    AccountLocked,
    /// The account or client is disabled.
    AccountDisabled,
    /// A scope asked for is not allowed.
    InvalidScope,
    /// The audience asked for is not allowed.
    InvalidAudience,
    /// A refresh token was used twice; its session is ended.
    RefreshTokenReused,
    /// The client may not use this grant (token exchange without `token_exchange`).
    UnauthorizedClient,
    /// A token exchange would make the chain of actors longer than allowed.
    DelegationTooDeep,
    /// `IssueToken` without a grant.
    MissingGrant,
    /// A request field is malformed.
    InvalidArgument,
    /// A password breaks the password policy.
    WeakPassword,
    /// Too many calls; retry after the delay given.
    RateLimited,
    /// The request message is larger than the server accepts.
    MessageTooLarge,
    /// The server is saturated; retry later.
    Overloaded,
    /// The thing asked for does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The system is not in a state that allows the call.
    FailedPrecondition,
    /// Self-service registration is switched off.
    RegistrationDisabled,
    /// A dependency (database, Redis) is unavailable.
    Unavailable,
    /// The revocation set cannot be confirmed fresh, so no token is accepted.
    RevocationUnavailable,
    /// Something went wrong inside Keystone.
    Internal,
}

impl Reason {
    /// The UPPER_SNAKE form sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenMalformed => "TOKEN_MALFORMED",
            Reason::TokenBindingMismatch => "TOKEN_BINDING_MISMATCH",
            Reason::InvalidDpopProof => "INVALID_DPOP_PROOF",
            Reason::TokenExpired => "TOKEN_EXPIRED",
            Reason::TokenRevoked => "TOKEN_REVOKED",
            Reason::TokenInvalid => "TOKEN_INVALID",
            Reason::TokenMissing => "TOKEN_MISSING",
            Reason::InsufficientScope => "INSUFFICIENT_SCOPE",
            Reason::MissingRole => "MISSING_ROLE",
            Reason::AudienceMismatch => "AUDIENCE_MISMATCH",
            Reason::InvalidCredentials => "INVALID_CREDENTIALS",
            Reason::AccountLocked => "ACCOUNT_LOCKED",
            Reason::AccountDisabled => "ACCOUNT_DISABLED",
            Reason::InvalidScope => "INVALID_SCOPE",
            Reason::InvalidAudience => "INVALID_AUDIENCE",
            Reason::RefreshTokenReused => "REFRESH_TOKEN_REUSED",
            Reason::UnauthorizedClient => "UNAUTHORIZED_CLIENT",
            Reason::DelegationTooDeep => "DELEGATION_TOO_DEEP",
            Reason::MissingGrant => "MISSING_GRANT",
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::WeakPassword => "WEAK_PASSWORD",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Reason::Overloaded => "OVERLOADED",
            Reason::NotFound => "NOT_FOUND",
            Reason::AlreadyExists => "ALREADY_EXISTS",
            Reason::FailedPrecondition => "FAILED_PRECONDITION",
            Reason::RegistrationDisabled => "REGISTRATION_DISABLED",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::RevocationUnavailable => "REVOCATION_UNAVAILABLE",
            Reason::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Keystone's error. Messages of client-facing variants are written for the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; `field` names it (proto field path).
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        field: String,
        reason: Reason,
        message: String,
    },
    /// The caller did not prove who it is.
    #[error("{message}")]
    Unauthenticated { reason: Reason, message: String },
    /// The caller is known but may not do this.
    #[error("{message}")]
    PermissionDenied { reason: Reason, message: String },
    /// The thing asked for does not exist.
    #[error("{message}")]
    NotFound { message: String },
    /// The thing to create exists already.
    #[error("{message}")]
    AlreadyExists { message: String },
    /// The system is not in a state that allows the call.
    #[error("{message}")]
    FailedPrecondition { reason: Reason, message: String },
    /// Too many calls, or the server is saturated.
    #[error("{message}")]
    ResourceExhausted {
        reason: Reason,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A dependency is down; the call may succeed later.
    #[error("{what} is unavailable")]
    Unavailable {
        reason: Reason,
        what: &'static str,
        #[source]
        source: Option<anyhow::Error>,
    },
    /// Anything else: a bug or an unexpected failure. The source is logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// A malformed request field, with the generic `INVALID_ARGUMENT` reason.
    pub fn invalid_argument(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: Reason::InvalidArgument,
            message: message.into(),
        }
    }

    /// An unexpected failure; its cause is logged when the error is sent.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Error::Internal(source.into())
    }

    /// The error with its causes on one line (`a: b: c`), as a log line wants it; never sent
    /// to a caller.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// The machine-readable reason of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument { reason, .. }
            | Error::Unauthenticated { reason, .. }
            | Error::PermissionDenied { reason, .. }
            | Error::FailedPrecondition { reason, .. }
            | Error::ResourceExhausted { reason, .. }
            | Error::Unavailable { reason, .. } => *reason,
            Error::NotFound { .. } => Reason::NotFound,
            Error::AlreadyExists { .. } => Reason::AlreadyExists,
            Error::Internal(_) => Reason::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let reason = error.reason();
        let mut details = ErrorDetails::new();
        details.set_error_info(reason.as_str(), ERROR_DOMAIN, []);
        let (code, message) = match error {
            Error::InvalidArgument { field, message, .. } => {
                details.add_bad_request_violation(field.clone(), message.clone());
                (Code::InvalidArgument, format!("invalid {field}: {message}"))
            }
            Error::Unauthenticated { message, .. } => (Code::Unauthenticated, message),
            Error::PermissionDenied { message, .. } => (Code::PermissionDenied, message),
            Error::NotFound { message } => (Code::NotFound, message),
            Error::AlreadyExists { message } => (Code::AlreadyExists, message),
            Error::FailedPrecondition { message, .. } => (Code::FailedPrecondition, message),
            Error::ResourceExhausted {
                message,
                retry_after,
                ..
            } => {
                if retry_after.is_some() {
                    details.set_retry_info(retry_after);
                }
                (Code::ResourceExhausted, message)
            }
            Error::Unavailable { what, source, .. } => {
                match &source {
                    Some(source) => {
                        tracing::warn!(error = format!("{source:#}"), "{what} is unavailable")
                    }
                    None => tracing::warn!("{what} is unavailable"),
                }
                (
                    Code::Unavailable,
                    format!("{what} is unavailable, retry later"),
                )
            }
            Error::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal error");
                (Code::Internal, "internal error".to_owned())
            }
        };
        Status::with_error_details(code, message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_of(status: &Status) -> Option<String> {
        status
            .get_error_details()
            .error_info()
            .map(|info| info.reason.clone())
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::invalid_argument(
            "user.email",
            "not an email address",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status).as_deref(), Some("INVALID_ARGUMENT"));
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "user.email");
        assert_eq!(
            details.error_info().map(|i| i.domain.as_str()),
            Some(ERROR_DOMAIN)
        );
    }

    #[test]
    fn a_chain_names_every_cause_for_the_log() {
        let error = Error::Unavailable {
            reason: Reason::Unavailable,
            what: "the database",
            source: Some(anyhow::anyhow!("connection refused").context("cannot connect")),
        };
        assert_eq!(
            error.chain(),
            "the database is unavailable: cannot connect: connection refused"
        );
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let status = Status::from(Error::internal(anyhow::anyhow!(
            "relation \"users\" does not exist at postgres://admin:hunter2@db"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert_eq!(reason_of(&status).as_deref(), Some("INTERNAL"));
    }

    #[test]
    fn unavailable_names_the_dependency_only() {
        let status = Status::from(Error::Unavailable {
            reason: Reason::Unavailable,
            what: "the database",
            source: Some(anyhow::anyhow!("connection refused (os error 111)")),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("111"));
    }

    #[test]
    fn rate_limits_carry_a_retry_delay() {
        let status = Status::from(Error::ResourceExhausted {
            reason: Reason::RateLimited,
            message: "too many attempts".into(),
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(3))
        );
        assert_eq!(reason_of(&status).as_deref(), Some("RATE_LIMITED"));
    }
}
