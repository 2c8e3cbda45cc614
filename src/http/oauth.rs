//! The OAuth 2.0 endpoints over HTTP: token (RFC 6749), introspection (RFC 7662) and
//! revocation (RFC 7009). Requests are form encoded; credentials are never taken from the
//! query string; answers are JSON with `Cache-Control: no-store`, and errors carry the OAuth
//! error codes (RFC 6749 section 5.2) mapped from the same errors gRPC callers get.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    body::Bytes,
    extract::{Extension, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;

use super::HttpState;
use crate::{
    client_ip::{CallerCertificate, ClientIp},
    error::{Error, Reason},
    service::{
        DpopPresented,
        auth::{
            ACCESS_TOKEN_TYPE_URN, CallContext, ClientCredential, IntrospectionCaller,
            PasswordLogin, TokenExchange, TokenRequest,
        },
    },
};

/// An answer that ends a request early (boxed: a response is large).
type Refusal = Box<Response>;

/// The largest form accepted, in bytes: a token exchange carries two tokens and an assertion
/// of up to 8 KiB each.
const MAX_FORM: usize = 32 * 1024;

/// The `grant_type` of token exchange (RFC 8693 section 2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// `POST /oauth2/token`: the client credentials, password and refresh token grants.
pub async fn token(
    State(state): State<Arc<HttpState>>,
    Extension(ClientIp(peer)): Extension<ClientIp>,
    certificate: Option<Extension<CallerCertificate>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let context = context(peer, certificate, &headers);
    let form = match read_form(&uri, &headers, &body) {
        Ok(form) => form,
        Err(error) => return *error,
    };
    let basic = match basic_credentials(&headers) {
        Ok(basic) => basic,
        Err(error) => return *error,
    };
    // A DPoP proof (RFC 9449 section 5) binds the token to its key: made for a POST to the
    // token endpoint as the discovery document publishes it; the grant checks it (and uses it
    // up) once the caller is known.
    let dpop = match headers
        .get_all("dpop")
        .iter()
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => None,
        [proof] => Some(DpopPresented {
            proof: proof.to_str().unwrap_or_default().to_owned(),
            method: "POST".to_owned(),
            uri: format!("{}/oauth2/token", state.auth.issuer().trim_end_matches('/')),
        }),
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_dpop_proof",
                "send one DPoP header",
                false,
            );
        }
    };
    let request = TokenRequest {
        dpop,
        scopes: form
            .get("scope")
            .map(|scope| {
                scope
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        audience: form
            .get("audience")
            .or_else(|| form.get("resource"))
            .cloned()
            .unwrap_or_default(),
    };
    let used_basic = basic.is_some();
    if used_basic
        && [
            "client_id",
            "client_secret",
            "client_assertion",
            "client_assertion_type",
        ]
        .iter()
        .any(|name| form.contains_key(*name))
    {
        // RFC 6749 section 2.3: one way of authenticating per request.
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send client credentials either with HTTP Basic or in the form, not both",
            false,
        );
    }
    let client_grant = matches!(
        form.get("grant_type").map(String::as_str),
        Some("client_credentials" | TOKEN_EXCHANGE_GRANT)
    );
    // User grants need no client; a client that authenticates anyway must do so correctly.
    if !client_grant
        && let Some((client_id, secret)) = &basic
        && let Err(error) = state
            .auth
            .verify_client(
                client_id,
                &ClientCredential::Secret(secret.clone()),
                "token",
                &context,
            )
            .await
    {
        return token_error(&error, true, true);
    }
    // A form field, empty when not sent.
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    // The client of a client grant: HTTP Basic; or the form's id and secret; or a client
    // assertion (RFC 7523 section 2.2, the id optional); or (RFC 8705 section 2) the form's id
    // alone with the TLS certificate it authenticates by.
    let client = match basic {
        // User grants need no client (one sent with HTTP Basic was checked above).
        _ if !client_grant => Some(Ok((String::new(), ClientCredential::None))),
        Some((client_id, secret)) => Some(Ok((client_id, ClientCredential::Secret(secret)))),
        None => {
            let sent = form.contains_key("client_secret")
                || form.contains_key("client_assertion")
                || form.contains_key("client_assertion_type");
            match (form.get("client_id"), sent) {
                // A client without an id (a secret alone) is no client at all.
                (_, true) => match ClientCredential::from_request(
                    field("client_secret"),
                    field("client_assertion"),
                    &field("client_assertion_type"),
                    "form",
                ) {
                    // A workload's token names its client by the identity it proves.
                    Ok(credential) => {
                        let client_id = credential.client_id_or_claimed(field("client_id"));
                        (!client_id.is_empty()
                            || matches!(credential, ClientCredential::Assertion(_)))
                        .then_some(Ok((client_id, credential)))
                    }
                    Err(error) => Some(Err(error)),
                },
                (Some(id), false) if context.certificate.is_some() => {
                    Some(Ok((id.clone(), ClientCredential::None)))
                }
                _ => None,
            }
        }
    };
    let client = match client {
        Some(Ok(client)) => client,
        Some(Err(error)) => return token_error(&error, true, false),
        None if client_grant => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "authenticate the client with HTTP Basic, client_id and client_secret, a \
                 client_assertion, or client_id and its TLS client certificate",
                true,
            );
        }
        None => (String::new(), ClientCredential::None),
    };
    let issued = match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            let (client_id, credential) = client;
            state
                .auth
                .client_credentials_grant(&client_id, credential, request, &context)
                .await
        }
        Some(TOKEN_EXCHANGE_GRANT) => {
            // Keystone issues access tokens by exchange, nothing else (RFC 8693 section 2.1).
            if form
                .get("requested_token_type")
                .is_some_and(|asked| asked != ACCESS_TOKEN_TYPE_URN)
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "requested_token_type: only urn:ietf:params:oauth:token-type:access_token \
                     is issued",
                    false,
                );
            }
            let (client_id, credential) = client;
            let ttl = match form.get("ttl").map(|ttl| ttl.parse::<u64>()) {
                None => None,
                Some(Ok(seconds)) => Some(std::time::Duration::from_secs(seconds)),
                Some(Err(_)) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "ttl must be a number of seconds",
                        false,
                    );
                }
            };
            state
                .auth
                .token_exchange_grant(
                    TokenExchange {
                        subject_token: field("subject_token"),
                        subject_token_type: field("subject_token_type"),
                        actor_token: field("actor_token"),
                        actor_token_type: field("actor_token_type"),
                        client_id,
                        credential,
                        ttl,
                    },
                    request,
                    &context,
                )
                .await
        }
        Some("password") => {
            let (Some(username), Some(password)) = (form.get("username"), form.get("password"))
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the password grant needs username and password",
                    false,
                );
            };
            state
                .auth
                .password_grant(
                    PasswordLogin {
                        username: username.clone(),
                        password: SecretString::from(password.clone()),
                    },
                    request,
                    &context,
                )
                .await
        }
        Some("refresh_token") => {
            let Some(refresh_token) = form.get("refresh_token") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the refresh_token grant needs refresh_token",
                    false,
                );
            };
            state
                .auth
                .refresh_grant(SecretString::from(refresh_token.clone()), request, &context)
                .await
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be client_credentials, password, refresh_token or \
                 urn:ietf:params:oauth:grant-type:token-exchange",
                false,
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
                false,
            );
        }
    };
    match issued {
        Ok(issued) => {
            let mut body = json!({
                "access_token": issued.access_token,
                "token_type": issued.token_type,
                "expires_in": issued.expires_in,
                "scope": issued.scopes.to_space_separated(),
            });
            if let Some(issued_token_type) = issued.issued_token_type {
                // RFC 8693 section 2.2.1.
                body["issued_token_type"] = json!(issued_token_type);
            }
            if let Some(refresh_token) = &issued.refresh_token {
                body["refresh_token"] = json!(refresh_token.expose_secret());
            }
            no_store(Json(body).into_response())
        }
        // RFC 8693 section 2.2.2: a subject or actor token that is invalid or unacceptable is
        // `invalid_request` (an audience not allowed stays `invalid_target`).
        Err(error)
            if form.get("grant_type").map(String::as_str) == Some(TOKEN_EXCHANGE_GRANT)
                && matches!(
                    error.reason(),
                    Reason::TokenMalformed
                        | Reason::TokenExpired
                        | Reason::TokenRevoked
                        | Reason::TokenInvalid
                        | Reason::AudienceMismatch
                ) =>
        {
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &error.to_string(),
                false,
            )
        }
        Err(error) => token_error(&error, client_grant, used_basic),
    }
}

