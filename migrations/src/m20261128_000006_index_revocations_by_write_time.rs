//! Replicas poll revocations by `seq` and, looking back a few seconds, by write time
//! (`created_at`): an index keeps that poll cheap however many tokens are revoked.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000006_index_revocations_by_write_time"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_revocations_created_at")
                    .table(Revocations::Table)
                    .col(Revocations::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_revocations_created_at")
                    .table(Revocations::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Revocations {
    Table,
    CreatedAt,
}
