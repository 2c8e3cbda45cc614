//! `users`: accounts. `username_normalized` and `email_normalized` carry the unique indexes.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub username: String,
    pub username_normalized: String,
    /// UTS #39 skeleton of the normalized username; unique, so look-alikes cannot coexist.
    pub username_skeleton: Option<String>,
    pub email: String,
    pub email_normalized: String,
    /// A PHC string (argon2id). Never leaves the store except to the password verifier.
    pub password_hash: String,
    pub enabled: bool,
    pub email_verified: bool,
    pub password_change_required: bool,
    pub locked: bool,
    pub locked_until: Option<DateTimeUtc>,
    pub tokens_not_before: Option<DateTimeUtc>,
    pub password_changed_at: Option<DateTimeUtc>,
    pub last_login_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::user_role::Entity")]
    UserRole,
}

impl Related<super::user_role::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::UserRole.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
