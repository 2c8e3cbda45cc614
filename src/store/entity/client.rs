//! `clients`: service clients. `client_id` is the public identifier, `id` the internal key.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "clients")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: String,
    pub name: String,
    pub description: String,
    pub access_token_ttl_seconds: Option<i64>,
    pub enabled: bool,
    pub tokens_not_before: Option<DateTimeUtc>,
    pub secret_rotated_at: Option<DateTimeUtc>,
    pub secret_last_used_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub tls_client_auth_subject_dn: Option<String>,
    pub certificate_bound_tokens: bool,
    pub token_exchange: bool,
    pub jwks_json: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::client_secret::Entity")]
    ClientSecret,
    #[sea_orm(has_many = "super::client_scope::Entity")]
    ClientScope,
    #[sea_orm(has_many = "super::client_audience::Entity")]
    ClientAudience,
    #[sea_orm(has_many = "super::client_certificate_name::Entity")]
    ClientCertificateName,
    #[sea_orm(has_many = "super::client_federated_identity::Entity")]
    ClientFederatedIdentity,
}

impl Related<super::client_secret::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ClientSecret.def()
    }
}

impl Related<super::client_scope::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ClientScope.def()
    }
}

impl Related<super::client_audience::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ClientAudience.def()
    }
}

impl Related<super::client_certificate_name::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ClientCertificateName.def()
    }
}

impl Related<super::client_federated_identity::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ClientFederatedIdentity.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
