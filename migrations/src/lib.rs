//! Keystone's database schema, as ordered sea-orm migrations that run unchanged on PostgreSQL
//! (production) and SQLite (the embedded default).
//!
//! A migration is never edited once merged: a change to the schema is a new file, named
//! `mYYYYMMDD_HHMMSS_<verb>_<noun>.rs`, appended to [`Migrator::migrations`]. The schema keeps to
//! what both backends share (no native enums, no partial indexes) so that tests on SQLite speak
//! for PostgreSQL too.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_identity_tables;
mod m20261128_000002_create_token_tables;
mod m20261128_000003_seed_scopes_and_admin_role;
mod m20261128_000004_create_revocations;
mod m20261128_000005_add_username_skeletons;
mod m20261128_000006_index_revocations_by_write_time;
mod m20261206_000007_add_client_certificates;
mod m20261206_000008_add_refresh_token_dpop_keys;
mod m20261206_000009_add_default_roles;
mod m20261206_000010_add_session_details;
mod m20261207_000011_add_client_token_exchange;
mod m20261207_000012_add_client_keys;
mod m20261207_000013_add_client_federated_identities;

/// The ordered list of Keystone's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_identity_tables::Migration),
            Box::new(m20261128_000002_create_token_tables::Migration),
            Box::new(m20261128_000003_seed_scopes_and_admin_role::Migration),
            Box::new(m20261128_000004_create_revocations::Migration),
            Box::new(m20261128_000005_add_username_skeletons::Migration),
            Box::new(m20261128_000006_index_revocations_by_write_time::Migration),
            Box::new(m20261206_000007_add_client_certificates::Migration),
            Box::new(m20261206_000008_add_refresh_token_dpop_keys::Migration),
            Box::new(m20261206_000009_add_default_roles::Migration),
            Box::new(m20261206_000010_add_session_details::Migration),
            Box::new(m20261207_000011_add_client_token_exchange::Migration),
            Box::new(m20261207_000012_add_client_keys::Migration),
            Box::new(m20261207_000013_add_client_federated_identities::Migration),
        ]
    }
}

/// The scopes Keystone itself checks, seeded by the migrations, with what each allows.
pub const BUILTIN_SCOPES: &[(&str, &str)] = &[
    (
        "keystone:admin",
        "Everything: all admin RPCs and introspection",
    ),
    (
        "keystone:users.read",
        "Read users, roles, scopes and audit events",
    ),
    (
        "keystone:users.write",
        "Create, change and delete users, roles and scopes",
    ),
    ("keystone:clients.read", "Read service clients"),
    (
        "keystone:clients.write",
        "Create, change, rotate and delete service clients",
    ),
    (
        "keystone:introspect",
        "Introspect tokens (RFC 7662) and watch revocations",
    ),
    (
        "keystone:password.change",
        "Change one's own password, and nothing else",
    ),
];

/// The role given to the bootstrap admin.
pub const ADMIN_ROLE: &str = "admin";
