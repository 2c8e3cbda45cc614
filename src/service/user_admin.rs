//! Managing users, roles and scopes, and reading the audit trail. Every method takes the
//! [`Actor`] the adapter established first, and decides here:
//! - nobody grants what they do not hold (roles given, roles edited);
//! - nobody changes a user holding a scope they lack (an admin, say);
//! - no change leaves no active admin (the store checks it inside the change's transaction);
//! - disabling, deleting, locking a user, taking roles from them, resetting their password and
//!   ending their sessions revoke their tokens at once (a subject revocation, written with the
//!   change).

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
    domain::{
        AuditEvent, AuditRecord, Email, NewUser, Outcome, PasswordPolicy, Role, RoleName, Scope,
        ScopeRecord, User, UserRecord, Username, check_description, normalize,
    },
    error::{Error, Reason},
    password::{PasswordHasher, generate_password},
    revocation::{Revocation, Revocations},
    store::{AuditFilter, ChangeGuard, RoleChanges, Store, UserChange, UserFilter},
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
        pager: Pager,
        token_lifetime: Duration,
    ) -> Self {
        Self {
            store,
            hasher,
            policy,
            clock,
            revocations,
            pager,
            token_lifetime,
        }
    }

    /// Creates an admin (role `admin`) unless a user already has the name, or, with
    /// `only_first`, unless some user holds the role `admin` already: then `None`. So the
    /// admin of the environment (`bootstrap_admin_username`) is made once, for a new
    /// installation, and never comes back after it was deleted. Without a password, one is
    /// generated and the admin must change it at first login. Without an email,
    /// `<username>@keystone.invalid` (RFC 2606) stands in.
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        email: Option<&str>,
        password: Option<SecretString>,
        only_first: bool,
    ) -> Result<Option<BootstrapOutcome>, Error> {
        let username = Username::parse(username).map_err(|e| e.on("username"))?;
        if (only_first && self.store.role_has_users(ADMIN_ROLE).await?)
            || self
                .store
                .find_user_by_login(username.normalized())
                .await?
                .is_some()
        {
            return Ok(None);
        }
        let email = match email {
            Some(email) => Email::parse(email).map_err(|e| e.on("email"))?,
            None => Email::parse(&format!("{}@keystone.invalid", username.normalized()))
                .map_err(|e| e.on("username"))?,
        };
        let role = RoleName::parse(ADMIN_ROLE).map_err(|e| e.on("role"))?;
        let audit = AuditRecord::new("system", "user.bootstrap_admin", "", Outcome::Success)
            .with_detail("username", username.as_str());
        let (user, generated_password) = self
            .insert_user(username, email, password, vec![role], true, false, audit)
            .await?;
        Ok(Some(BootstrapOutcome {
            user,
            generated_password,
        }))
    }

    /// `CreateUser`: roles must exist and carry only scopes the caller holds.
    pub async fn create_user(
        &self,
        actor: &Actor,
        request: CreateUser,
    ) -> Result<(UserRecord, Option<SecretString>), Error> {
        let username = Username::parse(&request.username).map_err(|e| e.on("username"))?;
        let email = Email::parse(&request.email).map_err(|e| e.on("email"))?;
        let roles = parse_roles(&request.roles, "roles")?;
        let scopes = self.store.scopes_of_roles(&roles).await?;
        if let Err(error) = actor.check_may_grant(scopes.iter().map(String::as_str)) {
            return Err(self
                .denied(actor, "user.create", username.as_str(), error)
                .await);
        }
        let audit = actor
            .event("user.create", "", Outcome::Success)
            .with_detail("username", username.as_str())
            .with_detail("roles", roles_detail(&roles));
        let (user, generated) = self
            .insert_user(
                username,
                email,
                request.password,
                roles,
                request.enabled,
                request.email_verified,
                audit,
            )
            .await?;
        let record = self
            .store
            .find_user(user.id)
            .await?
            .ok_or_else(|| not_found_id(&user.id.to_string()))?;
        Ok((record, generated))
    }

    /// Checks names and the password, hashes it, and creates the user.
    #[allow(clippy::too_many_arguments)]
    async fn insert_user(
        &self,
        username: Username,
        email: Email,
        password: Option<SecretString>,
        roles: Vec<RoleName>,
        enabled: bool,
        email_verified: bool,
        audit: AuditRecord,
    ) -> Result<(User, Option<SecretString>), Error> {
        if let Some(existing) = self
            .store
            .username_with_skeleton(&username.skeleton())
            .await?
        {
            return Err(Error::AlreadyExists {
                message: format!(
                    "the username looks like the existing username `{existing}`; choose another"
                ),
            });
        }
        let (password, generated) = match password {
            Some(password) => {
                self.policy
                    .check(&password, Some(&username), Some(&email))
                    .map_err(|e| weak_password("password", e.0))?;
                (password, false)
            }
            None => (generate_password()?, true),
        };
        let password_hash = self.hasher.hash(&password).await?;
        let audit = audit.with_detail("password", if generated { "generated" } else { "given" });
        let user = self
            .store
            .insert_user(
                NewUser {
                    username,
                    email,
                    password_hash,
                    enabled,
                    email_verified,
                    password_change_required: generated,
                    roles,
                },
                &audit,
                self.clock.now(),
            )
            .await?;
        Ok((user, generated.then_some(password)))
    }

    /// `GetUser`.
    pub async fn get_user(&self, lookup: UserLookup) -> Result<UserRecord, Error> {
        match lookup {
            UserLookup::Id(id) => {
                let uuid = parse_user_id(&id, "id")?;
                self.store
                    .find_user(uuid)
                    .await?
                    .ok_or_else(|| not_found_id(&id))
            }
            UserLookup::Username(name) => {
                if name.is_empty() || name.len() > 256 {
                    return Err(Error::invalid_argument(
                        "username",
                        "must hold 1 to 256 bytes",
                    ));
                }
                self.store
                    .find_user_by_username(&normalize(&name))
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        message: format!("no user has the username `{name}`"),
                    })
            }
        }
    }

    /// `ListUsers`: by username, filtered by a literal prefix of the username or email and by
    /// role.
    pub async fn list_users(
        &self,
        page_size: i32,
        page_token: &str,
        query: &str,
        role: &str,
    ) -> Result<Page<UserRecord>, Error> {
        if query.len() > 320 || query.chars().any(char::is_control) {
            return Err(Error::invalid_argument(
                "query",
                "must be at most 320 bytes with no control characters",
            ));
        }
        if !role.is_empty() {
            RoleName::parse(role).map_err(|e| e.on("role"))?;
        }
        let filter = UserFilter {
            prefix: (!query.is_empty()).then(|| normalize(query)),
            role: (!role.is_empty()).then(|| role.to_owned()),
        };
        let listing = format!("users\0{query}\0{role}");
        let page = self.pager.request(page_size, page_token, &listing)?;
        let users = self
            .store
            .list_users(&filter, page.after.as_deref(), page.size + 1)
            .await?;
        Ok(self.page(users, &page, &listing, |u| normalize(&u.user.username)))
    }

    /// `UpdateUser`: email, enabled, email_verified. Disabling revokes the user's tokens.
    pub async fn update_user(
        &self,
        actor: &Actor,
        id: &str,
        update: UserUpdate,
    ) -> Result<UserRecord, Error> {
        let email = update
            .email
            .as_deref()
            .map(Email::parse)
            .transpose()
            .map_err(|e| e.on("user.email"))?;
        let mut fields = Vec::new();
        if email.is_some() {
            fields.push("email");
        }
        if let Some(enabled) = update.enabled {
            fields.push(if enabled {
                "enabled=true"
            } else {
                "enabled=false"
            });
        }
        if let Some(verified) = update.email_verified {
            fields.push(if verified {
                "email_verified=true"
            } else {
                "email_verified=false"
            });
        }
        let revoke = update.enabled == Some(false);
        let change = UserChange::Update {
            email,
            enabled: update.enabled,
            email_verified: update.email_verified,
        };
        let (record, _) = self
            .change(
                actor,
                id,
                "user.id",
                "user.update",
                change,
                revoke,
                |event| event.with_detail("fields", fields.join(",")),
            )
            .await?;
        still_there(record)
    }

    /// `DeleteUser`: the user's tokens are revoked with them.
    pub async fn delete_user(&self, actor: &Actor, id: &str) -> Result<(), Error> {
        self.change(
            actor,
            id,
            "id",
            "user.delete",
            UserChange::Delete,
            true,
            |e| e,
        )
        .await?;
        Ok(())
    }

    /// `SetPassword`: a given password must meet the policy; none: one is generated. Either
    /// way the user must change it, and their sessions end.
    pub async fn set_password(
        &self,
        actor: &Actor,
        id: &str,
        password: Option<SecretString>,
    ) -> Result<Option<SecretString>, Error> {
        let uuid = parse_user_id(id, "id")?;
        let target = self.check_target(actor, uuid, "user.set_password").await?;
        let (password, generated) = match password {
            Some(password) => {
                let username = Username::parse(&target.user.username).ok();
                let email = Email::parse(&target.user.email).ok();
                self.policy
                    .check(&password, username.as_ref(), email.as_ref())
                    .map_err(|e| weak_password("password", e.0))?;
                (password, false)
            }
            None => (generate_password()?, true),
        };
        let password_hash = self.hasher.hash(&password).await?;
        self.apply(
            actor,
            uuid,
            "user.set_password",
            UserChange::SetPassword { password_hash },
            true,
            |event| event.with_detail("password", if generated { "generated" } else { "given" }),
        )
        .await?;
        Ok(generated.then_some(password))
    }

    /// `LockUser`: until a time in the future, or until unlocked; the user's tokens are
    /// revoked.
    pub async fn lock_user(
        &self,
        actor: &Actor,
        id: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<UserRecord, Error> {
        if let Some(until) = until
            && until <= self.clock.now()
        {
            return Err(Error::invalid_argument("until", "must be in the future"));
        }
        let until_detail = until.map_or_else(|| "unlocked".to_owned(), |u| u.to_rfc3339());
        let (record, _) = self
            .change(
                actor,
                id,
                "id",
                "user.lock",
                UserChange::Lock { until },
                true,
                |event| event.with_detail("until", until_detail),
            )
            .await?;
        still_there(record)
    }

    /// `UnlockUser`: lifts an admin lock and forgets failed logins.
    pub async fn unlock_user(&self, actor: &Actor, id: &str) -> Result<UserRecord, Error> {
        let (record, _) = self
            .change(
                actor,
                id,
                "id",
                "user.unlock",
                UserChange::Unlock,
                false,
                |e| e,
            )
            .await?;
        still_there(record)
    }

    /// `AssignRoles`: the roles must exist and carry only scopes the caller holds.
    pub async fn assign_roles(
        &self,
        actor: &Actor,
        user_id: &str,
        roles: &[String],
    ) -> Result<UserRecord, Error> {
        self.change_roles(actor, user_id, roles, true).await
    }

    /// `RemoveRoles`: the roles must exist and carry only scopes the caller holds; the user's
    /// tokens (which carry the old roles) are revoked.
    pub async fn remove_roles(
        &self,
        actor: &Actor,
        user_id: &str,
        roles: &[String],
    ) -> Result<UserRecord, Error> {
        self.change_roles(actor, user_id, roles, false).await
    }

    /// Gives (`assign`) or takes roles; taking revokes the user's tokens.
    async fn change_roles(
        &self,
        actor: &Actor,
        user_id: &str,
        roles: &[String],
        assign: bool,
    ) -> Result<UserRecord, Error> {
        let roles = parse_roles(roles, "roles")?;
        if roles.is_empty() {
            return Err(Error::invalid_argument("roles", "name at least one role"));
        }
        let action = if assign {
            "user.assign_roles"
        } else {
            "user.remove_roles"
        };
        let scopes = self.store.scopes_of_roles(&roles).await?;
        if let Err(error) = actor.check_may_grant(scopes.iter().map(String::as_str)) {
            return Err(self.denied(actor, action, user_id, error).await);
        }
        let detail = roles_detail(&roles);
        let change = if assign {
            UserChange::AssignRoles(roles)
        } else {
            UserChange::RemoveRoles(roles)
        };
        let (record, _) = self
            .change(
                actor,
                user_id,
                "user_id",
                action,
                change,
                !assign,
                |event| event.with_detail("roles", detail),
            )
            .await?;
        still_there(record)
    }

    /// `RevokeUserSessions`: ends every session and rejects every token of the user issued so
    /// far. Returns how many live sessions ended.
    pub async fn revoke_user_sessions(&self, actor: &Actor, user_id: &str) -> Result<u64, Error> {
        let (_, ended) = self
            .change(
                actor,
                user_id,
                "user_id",
                "user.revoke_sessions",
                UserChange::EndSessions,
                true,
                |e| e,
            )
            .await?;
        Ok(ended)
    }

    /// `CreateRole`: its scopes must exist and be held by the caller.
    pub async fn create_role(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
        scopes: &[String],
    ) -> Result<Role, Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("role.name"))?;
        check_description(description, MAX_DESCRIPTION).map_err(|e| e.on("role.description"))?;
        let scopes = parse_scopes(scopes, "role.scopes")?;
        if let Err(error) = actor.check_may_grant(scopes.iter().map(Scope::as_str)) {
            return Err(self
                .denied(actor, "role.create", name.as_str(), error)
                .await);
        }
        let audit = actor
            .event("role.create", name.as_str(), Outcome::Success)
            .with_detail("scopes", scopes_detail(&scopes));
        self.store
            .insert_role(&name, description, &scopes, &audit, self.clock.now())
            .await
    }

    /// `GetRole`.
    pub async fn get_role(&self, name: &str) -> Result<Role, Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("name"))?;
        self.store
            .find_role(name.as_str())
            .await?
            .ok_or_else(|| role_not_found(name.as_str()))
    }

    /// `ListRoles`, by name.
    pub async fn list_roles(&self, page_size: i32, page_token: &str) -> Result<Page<Role>, Error> {
        let page = self.pager.request(page_size, page_token, "roles")?;
        let roles = self
            .store
            .list_roles(page.after.as_deref(), page.size + 1)
            .await?;
        Ok(self.page(roles, &page, "roles", |r| r.name.clone()))
    }

    /// `UpdateRole`: the caller must hold every scope the role carries before and after.
    /// Holders get the new scopes with their next token.
    pub async fn update_role(
        &self,
        actor: &Actor,
        name: &str,
        description: Option<String>,
        scopes: Option<Vec<String>>,
    ) -> Result<Role, Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("role.name"))?;
        if let Some(description) = &description {
            check_description(description, MAX_DESCRIPTION)
                .map_err(|e| e.on("role.description"))?;
        }
        let scopes = scopes
            .map(|scopes| parse_scopes(&scopes, "role.scopes"))
            .transpose()?;
        let current = self
            .store
            .find_role(name.as_str())
            .await?
            .ok_or_else(|| role_not_found(name.as_str()))?;
        let new_scopes = scopes.iter().flatten().map(Scope::as_str);
        if let Err(error) =
            actor.check_may_grant(current.scopes.iter().map(String::as_str).chain(new_scopes))
        {
            return Err(self
                .denied(actor, "role.update", name.as_str(), error)
                .await);
        }
        let mut audit = actor.event("role.update", name.as_str(), Outcome::Success);
        if let Some(scopes) = &scopes {
            audit = audit.with_detail("scopes", scopes_detail(scopes));
        }
        if description.is_some() {
            audit = audit.with_detail("description", "changed");
        }
        self.store
            .update_role(
                name.as_str(),
                &RoleChanges {
                    description,
                    scopes,
                },
                &audit,
                self.clock.now(),
            )
            .await
    }

    /// `DeleteRole`: the caller must hold every scope the role carries.
    pub async fn delete_role(&self, actor: &Actor, name: &str) -> Result<(), Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("name"))?;
        let current = self
            .store
            .find_role(name.as_str())
            .await?
            .ok_or_else(|| role_not_found(name.as_str()))?;
        if let Err(error) = actor.check_may_grant(current.scopes.iter().map(String::as_str)) {
            return Err(self
                .denied(actor, "role.delete", name.as_str(), error)
                .await);
        }
        self.store
            .delete_role(
                name.as_str(),
                &actor.event("role.delete", name.as_str(), Outcome::Success),
                self.clock.now(),
            )
            .await
    }

    /// `CreateScope`. The `keystone` resource is Keystone's own: its scopes are built in.
    pub async fn create_scope(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
    ) -> Result<ScopeRecord, Error> {
        let scope = Scope::parse(name).map_err(|e| e.on("scope.name"))?;
        if scope.resource() == "keystone" {
            return Err(Error::invalid_argument(
                "scope.name",
                "the `keystone` resource is reserved for Keystone's built-in scopes",
            ));
        }
        check_description(description, MAX_DESCRIPTION).map_err(|e| e.on("scope.description"))?;
        self.store
            .insert_scope(
                &scope,
                description,
                &actor.event("scope.create", scope.as_str(), Outcome::Success),
                self.clock.now(),
            )
            .await
    }

    /// `ListScopes`, by name.
    pub async fn list_scopes(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<ScopeRecord>, Error> {
        let page = self.pager.request(page_size, page_token, "scopes")?;
        let scopes = self
            .store
            .list_scopes(page.after.as_deref(), page.size + 1)
            .await?;
        Ok(self.page(scopes, &page, "scopes", |s| s.name.clone()))
    }

    /// `DeleteScope`: built-in scopes stay; one still granted needs `force`.
    pub async fn delete_scope(&self, actor: &Actor, name: &str, force: bool) -> Result<(), Error> {
        let scope = Scope::parse(name).map_err(|e| e.on("name"))?;
        if migrations::BUILTIN_SCOPES
            .iter()
            .any(|(builtin, _)| *builtin == scope.as_str())
        {
            return Err(Error::FailedPrecondition {
                reason: Reason::FailedPrecondition,
                message: format!("`{}` is built in and cannot be deleted", scope.as_str()),
            });
        }
        if let Err(error) = actor.check_may_grant([scope.as_str()]) {
            return Err(self
                .denied(actor, "scope.delete", scope.as_str(), error)
                .await);
        }
        let audit = actor
            .event("scope.delete", scope.as_str(), Outcome::Success)
            .with_detail("force", force.to_string());
        self.store
            .delete_scope(scope.as_str(), force, &audit, self.clock.now())
            .await?;
        // Clients that were allowed the scope lost it: every replica reads them again.
        self.revocations.announce_client_change(None);
        Ok(())
    }

    /// `ListAuditEvents`, newest first.
    pub async fn list_audit_events(
        &self,
        page_size: i32,
        page_token: &str,
        query: AuditQuery,
    ) -> Result<Page<AuditEvent>, Error> {
        for (field, value) in [
            ("actor", &query.actor),
            ("action", &query.action),
            ("target", &query.target),
        ] {
            if value.len() > 320 || value.chars().any(char::is_control) {
                return Err(Error::invalid_argument(
                    field,
                    "must be at most 320 bytes with no control characters",
                ));
            }
        }
        let listing = format!(
            "audit\0{}\0{}\0{}\0{}",
            query.actor,
            query.action,
            query.target,
            query.since.map(|s| s.to_rfc3339()).unwrap_or_default()
        );
        let page = self.pager.request(page_size, page_token, &listing)?;
        let before = page
            .after
            .as_deref()
            .map(Uuid::parse_str)
            .transpose()
            .map_err(|_| Error::invalid_argument("page_token", "is not a page token"))?;
        let non_empty = |value: String| (!value.is_empty()).then_some(value);
        let filter = AuditFilter {
            actor: non_empty(query.actor),
            action: non_empty(query.action),
            target: non_empty(query.target),
            since: query.since,
        };
        let events = self
            .store
            .list_audit_events(&filter, before, page.size + 1)
            .await?;
        Ok(self.page(events, &page, &listing, |e| e.id.to_string()))
    }

    /// Loads the target, checks the caller may change them (before any work, and again inside
    /// the change), and applies the change.
    #[allow(clippy::too_many_arguments)]
    async fn change(
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
    async fn apply(
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
        let permit = |scopes: &[String], _: &[String]| {
            actor.check_may_manage(scopes.iter().map(String::as_str))
        };
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
    async fn check_target(
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
        if let Err(error) = actor.check_may_manage(scopes.iter().map(String::as_str)) {
            return Err(self.denied(actor, action, &id.to_string(), error).await);
        }
        Ok(target)
    }

    /// Records a refusal and hands the error back.
    async fn denied(
        &self,
        actor: &Actor,
        action: &'static str,
        target: &str,
        error: Error,
    ) -> Error {
        super::record_denial(&self.store, self.clock.now(), actor, action, target, error).await
    }

    /// A revocation of every token of `subject` issued up to `now`.
    fn subject_revocation(&self, subject: &str, now: DateTime<Utc>) -> Revocation {
        Revocation::of_subject(subject, now, self.token_lifetime)
    }

    fn page<T>(
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

fn parse_user_id(id: &str, field: &str) -> Result<Uuid, Error> {
    if id.is_empty() {
        return Err(Error::invalid_argument(field, "name the user by id"));
    }
    Uuid::parse_str(id).map_err(|_| Error::invalid_argument(field, "is not a user id (a UUID)"))
}

fn parse_roles(roles: &[String], field: &str) -> Result<Vec<RoleName>, Error> {
    super::parse_names(roles, field, "roles", MAX_NAMES_PER_CALL, RoleName::parse)
}

fn parse_scopes(scopes: &[String], field: &str) -> Result<Vec<Scope>, Error> {
    super::parse_names(scopes, field, "scopes", MAX_NAMES_PER_CALL, Scope::parse)
}

fn roles_detail(roles: &[RoleName]) -> String {
    roles
        .iter()
        .map(RoleName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn scopes_detail(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn weak_password(field: &str, message: String) -> Error {
    Error::InvalidArgument {
        field: field.to_owned(),
        reason: Reason::WeakPassword,
        message,
    }
}

/// The user after a change, which only a concurrent delete can have taken.
fn still_there(record: Option<UserRecord>) -> Result<UserRecord, Error> {
    record.ok_or_else(|| Error::NotFound {
        message: "the user was deleted meanwhile".to_owned(),
    })
}

fn not_found_id(id: &str) -> Error {
    Error::NotFound {
        message: format!("no user has the id `{id}`"),
    }
}

fn role_not_found(name: &str) -> Error {
    Error::NotFound {
        message: format!("role `{name}` does not exist"),
    }
}
