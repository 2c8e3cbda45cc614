//! What Keystone knows of a user, as the services see it. Never a password or a hash.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The id.
    pub id: Uuid,
    /// The username.
    pub username: super::Username,
    /// The email address.
    pub email: super::Email,
    /// Whether the user may log in.
    pub enabled: bool,
    /// Whether the email address is verified.
    pub email_verified: bool,
    /// Whether the user must change the password before getting a full token.
    pub password_change_required: bool,
    /// Whether an admin locked the account.
    pub locked: bool,
    /// Until when an admin lock lasts; `None` with `locked`: until unlocked.
    pub locked_until: Option<DateTime<Utc>>,
    /// The user's role names, sorted.
    pub roles: Vec<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
}

/// A user to create; the password is already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The username.
    pub username: super::Username,
    /// The email address.
    pub email: super::Email,
    /// The PHC string of the password.
    pub password_hash: String,
    /// Whether the user may log in.
    pub enabled: bool,
    /// Whether the email address is verified.
    pub email_verified: bool,
    /// Whether the user must change the password first.
    pub password_change_required: bool,
    /// Roles to give; each must exist.
    pub roles: Vec<super::RoleName>,
    /// With no `roles`: give every default role (`Role.default_for_new_users`).
    pub default_roles: bool,
}

/// A user as admins see it: the account with its login standing (failed logins counted under
/// the username, and any lock they caused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The account.
    pub user: User,
    /// Failed logins since the last success.
    pub failed_login_attempts: i32,
    /// Until when failed logins lock the name.
    pub login_locked_until: Option<DateTime<Utc>>,
}

impl UserRecord {
    /// Whether the account is locked at `now` (by an admin or by failed logins), and until
    /// when: `None` while locked means until an admin unlocks it.
    pub fn lock_at(&self, now: DateTime<Utc>) -> (bool, Option<DateTime<Utc>>) {
        let admin_lock = self.user.locked && self.user.locked_until.is_none_or(|until| until > now);
        let login_lock = self.login_locked_until.filter(|until| *until > now);
        match (admin_lock, login_lock) {
            (true, _) if self.user.locked_until.is_none() => (true, None),
            (true, login) => (true, self.user.locked_until.max(login)),
            (false, Some(until)) => (true, Some(until)),
            (false, None) => (false, None),
        }
    }
}

/// A role: a named set of scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The scopes it grants.
    pub scopes: super::ScopeSet,
    /// Whether new users get it (`Register`, and `CreateUser` with no roles).
    pub default_for_new_users: bool,
}

/// A scope as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRecord {
    /// `resource:action`.
    pub name: String,
    /// What it allows.
    pub description: String,
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The event's id.
    pub id: Uuid,
    /// When.
    pub time: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// From where.
    pub peer: String,
    /// Further facts.
    pub details: std::collections::BTreeMap<String, String>,
}

/// A session as its user and admins see it: one refresh-token family, from a login to its
/// logout or expiry. Never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The family's id: the tokens' `sid`.
    pub id: Uuid,
    /// When the user logged in.
    pub created_at: DateTime<Utc>,
    /// When the session's refresh token was last used (its latest rotation), or the login.
    pub last_used_at: DateTime<Utc>,
    /// When the session ends unless refreshed.
    pub expires_at: DateTime<Utc>,
    /// The client address at login.
    pub ip: String,
    /// The `user-agent` at login, truncated.
    pub user_agent: String,
}