/// `POST /oauth2/introspect` (RFC 7662). The caller is a bearer token holding
/// `keystone:introspect`, or a client (HTTP Basic) allowed that scope.
pub async fn introspect(
    State(state): State<Arc<HttpState>>,
    Extension(ClientIp(peer)): Extension<ClientIp>,
    certificate: Option<Extension<CallerCertificate>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let context = context(peer, certificate, &headers);
    let form = match read_form(&uri, &headers, &body) {
        Ok(form) => form,
        Err(error) => return *error,
    };
    let caller = match introspection_caller(&headers) {
        Ok(caller) => caller,
        Err(response) => return *response,
    };
    let basic = matches!(caller, IntrospectionCaller::Client { .. });
    let token = form.get("token").map_or("", String::as_str);
    let claims = match state.auth.introspect(caller, token, &context).await {
        Ok(claims) => claims,
        Err(error) => return introspection_refusal(&error, basic),
    };
    if !form.contains_key("token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is missing",
            false,
        );
    }
    let body = match claims {
        Some(claims) => json!({
            "active": true,
            "scope": claims.scope,
            "client_id": claims.client_id,
            "username": claims.preferred_username,
            // RFC 9449 section 6.2.
            "token_type": if claims.cnf.as_ref().is_some_and(|cnf| cnf.jkt.is_some()) {
                "DPoP"
            } else {
                "Bearer"
            },
            "exp": claims.exp,
            "iat": claims.iat,
            "nbf": claims.nbf,
            "sub": claims.sub,
            "aud": claims.aud.to_vec(),
            "iss": claims.iss,
            "jti": claims.jti,
            "roles": claims.roles,
            "cnf": claims.cnf,
            "act": claims.act,
        }),
        None => json!({ "active": false }),
    };
    no_store(Json(body).into_response())
}

