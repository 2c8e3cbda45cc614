//! What a person needs to recognise a session (a refresh-token family) among their devices:
//! the client address and `user-agent` at login, and when the session began. Every token of a
//! family carries them, copied on rotation, so the family's live token answers alone. Sessions
//! begun before this migration show no address or agent.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000010_add_session_details"
    }
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    SessionIp,
    SessionUserAgent,
    SessionStartedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters a table one column at a time.
        for column in [
            string_len_null(RefreshTokens::SessionIp, 64),
            string_len_null(RefreshTokens::SessionUserAgent, 256),
            timestamp_with_time_zone_null(RefreshTokens::SessionStartedAt),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(RefreshTokens::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            RefreshTokens::SessionIp,
            RefreshTokens::SessionUserAgent,
            RefreshTokens::SessionStartedAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(RefreshTokens::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
