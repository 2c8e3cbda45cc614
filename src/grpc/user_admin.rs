//! `UserAdminApi`: the adapter of `keystone.v1.UserAdmin`. Each method first establishes the
//! admin caller (no token: UNAUTHENTICATED; no scope: PERMISSION_DENIED, before any lookup),
//! then decodes, calls [`UserAdminService`] and encodes.

use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::{
        audit_event_to_proto, role_to_proto, session_to_proto, timestamp_from_proto, update_paths,
        user_record_to_proto,
    },
};
use crate::{
    clock::SharedClock,
    domain::UserRecord,
    error::Error,
    proto::pb,
    service::{
        Actor, Authenticator, UserAdminService,
        user_admin::{AuditQuery, CreateUser, UserLookup, UserUpdate},
    },
};

/// The gRPC adapter of the `UserAdmin` service.
#[derive(Debug, Clone)]
pub struct UserAdminApi {
    auth: Authenticator,
    service: UserAdminService,
    clock: SharedClock,
}

impl UserAdminApi {
    /// The adapter over the services.
    pub fn new(auth: Authenticator, service: UserAdminService, clock: SharedClock) -> Self {
        Self {
            auth,
            service,
            clock,
        }
    }

    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Actor, Error> {
        caller::establish(
            &self.auth,
            request,
            &format!("/keystone.v1.UserAdmin/{method}"),
        )
        .await
    }

    fn user(&self, record: &UserRecord) -> pb::User {
        user_record_to_proto(record, self.clock.now())
    }
}

/// An empty password means "generate one".
fn given_password(password: String) -> Option<SecretString> {
    (!password.is_empty()).then(|| SecretString::from(password))
}

