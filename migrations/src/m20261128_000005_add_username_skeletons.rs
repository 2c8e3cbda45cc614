//! Look-alike usernames: each user gets the UTS #39 skeleton of the normalized username, under
//! a unique index, so `paypal` and `pаypal` (Cyrillic `а`) or `bob` and `b0b` cannot both
//! exist. Existing users are backfilled here.

use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{Statement, prelude::Uuid},
};

use crate::m20261128_000001_create_identity_tables::Users;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000005_add_username_skeletons"
    }
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
                    .table(Users::Table)
                    .add_column(string_len_null(UsernameSkeleton::UsernameSkeleton, 512))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        // Oldest first: where existing names already look alike, the oldest keeps the
        // skeleton and the others keep none (they stay as they are; new look-alikes of any of
        // them are still refused through the oldest).
        let rows = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT id, username_normalized FROM users ORDER BY created_at, id",
            ))
            .await?;
        let mut seen = std::collections::HashSet::new();
        for row in rows {
            let id: Uuid = row.try_get("", "id")?;
            let normalized: String = row.try_get("", "username_normalized")?;
            let skeleton = skeleton(&normalized);
            if !seen.insert(skeleton.clone()) {
                continue;
            }
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                "UPDATE users SET username_skeleton = $1 WHERE id = $2",
                [skeleton.into(), id.into()],
            ))
            .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_users_username_skeleton")
                    .table(Users::Table)
                    .col(UsernameSkeleton::UsernameSkeleton)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_users_username_skeleton")
                    .table(Users::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(UsernameSkeleton::UsernameSkeleton)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum UsernameSkeleton {
    UsernameSkeleton,
}

/// The skeleton as this migration defines it (frozen here: `Username::skeleton` in Keystone
/// computes the same for new users).
fn skeleton(normalized: &str) -> String {
    unicode_security::skeleton(normalized)
        .collect::<String>()
        .to_lowercase()
}
