//! What Keystone knows of a user, as the services see it. Never a password or a hash.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The id.
    pub id: Uuid,
    /// The username as given.
    pub username: String,
    /// The email as given.
    pub email: String,
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
}
