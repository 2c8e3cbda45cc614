//! Envoy external authorization: `envoy.service.auth.v3.Authorization/Check` on the gRPC port.
//! The verdict is `Authenticate`'s, on the request's `authorization: Bearer` header: allowed
//! requests go upstream with `x-keystone-*` headers naming the caller and whoever acts for it
//! (`x-keystone-actor`, after a token exchange) (any such header the
//! client sent is replaced or removed, so none can be forged); denied ones get 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, or 403 with
//! `error="insufficient_scope"`. What a request needs comes from `ext_authz.routes` (host and
//! path prefix, matched on whole segments), or `ext_authz.default_audience` and
//! `default_scopes` where no route matches, and the route's `context_extensions` in Envoy
//! (`keystone_audience`, `keystone_required_scopes`).
//!
//! A path that servers behind Envoy may read differently than Keystone does is denied with
//! 400 before any token is looked at: one holding `;` (Tomcat and Spring path parameters, as
//! in `/static/..;/admin`), `\`, an encoded `/` or `\` (`%2F`, `%5C`, any case), a `.` or
//! `..` segment, `//`, or a `%` left after decoding (a double encoding).

use std::collections::HashMap;

use envoy_types::ext_authz::v3::{
    CheckRequestExt as _, CheckResponseExt as _, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
    pb::{Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode},
};
use tonic::{Request, Response, Status};

use crate::{
    config::ExtAuthzSettings,
    domain::{RoleName, ScopeSet, Thumbprint},
    error::{Error, Reason},
    service::{Authenticator, DpopPresented, Presented},
    token::Kind,
};

/// The gRPC adapter of Envoy's `Authorization` service.
#[derive(Debug, Clone)]
pub struct ExtAuthzApi {
    auth: Authenticator,
    settings: ExtAuthzSettings,
    /// The headers an allowed request gets, lowercase, in the order of [`OURS`].
    header_names: Vec<String>,
}

/// What an allowed request is told, after `ext_authz.header_prefix`.
const OURS: [&str; 7] = [
    "subject",
    "kind",
    "client-id",
    "username",
    "scopes",
    "roles",
    // Who acts for the subject (token exchange): each actor's subject, the nearest first,
    // separated by spaces; empty for a token issued directly.
    "actor",
];

impl ExtAuthzApi {
    /// The adapter over the auth service.
    pub fn new(auth: Authenticator, settings: ExtAuthzSettings) -> Self {
        let header_names = OURS
            .iter()
            .map(|name| format!("{}{name}", settings.header_prefix).to_ascii_lowercase())
            .collect();
        Self {
            auth,
            settings,
            header_names,
        }
    }

    /// The audience and scopes a request to `path` (checked by
    /// [`crate::domain::unambiguous_path`]) needs:
    /// the longest matching route's, or the defaults where none matches, plus the route's
    /// context extensions.
    fn requirements(
        &self,
        host: &str,
        path: &str,
        extensions: &HashMap<String, String>,
    ) -> Result<Requirements, Error> {
        // `host:port`, `[v6]:port` or a bare host.
        let host = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => host.split(':').next().unwrap_or(host),
        };
        let route = self
            .settings
            .routes
            .iter()
            .filter(|route| route.host.is_empty() || route.host.eq_ignore_ascii_case(host))
            .filter(|route| covers(route, path))
            .max_by_key(|route| (route.path_prefix.len(), !route.host.is_empty()));
        let (route_audience, route_scopes, route_roles) = match route {
            Some(route) => (&route.audience, &route.scopes, route.roles.as_slice()),
            None => (
                &self.settings.default_audience,
                &self.settings.default_scopes,
                &[][..],
            ),
        };
        let mut scopes: Vec<&str> = route_scopes.iter().map(String::as_str).collect();
        if let Some(extra) = extensions.get("keystone_required_scopes") {
            scopes.extend(extra.split(' ').filter(|s| !s.is_empty()));
        }
        let scopes = ScopeSet::parse(scopes)
            .map_err(|e| e.on("context_extensions.keystone_required_scopes"))?;
        let mut roles = Vec::new();
        let extra_roles = extensions
            .get("keystone_required_roles")
            .map(|extra| extra.split(' ').filter(|s| !s.is_empty()))
            .into_iter()
            .flatten();
        for role in route_roles.iter().map(String::as_str).chain(extra_roles) {
            let role = RoleName::parse(role)
                .map_err(|e| e.on("context_extensions.keystone_required_roles"))?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        let audience = extensions
            .get("keystone_audience")
            .filter(|a| !a.is_empty())
            .cloned()
            .or_else(|| Some(route_audience.clone()).filter(|a| !a.is_empty()));
        Ok(Requirements {
            audience,
            scopes,
            roles,
        })
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    #[tracing::instrument(name = "Check", skip_all)]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let empty = HashMap::new();
        let headers = request.get_client_headers().unwrap_or(&empty);
        let http = request
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref());
        let host = http.map(|http| http.host.as_str()).unwrap_or_default();
        let path = http.map(|http| http.path.as_str()).unwrap_or_default();
        // A DPoP proof names the URI as sent, encodings and all.
        let raw_path = path;
        let extensions = request
            .attributes
            .as_ref()
            .map(|attributes| &attributes.context_extensions)
            .unwrap_or(&empty);

