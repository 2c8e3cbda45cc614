//! Roles and scopes, and the invariant every admin change keeps: while an active admin exists,
//! no change may leave none (an enabled, unlocked user holding a role that grants
//! `keystone:admin`).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait, DatabaseBackend, DatabaseTransaction,
    EntityTrait as _, PaginatorTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
    Set, Statement, sea_query::Expr,
};
use uuid::Uuid;

use super::{Store, audit, db_error, db_error_or_exists, entity};
use crate::{
    domain::{AuditRecord, Role, RoleName, Scope, ScopeRecord},
    error::{Error, Reason},
};

/// The scope that makes an admin.
const ADMIN_SCOPE: &str = "keystone:admin";

/// What a role update changes.
#[derive(Debug, Clone, Default)]
pub struct RoleChanges {
    /// A new description.
    pub description: Option<String>,
    /// The new set of scopes.
    pub scopes: Option<Vec<Scope>>,
    /// Whether new users get the role.
    pub default_for_new_users: Option<bool>,
}

impl Store {
    /// Whether any user holds the role `name`.
    pub async fn role_has_users(&self, name: &str) -> Result<bool, Error> {
        let Some(role) = entity::role::Entity::find()
            .filter(entity::role::Column::Name.eq(name))
            .one(self.db())
            .await
            .map_err(db_error)?
        else {
            return Ok(false);
        };
        let holders = entity::user_role::Entity::find()
            .filter(entity::user_role::Column::RoleId.eq(role.id))
            .count(self.db())
            .await
            .map_err(db_error)?;
        Ok(holders > 0)
    }

