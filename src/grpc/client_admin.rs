//! `ClientAdminApi`: the adapter of `keystone.v1.ClientAdmin`. Each method first establishes
//! the admin caller, then decodes, calls [`ClientAdminService`] and encodes.

use secrecy::ExposeSecret as _;
use tonic::{Request, Response, Status};

use super::{
    caller,
    convert::{client_to_proto, duration_from_proto, timestamp, update_paths},
};
use crate::{
    error::Error,
    proto::pb,
    service::{Actor, Authenticator, ClientAdminService, client_admin::ClientFields},
};

/// The gRPC adapter of the `ClientAdmin` service.
#[derive(Debug, Clone)]
pub struct ClientAdminApi {
    auth: Authenticator,
    service: ClientAdminService,
}

impl ClientAdminApi {
    /// The adapter over the services.
    pub fn new(auth: Authenticator, service: ClientAdminService) -> Self {
        Self { auth, service }
    }

    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Actor, Error> {
        caller::establish(
            &self.auth,
            request,
            &format!("/keystone.v1.ClientAdmin/{method}"),
        )
        .await
    }
}

/// The lifetime field: absent means the server default.
fn ttl(client: &pb::Client) -> Result<Option<std::time::Duration>, Error> {
    client
        .access_token_ttl
        .map(|ttl| duration_from_proto(ttl, "client.access_token_ttl"))
        .transpose()
}

#[tonic::async_trait]
impl pb::client_admin_server::ClientAdmin for ClientAdminApi {
    #[tracing::instrument(name = "CreateClient", skip_all)]
    async fn create_client(
        &self,
        request: Request<pb::CreateClientRequest>,
    ) -> Result<Response<pb::CreateClientResponse>, Status> {
        let actor = self.caller(&request, "CreateClient").await?;
        let client = request
            .into_inner()
            .client
            .ok_or_else(|| Error::invalid_argument("client", "give the client to create"))?;
        let fields = ClientFields {
            access_token_ttl: Some(ttl(&client)?),
            client_id: client.client_id,
            name: Some(client.name),
            description: Some(client.description),
            allowed_scopes: Some(client.allowed_scopes),
            allowed_audiences: Some(client.allowed_audiences),
            enabled: Some(client.enabled.unwrap_or(true)),
            tls_client_auth_subject_dn: Some(client.tls_client_auth_subject_dn),
            tls_client_auth_sans: Some(client.tls_client_auth_sans),
            tls_client_certificate_sha256: Some(client.tls_client_certificate_sha256),
            certificate_bound_tokens: Some(client.certificate_bound_tokens),
            // Not asking for it is no change: only asking for it needs keystone:admin.
            token_exchange: client.token_exchange.then_some(true),
            jwks_json: Some(client.jwks_json),
            federated_identities: Some(identities(&client.federated_identities)),
        };
        let (client, secret) = self.service.create_client(&actor, fields).await?;
        Ok(Response::new(pb::CreateClientResponse {
            client: Some(client_to_proto(client)),
            client_secret: secret
                .map(|secret| secret.expose_secret().to_owned())
                .unwrap_or_default(),
        }))
    }

    #[tracing::instrument(name = "GetClient", skip_all)]
    async fn get_client(
        &self,
        request: Request<pb::GetClientRequest>,
    ) -> Result<Response<pb::Client>, Status> {
        self.caller(&request, "GetClient").await?;
        let client = self
            .service
            .get_client(&request.into_inner().client_id)
            .await?;
        Ok(Response::new(client_to_proto(client)))
    }