        let path = match crate::domain::unambiguous_path(path) {
            Ok(path) => path,
            Err(why) => {
                return Ok(Response::new(denied(
                    HttpStatusCode::BadRequest,
                    Status::invalid_argument(why),
                    "Bearer realm=\"keystone\"",
                    "invalid_request",
                    why,
                )));
            }
        };
        let Some(token) = headers.get("authorization").and_then(|value| bearer(value)) else {
            return Ok(Response::new(denied(
                HttpStatusCode::Unauthorized,
                Status::unauthenticated("no bearer token"),
                "Bearer realm=\"keystone\"",
                "invalid_request",
                "send `authorization: Bearer <access token>`",
            )));
        };
        let requirements = match self.requirements(host, &path, extensions) {
            Ok(requirements) => requirements,
            Err(error) => {
                // The route's configuration is wrong, not the caller's token.
                tracing::error!(error = %error, "ext_authz context_extensions are malformed");
                return Ok(Response::new(denied(
                    HttpStatusCode::InternalServerError,
                    Status::internal("the route's authorization settings are malformed"),
                    "Bearer realm=\"keystone\"",
                    "server_error",
                    "the route's authorization settings are malformed",
                )));
            }
        };
        // The certificate Envoy's downstream presented (Envoy terminated its TLS).
        let presented = Presented {
            certificate: request
                .attributes
                .as_ref()
                .and_then(|attributes| attributes.source.as_ref())
                .and_then(|source| source_certificate(&source.certificate)),
        };
        // A DPoP proof is for the request as the client made it.
        let proof = headers.get("dpop").map(|proof| DpopPresented {
            proof: proof.clone(),
            method: http.map(|http| http.method.clone()).unwrap_or_default(),
            uri: format!(
                "{}://{host}{raw_path}",
                http.map(|http| http.scheme.as_str())
                    .filter(|scheme| !scheme.is_empty())
                    .unwrap_or("https")
            ),
        });
        let verdict = self
            .auth
            .authenticate_with_proof(
                token,
                &presented,
                proof.as_ref(),
                &requirements.scopes,
                &requirements.roles,
                requirements.audience.as_deref(),
            )
            .await;
        let principal = match verdict {
            Ok(principal) => principal,
            Err(error) => return Ok(Response::new(refusal(&error))),
        };
        let claims = principal.claims;
        let mut ok = OkHttpResponseBuilder::new();
        let kind = match claims.kind {
            Kind::User => "user",
            Kind::Service => "service",
        };
        let actors = claims
            .actors()
            .map(|actor| actor.sub.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let values = [
            claims.sub,
            kind.to_owned(),
            claims.client_id,
            claims.preferred_username.unwrap_or_default(),
            claims.scope,
            claims.roles.join(" "),
            actors,
        ];
        for (value, name) in values.into_iter().zip(&self.header_names) {
            // Overwrite, and keep empty values: a forged header must not survive.
            ok.add_header(
                name.clone(),
                value,
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                true,
            );
        }
        let prefix = self.settings.header_prefix.as_bytes();
        for incoming in headers.keys() {
            let ours = incoming
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix));
            if ours {
                let lower = incoming.to_ascii_lowercase();
                if !self.header_names.contains(&lower) {
                    ok.remove_header(lower);
                }
            }
        }
        if self.settings.remove_authorization {
            ok.remove_header("authorization");
        }
        let mut response = CheckResponse::with_status(Status::ok("allowed"));
        response.set_http_response(ok);
        Ok(Response::new(response))
    }
}

