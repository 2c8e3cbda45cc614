//! Refresh tokens by hash, and their families (sessions). Rotation writes first (one
//! statement on PostgreSQL, one transaction on SQLite), so of many concurrent uses of one token
//! exactly one rotates it and the others see it used.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait as _, DbBackend, EntityTrait as _,
    FromQueryResult as _, IdenStatic as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
    QueryTrait as _, SelectA, SelectB, Set, Statement, sea_query::Expr,
};
use uuid::Uuid;

use super::{
    Store, audit, db_error, entity,
    entity::refresh_token,
    revocations,
    users::{self, UserGrants},
};
use crate::{
    domain::{AuditRecord, Revocation, Session},
    error::Error,
};

/// A refresh token to store.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// Its hash.
    pub token_hash: Vec<u8>,
    /// The session.
    pub family_id: Uuid,
    /// The user.
    pub user_id: Uuid,
    /// Space-separated scopes of the original grant.
    pub scopes: String,
    /// Space-separated audiences of the original grant.
    pub audience: String,
    /// Issued.
    pub issued_at: DateTime<Utc>,
    /// Expires (idle lifetime, within the family's).
    pub expires_at: DateTime<Utc>,
    /// The session's absolute end.
    pub family_expires_at: DateTime<Utc>,
    /// The DPoP key the session is bound to.
    pub dpop_jkt: Option<String>,
    /// What the session shows of its login: address, `user-agent`, start.
    pub session: SessionOrigin,
}

/// Where and when a session began, kept with each of its tokens.
#[derive(Debug, Clone, Default)]
pub struct SessionOrigin {
    /// The client address.
    pub ip: Option<String>,
    /// The `user-agent`, truncated.
    pub user_agent: Option<String>,
    /// The login's time.
    pub started_at: Option<DateTime<Utc>>,
}

/// A stored refresh token (never the token itself).
#[derive(Debug, Clone)]
pub struct RefreshRecord {
    /// Its id.
    pub id: Uuid,
    /// The session.
    pub family_id: Uuid,
    /// The user.
    pub user_id: Option<Uuid>,
    /// Scopes of the original grant.
    pub scopes: String,
    /// Audiences of the original grant.
    pub audience: String,
    /// Issued.
    pub issued_at: DateTime<Utc>,
    /// Expires.
    pub expires_at: DateTime<Utc>,
    /// The session's absolute end.
    pub family_expires_at: DateTime<Utc>,
    /// When it was rotated.
    pub used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The token it was rotated into.
    pub successor_id: Option<Uuid>,
    /// The DPoP key the session is bound to.
    pub dpop_jkt: Option<String>,
}

impl From<refresh_token::Model> for RefreshRecord {
    fn from(model: refresh_token::Model) -> Self {
        Self {
            id: model.id,
            family_id: model.family_id,
            user_id: model.user_id,
            scopes: model.scopes,
            audience: model.audience,
            issued_at: model.issued_at,
            expires_at: model.expires_at,
            family_expires_at: model.family_expires_at,
            used_at: model.used_at,
            revoked_at: model.revoked_at,
            successor_id: model.successor_id,
            dpop_jkt: model.dpop_jkt,
        }
    }
}

/// The outcome of a rotation attempt.
#[derive(Debug)]
pub enum Rotation {
    /// This call rotated the token; the successor is stored.
    Rotated(RefreshRecord),
    /// The token was not rotated by this call: unknown (`None`), or used, revoked or expired.
    NotRotated(Option<RefreshRecord>),
}

/// The rotation on PostgreSQL, in one statement: the conditional update takes the old token's
/// row (a concurrent rotation of the same token waits for it, then finds it used and changes
/// nothing), and the successor is inserted from what it returns, in the same implicit
/// transaction. `$1` the token's hash, `$2` now, `$3` the successor's id, `$4` its hash, `$5`
/// the end of its idle lifetime (cut to the session's end). Returns the old token as updated.
const ROTATE: &str = "\
WITH old AS (
    UPDATE refresh_tokens SET used_at = $2, successor_id = $3
    WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2
      AND user_id IS NOT NULL
    RETURNING *
), successor AS (
    INSERT INTO refresh_tokens (id, token_hash, family_id, parent_id, successor_id, user_id,
        client_id, scopes, audience, issued_at, expires_at, family_expires_at, used_at,
        revoked_at, dpop_jkt, session_ip, session_user_agent, session_started_at)
    SELECT $3, $4, family_id, id, NULL, user_id, NULL, scopes, audience, $2,
        LEAST($5, family_expires_at), family_expires_at, NULL, NULL, dpop_jkt, session_ip,
        session_user_agent, session_started_at
    FROM old
)
SELECT * FROM old";

/// Stores the first refresh token of a session (see [`Store::record_login_success`]).
pub(super) async fn insert_first<C: sea_orm::ConnectionTrait>(
    db: &C,
    new: &NewRefreshToken,
) -> Result<(), Error> {
    model(new, Uuid::now_v7(), None)
        .insert(db)
        .await
        .map_err(db_error)?;
    Ok(())
}