    /// Creates a role; its scopes must exist.
    pub async fn insert_role(
        &self,
        role: &RoleName,
        description: &str,
        scopes: &[Scope],
        default_for_new_users: bool,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<Role, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let id = Uuid::now_v7();
        entity::role::ActiveModel {
            id: Set(id),
            name: Set(role.as_str().to_owned()),
            description: Set(description.to_owned()),
            default_for_new_users: Set(default_for_new_users),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await
        .map_err(db_error_or_exists(format!(
            "a role `{}` already exists",
            role.as_str()
        )))?;
        set_role_scopes(&txn, id, scopes).await?;
        let created = role_by_name(&txn, role.as_str()).await?;
        if let Some(created) = &created {
            no_administration_by_default(created, "role.default_for_new_users")?;
        }
        audit::insert(&txn, audit_record, now).await?;
        txn.commit().await.map_err(db_error)?;
        created.ok_or_else(|| Error::internal(anyhow::anyhow!("the new role vanished")))
    }

    /// A role by name.
    pub async fn find_role(&self, name: &str) -> Result<Option<Role>, Error> {
        role_by_name(self.db(), name).await
    }

    /// Roles by name after `after`, at most `limit`.
    pub async fn list_roles(&self, after: Option<&str>, limit: u64) -> Result<Vec<Role>, Error> {
        let mut query = entity::role::Entity::find().order_by_asc(entity::role::Column::Name);
        if let Some(after) = after {
            query = query.filter(entity::role::Column::Name.gt(after));
        }
        let models = query
            .limit(limit)
            .all(self.reports_db())
            .await
            .map_err(db_error)?;
        let mut roles = Vec::with_capacity(models.len());
        for model in models {
            let scopes = scopes_of_role(self.reports_db(), model.id).await?;
            roles.push(Role {
                name: model.name,
                description: model.description,
                scopes: super::stored_scopes(&scopes),
                default_for_new_users: model.default_for_new_users,
            });
        }
        Ok(roles)
    }

    /// The union of the scopes of `roles`, each of which must exist.
    pub async fn scopes_of_roles(&self, roles: &[RoleName]) -> Result<Vec<String>, Error> {
        let mut scopes = Vec::new();
        for name in roles {
            let role = role_by_name(self.db(), name.as_str())
                .await?
                .ok_or_else(|| role_not_found(name.as_str()))?;
            scopes.extend(role.scopes.to_strings());
        }
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }

    /// Changes a role's description and scopes, keeping an admin.
    pub async fn update_role(
        &self,
        name: &str,
        changes: &RoleChanges,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<Role, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let admins = lock_admins(&txn, now).await?;
        let model = entity::role::Entity::find()
            .filter(entity::role::Column::Name.eq(name))
            .one(&txn)
            .await
            .map_err(db_error)?
            .ok_or_else(|| role_not_found(name))?;
        let mut update = entity::role::Entity::update_many()
            .col_expr(entity::role::Column::UpdatedAt, Expr::value(now))
            .filter(entity::role::Column::Id.eq(model.id));
        if let Some(description) = &changes.description {
            update = update.col_expr(
                entity::role::Column::Description,
                Expr::value(description.clone()),
            );
        }
        if let Some(default) = changes.default_for_new_users {
            update = update.col_expr(
                entity::role::Column::DefaultForNewUsers,
                Expr::value(default),
            );
        }
        update.exec(&txn).await.map_err(db_error)?;
        if let Some(scopes) = &changes.scopes {
            entity::role_scope::Entity::delete_many()
                .filter(entity::role_scope::Column::RoleId.eq(model.id))
                .exec(&txn)
                .await
                .map_err(db_error)?;
            set_role_scopes(&txn, model.id, scopes).await?;
        }
        keep_an_admin(&txn, admins, now).await?;
        let role = role_by_name(&txn, name)
            .await?
            .ok_or_else(|| role_not_found(name))?;
        // Checked on the role as it stands after the change, under the lock every role change
        // takes (`lock_admins`) and new users' default roles share (`share_role_lock`).
        let field = if changes.scopes.is_some() && changes.default_for_new_users != Some(true) {
            "role.scopes"
        } else {
            "role.default_for_new_users"
        };
        no_administration_by_default(&role, field)?;
        audit::insert(&txn, audit_record, now).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(role)
    }

    /// Deletes a role (users lose it), keeping an admin.
    pub async fn delete_role(
        &self,
        name: &str,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let (_turn, txn) = self.begin_write().await?;
        let admins = lock_admins(&txn, now).await?;
        let deleted = entity::role::Entity::delete_many()
            .filter(entity::role::Column::Name.eq(name))
            .exec(&txn)
            .await
            .map_err(db_error)?;
        if deleted.rows_affected == 0 {
            return Err(role_not_found(name));
        }
        keep_an_admin(&txn, admins, now).await?;
        audit::insert(&txn, audit_record, now).await?;
        txn.commit().await.map_err(db_error)
    }

    /// Creates a scope.
    pub async fn insert_scope(
        &self,
        scope: &Scope,
        description: &str,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<ScopeRecord, Error> {
        let (_turn, txn) = self.begin_write().await?;
        entity::scope::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(scope.as_str().to_owned()),
            description: Set(description.to_owned()),
            created_at: Set(now),
        }
        .insert(&txn)
        .await
        .map_err(db_error_or_exists(format!(
            "a scope `{}` already exists",
            scope.as_str()
        )))?;
        audit::insert(&txn, audit_record, now).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(ScopeRecord {
            name: scope.as_str().to_owned(),
            description: description.to_owned(),
        })
    }

    /// Scopes by name after `after`, at most `limit`.
    pub async fn list_scopes(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<ScopeRecord>, Error> {
        let mut query = entity::scope::Entity::find().order_by_asc(entity::scope::Column::Name);
        if let Some(after) = after {
            query = query.filter(entity::scope::Column::Name.gt(after));
        }
        Ok(query
            .limit(limit)
            .all(self.reports_db())
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|model| ScopeRecord {
                name: model.name,
                description: model.description,
            })
            .collect())
    }

    /// Deletes a scope. One still granted by a role or allowed to a client needs `force`,
    /// and is then taken from them too; an admin is kept either way.
    pub async fn delete_scope(
        &self,
        name: &str,
        force: bool,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let (_turn, txn) = self.begin_write().await?;
        let admins = lock_admins(&txn, now).await?;
        let scope = entity::scope::Entity::find()
            .filter(entity::scope::Column::Name.eq(name))
            .one(&txn)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Error::NotFound {
                message: format!("scope `{name}` does not exist"),
            })?;
        if !force {
            let roles: Vec<String> = entity::role::Entity::find()
                .inner_join(entity::role_scope::Entity)
                .filter(entity::role_scope::Column::ScopeId.eq(scope.id))
                .order_by_asc(entity::role::Column::Name)
                .select_only()
                .column(entity::role::Column::Name)
                .into_tuple()
                .all(&txn)
                .await
                .map_err(db_error)?;
            let clients = entity::client_scope::Entity::find()
                .filter(entity::client_scope::Column::ScopeId.eq(scope.id))
                .count(&txn)
                .await
                .map_err(db_error)?;
            if !roles.is_empty() || clients > 0 {
                return Err(Error::FailedPrecondition {
                    reason: Reason::FailedPrecondition,
                    message: format!(
                        "the scope is still granted by roles [{}] and allowed to {clients} \
                         client(s); delete with force to take it from them",
                        roles.join(", ")
                    ),
                });
            }
        }
        // Role and client grants of the scope go with it (foreign keys cascade).
        entity::scope::Entity::delete_by_id(scope.id)
            .exec(&txn)
            .await
            .map_err(db_error)?;
        keep_an_admin(&txn, admins, now).await?;
        audit::insert(&txn, audit_record, now).await?;
        txn.commit().await.map_err(db_error)?;
        self.forget_all_clients();
        Ok(())
    }

