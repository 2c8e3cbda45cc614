//! Users and their roles, and the changes admins make to them. Queries return domain types,
//! never entities. Every change is one transaction with its audit event (and its revocation,
//! when it ends the user's tokens), and keeps an active admin.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, Condition, ConnectionTrait, DatabaseTransaction,
    DbBackend, EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect, QueryTrait as _,
    RelationTrait as _, Set,
    sea_query::{Expr, ExprTrait as _, Func, LikeExpr, Query},
};
use uuid::Uuid;

use super::{ChangeGuard, Store, audit, db_error, db_error_or_exists, entity, roles};
use crate::{
    domain::{
        AuditRecord, Email, NewUser, Revocation, RoleName, ScopeSet, User, UserRecord, Username,
    },
    error::Error,
};

/// A change an admin makes to a user.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// Profile fields; `None` leaves a field as it is.
    Update {
        /// A new email address.
        email: Option<Email>,
        /// Enable or disable.
        enabled: Option<bool>,
        /// Mark the email verified or not.
        email_verified: Option<bool>,
    },
    /// A password set by an admin (hashed); the user must change it.
    SetPassword {
        /// The PHC string.
        password_hash: String,
    },
    /// Lock until a time, or until unlocked.
    Lock {
        /// The end of the lock.
        until: Option<DateTime<Utc>>,
    },
    /// Unlock, and forget failed logins.
    Unlock,
    /// Add roles (each must exist).
    AssignRoles(Vec<RoleName>),
    /// Take roles away (each must exist).
    RemoveRoles(Vec<RoleName>),
    /// Nothing but the revocation that comes with it.
    EndSessions,
    /// Delete the user.
    Delete,
}