    #[tracing::instrument(name = "ListClients", skip_all)]
    async fn list_clients(
        &self,
        request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        self.caller(&request, "ListClients").await?;
        let request = request.into_inner();
        let page = self
            .service
            .list_clients(request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListClientsResponse {
            clients: page.items.into_iter().map(client_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(name = "UpdateClient", skip_all)]
    async fn update_client(
        &self,
        request: Request<pb::UpdateClientRequest>,
    ) -> Result<Response<pb::Client>, Status> {
        let actor = self.caller(&request, "UpdateClient").await?;
        let request = request.into_inner();
        let client = request.client.ok_or_else(|| {
            Error::invalid_argument("client", "give the client with `client_id` set")
        })?;
        let paths = update_paths(
            request.update_mask.as_ref(),
            "Client",
            &[
                "name",
                "description",
                "allowed_scopes",
                "allowed_audiences",
                "access_token_ttl",
                "enabled",
                "tls_client_auth_subject_dn",
                "tls_client_auth_sans",
                "tls_client_certificate_sha256",
                "certificate_bound_tokens",
                "token_exchange",
                "jwks_json",
                "federated_identities",
            ],
            &[
                "created_at",
                "updated_at",
                "secret_rotated_at",
                "secret_last_used_at",
            ],
            &[("client_id", "a client's id never changes")],
        )?;
        let mut fields = ClientFields {
            client_id: client.client_id.clone(),
            ..ClientFields::default()
        };
        for path in paths {
            match path {
                "name" => fields.name = Some(client.name.clone()),
                "description" => fields.description = Some(client.description.clone()),
                "allowed_scopes" => fields.allowed_scopes = Some(client.allowed_scopes.clone()),
                "allowed_audiences" => {
                    fields.allowed_audiences = Some(client.allowed_audiences.clone());
                }
                "access_token_ttl" => fields.access_token_ttl = Some(ttl(&client)?),
                "tls_client_auth_subject_dn" => {
                    fields.tls_client_auth_subject_dn =
                        Some(client.tls_client_auth_subject_dn.clone());
                }
                "tls_client_auth_sans" => {
                    fields.tls_client_auth_sans = Some(client.tls_client_auth_sans.clone());
                }
                "tls_client_certificate_sha256" => {
                    fields.tls_client_certificate_sha256 =
                        Some(client.tls_client_certificate_sha256.clone());
                }
                "certificate_bound_tokens" => {
                    fields.certificate_bound_tokens = Some(client.certificate_bound_tokens);
                }
                "token_exchange" => fields.token_exchange = Some(client.token_exchange),
                "jwks_json" => fields.jwks_json = Some(client.jwks_json.clone()),
                "federated_identities" => {
                    fields.federated_identities = Some(identities(&client.federated_identities));
                }
                _ => {
                    fields.enabled = Some(client.enabled.ok_or_else(|| {
                        Error::invalid_argument("client.enabled", "set it to true or false")
                    })?);
                }
            }
        }
        let client = self.service.update_client(&actor, fields).await?;
        Ok(Response::new(client_to_proto(client)))
    }

    #[tracing::instrument(name = "DeleteClient", skip_all)]
    async fn delete_client(
        &self,
        request: Request<pb::DeleteClientRequest>,
    ) -> Result<Response<pb::DeleteClientResponse>, Status> {
        let actor = self.caller(&request, "DeleteClient").await?;
        self.service
            .delete_client(&actor, &request.into_inner().client_id)
            .await?;
        Ok(Response::new(pb::DeleteClientResponse {}))
    }

    #[tracing::instrument(name = "RevokeClientTokens", skip_all)]
    async fn revoke_client_tokens(
        &self,
        request: Request<pb::RevokeClientTokensRequest>,
    ) -> Result<Response<pb::RevokeClientTokensResponse>, Status> {
        let actor = self.caller(&request, "RevokeClientTokens").await?;
        self.service
            .revoke_client_tokens(&actor, &request.into_inner().client_id)
            .await?;
        Ok(Response::new(pb::RevokeClientTokensResponse {}))
    }

    #[tracing::instrument(name = "RotateClientSecret", skip_all)]
    async fn rotate_client_secret(
        &self,
        request: Request<pb::RotateClientSecretRequest>,
    ) -> Result<Response<pb::RotateClientSecretResponse>, Status> {
        let actor = self.caller(&request, "RotateClientSecret").await?;
        let request = request.into_inner();
        let grace = request
            .grace_period
            .map(|grace| duration_from_proto(grace, "grace_period"))
            .transpose()?
            .unwrap_or_default();
        let rotated = self
            .service
            .rotate_client_secret(&actor, &request.client_id, grace)
            .await?;
        Ok(Response::new(pb::RotateClientSecretResponse {
            client_secret: rotated.secret.expose_secret().to_owned(),
            previous_secret_expires_at: rotated.previous_expires_at.map(timestamp),
        }))
    }

    #[tracing::instrument(name = "RevokeClientSecret", skip_all)]
    async fn revoke_client_secret(
        &self,
        request: Request<pb::RevokeClientSecretRequest>,
    ) -> Result<Response<pb::RevokeClientSecretResponse>, Status> {
        let actor = self.caller(&request, "RevokeClientSecret").await?;
        let request = request.into_inner();
        self.service
            .revoke_client_secret(&actor, &request.client_id, &request.secret_id)
            .await?;
        Ok(Response::new(pb::RevokeClientSecretResponse {}))
    }
}

/// Workload identities as (issuer name, subject).
fn identities(identities: &[pb::FederatedIdentity]) -> Vec<(String, String)> {
    identities
        .iter()
        .map(|identity| (identity.issuer_name.clone(), identity.subject.clone()))
        .collect()
}