    /// Which of `scopes` do not exist.
    pub async fn missing_scopes(&self, scopes: &[Scope]) -> Result<Vec<String>, Error> {
        let names: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
        let found: Vec<String> = entity::scope::Entity::find()
            .filter(entity::scope::Column::Name.is_in(names.iter().copied()))
            .select_only()
            .column(entity::scope::Column::Name)
            .into_tuple()
            .all(self.db())
            .await
            .map_err(db_error)?;
        Ok(names
            .into_iter()
            .filter(|name| !found.iter().any(|f| f == name))
            .map(str::to_owned)
            .collect())
    }
}

/// The role of this name with its scopes.
async fn role_by_name<C: ConnectionTrait>(db: &C, name: &str) -> Result<Option<Role>, Error> {
    let Some(model) = entity::role::Entity::find()
        .filter(entity::role::Column::Name.eq(name))
        .one(db)
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let scopes = scopes_of_role(db, model.id).await?;
    Ok(Some(Role {
        name: model.name,
        description: model.description,
        scopes: super::stored_scopes(&scopes),
        default_for_new_users: model.default_for_new_users,
    }))
}

/// A default role may hold none of Keystone's own scopes: self-registration must never lead to
/// administration.
fn no_administration_by_default(role: &Role, field: &str) -> Result<(), Error> {
    if !role.default_for_new_users {
        return Ok(());
    }
    match role
        .scopes
        .iter()
        .find(|scope| scope.resource() == "keystone")
    {
        Some(scope) => Err(Error::invalid_argument(
            field,
            format!(
                "a role holding `{}` cannot be given to new users: no `keystone:*` scope may \
                 come with self-registration",
                scope.as_str()
            ),
        )),
        None => Ok(()),
    }
}

/// The ids and names of the roles every new user gets, leaving out any that holds a
/// `keystone:*` scope (which Keystone never lets a default role hold; a hand-edited database
/// gets no say either).
pub(crate) async fn default_roles<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(Uuid, String)>, Error> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            "SELECT roles.id, roles.name FROM roles WHERE roles.default_for_new_users = $1 \
             AND NOT EXISTS (SELECT 1 FROM role_scopes JOIN scopes ON scopes.id = role_scopes.scope_id \
             WHERE role_scopes.role_id = roles.id AND scopes.name LIKE $2) ORDER BY roles.name",
            [true.into(), "keystone:%".into()],
        ))
        .await
        .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<Uuid>("", "id").map_err(db_error)?,
                row.try_get::<String>("", "name").map_err(db_error)?,
            ))
        })
        .collect()
}

