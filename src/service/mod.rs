//! The use cases. Every policy decision lives here; nothing here knows tonic or the generated
//! protobuf types.
//!
//! Layer: uses everything below the adapters ([`crate::store`], [`crate::revocation`],
//! [`crate::cluster`], [`crate::token`], [`crate::password`], [`crate::secrets`],
//! [`crate::domain`], [`crate::config`], [`crate::clock`]); only [`crate::grpc`],
//! [`crate::http`], [`crate::app`] and [`crate::cli`] use it.

pub mod auth;
mod authenticator;
pub mod client_admin;
pub mod limits;
pub mod paging;
pub mod proofs;
pub mod refusals;
pub mod user_admin;

pub use authenticator::{Authenticator, DpopPresented, Presented};
pub use client_admin::ClientAdminService;
pub use user_admin::{BootstrapOutcome, UserAdminService};

use chrono::{DateTime, Utc};

use crate::{
    domain::Revocation,
    domain::{AuditRecord, Outcome, Scope, ScopeSet},
    error::{Error, Reason},
    revocation::Revocations,
    store::Store,
};

/// The scope that allows everything an admin can do.
pub const ADMIN_SCOPE: &str = "keystone:admin";

/// The verified caller of an admin RPC, established from its bearer token before anything
/// else happens.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The token's subject: a user id or a client id.
    pub subject: String,
    /// The scopes the token holds.
    pub scopes: ScopeSet,
    /// The caller's network address.
    pub peer: String,
}

impl Actor {
    /// Whether the caller holds `keystone:admin`, which satisfies every check below.
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s.as_str() == ADMIN_SCOPE)
    }

    /// Nobody grants what they do not hold: fails with PERMISSION_DENIED naming the first
    /// scope the caller lacks.
    pub fn check_may_grant<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        match self.first_unheld(scopes) {
            None => Ok(()),
            Some(scope) => Err(insufficient(format!(
                "you cannot grant `{scope}`: your token does not hold it"
            ))),
        }
    }

    /// Nobody takes over more power than they hold: changing a user or a client (resetting a
    /// password, rotating a secret, locking, disabling, deleting…) that holds a scope the
    /// caller lacks is refused, since whoever controls the account would hold that scope.
    pub fn check_may_manage<'a>(
        &self,
        target_scopes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        let scopes = target_scopes
            .into_iter()
            .filter(|scope| *scope != crate::service::auth::PASSWORD_CHANGE_SCOPE);
        match self.first_unheld(scopes) {
            None => Ok(()),
            Some(scope) => Err(insufficient(format!(
                "the target holds `{scope}`, which your token does not: only a caller holding \
                 it may change them"
            ))),
        }
    }

    /// The first of `scopes` the caller's token does not satisfy; none for an admin.
    fn first_unheld<'a>(&self, scopes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        if self.is_admin() {
            return None;
        }
        scopes
            .into_iter()
            .find(|scope| !Scope::parse(scope).is_ok_and(|scope| self.scopes.satisfies(&scope)))
    }

    /// An audit event of this caller.
    pub fn event(
        &self,
        action: &'static str,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> AuditRecord {
        AuditRecord::new(self.subject.clone(), action, target, outcome).from_peer(&self.peer)
    }
}

/// Parses a list of names (each error naming `field[i]`), dropping repeats, at most `max`.
pub(crate) fn parse_names<T: PartialEq>(
    values: &[String],
    field: &str,
    what: &str,
    max: usize,
    parse: impl Fn(&str) -> Result<T, crate::domain::ParseError>,
) -> Result<Vec<T>, Error> {
    if values.len() > max {
        return Err(Error::invalid_argument(
            field,
            format!("at most {max} {what} per call"),
        ));
    }
    let mut parsed = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let value = parse(value).map_err(|e| e.on(&format!("{field}[{i}]")))?;
        if !parsed.contains(&value) {
            parsed.push(value);
        }
    }
    Ok(parsed)
}

fn insufficient(message: String) -> Error {
    Error::PermissionDenied {
        reason: Reason::InsufficientScope,
        message,
    }
}

/// Records that `actor` was refused `action` on `target` (an audit event, outcome `denied`),
/// and hands the error back. A failure to record is logged; the refusal stands either way.
async fn record_denial(
    store: &Store,
    now: DateTime<Utc>,
    actor: &Actor,
    action: &'static str,
    target: &str,
    error: Error,
) -> Error {
    let event = actor
        .event(action, target, Outcome::Denied)
        .with_detail("reason", error.to_string());
    store.record_refusal(event, now).await;
    error
}

/// The end of a guarded change (see [`crate::store::ChangeGuard`]): the revocation it wrote
/// goes into memory; a refusal decided inside it is recorded as a denial.
async fn settle<T>(
    store: &Store,
    revocations: &Revocations,
    now: DateTime<Utc>,
    actor: &Actor,
    action: &'static str,
    target: &str,
    result: Result<(T, Option<Revocation>), Error>,
) -> Result<T, Error> {
    match result {
        Ok((value, revocation)) => {
            if let Some(revocation) = &revocation {
                revocations.applied(revocation);
            }
            Ok(value)
        }
        Err(error @ Error::PermissionDenied { .. }) => {
            Err(record_denial(store, now, actor, action, target, error).await)
        }
        Err(error) => Err(error),
    }
}
