//! Users: created (the bootstrap admin among them), read, listed, changed, locked, deleted;
//! their passwords, roles and sessions.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use uuid::Uuid;

use super::{
    ADMIN_ROLE, BootstrapOutcome, CreateUser, Page, UserAdminService, UserLookup, UserUpdate,
    not_found_id, parse_roles, parse_user_id, roles_detail, still_there, weak_password,
};
use crate::{
    domain::{
        AuditRecord, Email, NewUser, Outcome, Revocation, RoleName, Session, User, UserRecord,
        Username, normalize,
    },
    error::Error,
    password::generate_password,
    service::Actor,
    store::{UserChange, UserFilter},
};

impl UserAdminService {
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
    pub(super) async fn insert_user(
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
                    // A user created with no roles gets the default ones.
                    default_roles: true,
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
        Ok(self.page(users, &page, &listing, |u| {
            u.user.username.normalized().to_owned()
        }))
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
                self.policy
                    .check(
                        &password,
                        Some(&target.user.username),
                        Some(&target.user.email),
                    )
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
    pub(super) async fn change_roles(
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
}

impl UserAdminService {
    /// `ListUserSessions`: a user's live sessions, the newest first, by pages.
    pub async fn list_user_sessions(
        &self,
        user_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Session>, Error> {
        let user = parse_user_id(user_id, "user_id")?;
        let listing = format!("sessions:{user}");
        let page = self.pager.request(page_size, page_token, &listing)?;
        let before = page
            .after
            .as_deref()
            .map(|key| {
                Uuid::parse_str(key)
                    .map_err(|_| Error::invalid_argument("page_token", "is not a page token"))
            })
            .transpose()?;
        if self.store.find_user(user).await?.is_none() {
            return Err(not_found_id(user_id));
        }
        let sessions = self
            .store
            .sessions_of_user(user, before, page.size + 1, self.clock.now())
            .await?;
        Ok(self.page(sessions, &page, &listing, |s| s.id.to_string()))
    }

    /// `RevokeUserSession`: ends one session of a user (its refresh family and its access
    /// tokens, on every replica), audited. The caller must be able to manage the user.
    pub async fn revoke_user_session(
        &self,
        actor: &Actor,
        user_id: &str,
        session_id: &str,
    ) -> Result<(), Error> {
        let action = "user.revoke_session";
        let user = parse_user_id(user_id, "user_id")?;
        let session = crate::domain::parse_session_id(session_id)?;
        self.check_target(actor, user, action).await?;
        let now = self.clock.now();
        if self
            .store
            .session_of_user(user, session, now)
            .await?
            .is_none()
        {
            return Err(Error::NotFound {
                message: "the user has no live session with this id".to_owned(),
            });
        }
        let revocation = Revocation::of_session(session, now, self.token_lifetime);
        let event = actor
            .event(action, session.to_string(), Outcome::Success)
            .with_detail("user_id", user.to_string());
        self.store
            .revoke_family(session, &revocation, &event, now)
            .await?;
        self.revocations.applied(&revocation);
        Ok(())
    }
}
