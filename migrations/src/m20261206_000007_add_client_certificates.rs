//! Clients that authenticate by TLS client certificate (RFC 8705): the subject DN a
//! certificate chaining to the client CA must show, whether the client's tokens are bound to
//! its certificate, and, one row each, the subject alternative names (`san`) of which a
//! certificate must carry one and the SHA-256 thumbprints (`sha256`, hex) of self-signed
//! certificates.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261128_000001_create_identity_tables::Clients;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000007_add_client_certificates"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters a table one change at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .add_column(string_len_null(
                        ClientCertificates::TlsClientAuthSubjectDn,
                        1024,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Clients::Table)
                    .add_column(boolean(ClientCertificates::CertificateBoundTokens).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ClientCertificateNames::Table)
                    .col(uuid(ClientCertificateNames::ClientId))
                    .col(string_len(ClientCertificateNames::Kind, 8))
                    .col(string_len(ClientCertificateNames::Value, 1024))
                    .primary_key(
                        Index::create()
                            .col(ClientCertificateNames::ClientId)
                            .col(ClientCertificateNames::Kind)
                            .col(ClientCertificateNames::Value),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_client_certificate_names_client")
                            .from(
                                ClientCertificateNames::Table,
                                ClientCertificateNames::ClientId,
                            )
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(ClientCertificateNames::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            ClientCertificates::CertificateBoundTokens,
            ClientCertificates::TlsClientAuthSubjectDn,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Clients::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum ClientCertificates {
    TlsClientAuthSubjectDn,
    CertificateBoundTokens,
}

#[derive(DeriveIden)]
enum ClientCertificateNames {
    Table,
    ClientId,
    Kind,
    Value,
}
