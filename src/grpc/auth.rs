//! `AuthApi`: the adapter of `keystone.v1.Auth`. It decodes requests into domain types, calls
//! [`AuthService`], and encodes the reply; it makes no policy decision of its own.

use std::{pin::Pin, time::Duration};

use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::{broadcast::error::RecvError, mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::convert::{
    act_to_proto, bearer_token, call_context, duration_from_proto, presented, principal_to_proto,
    session_to_proto, timestamp, user_to_proto,
};
use crate::{
    domain::{Revocation, RevocationKind, RoleName, ScopeSet},
    error::{Error, Reason},
    proto::pb,
    service::{
        DpopPresented,
        auth::{
            AuthService, ClientCredential, INTROSPECT_SCOPE, IntrospectionCaller, PasswordLogin,
            Registration, TokenExchange, TokenRequest,
        },
    },
};

/// The most roles one `Authenticate` call may require.
const MAX_REQUIRED_ROLES: usize = 64;

/// The gRPC adapter of the `Auth` service.
#[derive(Debug, Clone)]
pub struct AuthApi {
    service: AuthService,
    /// Turns true when the server starts shutting down: open streams end then.
    draining: watch::Receiver<bool>,
}

/// The stream of `WatchRevocations`.
pub type RevocationStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send + 'static>>;

impl AuthApi {
    /// The adapter over the service; streams end when `draining` turns true.
    pub fn new(service: AuthService, draining: watch::Receiver<bool>) -> Self {
        Self { service, draining }
    }

    /// The service behind the adapter.
    pub fn service(&self) -> &AuthService {
        &self.service
    }

    /// The caller of a call on its own sessions: a valid bearer token meant for Keystone
    /// (`tokens.keystone_audience`), not one good for ChangePassword only.
    fn session_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<crate::service::auth::Principal, Error> {
        self.service.authenticator().authenticate_for_keystone(
            &bearer_token(request.metadata())?,
            &presented(request),
            &ScopeSet::default(),
        )
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthApi {
    #[tracing::instrument(name = "IssueToken", skip_all)]
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let context = call_context(&request);
        let request = request.into_inner();
        let token_request = TokenRequest {
            scopes: request.scopes,
            audience: request.audience,
            // DPoP is an HTTP matter (RFC 9449): proofs come to /oauth2/token.
            dpop: None,
        };
        let issued = match request.grant {
            Some(pb::issue_token_request::Grant::Password(grant)) => {
                self.service
                    .password_grant(
                        PasswordLogin {
                            username: grant.username,
                            password: SecretString::from(grant.password),
                        },
                        token_request,
                        &context,
                    )
                    .await?
            }
            Some(pb::issue_token_request::Grant::ClientCredentials(grant)) => {
                let credential = ClientCredential::from_request(
                    grant.client_secret,
                    grant.client_assertion,
                    &grant.client_assertion_type,
                    "client_credentials",
                )?;
                let client_id = credential.client_id_or_claimed(grant.client_id);
                self.service
                    .client_credentials_grant(&client_id, credential, token_request, &context)
                    .await?
            }
            Some(pb::issue_token_request::Grant::RefreshToken(grant)) => {
                self.service
                    .refresh_grant(
                        SecretString::from(grant.refresh_token),
                        token_request,
                        &context,
                    )
                    .await?
            }
            Some(pb::issue_token_request::Grant::TokenExchange(grant)) => {
                let ttl = grant
                    .ttl
                    .map(|ttl| duration_from_proto(ttl, "token_exchange.ttl"))
                    .transpose()?;
                let credential = ClientCredential::from_request(
                    grant.client_secret,
                    grant.client_assertion,
                    &grant.client_assertion_type,
                    "token_exchange",
                )?;
                self.service
                    .token_exchange_grant(
                        TokenExchange {
                            subject_token: grant.subject_token,
                            subject_token_type: grant.subject_token_type,
                            actor_token: grant.actor_token,
                            actor_token_type: grant.actor_token_type,
                            client_id: credential.client_id_or_claimed(grant.client_id),
                            credential,
                            ttl,
                        },
                        token_request,
                        &context,
                    )
                    .await?
            }
            None => {
                return Err(Error::InvalidArgument {
                    field: "grant".to_owned(),
                    reason: Reason::MissingGrant,
                    message: "one of password, client_credentials, refresh_token or \
                              token_exchange is required"
                        .to_owned(),
                }
                .into());
            }
        };
        Ok(Response::new(pb::TokenResponse {
            access_token: issued.access_token,
            token_type: issued.token_type.to_owned(),
            expires_in: issued.expires_in,
            refresh_token: issued
                .refresh_token
                .map(|token| secrecy::ExposeSecret::expose_secret(&token).to_owned())
                .unwrap_or_default(),
            scopes: issued.scopes.to_strings(),
            expires_at: Some(timestamp(issued.expires_at)),
            issued_token_type: issued.issued_token_type.unwrap_or_default().to_owned(),
        }))
    }

    #[tracing::instrument(name = "Authenticate", skip_all)]
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let from_metadata = bearer_token(request.metadata());
        let presented = presented(&request);
        let request = request.into_inner();
        let token = if request.token.is_empty() {
            from_metadata?
        } else {
            request.token
        };
        let proof = if request.dpop_proof.is_empty() {
            None
        } else {
            for (field, value) in [
                ("http_method", &request.http_method),
                ("http_uri", &request.http_uri),
            ] {
                if value.is_empty() {
                    return Err(Error::invalid_argument(
                        field,
                        "a DPoP proof is checked against the request it came with: give its \
                         method and URI",
                    )
                    .into());
                }
            }
            Some(DpopPresented {
                proof: request.dpop_proof,
                method: request.http_method,
                uri: request.http_uri,
            })
        };
        let required = ScopeSet::parse(request.required_scopes.iter().map(String::as_str))
            .map_err(|e| e.on("required_scopes"))?;
        let roles = crate::service::parse_names(
            &request.required_roles,
            "required_roles",
            "roles",
            MAX_REQUIRED_ROLES,
            RoleName::parse,
        )?;
        let audience = (!request.audience.is_empty()).then_some(request.audience.as_str());
        let principal = self
            .service
            .authenticator()
            .authenticate_with_proof(
                &token,
                &presented,
                proof.as_ref(),
                &required,
                &roles,
                audience,
            )
            .await?;
        Ok(Response::new(pb::AuthenticateResponse {
            principal: Some(principal_to_proto(&principal.claims)),
        }))
    }

    #[tracing::instrument(name = "Introspect", skip_all)]
    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let context = call_context(&request);
        let caller = IntrospectionCaller::Bearer(bearer_token(request.metadata())?);
        let request = request.into_inner();
        let Some(claims) = self
            .service
            .introspect(caller, &request.token, &context)
            .await?
        else {
            return Ok(Response::new(pb::IntrospectResponse {
                active: false,
                ..Default::default()
            }));
        };
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            scope: claims.scope.clone(),
            client_id: claims.client_id.clone(),
            username: claims.preferred_username.clone().unwrap_or_default(),
            token_type: "access_token".to_owned(),
            exp: claims.exp,
            iat: claims.iat,
            nbf: claims.nbf,
            sub: claims.sub.clone(),
            aud: claims.aud.to_vec(),
            iss: claims.iss.clone(),
            jti: claims.jti.clone(),
            roles: claims.roles.clone(),
            cnf: claims.cnf.as_ref().map(|cnf| pb::Confirmation {
                x5t_s256: cnf.x5t_s256.clone().unwrap_or_default(),
                jkt: cnf.jkt.clone().unwrap_or_default(),
            }),
            act: claims.act.as_ref().map(act_to_proto),
        }))
    }

    #[tracing::instrument(name = "Revoke", skip_all)]
    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let context = call_context(&request);
        let request = request.into_inner();
        if request.token.is_empty() {
            return Err(Error::invalid_argument("token", "must not be empty").into());
        }
        self.service.revoke(&request.token, &context).await?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    #[tracing::instrument(name = "Register", skip_all)]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let context = call_context(&request);
        let request = request.into_inner();
        let user = self
            .service
            .register(
                Registration {
                    username: request.username,
                    email: request.email,
                    password: SecretString::from(request.password),
                },
                &context,
            )
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_to_proto(&user, 0)),
        }))
    }

    #[tracing::instrument(name = "Logout", skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let context = call_context(&request);
        let caller = self
            .service
            .authenticator()
            .verify(&bearer_token(request.metadata())?, &context.presented())?;
        let request = request.into_inner();
        let refresh_token =
            (!request.refresh_token.is_empty()).then(|| SecretString::from(request.refresh_token));
        self.service
            .logout(&caller, refresh_token, &context)
            .await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(name = "ChangePassword", skip_all)]
    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let context = call_context(&request);
        let caller = self
            .service
            .authenticator()
            .verify(&bearer_token(request.metadata())?, &context.presented())?;
        let request = request.into_inner();
        if request.current_password.is_empty() {
            return Err(Error::invalid_argument("current_password", "must not be empty").into());
        }
        self.service
            .change_password(
                &caller,
                SecretString::from(request.current_password),
                SecretString::from(request.new_password),
                &context,
            )
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    #[tracing::instrument(name = "EstimatePasswordStrength", skip_all)]
    async fn estimate_password_strength(
        &self,
        request: Request<pb::EstimatePasswordStrengthRequest>,
    ) -> Result<Response<pb::EstimatePasswordStrengthResponse>, Status> {
        let context = call_context(&request);
        let request = request.into_inner();
        let assessment = self
            .service
            .estimate_password_strength(
                &Registration {
                    username: request.username,
                    email: request.email,
                    password: SecretString::from(request.password),
                },
                &context,
            )
            .await?;
        let strength = assessment.strength;
        Ok(Response::new(pb::EstimatePasswordStrengthResponse {
            score: i32::from(strength.score),
            guesses_log10: strength.guesses_log10,
            acceptable: assessment.problem.is_none(),
            warning: assessment
                .problem
                .map(|problem| format!("The password {problem}"))
                .or(strength.warning)
                .unwrap_or_default(),
            suggestions: strength.suggestions,
        }))
    }

    #[tracing::instrument(name = "ListSessions", skip_all)]
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.session_caller(&request)?;
        let sessions = self.service.list_sessions(&caller).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|(session, current)| session_to_proto(session, current))
                .collect(),
        }))
    }

    #[tracing::instrument(name = "RevokeSession", skip_all)]
    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = self.session_caller(&request)?;
        let context = call_context(&request);
        self.service
            .revoke_session(&caller, &request.into_inner().session_id, &context)
            .await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    #[tracing::instrument(name = "GetJwks", skip_all)]
    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self.service.jwks();
        let jwks_json = serde_json::to_string(&serde_json::json!({ "keys": keys }))
            .map_err(|e| Status::from(Error::internal(e)))?;
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json,
            keys: keys
                .into_iter()
                .map(|key| pb::Jwk {
                    kty: key.kty.to_owned(),
                    kid: key.kid,
                    r#use: key.use_.to_owned(),
                    alg: key.alg.to_owned(),
                    crv: key.crv.to_owned(),
                    x: key.x,
                    y: key.y.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "WatchRevocations", skip_all)]
    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<RevocationStream>, Status> {
        let caller = bearer_token(request.metadata())?;
        let presented = presented(&request);
        let required = ScopeSet::parse([INTROSPECT_SCOPE]).map_err(|e| e.on("scope"))?;
        self.service
            .authenticator()
            .authenticate_for_keystone(&caller, &presented, &required)?;
        let caller = SecretString::from(caller);
        let (snapshot, mut changes) = self.service.authenticator().watch_revocations();
        let (tx, rx) = mpsc::channel(256);
        let mut draining = self.draining.clone();
        let service = self.service.clone();
        tokio::spawn(async move {
            let mut snapshot = snapshot.into_iter();
            let mut snapshot_done = false;
            // The next message to send, taken from the snapshot only once the last one went.
            let mut pending: Option<pb::WatchRevocationsResponse> = None;
            // A stale set is no set to enforce: the stream ends rather than go quiet. Nor does
            // it outlive the watcher's token: revoked or expired, the stream ends with it.
            let mut freshness = tokio::time::interval(Duration::from_secs(1));
            let ending = loop {
                if pending.is_none() && !snapshot_done {
                    pending = Some(match snapshot.next() {
                        Some(revocation) => revocation_message(&revocation),
                        None => {
                            snapshot_done = true;
                            pb::WatchRevocationsResponse {
                                revocation: None,
                                snapshot_complete: true,
                            }
                        }
                    });
                }
                tokio::select! {
                    permit = tx.reserve(), if pending.is_some() => match permit {
                        Ok(permit) => {
                            if let Some(message) = pending.take() {
                                permit.send(Ok(message));
                            }
                        }
                        Err(_) => return,
                    },
                    change = changes.recv(), if snapshot_done && pending.is_none() => match change {
                        Ok(revocation) => pending = Some(revocation_message(&revocation)),
                        Err(RecvError::Lagged(_)) => {
                            break Status::unavailable("the watcher fell behind; watch again");
                        }
                        Err(RecvError::Closed) => {
                            break Status::unavailable("the revocation set is gone; watch again");
                        }
                    },
                    _ = freshness.tick() => {
                        if service.authenticator().revocations_fresh().is_err() {
                            break Status::unavailable(
                                "the revocation set is not confirmed fresh; watch again later",
                            );
                        }
                        if let Err(error) = service.authenticator().verify(caller.expose_secret(), &presented) {
                            break Status::from(error);
                        }
                    }
                    _ = async { draining.wait_for(|draining| *draining).await.is_ok() } => {
                        break Status::unavailable("the server is shutting down; watch again");
                    }
                }
            };
            let _ = tx.send(Err(ending)).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One entry of `WatchRevocations`.
fn revocation_message(revocation: &Revocation) -> pb::WatchRevocationsResponse {
    let kind = match revocation.kind {
        RevocationKind::Token => pb::RevocationKind::Token,
        RevocationKind::Session => pb::RevocationKind::Session,
        RevocationKind::Subject => pb::RevocationKind::Subject,
    };
    pb::WatchRevocationsResponse {
        revocation: Some(pb::RevocationEntry {
            kind: kind.into(),
            key: revocation.key.clone(),
            not_before: Some(timestamp(revocation.not_before)),
            expires_at: Some(timestamp(revocation.expires_at)),
        }),
        snapshot_complete: false,
    }
}
