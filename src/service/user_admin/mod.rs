//! Managing users, roles and scopes, and reading the audit trail. Every method takes the
//! [`Actor`] the adapter established first, and decides here:
//! - nobody grants what they do not hold (roles given, roles edited);
//! - nobody changes a user holding a scope they lack (an admin, say);
//! - no change leaves no active admin (the store checks it inside the change's transaction);
//! - disabling, deleting, locking a user, taking roles from them, resetting their password and
//!   ending their sessions revoke their tokens at once (a subject revocation, written with the
//!   change).

mod audit;
mod roles;
mod users;

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use uuid::Uuid;

use super::{
    Actor,
    paging::{PageRequest, Pager},
};
use crate::{
    clock::SharedClock,
    cluster::Bus,
    domain::{AuditRecord, Outcome, PasswordPolicy, Revocation, RoleName, Scope, User, UserRecord},
    error::{Error, Reason},
    password::PasswordHasher,
    revocation::Revocations,
    store::{ChangeGuard, Holdings, Store, UserChange},
};

/// The role the bootstrap admin gets (seeded by the migrations, holding `keystone:admin`).
pub const ADMIN_ROLE: &str = migrations::ADMIN_ROLE;

/// Longest role or scope description, in characters.
const MAX_DESCRIPTION: usize = 1024;
/// Most roles or scopes named in one call.
const MAX_NAMES_PER_CALL: usize = 100;

/// User administration.
#[derive(Debug, Clone)]
pub struct UserAdminService {
    store: Store,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
    clock: SharedClock,
    revocations: Revocations,
    bus: Bus,
    pager: Pager,
    /// How long a token issued now can live (max access lifetime plus leeway): how long a
    /// subject revocation must last.
    token_lifetime: Duration,
}

/// A bootstrap admin that was created.
#[derive(Debug)]
pub struct BootstrapOutcome {
    /// The admin.
    pub user: User,
    /// The password Keystone generated, when none was given; shown once.
    pub generated_password: Option<SecretString>,
}

/// A user to create, as the caller sent it.
#[derive(Debug)]
pub struct CreateUser {
    /// The username.
    pub username: String,
    /// The email address.
    pub email: String,
    /// The password; `None`: generated.
    pub password: Option<SecretString>,
    /// Role names.
    pub roles: Vec<String>,
    /// Whether the user may log in.
    pub enabled: bool,
    /// Whether the email is verified.
    pub email_verified: bool,
}

/// Which user.
#[derive(Debug, Clone)]
pub enum UserLookup {
    /// By id.
    Id(String),
    /// By username.
    Username(String),
}

/// Profile changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// A new email address.
    pub email: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Mark the email verified or not.
    pub email_verified: Option<bool>,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The next page's token; empty on the last page.
    pub next_page_token: String,
}

