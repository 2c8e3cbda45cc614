//! Domain types that can only hold valid values. Adapters parse request strings into them at
//! the edge (`parse` fails with an error naming the rule); services then trust them. None
//! derefs to `String`: read them with `as_str`.
//!
//! Layer: foundation. Uses nothing of Keystone's but [`crate::error`] (to say why a value
//! was refused); every other module may use it.

mod audit;
mod certificate;
mod client;
mod names;
mod password_policy;
mod path;
mod revocation;
mod scope;
mod user;

pub use audit::{AuditRecord, Outcome};
pub use certificate::{
    CertificateIdentity, ClientCertificate, DistinguishedName, PresentedCertificate,
    SubjectAltName, Thumbprint, is_self_signed_and_current,
};
pub use client::{Client, ClientSecretInfo, FederatedIdentity, NewClient};
pub use names::{ClientId, Email, RoleName, Username, check_description, normalize};
pub use password_policy::{
    AccountNames, Assessment, MAX_PASSWORD_LENGTH, MAX_STRENGTH, PasswordPolicy, Strength,
};
pub use path::unambiguous_path;
pub use revocation::{Revocation, RevocationKind, TokenFacts, parse_session_id};
pub use scope::{Scope, ScopeSet};
pub use user::{AuditEvent, NewUser, Role, ScopeRecord, Session, User, UserRecord};

/// Why a value was refused: a sentence for the caller, naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The error as an `InvalidArgument` on `field`.
    pub fn on(self, field: &str) -> crate::Error {
        crate::Error::invalid_argument(field, self.0)
    }
}
