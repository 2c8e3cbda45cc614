//! Roles and scopes: what a token may hold, and who holds it.

use super::{MAX_DESCRIPTION, Page, UserAdminService, parse_scopes, role_not_found, scopes_detail};
use crate::{
    cluster::Event,
    domain::{Outcome, Role, RoleName, Scope, ScopeRecord, check_description},
    error::{Error, Reason},
    service::Actor,
    store::RoleChanges,
};

impl UserAdminService {
    /// `CreateRole`: its scopes must exist and be held by the caller. A default role may hold
    /// no `keystone:*` scope.
    pub async fn create_role(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
        scopes: &[String],
        default_for_new_users: bool,
    ) -> Result<Role, Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("role.name"))?;
        check_description(description, MAX_DESCRIPTION).map_err(|e| e.on("role.description"))?;
        let scopes = parse_scopes(scopes, "role.scopes")?;
        if let Err(error) = actor.check_may_grant(scopes.iter().map(Scope::as_str)) {
            return Err(self
                .denied(actor, "role.create", name.as_str(), error)
                .await);
        }
        let audit = actor
            .event("role.create", name.as_str(), Outcome::Success)
            .with_detail("scopes", scopes_detail(&scopes))
            .with_detail("default_for_new_users", default_for_new_users.to_string());
        self.store
            .insert_role(
                &name,
                description,
                &scopes,
                default_for_new_users,
                &audit,
                self.clock.now(),
            )
            .await
    }

    /// `GetRole`.
    pub async fn get_role(&self, name: &str) -> Result<Role, Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("name"))?;
        self.store
            .find_role(name.as_str())
            .await?
            .ok_or_else(|| role_not_found(name.as_str()))
    }

    /// `ListRoles`, by name.
    pub async fn list_roles(&self, page_size: i32, page_token: &str) -> Result<Page<Role>, Error> {
        let page = self.pager.request(page_size, page_token, "roles")?;
        let roles = self
            .store
            .list_roles(page.after.as_deref(), page.size + 1)
            .await?;
        Ok(self.page(roles, &page, "roles", |r| r.name.clone()))
    }

    /// `UpdateRole`: the caller must hold every scope the role carries before and after (so
    /// only a caller who could assign the role may make it a default role). Holders get the
    /// new scopes with their next token.
    pub async fn update_role(
        &self,
        actor: &Actor,
        name: &str,
        description: Option<String>,
        scopes: Option<Vec<String>>,
        default_for_new_users: Option<bool>,
    ) -> Result<Role, Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("role.name"))?;
        if let Some(description) = &description {
            check_description(description, MAX_DESCRIPTION)
                .map_err(|e| e.on("role.description"))?;
        }
        let scopes = scopes
            .map(|scopes| parse_scopes(&scopes, "role.scopes"))
            .transpose()?;
        let current = self
            .store
            .find_role(name.as_str())
            .await?
            .ok_or_else(|| role_not_found(name.as_str()))?;
        let new_scopes = scopes.iter().flatten().map(Scope::as_str);
        if let Err(error) =
            actor.check_may_grant(current.scopes.iter().map(Scope::as_str).chain(new_scopes))
        {
            return Err(self
                .denied(actor, "role.update", name.as_str(), error)
                .await);
        }
        let mut audit = actor.event("role.update", name.as_str(), Outcome::Success);
        if let Some(scopes) = &scopes {
            audit = audit.with_detail("scopes", scopes_detail(scopes));
        }
        if description.is_some() {
            audit = audit.with_detail("description", "changed");
        }
        if let Some(default) = default_for_new_users {
            audit = audit.with_detail("default_for_new_users", default.to_string());
        }
        self.store
            .update_role(
                name.as_str(),
                &RoleChanges {
                    description,
                    scopes,
                    default_for_new_users,
                },
                &audit,
                self.clock.now(),
            )
            .await
    }

    /// `DeleteRole`: the caller must hold every scope the role carries.
    pub async fn delete_role(&self, actor: &Actor, name: &str) -> Result<(), Error> {
        let name = RoleName::parse(name).map_err(|e| e.on("name"))?;
        let current = self
            .store
            .find_role(name.as_str())
            .await?
            .ok_or_else(|| role_not_found(name.as_str()))?;
        if let Err(error) = actor.check_may_grant(current.scopes.iter().map(Scope::as_str)) {
            return Err(self
                .denied(actor, "role.delete", name.as_str(), error)
                .await);
        }
        self.store
            .delete_role(
                name.as_str(),
                &actor.event("role.delete", name.as_str(), Outcome::Success),
                self.clock.now(),
            )
            .await
    }

    /// `CreateScope`. The `keystone` resource is Keystone's own: its scopes are built in.
    pub async fn create_scope(
        &self,
        actor: &Actor,
        name: &str,
        description: &str,
    ) -> Result<ScopeRecord, Error> {
        let scope = Scope::parse(name).map_err(|e| e.on("scope.name"))?;
        if scope.resource() == "keystone" {
            return Err(Error::invalid_argument(
                "scope.name",
                "the `keystone` resource is reserved for Keystone's built-in scopes",
            ));
        }
        check_description(description, MAX_DESCRIPTION).map_err(|e| e.on("scope.description"))?;
        self.store
            .insert_scope(
                &scope,
                description,
                &actor.event("scope.create", scope.as_str(), Outcome::Success),
                self.clock.now(),
            )
            .await
    }

    /// `ListScopes`, by name.
    pub async fn list_scopes(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<ScopeRecord>, Error> {
        let page = self.pager.request(page_size, page_token, "scopes")?;
        let scopes = self
            .store
            .list_scopes(page.after.as_deref(), page.size + 1)
            .await?;
        Ok(self.page(scopes, &page, "scopes", |s| s.name.clone()))
    }

    /// `DeleteScope`: built-in scopes stay; one still granted needs `force`.
    pub async fn delete_scope(&self, actor: &Actor, name: &str, force: bool) -> Result<(), Error> {
        let scope = Scope::parse(name).map_err(|e| e.on("name"))?;
        if migrations::BUILTIN_SCOPES
            .iter()
            .any(|(builtin, _)| *builtin == scope.as_str())
        {
            return Err(Error::FailedPrecondition {
                reason: Reason::FailedPrecondition,
                message: format!("`{}` is built in and cannot be deleted", scope.as_str()),
            });
        }
        if let Err(error) = actor.check_may_grant([scope.as_str()]) {
            return Err(self
                .denied(actor, "scope.delete", scope.as_str(), error)
                .await);
        }
        let audit = actor
            .event("scope.delete", scope.as_str(), Outcome::Success)
            .with_detail("force", force.to_string());
        self.store
            .delete_scope(scope.as_str(), force, &audit, self.clock.now())
            .await?;
        // Clients that were allowed the scope lost it: every replica reads them again.
        self.bus.publish(Event::AllClients);
        Ok(())
    }
}
