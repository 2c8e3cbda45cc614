//! Managing users. For now: bootstrapping the first admin, from the command line or from the
//! `KEYSTONE_BOOTSTRAP_ADMIN_*` settings at start.

use secrecy::SecretString;

use crate::{
    clock::SharedClock,
    domain::{AuditRecord, Email, NewUser, Outcome, PasswordPolicy, RoleName, User, Username},
    error::Error,
    password::{PasswordHasher, generate_password},
    store::Store,
};

/// The role the bootstrap admin gets (seeded by the migrations, holding `keystone:admin`).
pub const ADMIN_ROLE: &str = migrations::ADMIN_ROLE;

/// User administration.
#[derive(Debug, Clone)]
pub struct UserAdminService {
    store: Store,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
    clock: SharedClock,
}

/// A bootstrap admin that was created.
#[derive(Debug)]
pub struct BootstrapOutcome {
    /// The admin.
    pub user: User,
    /// The password Keystone generated, when none was given; shown once.
    pub generated_password: Option<SecretString>,
}

impl UserAdminService {
    /// The service over its dependencies.
    pub fn new(
        store: Store,
        hasher: PasswordHasher,
        policy: PasswordPolicy,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            hasher,
            policy,
            clock,
        }
    }

    /// Creates an admin (role `admin`) unless a user already has the name: then `None`.
    /// Without a password, one is generated and the admin must change it at first login.
    /// Without an email, `<username>@keystone.invalid` (RFC 2606) stands in.
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        email: Option<&str>,
        password: Option<SecretString>,
    ) -> Result<Option<BootstrapOutcome>, Error> {
        let username = Username::parse(username).map_err(|e| e.on("username"))?;
        if self
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
        let (password, generated) = match password {
            Some(password) => {
                self.policy
                    .check(&password, Some(&username), Some(&email))
                    .map_err(|e| e.on("password"))?;
                (password, false)
            }
            None => (generate_password()?, true),
        };
        let password_hash = self.hasher.hash(&password).await?;
        let role = RoleName::parse(ADMIN_ROLE).map_err(|e| e.on("role"))?;
        let audit = AuditRecord::new("system", "user.bootstrap_admin", "", Outcome::Success)
            .with_detail("username", username.as_str())
            .with_detail("password", if generated { "generated" } else { "given" });
        let user = self
            .store
            .insert_user(
                NewUser {
                    username,
                    email,
                    password_hash,
                    enabled: true,
                    email_verified: false,
                    password_change_required: generated,
                    roles: vec![role],
                },
                &audit,
                self.clock.now(),
            )
            .await?;
        Ok(Some(BootstrapOutcome {
            user,
            generated_password: generated.then_some(password),
        }))
    }
}
