//! The admin caller: reads the bearer token of an admin call, verifies it, and checks the scope
//! the RPC needs, from one table listing every admin RPC. It fails closed: an RPC missing from
//! the table is refused, and the scope is checked before the target of the call is looked up,
//! so a caller without read access cannot learn whether a user exists.

use tonic::Request;

use super::convert::{bearer_token, call_context};
use crate::{
    error::{Error, Reason},
    service::{Actor, Authenticator},
};

/// One admin RPC: its full gRPC path, the scope it needs, and the audit action it records.
#[derive(Debug, Clone, Copy)]
pub struct AdminRpc {
    /// `/keystone.v1.Service/Method`.
    pub path: &'static str,
    /// The scope a caller needs. `keystone:admin` satisfies all; `…write` satisfies `…read`.
    pub scope: &'static str,
    /// The audit action of the call (also of its refusals).
    pub action: &'static str,
}

/// Every admin RPC, with its scope and audit action.
pub const ADMIN_RPCS: &[AdminRpc] = &[
    AdminRpc {
        path: "/keystone.v1.UserAdmin/CreateUser",
        scope: "keystone:users.write",
        action: "user.create",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/GetUser",
        scope: "keystone:users.read",
        action: "user.get",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/ListUsers",
        scope: "keystone:users.read",
        action: "user.list",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/UpdateUser",
        scope: "keystone:users.write",
        action: "user.update",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/DeleteUser",
        scope: "keystone:users.write",
        action: "user.delete",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/SetPassword",
        scope: "keystone:users.write",
        action: "user.set_password",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/LockUser",
        scope: "keystone:users.write",
        action: "user.lock",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/UnlockUser",
        scope: "keystone:users.write",
        action: "user.unlock",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/AssignRoles",
        scope: "keystone:users.write",
        action: "user.assign_roles",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/RemoveRoles",
        scope: "keystone:users.write",
        action: "user.remove_roles",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/RevokeUserSessions",
        scope: "keystone:users.write",
        action: "user.revoke_sessions",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/ListUserSessions",
        scope: "keystone:users.read",
        action: "user.list_sessions",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/RevokeUserSession",
        scope: "keystone:users.write",
        action: "user.revoke_session",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/CreateRole",
        scope: "keystone:users.write",
        action: "role.create",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/GetRole",
        scope: "keystone:users.read",
        action: "role.get",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/ListRoles",
        scope: "keystone:users.read",
        action: "role.list",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/UpdateRole",
        scope: "keystone:users.write",
        action: "role.update",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/DeleteRole",
        scope: "keystone:users.write",
        action: "role.delete",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/CreateScope",
        scope: "keystone:users.write",
        action: "scope.create",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/ListScopes",
        scope: "keystone:users.read",
        action: "scope.list",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/DeleteScope",
        scope: "keystone:users.write",
        action: "scope.delete",
    },
    AdminRpc {
        path: "/keystone.v1.UserAdmin/ListAuditEvents",
        scope: "keystone:users.read",
        action: "audit.list",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/CreateClient",
        scope: "keystone:clients.write",
        action: "client.create",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/GetClient",
        scope: "keystone:clients.read",
        action: "client.get",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/ListClients",
        scope: "keystone:clients.read",
        action: "client.list",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/UpdateClient",
        scope: "keystone:clients.write",
        action: "client.update",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/DeleteClient",
        scope: "keystone:clients.write",
        action: "client.delete",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/RevokeClientTokens",
        scope: "keystone:clients.write",
        action: "client.revoke_tokens",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/RotateClientSecret",
        scope: "keystone:clients.write",
        action: "client.rotate_secret",
    },
    AdminRpc {
        path: "/keystone.v1.ClientAdmin/RevokeClientSecret",
        scope: "keystone:clients.write",
        action: "client.revoke_secret",
    },
];

/// The entry of an admin RPC, if it is in the table.
pub fn admin_rpc(path: &str) -> Option<&'static AdminRpc> {
    ADMIN_RPCS.iter().find(|rpc| rpc.path == path)
}

/// Establishes the caller of the admin RPC at `path`, before anything else is done: a valid,
/// unrevoked bearer token that holds the RPC's scope. No token or a bad one: UNAUTHENTICATED;
/// a missing scope: PERMISSION_DENIED (`INSUFFICIENT_SCOPE`); an RPC missing from the table:
/// refused. Refusals are audit events.
pub async fn establish<T>(
    auth: &Authenticator,
    request: &Request<T>,
    path: &str,
) -> Result<Actor, Error> {
    let Some(rpc) = admin_rpc(path) else {
        return Err(Error::PermissionDenied {
            reason: Reason::InsufficientScope,
            message: "this call is not open to any scope".to_owned(),
        });
    };
    let context = call_context(request);
    auth.admin_actor(
        bearer_token(request.metadata()),
        &context.presented(),
        rpc.scope,
        rpc.action,
        &context.peer,
    )
    .await
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
            assert!(admin_rpc(rpc).is_some(), "{rpc} has no entry in ADMIN_RPCS");
        }
        for entry in ADMIN_RPCS {
            let AdminRpc {
                path,
                scope,
                action,
            } = entry;
            assert!(rpcs.iter().any(|r| r == path), "{path} is not an admin RPC");
            assert!(crate::domain::Scope::parse(scope).is_ok(), "{scope}");
            let is_read = path.contains("/Get") || path.contains("/List");
            assert_eq!(
                scope.ends_with(".read"),
                is_read,
                "{path}: reads need .read, writes .write"
            );
            let resource = if path.contains("UserAdmin") {
                "keystone:users."
            } else {
                "keystone:clients."
            };
            assert!(scope.starts_with(resource), "{path}: {scope}");
            assert!(action.contains('.'), "{path}: {action}");
        }
    }
}