/// `POST /oauth2/revoke` (RFC 7009): whoever holds a token may end it; the answer is 200
/// whether or not the token was known.
pub async fn revoke(
    State(state): State<Arc<HttpState>>,
    Extension(ClientIp(peer)): Extension<ClientIp>,
    certificate: Option<Extension<CallerCertificate>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let context = context(peer, certificate, &headers);
    let form = match read_form(&uri, &headers, &body) {
        Ok(form) => form,
        Err(error) => return *error,
    };
    let Some(token) = form.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is missing",
            false,
        );
    };
    match state.auth.revoke(token, &context).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(error) => token_error(&error, false, false),
    }
}

/// The caller of `/oauth2/introspect`: a bearer token, or a client with HTTP Basic.
fn introspection_caller(headers: &HeaderMap) -> Result<IntrospectionCaller, Refusal> {
    if let Some(token) = bearer(headers) {
        return Ok(IntrospectionCaller::Bearer(token));
    }
    match basic_credentials(headers)? {
        Some((client_id, secret)) => Ok(IntrospectionCaller::Client { client_id, secret }),
        None => Err(introspection_denied(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "send a bearer token with keystone:introspect, or client credentials",
        )),
    }
}

/// The answer to an introspection call refused before the token was looked at.
fn introspection_refusal(error: &Error, basic: bool) -> Response {
    match error {
        Error::PermissionDenied { .. } if basic && error.reason() == Reason::AccountDisabled => {
            *introspection_denied(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "invalid client credentials",
            )
        }
        Error::PermissionDenied { .. } if error.reason() == Reason::AudienceMismatch => {
            *introspection_denied(
                StatusCode::FORBIDDEN,
                "invalid_token",
                "the bearer token is not meant for Keystone",
            )
        }
        Error::PermissionDenied { .. } => *introspection_denied(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the caller lacks keystone:introspect",
        ),
        Error::Unauthenticated { .. } | Error::InvalidArgument { .. } if basic => {
            *introspection_denied(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "invalid client credentials",
            )
        }
        Error::Unauthenticated { .. } | Error::InvalidArgument { .. } => *introspection_denied(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the bearer token is invalid",
        ),
        other => token_error(other, false, false),
    }
}

fn introspection_denied(status: StatusCode, error: &str, description: &str) -> Refusal {
    let mut response = oauth_error(status, error, description, false);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"keystone\", Basic realm=\"keystone\""),
    );
    Box::new(response)
}

/// The form of a POST, refusing credentials in the query string, other content types,
/// oversized bodies and repeated parameters (RFC 6749 section 3.2).
pub(crate) fn read_form(
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HashMap<String, String>, Refusal> {
    let bad = |description: &str| -> Refusal {
        Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            description,
            false,
        ))
    };
    if uri.query().is_some_and(|query| !query.is_empty()) {
        return Err(bad(
            "parameters are taken from the form body only, never from the query string",
        ));
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| {
            value
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(bad("send application/x-www-form-urlencoded"));
    }
    if body.len() > MAX_FORM {
        return Err(bad("the form is too large"));
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| bad("the form is malformed"))?;
    let mut form = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if form.insert(name.clone(), value).is_some() {
            return Err(bad(&format!("`{name}` is given more than once")));
        }
    }
    Ok(form)
}

