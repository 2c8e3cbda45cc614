//! Clients that authenticate by a key of their own (`private_key_jwt`, RFC 7523 section 2.2):
//! the public keys an admin registered, as a JWK Set (`jwks_json`; none: NULL).

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000012_add_client_keys"
    }
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    JwksJson,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .add_column(text_null(Clients::JwksJson))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .drop_column(Clients::JwksJson)
                    .to_owned(),
            )
            .await
    }
}