impl Store {
    /// Marks the token with `token_hash` used and stores its successor, if the token is live
    /// and unused. On PostgreSQL that is one statement (one round trip, one commit); on
    /// SQLite one transaction.
    pub async fn rotate_refresh_token(
        &self,
        token_hash: &[u8],
        successor_hash: Vec<u8>,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
    ) -> Result<Rotation, Error> {
        let successor_id = Uuid::now_v7();
        let rotated = if self.db().get_database_backend() == DbBackend::Postgres {
            refresh_token::Entity::find()
                .from_raw_sql(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    ROTATE,
                    [
                        token_hash.to_vec().into(),
                        now.into(),
                        successor_id.into(),
                        successor_hash.into(),
                        (now + idle_ttl).into(),
                    ],
                ))
                .one(self.db())
                .await
                .map_err(db_error)?
        } else {
            self.rotate_in_a_transaction(token_hash, successor_hash, successor_id, now, idle_ttl)
                .await?
        };
        match rotated {
            Some(row) => Ok(Rotation::Rotated(RefreshRecord::from(row))),
            None => Ok(Rotation::NotRotated(
                self.find_refresh_token(token_hash).await?,
            )),
        }
    }

    /// [`Self::rotate_refresh_token`] as a transaction: the conditional write comes first, so
    /// that it takes the database for this transaction and concurrent rotations queue behind
    /// it. The rotated token as it is now, or `None` if it was not live.
    async fn rotate_in_a_transaction(
        &self,
        token_hash: &[u8],
        successor_hash: Vec<u8>,
        successor_id: Uuid,
        now: DateTime<Utc>,
        idle_ttl: chrono::Duration,
    ) -> Result<Option<refresh_token::Model>, Error> {
        let (_turn, txn) = self.begin_write().await?;
        let mut updated = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, Expr::value(Some(now)))
            .col_expr(
                refresh_token::Column::SuccessorId,
                Expr::value(Some(successor_id)),
            )
            .filter(refresh_token::Column::TokenHash.eq(token_hash.to_vec()))
            .filter(refresh_token::Column::UsedAt.is_null())
            .filter(refresh_token::Column::RevokedAt.is_null())
            .filter(refresh_token::Column::ExpiresAt.gt(now))
            .filter(refresh_token::Column::UserId.is_not_null())
            .exec_with_returning(&txn)
            .await
            .map_err(db_error)?;
        // A token hash is unique: one row at most.
        let Some((row, user_id)) = updated
            .pop()
            .and_then(|row| row.user_id.map(|user_id| (row, user_id)))
        else {
            txn.rollback().await.map_err(db_error)?;
            return Ok(None);
        };
        let successor = NewRefreshToken {
            token_hash: successor_hash,
            family_id: row.family_id,
            user_id,
            scopes: row.scopes.clone(),
            audience: row.audience.clone(),
            issued_at: now,
            expires_at: (now + idle_ttl).min(row.family_expires_at),
            family_expires_at: row.family_expires_at,
            dpop_jkt: row.dpop_jkt.clone(),
            session: SessionOrigin {
                ip: row.session_ip.clone(),
                user_agent: row.session_user_agent.clone(),
                started_at: row.session_started_at,
            },
        };
        model(&successor, successor_id, Some(row.id))
            .insert(&txn)
            .await
            .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        Ok(Some(row))
    }

    /// The stored token with this hash.
    pub async fn find_refresh_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<RefreshRecord>, Error> {
        Ok(refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(token_hash.to_vec()))
            .one(self.db())
            .await
            .map_err(db_error)?
            .map(RefreshRecord::from))
    }

    /// The stored token with this hash and, in the same round trip, its user with their roles
    /// and scopes (`None` when the token has no user any more).
    pub async fn find_refresh_token_with_grants(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(RefreshRecord, Option<UserGrants>)>, Error> {
        let backend = self.db().get_database_backend();
        let query = users::with_grant_columns(
            refresh_token::Entity::find()
                .find_also_related(entity::user::Entity)
                .filter(refresh_token::Column::TokenHash.eq(token_hash.to_vec())),
            backend,
        );
        let Some(row) = self
            .db()
            .query_one_raw(query.build(backend))
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        let token =
            refresh_token::Model::from_query_result(&row, SelectA.as_str()).map_err(db_error)?;
        let grants = users::grants_of_row(&row, SelectB.as_str())?;
        Ok(Some((RefreshRecord::from(token), grants)))
    }

    /// The stored token with this id.
    pub async fn find_refresh_token_by_id(&self, id: Uuid) -> Result<Option<RefreshRecord>, Error> {
        Ok(refresh_token::Entity::find_by_id(id)
            .one(self.db())
            .await
            .map_err(db_error)?
            .map(RefreshRecord::from))
    }

    /// Ends a session: revokes every refresh token of the family and records the session
    /// revocation, with the audit event, in one transaction. Returns the tokens revoked.
    pub async fn revoke_family(
        &self,
        family_id: Uuid,
        revocation: &Revocation,
        audit_record: &AuditRecord,
        now: DateTime<Utc>,
    ) -> Result<u64, Error> {
        let (_turn, txn) = self.begin_write().await?;
        // A rotation under way when the first pass ran inserts a successor the pass could not
        // see (PostgreSQL, read committed: the pass waited for the rotation's lock on the old
        // token, then saw only the rows it had found). Each further pass sees what committed
        // meanwhile; once one finds nothing, no live token is left to rotate.
        let mut revoked = 0;
        loop {
            let pass = refresh_token::Entity::update_many()
                .col_expr(refresh_token::Column::RevokedAt, Expr::value(Some(now)))
                .filter(refresh_token::Column::FamilyId.eq(family_id))
                .filter(refresh_token::Column::RevokedAt.is_null())
                .exec(&txn)
                .await
                .map_err(db_error)?
                .rows_affected;
            if pass == 0 {
                break;
            }
            revoked += pass;
        }
        revocations::upsert(&txn, revocation).await?;
        audit::insert(&txn, audit_record, now).await?;
        txn.commit().await.map_err(db_error)?;
        Ok(revoked)
    }

    /// A user's live sessions, the newest first (family ids are UUIDv7: in order of login),
    /// those older than `before` when given, at most `limit`. A live session is a family whose
    /// latest token is unused, unrevoked and unexpired.
    pub async fn sessions_of_user(
        &self,
        user_id: Uuid,
        before: Option<Uuid>,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, Error> {
        let mut query = live_heads(user_id, now).order_by_desc(refresh_token::Column::FamilyId);
        if let Some(before) = before {
            query = query.filter(refresh_token::Column::FamilyId.lt(before));
        }
        Ok(query
            .limit(limit)
            .all(self.db())
            .await
            .map_err(db_error)?
            .into_iter()
            .map(session_of)
            .collect())
    }

    /// One live session of a user; `None` when it is another user's, ended or unknown.
    pub async fn session_of_user(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Session>, Error> {
        Ok(live_heads(user_id, now)
            .filter(refresh_token::Column::FamilyId.eq(session_id))
            .one(self.db())
            .await
            .map_err(db_error)?
            .map(session_of))
    }

    /// The live sessions of a user: their family ids.
    pub async fn live_families_of_user(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, Error> {
        let mut families: Vec<Uuid> = refresh_token::Entity::find()
            .filter(refresh_token::Column::UserId.eq(user_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .filter(refresh_token::Column::FamilyExpiresAt.gt(now))
            .select_only()
            .column(refresh_token::Column::FamilyId)
            .into_tuple()
            .all(self.db())
            .await
            .map_err(db_error)?;
        families.sort();
        families.dedup();
        Ok(families)
    }
}

/// The time a UUIDv7 was made.
fn started_by_id(id: Uuid) -> Option<DateTime<Utc>> {
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
}

/// The live tokens of a user's families: one per live session.
fn live_heads(user_id: Uuid, now: DateTime<Utc>) -> sea_orm::Select<refresh_token::Entity> {
    refresh_token::Entity::find()
        .filter(refresh_token::Column::UserId.eq(user_id))
        .filter(refresh_token::Column::UsedAt.is_null())
        .filter(refresh_token::Column::RevokedAt.is_null())
        .filter(refresh_token::Column::ExpiresAt.gt(now))
        .filter(refresh_token::Column::FamilyExpiresAt.gt(now))
}

fn model(new: &NewRefreshToken, id: Uuid, parent_id: Option<Uuid>) -> refresh_token::ActiveModel {
    refresh_token::ActiveModel {
        id: Set(id),
        token_hash: Set(new.token_hash.clone()),
        family_id: Set(new.family_id),
        parent_id: Set(parent_id),
        successor_id: Set(None),
        user_id: Set(Some(new.user_id)),
        client_id: Set(None),
        scopes: Set(new.scopes.clone()),
        audience: Set(new.audience.clone()),
        issued_at: Set(new.issued_at),
        expires_at: Set(new.expires_at),
        family_expires_at: Set(new.family_expires_at),
        used_at: Set(None),
        revoked_at: Set(None),
        dpop_jkt: Set(new.dpop_jkt.clone()),
        session_ip: Set(new.session.ip.clone()),
        session_user_agent: Set(new.session.user_agent.clone()),
        session_started_at: Set(new.session.started_at),
    }
}

/// The session of a family's live token.
fn session_of(model: refresh_token::Model) -> Session {
    Session {
        id: model.family_id,
        // Sessions begun before their start was kept: the family id is a UUIDv7 made at login.
        created_at: model
            .session_started_at
            .or_else(|| started_by_id(model.family_id))
            .unwrap_or(model.issued_at),
        last_used_at: model.issued_at,
        expires_at: model.expires_at,
        ip: model.session_ip.unwrap_or_default(),
        user_agent: model.session_user_agent.unwrap_or_default(),
    }
}
