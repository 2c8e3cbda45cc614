//! `UserAdminApi`: the adapter of `keystone.v1.UserAdmin`. Each method first establishes the
//! admin caller, then decodes, calls the service and encodes.
//!
//! Until the admin APIs are built, every RPC answers UNIMPLEMENTED through the generated
//! defaults.

use crate::proto::pb;

/// The gRPC adapter of the `UserAdmin` service.
#[derive(Debug, Clone, Default)]
pub struct UserAdminApi {}

impl pb::user_admin_server::UserAdmin for UserAdminApi {}
