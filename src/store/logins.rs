//! What a login needs: the user's credentials, failed-attempt counters per name, scopes of
//! roles, and recording a success.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ColumnTrait as _, Condition, ConnectionTrait as _, EntityTrait as _, QueryFilter as _,
    Statement,
    sea_query::{Expr, ExprTrait as _},
};
use uuid::Uuid;

use super::{NewRefreshToken, Store, audit, db_error, entity};
use crate::{domain::AuditRecord, error::Error};

/// A user's credentials and standing, for the password grant only.
#[derive(Clone)]
pub struct LoginRecord {
    /// The user.
    pub user: crate::domain::User,
    /// The PHC string.
    pub password_hash: String,
    /// The name failed logins of this user are counted under (the normalized username), so
    /// the username and the email share one count.
    pub lockout_name: String,
}

impl std::fmt::Debug for LoginRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRecord")
            .field("user", &self.user)
            .field("password_hash", &"[REDACTED]")
            .finish()
    }
}

/// After this long without a failure, a name's failures are forgotten (and its row may go).
pub const FORGET_FAILURES_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// How failed logins lock a name.
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    /// Failures in a row that lock the name.
    pub threshold: u32,
    /// The first lock's length; each further lock doubles it.
    pub base: Duration,
    /// The longest lock.
    pub max: Duration,
    /// After this long without a failure, locks start again from `base`.
    pub forget_after: Duration,
}

impl Store {
    /// The user with this normalized username or email, with the password hash. One query
    /// whether or not the user exists (roles are loaded after the password is checked), so the
    /// time does not tell.
    pub async fn find_login(&self, normalized: &str) -> Result<Option<LoginRecord>, Error> {
        let model = entity::user::Entity::find()
            .filter(
                Condition::any()
                    .add(entity::user::Column::UsernameNormalized.eq(normalized))
                    .add(entity::user::Column::EmailNormalized.eq(normalized)),
            )
            .one(self.db())
            .await
            .map_err(db_error)?;
        Ok(model.map(|model| LoginRecord {
            password_hash: model.password_hash.clone(),
            lockout_name: model.username_normalized.clone(),
            user: super::users::without_roles(model),
        }))
    }

    /// The role names of a user, sorted.
    pub async fn role_names_of(&self, user_id: Uuid) -> Result<Vec<String>, Error> {
        super::users::role_names(self.db(), user_id).await
    }

    /// The user with this id, with the password hash.
    pub async fn find_login_by_id(&self, user_id: Uuid) -> Result<Option<LoginRecord>, Error> {
        let Some(model) = entity::user::Entity::find_by_id(user_id)
            .one(self.db())
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        let password_hash = model.password_hash.clone();
        let lockout_name = model.username_normalized.clone();
        let user = super::users::with_roles(self.db(), model).await?;
        Ok(Some(LoginRecord {
            user,
            password_hash,
            lockout_name,
        }))
    }

    /// Sets a user's password hash (the user chose it: no change required any more).
    pub async fn set_own_password(
        &self,
        user_id: Uuid,
        password_hash: String,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let (_turn, txn) = self.begin_write().await?;
        entity::user::Entity::update_many()
            .col_expr(
                entity::user::Column::PasswordHash,
                Expr::value(password_hash),
            )
            .col_expr(
                entity::user::Column::PasswordChangeRequired,
                Expr::value(false),
            )
            .col_expr(
                entity::user::Column::PasswordChangedAt,
                Expr::value(Some(now)),
            )
            .col_expr(entity::user::Column::UpdatedAt, Expr::value(now))
            .filter(entity::user::Column::Id.eq(user_id))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        audit::insert(&txn, audit_record, now).await?;
        txn.commit().await.map_err(db_error)
    }

    /// Until when the name is locked, if it is locked at `now`.
    pub async fn locked_until(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let row = entity::login_failure::Entity::find_by_id(name.to_owned())
            .one(self.db())
            .await
            .map_err(db_error)?;
        Ok(row
            .and_then(|row| row.locked_until)
            .filter(|until| *until > now))
    }