#[tonic::async_trait]
impl pb::user_admin_server::UserAdmin for UserAdminApi {
    #[tracing::instrument(name = "CreateUser", skip_all)]
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let actor = self.caller(&request, "CreateUser").await?;
        let request = request.into_inner();
        let (record, generated) = self
            .service
            .create_user(
                &actor,
                CreateUser {
                    username: request.username,
                    email: request.email,
                    password: given_password(request.password),
                    roles: request.roles,
                    enabled: request.enabled.unwrap_or(true),
                    email_verified: request.email_verified,
                },
            )
            .await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(self.user(&record)),
            generated_password: generated
                .map(|p| secrecy::ExposeSecret::expose_secret(&p).to_owned())
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "GetUser", skip_all)]
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.caller(&request, "GetUser").await?;
        let lookup = match request.into_inner().lookup {
            Some(pb::get_user_request::Lookup::Id(id)) => UserLookup::Id(id),
            Some(pb::get_user_request::Lookup::Username(name)) => UserLookup::Username(name),
            None => {
                return Err(
                    Error::invalid_argument("lookup", "give the user's id or username").into(),
                );
            }
        };
        let record = self.service.get_user(lookup).await?;
        Ok(Response::new(self.user(&record)))
    }

    #[tracing::instrument(name = "ListUsers", skip_all)]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.caller(&request, "ListUsers").await?;
        let request = request.into_inner();
        let page = self
            .service
            .list_users(
                request.page_size,
                &request.page_token,
                &request.query,
                &request.role,
            )
            .await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.items.iter().map(|record| self.user(record)).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(name = "UpdateUser", skip_all)]
    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let actor = self.caller(&request, "UpdateUser").await?;
        let request = request.into_inner();
        let user = request
            .user
            .ok_or_else(|| Error::invalid_argument("user", "give the user with `id` set"))?;
        let paths = update_paths(
            request.update_mask.as_ref(),
            "User",
            &["email", "enabled", "email_verified"],
            &[
                "locked",
                "locked_until",
                "password_change_required",
                "failed_login_attempts",
                "created_at",
                "updated_at",
                "last_login_at",
            ],
            &[
                ("id", "a user's id never changes"),
                ("username", "a username never changes"),
                ("roles", "use AssignRoles and RemoveRoles"),
            ],
        )?;
        let mut update = UserUpdate::default();
        for path in paths {
            match path {
                "email" => update.email = Some(user.email.clone()),
                "enabled" => {
                    update.enabled = Some(user.enabled.ok_or_else(|| {
                        Error::invalid_argument("user.enabled", "set it to true or false")
                    })?);
                }
                _ => update.email_verified = Some(user.email_verified),
            }
        }
        let record = self.service.update_user(&actor, &user.id, update).await?;
        Ok(Response::new(self.user(&record)))
    }

    #[tracing::instrument(name = "DeleteUser", skip_all)]
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let actor = self.caller(&request, "DeleteUser").await?;
        self.service
            .delete_user(&actor, &request.into_inner().id)
            .await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    #[tracing::instrument(name = "SetPassword", skip_all)]
    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let actor = self.caller(&request, "SetPassword").await?;
        let request = request.into_inner();
        let generated = self
            .service
            .set_password(&actor, &request.id, given_password(request.password))
            .await?;
        Ok(Response::new(pb::SetPasswordResponse {
            generated_password: generated
                .map(|p| secrecy::ExposeSecret::expose_secret(&p).to_owned())
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "LockUser", skip_all)]
    async fn lock_user(
        &self,
        request: Request<pb::LockUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let actor = self.caller(&request, "LockUser").await?;
        let request = request.into_inner();
        let until = request
            .until
            .map(|until| timestamp_from_proto(until, "until"))
            .transpose()?;
        let record = self.service.lock_user(&actor, &request.id, until).await?;
        Ok(Response::new(self.user(&record)))
    }

    #[tracing::instrument(name = "UnlockUser", skip_all)]
    async fn unlock_user(
        &self,
        request: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let actor = self.caller(&request, "UnlockUser").await?;
        let record = self
            .service
            .unlock_user(&actor, &request.into_inner().id)
            .await?;
        Ok(Response::new(self.user(&record)))
    }

    #[tracing::instrument(name = "AssignRoles", skip_all)]
    async fn assign_roles(
        &self,
        request: Request<pb::AssignRolesRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let actor = self.caller(&request, "AssignRoles").await?;
        let request = request.into_inner();
        let record = self
            .service
            .assign_roles(&actor, &request.user_id, &request.roles)
            .await?;
        Ok(Response::new(self.user(&record)))
    }

    #[tracing::instrument(name = "RemoveRoles", skip_all)]
    async fn remove_roles(
        &self,
        request: Request<pb::RemoveRolesRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let actor = self.caller(&request, "RemoveRoles").await?;
        let request = request.into_inner();
        let record = self
            .service
            .remove_roles(&actor, &request.user_id, &request.roles)
            .await?;
        Ok(Response::new(self.user(&record)))
    }

    #[tracing::instrument(name = "ListUserSessions", skip_all)]
    async fn list_user_sessions(
        &self,
        request: Request<pb::ListUserSessionsRequest>,
    ) -> Result<Response<pb::ListUserSessionsResponse>, Status> {
        self.caller(&request, "ListUserSessions").await?;
        let request = request.into_inner();
        let page = self
            .service
            .list_user_sessions(&request.user_id, request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListUserSessionsResponse {
            sessions: page
                .items
                .into_iter()
                .map(|session| session_to_proto(session, false))
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(name = "RevokeUserSession", skip_all)]
    async fn revoke_user_session(
        &self,
        request: Request<pb::RevokeUserSessionRequest>,
    ) -> Result<Response<pb::RevokeUserSessionResponse>, Status> {
        let actor = self.caller(&request, "RevokeUserSession").await?;
        let request = request.into_inner();
        self.service
            .revoke_user_session(&actor, &request.user_id, &request.session_id)
            .await?;
        Ok(Response::new(pb::RevokeUserSessionResponse {}))
    }

    #[tracing::instrument(name = "RevokeUserSessions", skip_all)]
    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Result<Response<pb::RevokeUserSessionsResponse>, Status> {
        let actor = self.caller(&request, "RevokeUserSessions").await?;
        let ended = self
            .service
            .revoke_user_sessions(&actor, &request.into_inner().user_id)
            .await?;
        Ok(Response::new(pb::RevokeUserSessionsResponse {
            revoked_sessions: i32::try_from(ended).unwrap_or(i32::MAX),
        }))
    }

    #[tracing::instrument(name = "CreateRole", skip_all)]
    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let actor = self.caller(&request, "CreateRole").await?;
        let role = request
            .into_inner()
            .role
            .ok_or_else(|| Error::invalid_argument("role", "give the role to create"))?;
        let role = self
            .service
            .create_role(
                &actor,
                &role.name,
                &role.description,
                &role.scopes,
                role.default_for_new_users,
            )
            .await?;
        Ok(Response::new(role_to_proto(role)))
    }

    #[tracing::instrument(name = "GetRole", skip_all)]
    async fn get_role(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        self.caller(&request, "GetRole").await?;
        let role = self.service.get_role(&request.into_inner().name).await?;
        Ok(Response::new(role_to_proto(role)))
    }

    #[tracing::instrument(name = "ListRoles", skip_all)]
    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        self.caller(&request, "ListRoles").await?;
        let request = request.into_inner();
        let page = self
            .service
            .list_roles(request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: page.items.into_iter().map(role_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(name = "UpdateRole", skip_all)]
    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let actor = self.caller(&request, "UpdateRole").await?;
        let request = request.into_inner();
        let role = request
            .role
            .ok_or_else(|| Error::invalid_argument("role", "give the role with `name` set"))?;
        let paths = update_paths(
            request.update_mask.as_ref(),
            "Role",
            &["description", "scopes", "default_for_new_users"],
            &[],
            &[("name", "a role's name never changes")],
        )?;
        let description = paths
            .contains(&"description")
            .then(|| role.description.clone());
        let scopes = paths.contains(&"scopes").then(|| role.scopes.clone());
        let default_for_new_users = paths
            .contains(&"default_for_new_users")
            .then_some(role.default_for_new_users);
        let role = self
            .service
            .update_role(
                &actor,
                &role.name,
                description,
                scopes,
                default_for_new_users,
            )
            .await?;
        Ok(Response::new(role_to_proto(role)))
    }

    #[tracing::instrument(name = "DeleteRole", skip_all)]
    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let actor = self.caller(&request, "DeleteRole").await?;
        self.service
            .delete_role(&actor, &request.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    #[tracing::instrument(name = "CreateScope", skip_all)]
    async fn create_scope(
        &self,
        request: Request<pb::CreateScopeRequest>,
    ) -> Result<Response<pb::Scope>, Status> {
        let actor = self.caller(&request, "CreateScope").await?;
        let scope = request
            .into_inner()
            .scope
            .ok_or_else(|| Error::invalid_argument("scope", "give the scope to create"))?;
        let scope = self
            .service
            .create_scope(&actor, &scope.name, &scope.description)
            .await?;
        Ok(Response::new(pb::Scope {
            name: scope.name,
            description: scope.description,
        }))
    }

    #[tracing::instrument(name = "ListScopes", skip_all)]
    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        self.caller(&request, "ListScopes").await?;
        let request = request.into_inner();
        let page = self
            .service
            .list_scopes(request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListScopesResponse {
            scopes: page
                .items
                .into_iter()
                .map(|scope| pb::Scope {
                    name: scope.name,
                    description: scope.description,
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(name = "DeleteScope", skip_all)]
    async fn delete_scope(
        &self,
        request: Request<pb::DeleteScopeRequest>,
    ) -> Result<Response<pb::DeleteScopeResponse>, Status> {
        let actor = self.caller(&request, "DeleteScope").await?;
        let request = request.into_inner();
        self.service
            .delete_scope(&actor, &request.name, request.force)
            .await?;
        Ok(Response::new(pb::DeleteScopeResponse {}))
    }

    #[tracing::instrument(name = "ListAuditEvents", skip_all)]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.caller(&request, "ListAuditEvents").await?;
        let request = request.into_inner();
        let since = request
            .since
            .map(|since| timestamp_from_proto(since, "since"))
            .transpose()?;
        let page = self
            .service
            .list_audit_events(
                request.page_size,
                &request.page_token,
                AuditQuery {
                    actor: request.actor,
                    action: request.action,
                    target: request.target,
                    since,
                },
            )
            .await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.items.into_iter().map(audit_event_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
