//! The gRPC server: the layer stack, health, reflection and Keystone's services.
//!
//! Layers, outermost first, and why they sit there:
//! 1. a tracing span per call, so everything below logs inside it, continuing the caller's
//!    trace when the call carries a W3C `traceparent` ([`crate::trace_context`]);
//! 2. the client IP (`server.trusted_proxies`), for rate limits and audit events;
//! 3. load shedding: when every slot of the concurrency limit is taken, a call is refused at
//!    once with RESOURCE_EXHAUSTED rather than queued behind the others;
//! 4. a global concurrency limit shared by all connections (a per-connection limit would let
//!    many connections pile up work);
//! 5. the deadline, the shorter of the caller's `grpc-timeout` and `server.request_timeout`,
//!    answering DEADLINE_EXCEEDED;
//! 6. innermost, tonic's refusal of a request over the size limit made `RESOURCE_EXHAUSTED`
//!    (`MESSAGE_TOO_LARGE`), as gRPC's own implementations answer.
//!
//! Health and reflection are registered beside the services, outside any caller check.
//!
//! Layer: adapter. Uses [`crate::service`] and the foundations; decides nothing itself.

pub mod auth;
pub mod caller;
pub mod client_admin;
pub mod codec;
pub mod convert;
pub mod deadline;
pub mod ext_authz;
mod redact;
pub mod too_large;
pub mod user_admin;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::{
    Request, Status,
    server::NamedService,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Server,
};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::{limit::GlobalConcurrencyLimitLayer, load_shed::LoadShedLayer, util::MapRequestLayer};

use crate::{
    client_ip::TrustedProxies,
    config::{ReflectionMode, Settings},
    proto::{FILE_DESCRIPTOR_SET, pb},
};

use envoy_types::ext_authz::v3::pb::AuthorizationServer;

use self::{
    auth::AuthApi, client_admin::ClientAdminApi, deadline::DeadlineLayer, ext_authz::ExtAuthzApi,
    user_admin::UserAdminApi,
};

/// The names health is reported for: the whole server (`""`) and each Keystone service.
pub const HEALTH_SERVICE_NAMES: &[&str] = &[
    "",
    <pb::auth_server::AuthServer<AuthApi> as NamedService>::NAME,
    <pb::user_admin_server::UserAdminServer<UserAdminApi> as NamedService>::NAME,
    <pb::client_admin_server::ClientAdminServer<ClientAdminApi> as NamedService>::NAME,
    <AuthorizationServer<ExtAuthzApi> as NamedService>::NAME,
];

/// The health of every service name, as one switch: Keystone's services stand or fall with
/// the database together.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// A health reporter with every name `NOT_SERVING` until told otherwise.
    pub async fn new() -> Self {
        let health = Self {
            reporter: HealthReporter::new(),
        };
        health.set(false).await;
        health
    }

    /// Reports every name as serving, or not.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in HEALTH_SERVICE_NAMES {
            self.reporter.set_service_status(*name, status).await;
        }
    }

    fn server(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }
}

/// The adapters the server serves.
#[derive(Debug, Clone)]
pub struct Apis {
    /// `keystone.v1.Auth`.
    pub auth: AuthApi,
    /// `keystone.v1.UserAdmin`.
    pub user_admin: UserAdminApi,
    /// `keystone.v1.ClientAdmin`.
    pub client_admin: ClientAdminApi,
    /// `envoy.service.auth.v3.Authorization`.
    pub ext_authz: ExtAuthzApi,
}

/// Which services a gRPC listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Everything (no separate admin listener).
    All,
    /// What callers need: `Auth` and Envoy's `Authorization`.
    Public,
    /// `UserAdmin` and `ClientAdmin` (`admin_grpc_addr`).
    Admin,
}

