//! Default roles: a role marked `default_for_new_users` is given to every user created by
//! `Register`, or by `CreateUser` with no roles. Keystone refuses to mark a role holding a
//! `keystone:*` scope, so self-registration never leads to administration.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000009_add_default_roles"
    }
}

#[derive(DeriveIden)]
enum Roles {
    Table,
    DefaultForNewUsers,
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
                    .table(Roles::Table)
                    .add_column(boolean(Roles::DefaultForNewUsers).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Roles::Table)
                    .drop_column(Roles::DefaultForNewUsers)
                    .to_owned(),
            )
            .await
    }
}
