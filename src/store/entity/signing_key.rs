//! `signing_keys`: JWT signing keys and their lifecycle (next, active, retired, removed).

use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub kid: String,
    pub algorithm: String,
    pub state: String,
    /// PKCS#8 DER of the private key.
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: DateTimeUtc,
    pub activates_at: DateTimeUtc,
    pub activated_at: Option<DateTimeUtc>,
    pub retired_at: Option<DateTimeUtc>,
    pub remove_after: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("signing_key::Model")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state)
            .field("private_key", &"[REDACTED]")
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