    /// Counts a login attempt for the name before its password is checked, in one atomic
    /// statement, so concurrent attempts cannot all slip past the threshold while argon2 runs.
    /// Returns whether the attempt may go on: not while the name is locked, nor when more than
    /// `threshold` attempts are already counted (in flight or failed). A success clears the
    /// count; a failure may lock the name ([`Self::record_login_failure`]).
    pub async fn begin_login_attempt(
        &self,
        name: &str,
        policy: LockoutPolicy,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let _turn = self.write_turn().await;
        let forget_before = now - policy.forget_after;
        let row = self
            .db()
            .query_one_raw(Statement::from_sql_and_values(
                self.db().get_database_backend(),
                // While locked nothing is counted; after a long quiet spell counting restarts.
                "INSERT INTO login_failures (name, failed_attempts, lockout_count, locked_until, last_failure_at) \
                 VALUES ($1, 1, 0, NULL, $2) \
                 ON CONFLICT (name) DO UPDATE SET \
                   failed_attempts = CASE \
                     WHEN login_failures.locked_until IS NOT NULL AND login_failures.locked_until > $2 \
                       THEN login_failures.failed_attempts \
                     WHEN login_failures.last_failure_at < $3 THEN 1 \
                     ELSE login_failures.failed_attempts + 1 END, \
                   lockout_count = CASE WHEN login_failures.last_failure_at < $3 THEN 0 \
                     ELSE login_failures.lockout_count END, \
                   last_failure_at = $2 \
                 RETURNING failed_attempts, locked_until",
                [name.into(), now.into(), forget_before.into()],
            ))
            .await
            .map_err(db_error)?
            .ok_or_else(|| Error::internal(anyhow::anyhow!("the attempt upsert returned nothing")))?;
        let attempts: i32 = row.try_get("", "failed_attempts").map_err(db_error)?;
        let locked_until: Option<DateTime<Utc>> =
            row.try_get("", "locked_until").map_err(db_error)?;
        let threshold = i32::try_from(policy.threshold).unwrap_or(i32::MAX);
        Ok(locked_until.is_none_or(|until| until <= now) && attempts <= threshold)
    }

