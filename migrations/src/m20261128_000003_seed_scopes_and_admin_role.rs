//! Seeds the scopes Keystone checks itself and the `admin` role that holds `keystone:admin`.
//! No account is created here: the first admin comes from `keystone bootstrap-admin` or the
//! `KEYSTONE_BOOTSTRAP_ADMIN_*` variables.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::prelude::{ChronoUtc, Uuid};

use crate::m20261128_000001_create_identity_tables::{RoleScopes, Roles, Scopes};
use crate::{ADMIN_ROLE, BUILTIN_SCOPES};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000003_seed_scopes_and_admin_role"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Seeded rows are stamped with the moment the migration runs (the migrations crate
        // has no Keystone clock to ask).
        #[allow(clippy::disallowed_methods)]
        let now = ChronoUtc::now();
        let mut admin_scope_id = None;
        for (name, description) in BUILTIN_SCOPES {
            let id = Uuid::new_v4();
            if *name == "keystone:admin" {
                admin_scope_id = Some(id);
            }
            manager
                .exec_stmt(
                    Query::insert()
                        .into_table(Scopes::Table)
                        .columns([
                            Scopes::Id,
                            Scopes::Name,
                            Scopes::Description,
                            Scopes::CreatedAt,
                        ])
                        .values_panic([
                            id.into(),
                            (*name).into(),
                            (*description).into(),
                            now.into(),
                        ])
                        .to_owned(),
                )
                .await?;
        }
        let admin_scope_id = admin_scope_id.ok_or_else(|| {
            DbErr::Migration("keystone:admin is missing from BUILTIN_SCOPES".into())
        })?;

        let role_id = Uuid::new_v4();
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(Roles::Table)
                    .columns([
                        Roles::Id,
                        Roles::Name,
                        Roles::Description,
                        Roles::CreatedAt,
                        Roles::UpdatedAt,
                    ])
                    .values_panic([
                        role_id.into(),
                        ADMIN_ROLE.into(),
                        "Keystone administrators: every admin RPC".into(),
                        now.into(),
                        now.into(),
                    ])
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(RoleScopes::Table)
                    .columns([RoleScopes::RoleId, RoleScopes::ScopeId])
                    .values_panic([role_id.into(), admin_scope_id.into()])
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(Roles::Table)
                    .and_where(Expr::col(Roles::Name).eq(ADMIN_ROLE))
                    .to_owned(),
            )
            .await?;
        let names: Vec<&str> = BUILTIN_SCOPES.iter().map(|(name, _)| *name).collect();
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(Scopes::Table)
                    .and_where(Expr::col(Scopes::Name).is_in(names))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