/// HTTP Basic client credentials (RFC 6749 section 2.3.1: each part form-urlencoded).
pub(crate) fn basic_credentials(
    headers: &HeaderMap,
) -> Result<Option<(String, SecretString)>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "malformed Basic credentials",
            true,
        ))
    };
    let Some(encoded) = value.to_str().ok().and_then(|value| {
        value
            .strip_prefix("Basic ")
            .or(value.strip_prefix("basic "))
    }) else {
        return Ok(None);
    };
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let decode = |part: &str| form_urlencoded_decode(part).ok_or_else(malformed);
    Ok(Some((decode(id)?, SecretString::from(decode(secret)?))))
}

/// One form-urlencoded component (RFC 6749 section 2.3.1): `+` is a space, `%XX` a byte.
fn form_urlencoded_decode(part: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&part.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// The bearer token of the `Authorization` header, if it is one.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

fn context(
    peer: std::net::IpAddr,
    certificate: Option<Extension<CallerCertificate>>,
    headers: &HeaderMap,
) -> CallContext {
    CallContext::new(
        peer.to_string(),
        certificate
            .as_ref()
            .map(|Extension(certificate)| certificate),
    )
    .with_user_agent(
        headers
            .get(http::header::USER_AGENT)
            .and_then(|agent| agent.to_str().ok()),
    )
}

/// The OAuth error of a failed call (RFC 6749 section 5.2), from the error gRPC callers get.
/// `client_grant`: bad credentials are the client's (`invalid_client`), not a user's or a
/// refresh token's (`invalid_grant`). Every reason is named: a new one does not compile until
/// it is given its OAuth error.
fn token_error(error: &Error, client_grant: bool, used_basic: bool) -> Response {
    let description = match error {
        Error::Internal(_) | Error::Unavailable { .. } => String::new(),
        other => other.to_string(),
    };
    let (status, code) = match error.reason() {
        Reason::InvalidCredentials if client_grant => (StatusCode::UNAUTHORIZED, "invalid_client"),
        Reason::InvalidCredentials
        | Reason::AccountLocked
        | Reason::AccountDisabled
        | Reason::RefreshTokenReused
        | Reason::TokenMalformed
        | Reason::TokenExpired
        | Reason::TokenRevoked
        | Reason::TokenInvalid
        | Reason::TokenBindingMismatch => (StatusCode::BAD_REQUEST, "invalid_grant"),
        Reason::InvalidDpopProof => (StatusCode::BAD_REQUEST, "invalid_dpop_proof"),
        Reason::UnauthorizedClient => (StatusCode::BAD_REQUEST, "unauthorized_client"),
        Reason::DelegationTooDeep => (StatusCode::BAD_REQUEST, "invalid_request"),
        Reason::InvalidScope | Reason::InsufficientScope | Reason::MissingRole => {
            (StatusCode::BAD_REQUEST, "invalid_scope")
        }
        Reason::InvalidAudience | Reason::AudienceMismatch => {
            (StatusCode::BAD_REQUEST, "invalid_target")
        }
        Reason::MessageTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
        Reason::TokenMissing
        | Reason::MissingGrant
        | Reason::InvalidArgument
        | Reason::WeakPassword
        | Reason::NotFound
        | Reason::AlreadyExists
        | Reason::FailedPrecondition
        | Reason::RegistrationDisabled => (StatusCode::BAD_REQUEST, "invalid_request"),
        Reason::RateLimited | Reason::Overloaded => {
            (StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable")
        }
        Reason::Unavailable | Reason::RevocationUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        Reason::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    if matches!(error, Error::Internal(_) | Error::Unavailable { .. }) {
        // Logged here with its cause, as gRPC's mapping does; the caller gets no detail.
        tracing::error!(error = ?error, "an OAuth request failed");
    }
    let mut response = oauth_error(
        status,
        code,
        &description,
        used_basic && code == "invalid_client",
    );
    if let Error::ResourceExhausted {
        retry_after: Some(wait),
        ..
    } = error
        && let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// An OAuth error response: `{"error": code, "error_description": …}`, `no-store`, and with
/// `basic`, the `WWW-Authenticate` challenge RFC 6749 requires after failed Basic auth.
fn oauth_error(status: StatusCode, code: &str, description: &str, basic: bool) -> Response {
    let mut body = json!({ "error": code });
    if !description.is_empty() {
        body["error_description"] = json!(description);
    }
    let mut response = (status, Json(body)).into_response();
    if basic {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"keystone\""),
        );
    }
    no_store(response)
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
