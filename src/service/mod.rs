//! The use cases. Every policy decision lives here; nothing here knows tonic or the generated
//! protobuf types. [`Services`] bundles them for the adapters.

pub mod auth;
pub mod user_admin;

pub use user_admin::{BootstrapOutcome, UserAdminService};