/// Filters of the audit listing, as the caller sent them.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only by this actor.
    pub actor: String,
    /// Only this action.
    pub action: String,
    /// Only on this target.
    pub target: String,
    /// Only at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl UserAdminService {
    /// The service over its dependencies.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        clock: SharedClock,
        revocations: Revocations,
        bus: Bus,
        pager: Pager,
        token_lifetime: Duration,
    ) -> Self {
        Self {
            store,
            hasher,
            policy,
            clock,
            revocations,
            bus,
            pager,
            token_lifetime,
        }
    }

    /// Loads the target, checks the caller may change them (before any work, and again inside
    /// the change), and applies the change.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn change(
        &self,
        actor: &Actor,
        id: &str,
        field: &str,
        action: &'static str,
        change: UserChange,
        revoke: bool,
        details: impl FnOnce(AuditRecord) -> AuditRecord,
    ) -> Result<(Option<UserRecord>, u64), Error> {
        let uuid = parse_user_id(id, field)?;
        self.check_target(actor, uuid, action).await?;
        self.apply(actor, uuid, action, change, revoke, details)
            .await
    }

    /// Applies a change to a user, with its revocation when `revoke`. Whether the caller may
    /// change the target is decided again inside the change's transaction, on the target's
    /// scopes as they stand then. Returns the user after the change (`None` once deleted).
    pub(super) async fn apply(
        &self,
        actor: &Actor,
        id: Uuid,
        action: &'static str,
        change: UserChange,
        revoke: bool,
        details: impl FnOnce(AuditRecord) -> AuditRecord,
    ) -> Result<(Option<UserRecord>, u64), Error> {
        let now = self.clock.now();
        let target = id.to_string();
        let event = details(actor.event(action, target.clone(), Outcome::Success));
        let permit =
            |target: &Holdings<'_>| actor.check_may_manage(target.scopes.iter().map(Scope::as_str));
        let revocation = || self.subject_revocation(&target, self.clock.now());
        let guard = ChangeGuard {
            permit: &permit,
            revoke: if revoke { Some(&revocation) } else { None },
        };
        let result = self
            .store
            .change_user(id, &change, guard, &event, now)
            .await
            .map(|(record, ended, revocation)| ((record, ended), revocation));
        super::settle(
            &self.store,
            &self.revocations,
            now,
            actor,
            action,
            &target,
            result,
        )
        .await
    }

    /// The target user, if the caller may change them (see [`Actor::check_may_manage`]). The
    /// caller's scope was checked before this lookup.
    pub(super) async fn check_target(
        &self,
        actor: &Actor,
        id: Uuid,
        action: &'static str,
    ) -> Result<UserRecord, Error> {
        let target = self
            .store
            .find_user(id)
            .await?
            .ok_or_else(|| not_found_id(&id.to_string()))?;
        let scopes = self.store.scopes_of_user(id).await?;
        if let Err(error) = actor.check_may_manage(scopes.iter().map(Scope::as_str)) {
            return Err(self.denied(actor, action, &id.to_string(), error).await);
        }
        Ok(target)
    }

    /// Records a refusal and hands the error back.
    pub(super) async fn denied(
        &self,
        actor: &Actor,
        action: &'static str,
        target: &str,
        error: Error,
    ) -> Error {
        super::record_denial(&self.store, self.clock.now(), actor, action, target, error).await
    }

    /// A revocation of every token of `subject` issued up to `now`.
    pub(super) fn subject_revocation(&self, subject: &str, now: DateTime<Utc>) -> Revocation {
        Revocation::of_subject(subject, now, self.token_lifetime)
    }

    pub(super) fn page<T>(
        &self,
        items: Vec<T>,
        page: &PageRequest,
        listing: &str,
        key: impl Fn(&T) -> String,
    ) -> Page<T> {
        let (items, next_page_token) = self.pager.finish(items, page, listing, key);
        Page {
            items,
            next_page_token,
        }
    }
}

pub(super) fn parse_user_id(id: &str, field: &str) -> Result<Uuid, Error> {
    if id.is_empty() {
        return Err(Error::invalid_argument(field, "name the user by id"));
    }
    Uuid::parse_str(id).map_err(|_| Error::invalid_argument(field, "is not a user id (a UUID)"))
}

pub(super) fn parse_roles(roles: &[String], field: &str) -> Result<Vec<RoleName>, Error> {
    super::parse_names(roles, field, "roles", MAX_NAMES_PER_CALL, RoleName::parse)
}

pub(super) fn parse_scopes(scopes: &[String], field: &str) -> Result<Vec<Scope>, Error> {
    super::parse_names(scopes, field, "scopes", MAX_NAMES_PER_CALL, Scope::parse)
}

pub(super) fn roles_detail(roles: &[RoleName]) -> String {
    roles
        .iter()
        .map(RoleName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn scopes_detail(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn weak_password(field: &str, message: String) -> Error {
    Error::InvalidArgument {
        field: field.to_owned(),
        reason: Reason::WeakPassword,
        message,
    }
}

/// The user after a change, which only a concurrent delete can have taken.
pub(super) fn still_there(record: Option<UserRecord>) -> Result<UserRecord, Error> {
    record.ok_or_else(|| Error::NotFound {
        message: "the user was deleted meanwhile".to_owned(),
    })
}

pub(super) fn not_found_id(id: &str) -> Error {
    Error::NotFound {
        message: format!("no user has the id `{id}`"),
    }
}

pub(super) fn role_not_found(name: &str) -> Error {
    Error::NotFound {
        message: format!("role `{name}` does not exist"),
    }
}
