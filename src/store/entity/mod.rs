//! sea-orm entities, one per table of `migrations/`. They never leave `store/`.

pub mod audit_event;
pub mod client;
pub mod client_audience;
pub mod client_certificate_name;
pub mod client_federated_identity;
pub mod client_scope;
pub mod client_secret;
pub mod login_failure;
pub mod refresh_token;
pub mod revocation;
pub mod role;
pub mod role_scope;
pub mod scope;
pub mod signing_key;
pub mod user;
pub mod user_role;
