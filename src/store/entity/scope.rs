//! `scopes`: `resource:action` permissions.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "scopes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::role_scope::Entity")]
    RoleScope,
    #[sea_orm(has_many = "super::client_scope::Entity")]
    ClientScope,
}

impl Related<super::role_scope::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RoleScope.def()
    }
}

impl Related<super::client_scope::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ClientScope.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
