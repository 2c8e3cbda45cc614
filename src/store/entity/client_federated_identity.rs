//! `client_federated_identities`: the workload identities a client is known by, one row each:
//! a trusted issuer's name and a `sub` of its tokens (one client at most per pair).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "client_federated_identities")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub issuer_name: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub subject: String,
    pub client_id: Uuid,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::client::Entity",
        from = "Column::ClientId",
        to = "super::client::Column::Id",
        on_delete = "Cascade"
    )]
    Client,
}

impl Related<super::client::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Client.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
