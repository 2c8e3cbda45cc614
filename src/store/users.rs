//! Users and their roles. Queries return [`domain::User`], never entities.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, Set, TransactionTrait as _,
};
use uuid::Uuid;

use super::{Store, audit, db_error, db_error_or_exists, entity};
use crate::{
    domain::{AuditRecord, NewUser, User},
    error::Error,
};

impl Store {
    /// Finds a user by normalized username or normalized email.
    pub async fn find_user_by_login(&self, normalized: &str) -> Result<Option<User>, Error> {
        let Some(mut user) = self.find_login(normalized).await?.map(|login| login.user) else {
            return Ok(None);
        };
        user.roles = role_names(self.db(), user.id).await?;
        Ok(Some(user))
    }

    /// Creates a user with roles, and records `audit`, in one transaction. Fails with
    /// `NotFound` naming a role that does not exist, `AlreadyExists` if the username or email
    /// is taken.
    pub async fn insert_user(
        &self,
        new: NewUser,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<User, Error> {
        let txn = self.db().begin().await.map_err(db_error)?;
        let mut role_ids = Vec::with_capacity(new.roles.len());
        for role in &new.roles {
            let found = entity::role::Entity::find()
                .filter(entity::role::Column::Name.eq(role.as_str()))
                .one(&txn)
                .await
                .map_err(db_error)?
                .ok_or_else(|| Error::NotFound {
                    message: format!("role `{}` does not exist", role.as_str()),
                })?;
            role_ids.push(found.id);
        }
        let id = Uuid::now_v7();
        let inserted = entity::user::ActiveModel {
            id: Set(id),
            username: Set(new.username.as_str().to_owned()),
            username_normalized: Set(new.username.normalized().to_owned()),
            email: Set(new.email.as_str().to_owned()),
            email_normalized: Set(new.email.normalized().to_owned()),
            password_hash: Set(new.password_hash),
            enabled: Set(new.enabled),
            email_verified: Set(new.email_verified),
            password_change_required: Set(new.password_change_required),
            locked: Set(false),
            locked_until: Set(None),
            tokens_not_before: Set(None),
            password_changed_at: Set(Some(now)),
            last_login_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await
        .map_err(db_error_or_exists(
            "a user with this username or email already exists".to_owned(),
        ))?;
        for role_id in role_ids {
            entity::user_role::ActiveModel {
                user_id: Set(id),
                role_id: Set(role_id),
            }
            .insert(&txn)
            .await
            .map_err(db_error)?;
        }
        let mut audit_record = audit_record.clone();
        if audit_record.target.is_empty() {
            audit_record.target = id.to_string();
        }
        audit::insert(&txn, &audit_record, now).await?;
        let user = with_roles(&txn, inserted).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(user)
    }
}

/// The role names of a user, sorted.
pub(crate) async fn role_names<C: ConnectionTrait>(
    db: &C,
    user_id: Uuid,
) -> Result<Vec<String>, Error> {
    entity::role::Entity::find()
        .inner_join(entity::user_role::Entity)
        .filter(entity::user_role::Column::UserId.eq(user_id))
        .order_by_asc(entity::role::Column::Name)
        .select_only()
        .column(entity::role::Column::Name)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)
}

/// The domain user of a row, with its role names.
pub(crate) async fn with_roles<C: ConnectionTrait>(
    db: &C,
    model: entity::user::Model,
) -> Result<User, Error> {
    let roles = role_names(db, model.id).await?;
    let mut user = without_roles(model);
    user.roles = roles;
    Ok(user)
}

/// The domain user of a row, its roles left empty.
pub(crate) fn without_roles(model: entity::user::Model) -> User {
    User {
        id: model.id,
        username: model.username,
        email: model.email,
        enabled: model.enabled,
        email_verified: model.email_verified,
        password_change_required: model.password_change_required,
        locked: model.locked,
        locked_until: model.locked_until,
        roles: Vec::new(),
        created_at: model.created_at,
        updated_at: model.updated_at,
        last_login_at: model.last_login_at,
    }
}