async fn scopes_of_role<C: ConnectionTrait>(db: &C, role_id: Uuid) -> Result<Vec<String>, Error> {
    entity::scope::Entity::find()
        .inner_join(entity::role_scope::Entity)
        .filter(entity::role_scope::Column::RoleId.eq(role_id))
        .order_by_asc(entity::scope::Column::Name)
        .select_only()
        .column(entity::scope::Column::Name)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)
}

/// Grants `scopes` to a role; each must exist.
async fn set_role_scopes(
    txn: &DatabaseTransaction,
    role_id: Uuid,
    scopes: &[Scope],
) -> Result<(), Error> {
    for scope in scopes {
        let found = scope_id(txn, scope.as_str()).await?;
        entity::role_scope::ActiveModel {
            role_id: Set(role_id),
            scope_id: Set(found),
        }
        .insert(txn)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// The id of a scope that must exist.
pub(crate) async fn scope_id<C: ConnectionTrait>(db: &C, name: &str) -> Result<Uuid, Error> {
    entity::scope::Entity::find()
        .filter(entity::scope::Column::Name.eq(name))
        .select_only()
        .column(entity::scope::Column::Id)
        .into_tuple()
        .one(db)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::NotFound {
            message: format!("scope `{name}` does not exist"),
        })
}

pub(crate) fn role_not_found(name: &str) -> Error {
    Error::NotFound {
        message: format!("role `{name}` does not exist"),
    }
}

/// Waits for any role change in flight and holds role changes off until the transaction ends
/// (PostgreSQL: a shared lock on the row [`lock_admins`] locks for update; SQLite has a single
/// writer anyway): what a new user is given cannot change under it.
pub(crate) async fn share_role_lock(txn: &DatabaseTransaction) -> Result<(), Error> {
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT id FROM scopes WHERE name = $1 FOR SHARE",
            [ADMIN_SCOPE.into()],
        ))
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Serializes the changes that may remove admins (PostgreSQL: a row lock on the admin scope,
/// so two concurrent demotions cannot each see the other's admin remain; SQLite has a single
/// writer anyway), then counts the active admins.
pub(crate) async fn lock_admins(
    txn: &DatabaseTransaction,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT id FROM scopes WHERE name = $1 FOR UPDATE",
            [ADMIN_SCOPE.into()],
        ))
        .await
        .map_err(db_error)?;
    }
    count_admins(txn, now).await
}

/// Fails with FAILED_PRECONDITION (and so rolls the transaction back) if admins existed
/// before the change and none is left.
pub(crate) async fn keep_an_admin(
    txn: &DatabaseTransaction,
    before: u64,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    if before > 0 && count_admins(txn, now).await? == 0 {
        return Err(Error::FailedPrecondition {
            reason: Reason::FailedPrecondition,
            message: "this would leave no active admin (an enabled, unlocked user with a role \
                      granting keystone:admin); make another admin first"
                .to_owned(),
        });
    }
    Ok(())
}

/// Enabled, unlocked users holding a role that grants `keystone:admin`.
async fn count_admins(txn: &DatabaseTransaction, now: DateTime<Utc>) -> Result<u64, Error> {
    let backend = txn.get_database_backend();
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            "SELECT COUNT(DISTINCT users.id) AS admins FROM users \
             JOIN user_roles ON user_roles.user_id = users.id \
             JOIN role_scopes ON role_scopes.role_id = user_roles.role_id \
             JOIN scopes ON scopes.id = role_scopes.scope_id \
             WHERE scopes.name = $1 AND users.enabled = $2 \
               AND (users.locked = $3 OR (users.locked_until IS NOT NULL AND users.locked_until <= $4))",
            [ADMIN_SCOPE.into(), true.into(), false.into(), now.into()],
        ))
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::internal(anyhow::anyhow!("the admin count returned nothing")))?;
    let admins: i64 = row.try_get("", "admins").map_err(db_error)?;
    Ok(u64::try_from(admins).unwrap_or(0))
}
