//! Clients known by a workload identity (a Kubernetes service account, a SPIFFE ID): one row
//! per trusted issuer's name and `sub`, which names one client at most.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261128_000001_create_identity_tables::Clients;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000013_add_client_federated_identities"
    }
}

#[derive(DeriveIden)]
enum ClientFederatedIdentities {
    Table,
    IssuerName,
    Subject,
    ClientId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ClientFederatedIdentities::Table)
                    .col(string_len(ClientFederatedIdentities::IssuerName, 64))
                    .col(string_len(ClientFederatedIdentities::Subject, 256))
                    .col(uuid(ClientFederatedIdentities::ClientId))
                    .primary_key(
                        Index::create()
                            .col(ClientFederatedIdentities::IssuerName)
                            .col(ClientFederatedIdentities::Subject),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_client_federated_identities_client")
                            .from(
                                ClientFederatedIdentities::Table,
                                ClientFederatedIdentities::ClientId,
                            )
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_client_federated_identities_client")
                    .table(ClientFederatedIdentities::Table)
                    .col(ClientFederatedIdentities::ClientId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(ClientFederatedIdentities::Table)
                    .to_owned(),
            )
            .await
    }
}
