//! The admin caller: reads the bearer token of an admin call, verifies it, and checks the scope
//! the RPC needs, from one table listing every admin RPC. It fails closed: an RPC missing from
//! the table is refused, and the scope is checked before the target of the call is looked up,
//! so a caller without read access cannot learn whether a user exists.

use tonic::metadata::MetadataMap;

use super::convert::bearer_token;
use crate::{
    domain::ScopeSet,
    error::{Error, Reason},
    service::auth::AuthService,
    token::Claims,
};

/// The scope each admin RPC needs (full gRPC path → scope). `keystone:admin` satisfies all;
/// `…write` satisfies `…read`.
pub const ADMIN_RPC_SCOPES: &[(&str, &str)] = &[
    ("/keystone.v1.UserAdmin/CreateUser", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/GetUser", "keystone:users.read"),
    ("/keystone.v1.UserAdmin/ListUsers", "keystone:users.read"),
    ("/keystone.v1.UserAdmin/UpdateUser", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/DeleteUser", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/SetPassword", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/LockUser", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/UnlockUser", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/AssignRoles", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/RemoveRoles", "keystone:users.write"),
    (
        "/keystone.v1.UserAdmin/RevokeUserSessions",
        "keystone:users.write",
    ),
    ("/keystone.v1.UserAdmin/CreateRole", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/GetRole", "keystone:users.read"),
    ("/keystone.v1.UserAdmin/ListRoles", "keystone:users.read"),
    ("/keystone.v1.UserAdmin/UpdateRole", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/DeleteRole", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/CreateScope", "keystone:users.write"),
    ("/keystone.v1.UserAdmin/ListScopes", "keystone:users.read"),
    ("/keystone.v1.UserAdmin/DeleteScope", "keystone:users.write"),
    (
        "/keystone.v1.UserAdmin/ListAuditEvents",
        "keystone:users.read",
    ),
    (
        "/keystone.v1.ClientAdmin/CreateClient",
        "keystone:clients.write",
    ),
    (
        "/keystone.v1.ClientAdmin/GetClient",
        "keystone:clients.read",
    ),
    (
        "/keystone.v1.ClientAdmin/ListClients",
        "keystone:clients.read",
    ),
    (
        "/keystone.v1.ClientAdmin/UpdateClient",
        "keystone:clients.write",
    ),
    (
        "/keystone.v1.ClientAdmin/DeleteClient",
        "keystone:clients.write",
    ),
    (
        "/keystone.v1.ClientAdmin/RevokeClientTokens",
        "keystone:clients.write",
    ),
    (
        "/keystone.v1.ClientAdmin/RotateClientSecret",
        "keystone:clients.write",
    ),
];

/// The scope an admin RPC needs, if it is in the table.
pub fn required_scope(path: &str) -> Option<&'static str> {
    ADMIN_RPC_SCOPES
        .iter()
        .find(|(rpc, _)| *rpc == path)
        .map(|(_, scope)| *scope)
}

/// A verified admin caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's token claims.
    pub claims: Claims,
}

impl Caller {
    /// Establishes the caller of the admin RPC at `path`: a valid, unrevoked bearer token that
    /// holds the RPC's scope. No token or a bad one: UNAUTHENTICATED; a missing scope:
    /// PERMISSION_DENIED (`INSUFFICIENT_SCOPE`).
    pub fn establish(
        auth: &AuthService,
        metadata: &MetadataMap,
        path: &str,
    ) -> Result<Self, Error> {
        let Some(scope) = required_scope(path) else {
            return Err(Error::PermissionDenied {
                reason: Reason::InsufficientScope,
                message: "this call is not open to any scope".to_owned(),
            });
        };
        let required = ScopeSet::parse([scope]).map_err(|e| e.on("scope"))?;
        let token = bearer_token(metadata)?;
        let principal = auth.authenticate(&token, &required, None)?;
        Ok(Self {
            claims: principal.claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::proto::FILE_DESCRIPTOR_SET;

    /// Every RPC of the admin services has an entry, and every entry names a real RPC: a new
    /// RPC without one fails here.
    #[test]
    fn the_scope_table_covers_every_admin_rpc_and_nothing_else() {
        let files = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs = Vec::new();
        for file in files.file.iter().filter(|f| f.package() == "keystone.v1") {
            for service in file
                .service
                .iter()
                .filter(|s| matches!(s.name(), "UserAdmin" | "ClientAdmin"))
            {
                for method in &service.method {
                    rpcs.push(format!("/keystone.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        assert!(rpcs.len() >= 27, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(
                required_scope(rpc).is_some(),
                "{rpc} has no scope in ADMIN_RPC_SCOPES"
            );
        }
        for (rpc, scope) in ADMIN_RPC_SCOPES {
            assert!(rpcs.iter().any(|r| r == rpc), "{rpc} is not an admin RPC");
            assert!(crate::domain::Scope::parse(scope).is_ok(), "{scope}");
            let is_read = rpc.contains("/Get") || rpc.contains("/List");
            assert_eq!(
                scope.ends_with(".read"),
                is_read,
                "{rpc}: reads need .read, writes .write"
            );
        }
    }
}