/// Which users to list.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// A prefix of the normalized username or email, taken literally.
    pub prefix: Option<String>,
    /// Only holders of this role.
    pub role: Option<String>,
}

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
    /// is taken, looks like a username taken (same skeleton), or is a client's id.
    pub async fn insert_user(
        &self,
        new: NewUser,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<User, Error> {
        let (_turn, txn) = self.begin_write().await?;
        if super::clients::is_client_id(&txn, new.username.normalized()).await? {
            return Err(Error::AlreadyExists {
                message: "a client has this name as its client_id; choose another".to_owned(),
            });
        }
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
        let mut audit_record = audit_record.clone();
        if new.roles.is_empty() && new.default_roles {
            // Taken under the lock role changes take (PostgreSQL), so that a role cannot be
            // unmarked and given a keystone:* scope between this read and the commit.
            super::roles::share_role_lock(&txn).await?;
            let defaults = super::roles::default_roles(&txn).await?;
            if !defaults.is_empty() {
                let names: Vec<&str> = defaults.iter().map(|(_, name)| name.as_str()).collect();
                audit_record = audit_record.with_detail("default_roles", names.join(","));
            }
            role_ids.extend(defaults.into_iter().map(|(id, _)| id));
        }
        let id = Uuid::now_v7();
        let inserted = entity::user::ActiveModel {
            id: Set(id),
            username: Set(new.username.as_str().to_owned()),
            username_normalized: Set(new.username.normalized().to_owned()),
            username_skeleton: Set(Some(new.username.skeleton())),
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
        if audit_record.target.is_empty() {
            audit_record.target = id.to_string();
        }
        audit::insert(&txn, &audit_record, now).await?;
        let user = with_roles(&txn, inserted).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(user)
    }

    /// A user by id, with their login standing.
    pub async fn find_user(&self, id: Uuid) -> Result<Option<UserRecord>, Error> {
        let Some(model) = entity::user::Entity::find_by_id(id)
            .one(self.db())
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        Ok(records(self.db(), vec![model]).await?.pop())
    }

    /// A user by normalized username, with their login standing.
    pub async fn find_user_by_username(
        &self,
        normalized: &str,
    ) -> Result<Option<UserRecord>, Error> {
        let Some(model) = entity::user::Entity::find()
            .filter(entity::user::Column::UsernameNormalized.eq(normalized))
            .one(self.db())
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        Ok(records(self.db(), vec![model]).await?.pop())
    }

    /// The username of the user whose name has this skeleton (a look-alike), if any.
    pub async fn username_with_skeleton(&self, skeleton: &str) -> Result<Option<String>, Error> {
        entity::user::Entity::find()
            .filter(entity::user::Column::UsernameSkeleton.eq(skeleton))
            .select_only()
            .column(entity::user::Column::Username)
            .into_tuple()
            .one(self.db())
            .await
            .map_err(db_error)
    }

    /// Whether a user has this id or this normalized username (client ids may be neither).
    pub async fn is_user_id_or_name(&self, value: &str) -> Result<bool, Error> {
        let mut condition =
            Condition::any().add(entity::user::Column::UsernameNormalized.eq(value.to_lowercase()));
        if let Ok(id) = Uuid::parse_str(value) {
            condition = condition.add(entity::user::Column::Id.eq(id));
        }
        let found = entity::user::Entity::find()
            .filter(condition)
            .select_only()
            .column(entity::user::Column::Id)
            .into_tuple::<Uuid>()
            .one(self.db())
            .await
            .map_err(db_error)?;
        Ok(found.is_some())
    }

    /// Users by normalized username after `after`, at most `limit`.
    pub async fn list_users(
        &self,
        filter: &UserFilter,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<UserRecord>, Error> {
        let mut query =
            entity::user::Entity::find().order_by_asc(entity::user::Column::UsernameNormalized);
        if let Some(after) = after {
            query = query.filter(entity::user::Column::UsernameNormalized.gt(after));
        }
        if let Some(prefix) = filter.prefix.as_deref().filter(|p| !p.is_empty()) {
            let pattern = format!("{}%", escape_like(prefix));
            query = query.filter(
                Condition::any()
                    .add(
                        Expr::col((
                            entity::user::Entity,
                            entity::user::Column::UsernameNormalized,
                        ))
                        .like(LikeExpr::new(pattern.clone()).escape('\\')),
                    )
                    .add(
                        Expr::col((entity::user::Entity, entity::user::Column::EmailNormalized))
                            .like(LikeExpr::new(pattern).escape('\\')),
                    ),
            );
        }
        if let Some(role) = &filter.role {
            query = query.filter(
                entity::user::Column::Id.in_subquery(
                    Query::select()
                        .column((entity::user_role::Entity, entity::user_role::Column::UserId))
                        .from(entity::user_role::Entity)
                        .inner_join(
                            entity::role::Entity,
                            Expr::col((entity::role::Entity, entity::role::Column::Id)).equals((
                                entity::user_role::Entity,
                                entity::user_role::Column::RoleId,
                            )),
                        )
                        .and_where(
                            Expr::col((entity::role::Entity, entity::role::Column::Name))
                                .eq(role.as_str()),
                        )
                        .to_owned(),
                ),
            );
        }
        let models = query
            .limit(limit)
            .all(self.reports_db())
            .await
            .map_err(db_error)?;
        records(self.reports_db(), models).await
    }

    /// Applies an admin's change to a user in one transaction: `guard.permit` sees the
    /// target's scopes once the change holds its locks, then the change, the end of the user's
    /// sessions and the revocation of their tokens when `guard.revoke` is given (stamped right
    /// before the commit), the admin check and the audit event. Returns the user after the
    /// change (`None` once deleted), how many live sessions ended, and the revocation written.
    pub async fn change_user(
        &self,
        id: Uuid,
        change: &UserChange,
        guard: ChangeGuard<'_>,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<(Option<UserRecord>, u64, Option<Revocation>), Error> {
        let (_turn, txn) = self.begin_write().await?;
        let admins = roles::lock_admins(&txn, now).await?;
        let model = entity::user::Entity::find_by_id(id)
            .one(&txn)
            .await
            .map_err(db_error)?
            .ok_or_else(|| user_not_found(&id.to_string()))?;
        (guard.permit)(&super::Holdings {
            scopes: &scopes_of_user(&txn, id).await?,
            audiences: &[],
            secretless: false,
            token_exchange: false,
        })?;
        let ended = if guard.revoke.is_some() {
            end_sessions(&txn, id, now).await?
        } else {
            0
        };
        apply(&txn, &model, change, now).await?;
        roles::keep_an_admin(&txn, admins, now).await?;
        audit::insert(&txn, audit_record, now).await?;
        let revocation = guard.write_revocation(&txn).await?;
        let record = match entity::user::Entity::find_by_id(id)
            .one(&txn)
            .await
            .map_err(db_error)?
        {
            Some(model) => records(&txn, vec![model]).await?.pop(),
            None => None,
        };
        txn.commit().await.map_err(db_error)?;
        Ok((record, ended, revocation))
    }
}

/// Applies one change to the user row (and their roles).
async fn apply(
    txn: &DatabaseTransaction,
    model: &entity::user::Model,
    change: &UserChange,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let update = entity::user::Entity::update_many()
        .col_expr(entity::user::Column::UpdatedAt, Expr::value(now))
        .filter(entity::user::Column::Id.eq(model.id));
    let update = match change {
        UserChange::Update {
            email,
            enabled,
            email_verified,
        } => {
            let mut update = update;
            if let Some(email) = email {
                update = update
                    .col_expr(entity::user::Column::Email, Expr::value(email.as_str()))
                    .col_expr(
                        entity::user::Column::EmailNormalized,
                        Expr::value(email.normalized()),
                    );
            }
            if let Some(enabled) = enabled {
                update = update.col_expr(entity::user::Column::Enabled, Expr::value(*enabled));
            }
            if let Some(verified) = email_verified {
                update =
                    update.col_expr(entity::user::Column::EmailVerified, Expr::value(*verified));
            }
            update
        }
        UserChange::SetPassword { password_hash } => update
            .col_expr(
                entity::user::Column::PasswordHash,
                Expr::value(password_hash.clone()),
            )
            .col_expr(
                entity::user::Column::PasswordChangeRequired,
                Expr::value(true),
            )
            .col_expr(
                entity::user::Column::PasswordChangedAt,
                Expr::value(Some(now)),
            ),
        UserChange::Lock { until } => update
            .col_expr(entity::user::Column::Locked, Expr::value(true))
            .col_expr(entity::user::Column::LockedUntil, Expr::value(*until)),
        UserChange::Unlock => {
            entity::login_failure::Entity::delete_by_id(model.username_normalized.clone())
                .exec(txn)
                .await
                .map_err(db_error)?;
            update
                .col_expr(entity::user::Column::Locked, Expr::value(false))
                .col_expr(
                    entity::user::Column::LockedUntil,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
        }
        UserChange::AssignRoles(names) => {
            let held = role_names(txn, model.id).await?;
            for name in names {
                let role_id = role_id(txn, name).await?;
                if held.iter().any(|h| h == name.as_str()) {
                    continue;
                }
                entity::user_role::ActiveModel {
                    user_id: Set(model.id),
                    role_id: Set(role_id),
                }
                .insert(txn)
                .await
                .map_err(db_error)?;
            }
            update
        }
        UserChange::RemoveRoles(names) => {
            for name in names {
                let role_id = role_id(txn, name).await?;
                entity::user_role::Entity::delete_many()
                    .filter(entity::user_role::Column::UserId.eq(model.id))
                    .filter(entity::user_role::Column::RoleId.eq(role_id))
                    .exec(txn)
                    .await
                    .map_err(db_error)?;
            }
            update
        }
        UserChange::EndSessions => update,
        UserChange::Delete => {
            // Refresh tokens go with the user (foreign key cascade); access tokens are revoked.
            entity::user::Entity::delete_by_id(model.id)
                .exec(txn)
                .await
                .map_err(db_error)?;
            entity::login_failure::Entity::delete_by_id(model.username_normalized.clone())
                .exec(txn)
                .await
                .map_err(db_error)?;
            return Ok(());
        }
    };
    update.exec(txn).await.map_err(db_error_or_exists(
        "a user with this email already exists".to_owned(),
    ))?;
    Ok(())
}

/// The scopes a user's roles grant.
pub(crate) async fn scopes_of_user<C: ConnectionTrait>(
    db: &C,
    user_id: Uuid,
) -> Result<ScopeSet, Error> {
    let scopes: Vec<String> = entity::scope::Entity::find()
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
        .all(db)
        .await
        .map_err(db_error)?;
    Ok(super::stored_scopes(&scopes))
}

/// Revokes every live refresh token of the user; returns how many sessions that ended.
async fn end_sessions(
    txn: &DatabaseTransaction,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    let mut families: Vec<Uuid> = entity::refresh_token::Entity::find()
        .filter(entity::refresh_token::Column::UserId.eq(user_id))
        .filter(entity::refresh_token::Column::RevokedAt.is_null())
        .filter(entity::refresh_token::Column::FamilyExpiresAt.gt(now))
        .select_only()
        .column(entity::refresh_token::Column::FamilyId)
        .into_tuple()
        .all(txn)
        .await
        .map_err(db_error)?;
    families.sort();
    families.dedup();
    entity::refresh_token::Entity::update_many()
        .col_expr(
            entity::refresh_token::Column::RevokedAt,
            Expr::value(Some(now)),
        )
        .filter(entity::refresh_token::Column::UserId.eq(user_id))
        .filter(entity::refresh_token::Column::RevokedAt.is_null())
        .exec(txn)
        .await
        .map_err(db_error)?;
    Ok(u64::try_from(families.len()).unwrap_or(u64::MAX))
}

async fn role_id<C: ConnectionTrait>(db: &C, name: &RoleName) -> Result<Uuid, Error> {
    entity::role::Entity::find()
        .filter(entity::role::Column::Name.eq(name.as_str()))
        .select_only()
        .column(entity::role::Column::Id)
        .into_tuple()
        .one(db)
        .await
        .map_err(db_error)?
        .ok_or_else(|| roles::role_not_found(name.as_str()))
}

fn user_not_found(id: &str) -> Error {
    Error::NotFound {
        message: format!("no user has the id `{id}`"),
    }
}

/// `LIKE` metacharacters taken literally (the pattern uses `\` as its escape).
fn escape_like(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Users with their roles and login standing, in the order given: two queries for the whole
/// page, not two per user.
async fn records<C: ConnectionTrait>(
    db: &C,
    models: Vec<entity::user::Model>,
) -> Result<Vec<UserRecord>, Error> {
    if models.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = models.iter().map(|m| m.id).collect();
    let names: Vec<String> = models
        .iter()
        .map(|m| m.username_normalized.clone())
        .collect();
    let pairs: Vec<(Uuid, String)> = entity::user_role::Entity::find()
        .inner_join(entity::role::Entity)
        .filter(entity::user_role::Column::UserId.is_in(ids))
        .select_only()
        .column(entity::user_role::Column::UserId)
        .column(entity::role::Column::Name)
        .into_tuple()
        .all(db)
        .await
        .map_err(db_error)?;
    let mut roles: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (user_id, role) in pairs {
        roles.entry(user_id).or_default().push(role);
    }
    let standing: HashMap<String, (i32, Option<DateTime<Utc>>)> =
        entity::login_failure::Entity::find()
            .filter(entity::login_failure::Column::Name.is_in(names))
            .all(db)
            .await
            .map_err(db_error)?
            .into_iter()
            .map(|row| (row.name, (row.failed_attempts, row.locked_until)))
            .collect();
    Ok(models
        .into_iter()
        .map(|model| {
            let (failed_login_attempts, login_locked_until) = standing
                .get(&model.username_normalized)
                .copied()
                .unwrap_or((0, None));
            let mut user_roles = roles.remove(&model.id).unwrap_or_default();
            user_roles.sort();
            let mut user = without_roles(model);
            user.roles = user_roles;
            UserRecord {
                user,
                failed_login_attempts,
                login_locked_until,
            }
        })
        .collect())
}

/// A user as a grant needs them, read in one statement: the row, its role names and the
/// scopes those roles grant.
#[derive(Debug, Clone)]
pub struct UserGrants {
    /// The user, with its role names.
    pub user: User,
    /// The scopes its roles grant.
    pub scopes: ScopeSet,
}

/// The column of a user's role names in [`with_grant_columns`].
const ROLE_NAMES: &str = "grant_role_names";
/// The column of the scope names a user's roles grant in [`with_grant_columns`].
const SCOPE_NAMES: &str = "grant_scope_names";

/// Adds to a query over `users` (alone or joined) two columns: the user's role names and the
/// scope names its roles grant, each space-separated (neither name may hold a space), so that
/// a grant reads its user in one round trip instead of three.
pub(crate) fn with_grant_columns<Q: QuerySelect>(query: Q, backend: DbBackend) -> Q {
    let joined = |name: Expr| -> Expr {
        // Concatenating aggregates are not standard SQL.
        let function = match backend {
            DbBackend::Postgres => "string_agg",
            _ => "group_concat",
        };
        Func::cust(function).arg(name).arg(" ").into()
    };
    let user_id = || Expr::col((entity::user::Entity, entity::user::Column::Id));
    let roles = Query::select()
        .expr(joined(Expr::col((
            entity::role::Entity,
            entity::role::Column::Name,
        ))))
        .from(entity::user_role::Entity)
        .inner_join(
            entity::role::Entity,
            Expr::col((entity::role::Entity, entity::role::Column::Id))
                .equals((entity::user_role::Entity, entity::user_role::Column::RoleId)),
        )
        .and_where(
            Expr::col((entity::user_role::Entity, entity::user_role::Column::UserId)).eq(user_id()),
        )
        .to_owned();
    let scopes = Query::select()
        .expr(joined(Expr::col((
            entity::scope::Entity,
            entity::scope::Column::Name,
        ))))
        .from(entity::user_role::Entity)
        .inner_join(
            entity::role_scope::Entity,
            Expr::col((
                entity::role_scope::Entity,
                entity::role_scope::Column::RoleId,
            ))
            .equals((entity::user_role::Entity, entity::user_role::Column::RoleId)),
        )
        .inner_join(
            entity::scope::Entity,
            Expr::col((entity::scope::Entity, entity::scope::Column::Id)).equals((
                entity::role_scope::Entity,
                entity::role_scope::Column::ScopeId,
            )),
        )
        .and_where(
            Expr::col((entity::user_role::Entity, entity::user_role::Column::UserId)).eq(user_id()),
        )
        .to_owned();
    query
        .expr_as(Expr::SubQuery(None, Box::new(roles.into())), ROLE_NAMES)
        .expr_as(Expr::SubQuery(None, Box::new(scopes.into())), SCOPE_NAMES)
}

/// The [`UserGrants`] of a row read with [`with_grant_columns`]; `prefix` is the user's
/// columns' prefix in it.
pub(crate) fn grants_of_row(
    row: &sea_orm::QueryResult,
    prefix: &str,
) -> Result<Option<UserGrants>, Error> {
    // No user (a token whose user was deleted): the joined columns are NULL. Any other
    // failure to read the row is an error, not a missing user.
    let id: Option<Uuid> = row.try_get(prefix, "id").map_err(db_error)?;
    if id.is_none() {
        return Ok(None);
    }
    let model = <entity::user::Model as sea_orm::FromQueryResult>::from_query_result(row, prefix)
        .map_err(db_error)?;
    let names = |column: &str| -> Result<Vec<String>, Error> {
        let joined: Option<String> = row.try_get("", column).map_err(db_error)?;
        Ok(joined
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect())
    };
    let mut roles = names(ROLE_NAMES)?;
    roles.sort();
    roles.dedup();
    let scopes = super::stored_scopes(&names(SCOPE_NAMES)?);
    let mut user = without_roles(model);
    user.roles = roles;
    Ok(Some(UserGrants { user, scopes }))
}

/// A user with their roles and scopes, in one round trip.
pub(crate) async fn grants_of<C: ConnectionTrait>(
    db: &C,
    user_id: Uuid,
) -> Result<Option<UserGrants>, Error> {
    let query = with_grant_columns(
        entity::user::Entity::find_by_id(user_id),
        db.get_database_backend(),
    );
    let Some(row) = db
        .query_one_raw(query.build(db.get_database_backend()))
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    grants_of_row(&row, "")
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
        username: Username::stored(model.username, model.username_normalized),
        email: Email::stored(model.email, model.email_normalized),
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
