//! Users, roles, scopes and service clients: who may hold an identity, and what it may do.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000001_create_identity_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Usernames and emails are unique case-insensitively: the service stores a normalized
        // copy (NFKC, lowercased) beside the display form, and the unique index sits on the copy.
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(pk_uuid(Users::Id))
                    .col(string_len(Users::Username, 128))
                    .col(string_len_uniq(Users::UsernameNormalized, 128))
                    .col(string_len(Users::Email, 320))
                    .col(string_len_uniq(Users::EmailNormalized, 320))
                    .col(text(Users::PasswordHash))
                    .col(boolean(Users::Enabled).default(true))
                    .col(boolean(Users::EmailVerified).default(false))
                    .col(boolean(Users::PasswordChangeRequired).default(false))
                    .col(boolean(Users::Locked).default(false))
                    .col(timestamp_with_time_zone_null(Users::LockedUntil))
                    .col(timestamp_with_time_zone_null(Users::TokensNotBefore))
                    .col(timestamp_with_time_zone_null(Users::PasswordChangedAt))
                    .col(timestamp_with_time_zone_null(Users::LastLoginAt))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_users_created_at_id")
                    .table(Users::Table)
                    .col(Users::CreatedAt)
                    .col(Users::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Scopes::Table)
                    .col(pk_uuid(Scopes::Id))
                    .col(string_len_uniq(Scopes::Name, 128))
                    .col(string_len(Scopes::Description, 1024).default(""))
                    .col(timestamp_with_time_zone(Scopes::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Roles::Table)
                    .col(pk_uuid(Roles::Id))
                    .col(string_len_uniq(Roles::Name, 128))
                    .col(string_len(Roles::Description, 1024).default(""))
                    .col(timestamp_with_time_zone(Roles::CreatedAt))
                    .col(timestamp_with_time_zone(Roles::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RoleScopes::Table)
                    .col(uuid(RoleScopes::RoleId))
                    .col(uuid(RoleScopes::ScopeId))
                    .primary_key(
                        Index::create()
                            .col(RoleScopes::RoleId)
                            .col(RoleScopes::ScopeId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_role_scopes_role")
                            .from(RoleScopes::Table, RoleScopes::RoleId)
                            .to(Roles::Table, Roles::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_role_scopes_scope")
                            .from(RoleScopes::Table, RoleScopes::ScopeId)
                            .to(Scopes::Table, Scopes::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_role_scopes_scope")
                    .table(RoleScopes::Table)
                    .col(RoleScopes::ScopeId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UserRoles::Table)
                    .col(uuid(UserRoles::UserId))
                    .col(uuid(UserRoles::RoleId))
                    .primary_key(
                        Index::create()
                            .col(UserRoles::UserId)
                            .col(UserRoles::RoleId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_roles_user")
                            .from(UserRoles::Table, UserRoles::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_roles_role")
                            .from(UserRoles::Table, UserRoles::RoleId)
                            .to(Roles::Table, Roles::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_user_roles_role")
                    .table(UserRoles::Table)
                    .col(UserRoles::RoleId)
                    .to_owned(),
            )
            .await?;

        // `client_id` is the public identifier callers send; `id` is the internal key.
        manager
            .create_table(
                Table::create()
                    .table(Clients::Table)
                    .col(pk_uuid(Clients::Id))
                    .col(string_len_uniq(Clients::ClientId, 128))
                    .col(string_len(Clients::Name, 256).default(""))
                    .col(string_len(Clients::Description, 1024).default(""))
                    .col(big_integer_null(Clients::AccessTokenTtlSeconds))
                    .col(boolean(Clients::Enabled).default(true))
                    .col(timestamp_with_time_zone_null(Clients::TokensNotBefore))
                    .col(timestamp_with_time_zone_null(Clients::SecretRotatedAt))
                    .col(timestamp_with_time_zone_null(Clients::SecretLastUsedAt))
                    .col(timestamp_with_time_zone(Clients::CreatedAt))
                    .col(timestamp_with_time_zone(Clients::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_clients_created_at_id")
                    .table(Clients::Table)
                    .col(Clients::CreatedAt)
                    .col(Clients::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ClientScopes::Table)
                    .col(uuid(ClientScopes::ClientId))
                    .col(uuid(ClientScopes::ScopeId))
                    .primary_key(
                        Index::create()
                            .col(ClientScopes::ClientId)
                            .col(ClientScopes::ScopeId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_client_scopes_client")
                            .from(ClientScopes::Table, ClientScopes::ClientId)
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_client_scopes_scope")
                            .from(ClientScopes::Table, ClientScopes::ScopeId)
                            .to(Scopes::Table, Scopes::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_client_scopes_scope")
                    .table(ClientScopes::Table)
                    .col(ClientScopes::ScopeId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ClientAudiences::Table)
                    .col(uuid(ClientAudiences::ClientId))
                    .col(string_len(ClientAudiences::Audience, 512))
                    .primary_key(
                        Index::create()
                            .col(ClientAudiences::ClientId)
                            .col(ClientAudiences::Audience),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_client_audiences_client")
                            .from(ClientAudiences::Table, ClientAudiences::ClientId)
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // Several secrets per client, each with its own expiry, so a rotation can overlap.
        // Only a keyed hash (HMAC with the server's pepper) is stored, never the secret.
        manager
            .create_table(
                Table::create()
                    .table(ClientSecrets::Table)
                    .col(pk_uuid(ClientSecrets::Id))
                    .col(uuid(ClientSecrets::ClientId))
                    .col(blob(ClientSecrets::SecretHash))
                    .col(timestamp_with_time_zone(ClientSecrets::CreatedAt))
                    .col(timestamp_with_time_zone_null(ClientSecrets::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ClientSecrets::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_client_secrets_client")
                            .from(ClientSecrets::Table, ClientSecrets::ClientId)
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_client_secrets_client")
                    .table(ClientSecrets::Table)
                    .col(ClientSecrets::ClientId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ClientSecrets::Table.into_iden(),
            ClientAudiences::Table.into_iden(),
            ClientScopes::Table.into_iden(),
            Clients::Table.into_iden(),
            UserRoles::Table.into_iden(),
            RoleScopes::Table.into_iden(),
            Roles::Table.into_iden(),
            Scopes::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
pub enum Users {
    Table,
    Id,
    Username,
    UsernameNormalized,
    Email,
    EmailNormalized,
    PasswordHash,
    Enabled,
    EmailVerified,
    PasswordChangeRequired,
    Locked,
    LockedUntil,
    TokensNotBefore,
    PasswordChangedAt,
    LastLoginAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
pub enum Scopes {
    Table,
    Id,
    Name,
    Description,
    CreatedAt,
}

#[derive(DeriveIden)]
pub enum Roles {
    Table,
    Id,
    Name,
    Description,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
pub enum RoleScopes {
    Table,
    RoleId,
    ScopeId,
}

#[derive(DeriveIden)]
pub enum UserRoles {
    Table,
    UserId,
    RoleId,
}

#[derive(DeriveIden)]
pub enum Clients {
    Table,
    Id,
    ClientId,
    Name,
    Description,
    AccessTokenTtlSeconds,
    Enabled,
    TokensNotBefore,
    SecretRotatedAt,
    SecretLastUsedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
pub enum ClientScopes {
    Table,
    ClientId,
    ScopeId,
}

#[derive(DeriveIden)]
pub enum ClientAudiences {
    Table,
    ClientId,
    Audience,
}

#[derive(DeriveIden)]
pub enum ClientSecrets {
    Table,
    Id,
    ClientId,
    SecretHash,
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
}
