//! Refresh tokens, signing keys, failed-login tracking and the audit trail.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261128_000001_create_identity_tables::{Clients, Users};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000002_create_token_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One row per refresh token ever issued. A session is a family: the first token of a
        // login and every successor rotated from it share `family_id`. Only a hash of the token
        // is stored; `used_at` marks a rotated token, `revoked_at` a revoked one.
        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .col(pk_uuid(RefreshTokens::Id))
                    .col(blob(RefreshTokens::TokenHash))
                    .col(uuid(RefreshTokens::FamilyId))
                    .col(uuid_null(RefreshTokens::ParentId))
                    .col(uuid_null(RefreshTokens::SuccessorId))
                    .col(uuid_null(RefreshTokens::UserId))
                    .col(uuid_null(RefreshTokens::ClientId))
                    .col(text(RefreshTokens::Scopes))
                    .col(text(RefreshTokens::Audience))
                    .col(timestamp_with_time_zone(RefreshTokens::IssuedAt))
                    .col(timestamp_with_time_zone(RefreshTokens::ExpiresAt))
                    .col(timestamp_with_time_zone(RefreshTokens::FamilyExpiresAt))
                    .col(timestamp_with_time_zone_null(RefreshTokens::UsedAt))
                    .col(timestamp_with_time_zone_null(RefreshTokens::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refresh_tokens_user")
                            .from(RefreshTokens::Table, RefreshTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refresh_tokens_client")
                            .from(RefreshTokens::Table, RefreshTokens::ClientId)
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refresh_tokens_parent")
                            .from(RefreshTokens::Table, RefreshTokens::ParentId)
                            .to(RefreshTokens::Table, RefreshTokens::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_refresh_tokens_family", RefreshTokens::FamilyId),
            ("idx_refresh_tokens_user", RefreshTokens::UserId),
            ("idx_refresh_tokens_client", RefreshTokens::ClientId),
            ("idx_refresh_tokens_expires_at", RefreshTokens::ExpiresAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(RefreshTokens::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_refresh_tokens_token_hash")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::TokenHash)
                    .unique()
                    .to_owned(),
            )
            .await?;

        // Signing keys move through next -> active -> retired -> removed; `revoked_at` marks a
        // key withdrawn at once (compromise). Each lifecycle step has its time.
        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .col(pk_uuid(SigningKeys::Id))
                    .col(string_len_uniq(SigningKeys::Kid, 64))
                    .col(string_len(SigningKeys::Algorithm, 16))
                    .col(string_len(SigningKeys::State, 16))
                    .col(blob(SigningKeys::PrivateKey))
                    .col(blob(SigningKeys::PublicKey))
                    .col(timestamp_with_time_zone(SigningKeys::CreatedAt))
                    .col(timestamp_with_time_zone(SigningKeys::ActivatesAt))
                    .col(timestamp_with_time_zone_null(SigningKeys::ActivatedAt))
                    .col(timestamp_with_time_zone_null(SigningKeys::RetiredAt))
                    .col(timestamp_with_time_zone_null(SigningKeys::RemoveAfter))
                    .col(timestamp_with_time_zone_null(SigningKeys::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_signing_keys_state")
                    .table(SigningKeys::Table)
                    .col(SigningKeys::State)
                    .to_owned(),
            )
            .await?;

        // Failed logins are counted per normalized name, whether or not a user has it, so a
        // lockout reveals nothing about which names exist.
        manager
            .create_table(
                Table::create()
                    .table(LoginFailures::Table)
                    .col(string_len(LoginFailures::Name, 320).primary_key())
                    .col(integer(LoginFailures::FailedAttempts).default(0))
                    .col(integer(LoginFailures::LockoutCount).default(0))
                    .col(timestamp_with_time_zone_null(LoginFailures::LockedUntil))
                    .col(timestamp_with_time_zone(LoginFailures::LastFailureAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(pk_uuid(AuditEvents::Id))
                    .col(timestamp_with_time_zone(AuditEvents::OccurredAt))
                    .col(string_len(AuditEvents::Actor, 320))
                    .col(string_len(AuditEvents::Action, 64))
                    .col(string_len(AuditEvents::Target, 320))
                    .col(string_len(AuditEvents::Outcome, 16))
                    .col(string_len(AuditEvents::Peer, 64))
                    .col(text(AuditEvents::Details))
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            (
                "idx_audit_events_time",
                vec![AuditEvents::OccurredAt, AuditEvents::Id],
            ),
            (
                "idx_audit_events_actor",
                vec![AuditEvents::Actor, AuditEvents::OccurredAt],
            ),
            (
                "idx_audit_events_action",
                vec![AuditEvents::Action, AuditEvents::OccurredAt],
            ),
            (
                "idx_audit_events_target",
                vec![AuditEvents::Target, AuditEvents::OccurredAt],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(AuditEvents::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvents::Table.into_iden(),
            LoginFailures::Table.into_iden(),
            SigningKeys::Table.into_iden(),
            RefreshTokens::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    Id,
    TokenHash,
    FamilyId,
    ParentId,
    SuccessorId,
    UserId,
    ClientId,
    Scopes,
    Audience,
    IssuedAt,
    ExpiresAt,
    FamilyExpiresAt,
    UsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Id,
    Kid,
    Algorithm,
    State,
    PrivateKey,
    PublicKey,
    CreatedAt,
    ActivatesAt,
    ActivatedAt,
    RetiredAt,
    RemoveAfter,
    RevokedAt,
}

#[derive(DeriveIden)]
enum LoginFailures {
    Table,
    Name,
    FailedAttempts,
    LockoutCount,
    LockedUntil,
    LastFailureAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OccurredAt,
    Actor,
    Action,
    Target,
    Outcome,
    Peer,
    Details,
}