    /// Takes back an attempt counted by [`Self::begin_login_attempt`] whose password was never
    /// checked (the server was too busy, or failed): it must not count toward a lock.
    pub async fn cancel_login_attempt(&self, name: &str) -> Result<(), Error> {
        let _turn = self.write_turn().await;
        entity::login_failure::Entity::update_many()
            .col_expr(
                entity::login_failure::Column::FailedAttempts,
                Expr::col(entity::login_failure::Column::FailedAttempts).sub(1),
            )
            .filter(entity::login_failure::Column::Name.eq(name))
            .filter(entity::login_failure::Column::FailedAttempts.gt(0))
            .exec(self.db())
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// After a failed attempt counted by [`Self::begin_login_attempt`]: when the count has
    /// reached the threshold, locks the name for a time that doubles with each lock (up to
    /// `max`), and restarts the count. A lock in force is never shortened. The failure's audit
    /// event (with `locked_until` when this failure locked the name) is written in the same
    /// transaction. Returns the lock's end if this failure locked the name.
    pub async fn record_login_failure(
        &self,
        name: &str,
        policy: LockoutPolicy,
        event: AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let locked = lock_if_due(&txn, name, policy, now).await?;
        let event = match locked {
            Some(until) => event.with_detail("locked_until", until.to_rfc3339()),
            None => event,
        };
        audit::insert(&txn, &event, now).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(locked)
    }

    /// Forgets failed logins of a name (after a success, or an admin unlock).
    pub async fn clear_login_failures(&self, name: &str) -> Result<(), Error> {
        let _turn = self.write_turn().await;
        entity::login_failure::Entity::delete_by_id(name.to_owned())
            .exec(self.db())
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Records a successful login in one transaction: the time, a new hash when the
    /// parameters were raised, the session's first refresh token, and the audit event.
    pub async fn record_login_success(
        &self,
        user_id: Uuid,
        new_password_hash: Option<String>,
        refresh_token: Option<&NewRefreshToken>,
        event: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let (_turn, txn) = self.begin_write().await?;
        let mut update = entity::user::Entity::update_many()
            .col_expr(entity::user::Column::LastLoginAt, Expr::value(Some(now)))
            .filter(entity::user::Column::Id.eq(user_id));
        if let Some(hash) = new_password_hash {
            update = update.col_expr(entity::user::Column::PasswordHash, Expr::value(hash));
        }
        update.exec(&txn).await.map_err(db_error)?;
        if let Some(new) = refresh_token {
            super::refresh_tokens::insert_first(&txn, new).await?;
        }
        audit::insert(&txn, event, now).await?;
        txn.commit().await.map_err(db_error)
    }

    /// A user with their role names and the scopes those roles grant, in one round trip.
    pub async fn user_grants(&self, user_id: Uuid) -> Result<Option<super::UserGrants>, Error> {
        super::users::grants_of(self.db(), user_id).await
    }

    /// The scopes granted by a user's roles, sorted and without duplicates.
    pub async fn scopes_of_user(&self, user_id: Uuid) -> Result<crate::domain::ScopeSet, Error> {
        super::users::scopes_of_user(self.db(), user_id).await
    }

    /// Records an audit event that goes with no change, in a batch with others (see
    /// [`super::audit`]); returns once it is committed. An error means the event is lost.
    pub async fn record_audit(&self, record: AuditRecord, now: DateTime<Utc>) -> Result<(), Error> {
        self.audit.push(record, now).await
    }

    /// Records the event of a refusal and waits until it is committed; a failure is logged
    /// and the refusal stands.
    pub async fn record_refusal(&self, record: AuditRecord, now: DateTime<Utc>) {
        let action = record.action;
        if let Err(error) = self.audit.push(record, now).await {
            audit::log_unwritten(action, &error);
        }
    }

    /// Waits until the audit events recorded so far are written.
    pub async fn flush_audit(&self) {
        self.audit.flush().await;
    }
}

/// Locks the name when its failures have reached the threshold and it is not locked already;
/// returns the lock's end if it did.
async fn lock_if_due<C: sea_orm::ConnectionTrait>(
    db: &C,
    name: &str,
    policy: LockoutPolicy,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Error> {
    let Some(row) = entity::login_failure::Entity::find_by_id(name.to_owned())
        .one(db)
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let threshold = i32::try_from(policy.threshold).unwrap_or(i32::MAX);
    if row.failed_attempts < threshold || row.locked_until.is_some_and(|until| until > now) {
        return Ok(None);
    }
    let doublings = u32::try_from(row.lockout_count.clamp(0, 20)).unwrap_or(20);
    let length = policy
        .base
        .checked_mul(1_i32 << doublings)
        .unwrap_or(policy.max)
        .min(policy.max);
    let until = now.checked_add_signed(length).unwrap_or(now + policy.base);
    // Only the failure that finds the name unlocked sets the lock.
    let locked = entity::login_failure::Entity::update_many()
        .col_expr(
            entity::login_failure::Column::LockedUntil,
            Expr::value(Some(until)),
        )
        .col_expr(
            entity::login_failure::Column::FailedAttempts,
            Expr::value(0),
        )
        .col_expr(
            entity::login_failure::Column::LockoutCount,
            Expr::col(entity::login_failure::Column::LockoutCount).add(1),
        )
        .filter(entity::login_failure::Column::Name.eq(name))
        .filter(
            Condition::any()
                .add(entity::login_failure::Column::LockedUntil.is_null())
                .add(entity::login_failure::Column::LockedUntil.lte(now)),
        )
        .exec(db)
        .await
        .map_err(db_error)?;
    Ok((locked.rows_affected == 1).then_some(until))
}
