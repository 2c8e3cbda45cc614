//! `ClientAdminApi`: the adapter of `keystone.v1.ClientAdmin`. Each method first establishes
//! the admin caller, then decodes, calls the service and encodes.
//!
//! Until the admin APIs are built, every RPC answers UNIMPLEMENTED through the generated
//! defaults.

use crate::proto::pb;

/// The gRPC adapter of the `ClientAdmin` service.
#[derive(Debug, Clone, Default)]
pub struct ClientAdminApi {}

impl pb::client_admin_server::ClientAdmin for ClientAdminApi {}
