//! Sessions bound to a DPoP key (RFC 9449 section 5): a refresh token issued with a proof
//! keeps the thumbprint of its key (`cnf.jkt`), and every successor inherits it, so the
//! session is refreshed only with a proof by that key.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000008_add_refresh_token_dpop_keys"
    }
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    DpopJkt,
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
                    .table(RefreshTokens::Table)
                    .add_column(string_len_null(RefreshTokens::DpopJkt, 64))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(RefreshTokens::Table)
                    .drop_column(RefreshTokens::DpopJkt)
                    .to_owned(),
            )
            .await
    }
}
