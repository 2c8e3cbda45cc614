//! Revocations, the system of record for what `Authenticate` must refuse although the signature
//! is good: a token id, a session (refresh family), or every token of a subject issued before a
//! time. Each row lives until the tokens it covers would have expired anyway.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000004_create_revocations"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // `kind` is `token` (key: jti), `session` (key: sid) or `subject` (key: sub; tokens
        // issued before `not_before` are refused). `seq` orders changes for replicas that
        // follow them.
        manager
            .create_table(
                Table::create()
                    .table(Revocations::Table)
                    .col(big_pk_auto(Revocations::Seq))
                    .col(string_len(Revocations::Kind, 16))
                    .col(string_len(Revocations::Key, 128))
                    .col(timestamp_with_time_zone(Revocations::NotBefore))
                    .col(timestamp_with_time_zone(Revocations::ExpiresAt))
                    .col(timestamp_with_time_zone(Revocations::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_revocations_kind_key")
                    .table(Revocations::Table)
                    .col(Revocations::Kind)
                    .col(Revocations::Key)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_revocations_expires_at")
                    .table(Revocations::Table)
                    .col(Revocations::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Revocations::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Revocations {
    Table,
    Seq,
    Kind,
    Key,
    NotBefore,
    ExpiresAt,
    CreatedAt,
}
