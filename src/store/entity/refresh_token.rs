//! `refresh_tokens`: every refresh token issued, by hash. A session is a family of them.

use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refresh_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub token_hash: Vec<u8>,
    pub family_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub successor_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub client_id: Option<Uuid>,
    /// Space-separated scopes of the original grant.
    pub scopes: String,
    /// Space-separated audiences of the original grant.
    pub audience: String,
    pub issued_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub family_expires_at: DateTimeUtc,
    pub used_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// The DPoP key the session is bound to (`cnf.jkt`), if any.
    pub dpop_jkt: Option<String>,
    /// The client address at the session's login (copied to every successor).
    pub session_ip: Option<String>,
    /// The `user-agent` at the session's login, truncated (copied to every successor).
    pub session_user_agent: Option<String>,
    /// When the session began (copied to every successor).
    pub session_started_at: Option<DateTimeUtc>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("refresh_token::Model")
            .field("id", &self.id)
            .field("token_hash", &"[REDACTED]")
            .field("family_id", &self.family_id)
            .field("user_id", &self.user_id)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::user::Entity",
        from = "Column::UserId",
        to = "super::user::Column::Id",
        on_delete = "Cascade"
    )]
    User,
    #[sea_orm(
        belongs_to = "super::client::Entity",
        from = "Column::ClientId",
        to = "super::client::Column::Id",
        on_delete = "Cascade"
    )]
    Client,
}

impl Related<super::user::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl Related<super::client::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Client.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