/// Serves gRPC on `listener` until `shutdown` resolves, then lets calls in flight finish.
/// Health and reflection are on every listener.
pub async fn serve(
    listener: TcpListener,
    role: Listener,
    settings: &Settings,
    tls: Option<&crate::tls::Tls>,
    apis: Apis,
    health: &Health,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let public = role != Listener::Admin;
    let admin = role != Listener::Public;
    let max_message = settings.server.max_message_size;
    let max_auth_message = settings.server.max_auth_message_size;
    let proxies = TrustedProxies::new(&settings.server.trusted_proxies)
        .with_certificate_proxies(&settings.server.client_certificate_proxies);
    let layers = tower::ServiceBuilder::new()
        // Outermost, so that shed and refused calls are counted too.
        .layer(crate::metrics::RedLayer::grpc())
        .layer(MapRequestLayer::new(move |request| proxies.tag(request)))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(
            settings.server.concurrency_limit,
        ))
        .layer(DeadlineLayer::new(settings.server.request_timeout))
        .layer(too_large::TooLargeLayer)
        .into_inner();

    // Server reflection in both versions: grpcurl before 1.9 speaks only `v1alpha`. In `admin`
    // mode every reflection call needs a token with `keystone:admin`.
    let served = settings.reflection != ReflectionMode::Off;
    let guard = ReflectionGuard {
        auth: (settings.reflection == ReflectionMode::Admin)
            .then(|| apis.auth.service().authenticator().clone()),
    };
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can show ErrorInfo and BadRequest.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        if crate::proto::ENVOY_FILE_DESCRIPTOR_SET.is_empty() {
            builder
        } else {
            builder.register_encoded_file_descriptor_set(crate::proto::ENVOY_FILE_DESCRIPTOR_SET)
        }
    };
    let reflection_v1 = served
        .then(|| reflection().build_v1())
        .transpose()?
        .map(|service| InterceptedService::new(service, guard.clone()));
    let reflection_v1alpha = served
        .then(|| reflection().build_v1alpha())
        .transpose()?
        .map(|service| InterceptedService::new(service, guard.clone()));

    Server::builder()
        .trace_fn(|request| {
            let span =
                tracing::info_span!("rpc", otel.kind = "server", method = %request.uri().path());
            crate::trace_context::continue_trace(&span, request.headers());
            span
        })
        .max_concurrent_streams(settings.server.max_concurrent_streams)
        .http2_max_header_list_size(settings.server.max_header_list_size)
        .http2_keepalive_interval(Some(settings.server.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.server.keepalive_timeout))
        // A GOAWAY at the age; the cut after the grace is the listener's (see
        // `crate::listener::MAX_CONNECTION_AGE_GRACE`).
        .max_connection_age(settings.server.max_connection_age)
        .layer(layers)
        .add_service(health.server())
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_optional_service(public.then(|| {
            pb::auth_server::AuthServer::new(apis.auth).max_decoding_message_size(max_auth_message)
        }))
        .add_optional_service(public.then(|| {
            AuthorizationServer::new(apis.ext_authz).max_decoding_message_size(max_message)
        }))
        .add_optional_service(admin.then(|| {
            pb::user_admin_server::UserAdminServer::new(apis.user_admin)
                .max_decoding_message_size(max_message)
        }))
        .add_optional_service(admin.then(|| {
            pb::client_admin_server::ClientAdminServer::new(apis.client_admin)
                .max_decoding_message_size(max_message)
        }))
        .serve_with_incoming_shutdown(
            crate::listener::Connections::start(
                listener,
                if admin && !public {
                    "admin_grpc"
                } else {
                    "grpc"
                },
                crate::listener::ConnectionLimits::new(&settings.server, true)
                    .with_tls(tls.cloned()),
            )
            .into_stream(),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Lets reflection calls through: all of them (`reflection = open`), or only those bearing a
/// token for Keystone's audience with `keystone:admin` (`reflection = admin`); none or a bad one is UNAUTHENTICATED,
/// one without the scope PERMISSION_DENIED.
#[derive(Debug, Clone)]
struct ReflectionGuard {
    auth: Option<crate::service::Authenticator>,
}

impl Interceptor for ReflectionGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(auth) = &self.auth else {
            return Ok(request);
        };
        let token = convert::bearer_token(request.metadata())?;
        let admin = crate::domain::ScopeSet::parse([crate::service::ADMIN_SCOPE])
            .map_err(|e| Status::from(e.on("scope")))?;
        auth.authenticate_for_keystone(&token, &convert::presented(&request), &admin)?;
        Ok(request)
    }
}