/// What a request needs of its token.
struct Requirements {
    /// The audience the token must carry.
    audience: Option<String>,
    /// The scopes it must hold.
    scopes: ScopeSet,
    /// The roles its subject must hold.
    roles: Vec<RoleName>,
}

/// Whether `route` covers `path`: its prefix on whole segments (`/admin` covers `/admin` and
/// `/admin/x`, not `/administrator`), without regard to ASCII case if the route says so.
fn covers(route: &crate::config::ExtAuthzRoute, path: &str) -> bool {
    let prefix = route.path_prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    let Some(start) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if route.case_insensitive {
        start.eq_ignore_ascii_case(prefix)
    } else {
        start == prefix
    };
    same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// The thumbprint of `attributes.source.certificate`: the peer's certificate as URL-encoded
/// PEM. `None` when empty or unreadable (a bound token then finds no certificate).
fn source_certificate(encoded: &str) -> Option<Thumbprint> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    if encoded.is_empty() {
        return None;
    }
    let pem = percent_encoding::percent_decode_str(encoded).collect::<Vec<u8>>();
    let der = CertificateDer::from_pem_slice(&pem).ok()?;
    Some(Thumbprint::of(der.as_ref()))
}

/// The token of a `Bearer` or `DPoP` (RFC 9449 section 7.1) authorization header. Either way
/// a DPoP-bound token needs its proof.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The denial for an error of `Authenticate`.
fn refusal(error: &Error) -> CheckResponse {
    let description = match error {
        Error::Internal(_) | Error::Unavailable { .. } => "try again later".to_owned(),
        other => other.to_string(),
    };
    match error.reason() {
        Reason::InsufficientScope | Reason::AudienceMismatch | Reason::MissingRole => denied(
            HttpStatusCode::Forbidden,
            Status::permission_denied(description.clone()),
            "Bearer error=\"insufficient_scope\"",
            "insufficient_scope",
            &description,
        ),
        Reason::Unavailable
        | Reason::RevocationUnavailable
        | Reason::Overloaded
        | Reason::Internal => {
            tracing::warn!(error = ?error, "an ext_authz check could not be decided");
            denied(
                HttpStatusCode::ServiceUnavailable,
                Status::unavailable(description.clone()),
                "Bearer realm=\"keystone\"",
                "temporarily_unavailable",
                &description,
            )
        }
        _ => denied(
            HttpStatusCode::Unauthorized,
            Status::unauthenticated(description.clone()),
            "Bearer error=\"invalid_token\"",
            "invalid_token",
            &description,
        ),
    }
}

/// A denied check: the status for Envoy and the HTTP answer for the client.
fn denied(
    http: HttpStatusCode,
    status: Status,
    challenge: &str,
    error: &str,
    description: &str,
) -> CheckResponse {
    let mut answer = DeniedHttpResponseBuilder::new();
    answer
        .set_http_status(http)
        .add_header("www-authenticate", challenge, None, false)
        .add_header("content-type", "application/json", None, false)
        .add_header("cache-control", "no-store", None, false)
        .set_body(
            serde_json::json!({ "error": error, "error_description": description }).to_string(),
        );
    let mut response = CheckResponse::with_status(status);
    response.set_http_response(answer);
    response
}

#[cfg(test)]
mod tests {
    use super::covers;
    use crate::config::ExtAuthzRoute;

    #[test]
    fn routes_match_whole_segments() {
        let route = |prefix: &str, case_insensitive: bool| ExtAuthzRoute {
            path_prefix: prefix.to_owned(),
            case_insensitive,
            ..ExtAuthzRoute::default()
        };
        let admin = route("/admin", false);
        assert!(covers(&admin, "/admin"));
        assert!(covers(&admin, "/admin/"));
        assert!(covers(&admin, "/admin/users"));
        assert!(!covers(&admin, "/administrator"));
        assert!(!covers(&admin, "/ADMIN"));
        assert!(!covers(&admin, "/adm"));
        assert!(covers(&route("/api/public/", false), "/api/public"));
        assert!(!covers(
            &route("/api/public", false),
            "/api/public-internal"
        ));
        assert!(covers(&route("/admin", true), "/ADMIN/Users"));
        assert!(!covers(&route("/admin", true), "/ADMINISTRATOR"));
        assert!(covers(&route("", false), "/anything"));
        assert!(covers(&route("/", false), "/anything"));
    }
}
