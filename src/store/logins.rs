//! What a login needs: the user's credentials, failed-attempt counters per name, scopes of
//! roles, and recording a success.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, Condition, EntityTrait as _, QueryFilter as _,
    QuerySelect as _, RelationTrait as _, Set, TransactionTrait as _, sea_query::Expr,
};
use uuid::Uuid;

use super::{Store, audit, db_error, entity};
use crate::{domain::AuditRecord, error::Error};

/// A user's credentials and standing, for the password grant only.
#[derive(Clone)]
pub struct LoginRecord {
    /// The user.
    pub user: crate::domain::User,
    /// The PHC string.
    pub password_hash: String,
}

impl std::fmt::Debug for LoginRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRecord")
            .field("user", &self.user)
            .field("password_hash", &"[REDACTED]")
            .finish()
    }
}

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
    /// The user with this normalized username or email, with the password hash.
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
        let Some(model) = model else {
            return Ok(None);
        };
        let password_hash = model.password_hash.clone();
        let user = super::users::with_roles(self.db(), model).await?;
        Ok(Some(LoginRecord {
            user,
            password_hash,
        }))
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
        let user = super::users::with_roles(self.db(), model).await?;
        Ok(Some(LoginRecord {
            user,
            password_hash,
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
        let txn = self.db().begin().await.map_err(db_error)?;
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

    /// Counts a failed login for the name; when that makes `threshold` in a row, locks the name
    /// and returns until when. The counter lives in the database so every replica sees it.
    pub async fn record_login_failure(
        &self,
        name: &str,
        policy: LockoutPolicy,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let txn = self.db().begin().await.map_err(db_error)?;
        let row = entity::login_failure::Entity::find_by_id(name.to_owned())
            .lock_exclusive()
            .one(&txn)
            .await
            .map_err(db_error)?;
        let (mut attempts, mut lockouts) = match &row {
            Some(row) if now - row.last_failure_at > policy.forget_after => (0, 0),
            Some(row) => (row.failed_attempts, row.lockout_count),
            None => (0, 0),
        };
        attempts += 1;
        let mut locked_until = None;
        if attempts >= i32::try_from(policy.threshold).unwrap_or(i32::MAX) {
            let factor = 1_i32
                .checked_shl(lockouts.clamp(0, 20) as u32)
                .unwrap_or(i32::MAX);
            let length = (policy.base * factor).min(policy.max);
            locked_until = Some(now + length);
            lockouts += 1;
            attempts = 0;
        }
        let model = entity::login_failure::ActiveModel {
            name: Set(name.to_owned()),
            failed_attempts: Set(attempts),
            lockout_count: Set(lockouts),
            locked_until: Set(locked_until),
            last_failure_at: Set(now),
        };
        if row.is_some() {
            model.update(&txn).await.map_err(db_error)?;
        } else {
            model.insert(&txn).await.map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(locked_until)
    }

    /// Forgets failed logins of a name (after a success, or an admin unlock).
    pub async fn clear_login_failures(&self, name: &str) -> Result<(), Error> {
        entity::login_failure::Entity::delete_by_id(name.to_owned())
            .exec(self.db())
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Records a successful login: the time, and a new hash when the parameters were raised.
    pub async fn record_login_success(
        &self,
        user_id: Uuid,
        new_password_hash: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let mut update = entity::user::Entity::update_many()
            .col_expr(entity::user::Column::LastLoginAt, Expr::value(Some(now)))
            .filter(entity::user::Column::Id.eq(user_id));
        if let Some(hash) = new_password_hash {
            update = update.col_expr(entity::user::Column::PasswordHash, Expr::value(hash));
        }
        update.exec(self.db()).await.map_err(db_error)?;
        Ok(())
    }

    /// The scopes granted by a user's roles, sorted and without duplicates.
    pub async fn scopes_of_user(&self, user_id: Uuid) -> Result<Vec<String>, Error> {
        let mut scopes: Vec<String> = entity::scope::Entity::find()
            .inner_join(entity::role_scope::Entity)
            .join(
                sea_orm::JoinType::InnerJoin,
                entity::role_scope::Relation::Role.def(),
            )
            .join(
                sea_orm::JoinType::InnerJoin,
                entity::role::Relation::UserRole.def(),
            )
            .filter(entity::user_role::Column::UserId.eq(user_id))
            .select_only()
            .column(entity::scope::Column::Name)
            .into_tuple()
            .all(self.db())
            .await
            .map_err(db_error)?;
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }

    /// Records an audit event on its own.
    pub async fn record_audit(
        &self,
        record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        audit::insert(self.db(), record, now).await
    }
}
