//! `AuthApi`: the adapter of `keystone.v1.Auth`. It decodes requests into domain types, calls
//! the auth service, and encodes the reply; it makes no policy decision of its own.
//!
//! Until the auth core is built, every RPC answers UNIMPLEMENTED through the generated
//! defaults.

use crate::proto::pb;

/// The gRPC adapter of the `Auth` service.
#[derive(Debug, Clone, Default)]
pub struct AuthApi {}

impl pb::auth_server::Auth for AuthApi {}
