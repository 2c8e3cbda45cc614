//! Token exchange (RFC 8693): a client may trade a token it received for one it sends on, on
//! the same subject's behalf, only when an admin allowed it (`token_exchange`).

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000011_add_client_token_exchange"
    }
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    TokenExchange,
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
                    .add_column(boolean(Clients::TokenExchange).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .drop_column(Clients::TokenExchange)
                    .to_owned(),
            )
            .await
    }
}
