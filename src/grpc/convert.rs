//! proto ⇄ domain conversions and metadata helpers shared by the adapters.

use chrono::{DateTime, Utc};
use tonic::metadata::MetadataMap;

use crate::{
    error::{Error, Reason},
    proto::pb,
    service::auth::CallContext,
    token::{ActClaim, Claims, Kind, MAX_TOKEN_BYTES},
};

/// A protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp from seconds since the epoch.
pub fn timestamp_from_seconds(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

/// The bearer token of the `authorization` metadata (RFC 6750 section 2.1).
pub fn bearer_token(metadata: &MetadataMap) -> Result<String, Error> {
    let missing = || Error::Unauthenticated {
        reason: Reason::TokenMissing,
        message: "send `authorization: Bearer <access token>`".to_owned(),
    };
    let value = metadata.get("authorization").ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(missing());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::Unauthenticated {
            reason: Reason::TokenMalformed,
            message: "too long".to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// What the transport knows of the caller: its IP as the listener established it (see
/// [`crate::client_ip`]), or the peer's address.
pub fn call_context<T>(request: &tonic::Request<T>) -> CallContext {
    let ip = request
        .extensions()
        .get::<crate::client_ip::ClientIp>()
        .map(|ip| ip.0)
        .or_else(|| {
            request
                .extensions()
                .get::<crate::client_ip::Peer>()
                .map(|peer| peer.addr.ip())
        });
    CallContext::new(
        ip.map(|ip| ip.to_string()).unwrap_or_default(),
        request
            .extensions()
            .get::<crate::client_ip::CallerCertificate>(),
    )
    .with_user_agent(
        request
            .metadata()
            .get("user-agent")
            .and_then(|agent| agent.to_str().ok()),
    )
}

/// What came with the call's bearer token: the caller's certificate as the listener (or a
/// certificate proxy) established it, without the rest of the call's context (the hot path).
pub fn presented<T>(request: &tonic::Request<T>) -> crate::service::Presented {
    use crate::client_ip::CallerCertificate;
    crate::service::Presented {
        certificate: request
            .extensions()
            .get::<CallerCertificate>()
            .map(|certificate| match certificate {
                CallerCertificate::Connection { thumbprint, .. }
                | CallerCertificate::Forwarded(thumbprint) => {
                    crate::domain::Thumbprint::from_bytes(*thumbprint)
                }
            }),
    }
}

/// The `Principal` message of verified claims.
pub fn principal_to_proto(claims: &Claims) -> pb::Principal {
    let kind = match claims.kind {
        Kind::User => pb::PrincipalKind::User,
        Kind::Service => pb::PrincipalKind::Service,
    };
    pb::Principal {
        subject: claims.sub.clone(),
        kind: kind.into(),
        username: claims.preferred_username.clone().unwrap_or_default(),
        client_id: claims.client_id.clone(),
        roles: claims.roles.clone(),
        scopes: claims
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        audience: claims.aud.to_vec(),
        token_id: claims.jti.clone(),
        session_id: claims.sid.clone().unwrap_or_default(),
        issued_at: Some(timestamp_from_seconds(claims.iat)),
        expires_at: Some(timestamp_from_seconds(claims.exp)),
        certificate_thumbprint: claims
            .cnf
            .as_ref()
            .and_then(|cnf| cnf.x5t_s256.clone())
            .unwrap_or_default(),
        dpop_key_thumbprint: claims
            .cnf
            .as_ref()
            .and_then(|cnf| cnf.jkt.clone())
            .unwrap_or_default(),
        delegation: claims
            .actors()
            .map(|actor| pb::Actor {
                subject: actor.sub.clone(),
                client_id: actor.client_id.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The `act` claim (RFC 8693 section 4.1) as introspection shows it, nested as in the token.
pub fn act_to_proto(act: &ActClaim) -> pb::Act {
    pb::Act {
        sub: act.sub.clone(),
        client_id: act.client_id.clone().unwrap_or_default(),
        act: act
            .act
            .as_deref()
            .map(|before| Box::new(act_to_proto(before))),
    }
}

/// The `User` message of a domain user. Never a password or a hash.
pub fn user_to_proto(user: &crate::domain::User, failed_login_attempts: i32) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        username: user.username.as_str().to_owned(),
        email: user.email.as_str().to_owned(),
        enabled: Some(user.enabled),
        locked: user.locked,
        locked_until: user.locked_until.map(timestamp),
        email_verified: user.email_verified,
        password_change_required: user.password_change_required,
        failed_login_attempts,
        roles: user.roles.clone(),
        created_at: Some(timestamp(user.created_at)),
        updated_at: Some(timestamp(user.updated_at)),
        last_login_at: user.last_login_at.map(timestamp),
    }
}

/// The `User` message of a user record, its lock as it stands at `now`.
pub fn user_record_to_proto(record: &crate::domain::UserRecord, now: DateTime<Utc>) -> pb::User {
    let (locked, locked_until) = record.lock_at(now);
    pb::User {
        locked,
        locked_until: locked_until.map(timestamp),
        ..user_to_proto(&record.user, record.failed_login_attempts)
    }
}

/// The `Role` message.
pub fn role_to_proto(role: crate::domain::Role) -> pb::Role {
    pb::Role {
        name: role.name,
        description: role.description,
        scopes: role.scopes.to_strings(),
        default_for_new_users: role.default_for_new_users,
    }
}

/// The `Client` message. Never a secret.
pub fn client_to_proto(client: crate::domain::Client) -> pb::Client {
    pb::Client {
        client_id: client.client_id.as_str().to_owned(),
        name: client.name,
        description: client.description,
        allowed_scopes: client.allowed_scopes.to_strings(),
        allowed_audiences: client.allowed_audiences,
        access_token_ttl: client.access_token_ttl.map(duration),
        enabled: Some(client.enabled),
        created_at: Some(timestamp(client.created_at)),
        updated_at: Some(timestamp(client.updated_at)),
        secret_rotated_at: client.secret_rotated_at.map(timestamp),
        secret_last_used_at: client.secret_last_used_at.map(timestamp),
        tls_client_auth_subject_dn: client
            .certificate
            .subject_dn
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        tls_client_auth_sans: client
            .certificate
            .sans
            .iter()
            .map(crate::domain::SubjectAltName::as_string)
            .collect(),
        tls_client_certificate_sha256: client
            .certificate
            .thumbprints
            .iter()
            .map(|thumbprint| thumbprint.to_hex())
            .collect(),
        certificate_bound_tokens: client.certificate_bound_tokens,
        token_exchange: client.token_exchange,
        jwks_json: client.jwks_json.clone().unwrap_or_default(),
        federated_identities: client
            .federated_identities
            .iter()
            .map(|identity| pb::FederatedIdentity {
                issuer_name: identity.issuer_name.clone(),
                subject: identity.subject.clone(),
            })
            .collect(),
        secrets: client
            .secrets
            .into_iter()
            .map(|secret| pb::ClientSecretInfo {
                id: secret.id,
                created_at: Some(timestamp(secret.created_at)),
                expires_at: secret.expires_at.map(timestamp),
                last_used_at: secret.last_used_at.map(timestamp),
            })
            .collect(),
    }
}

/// The `Session` message; `current` for the caller's own.
pub fn session_to_proto(session: crate::domain::Session, current: bool) -> pb::Session {
    pb::Session {
        id: session.id.to_string(),
        // Every session is a login to Keystone itself, its tokens issued to its first-party client.
        client_id: crate::service::auth::FIRST_PARTY_CLIENT_ID.to_owned(),
        created_at: Some(timestamp(session.created_at)),
        last_used_at: Some(timestamp(session.last_used_at)),
        expires_at: Some(timestamp(session.expires_at)),
        ip: session.ip,
        user_agent: session.user_agent,
        current,
    }
}

/// The `AuditEvent` message.
pub fn audit_event_to_proto(event: crate::domain::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: event.id.to_string(),
        time: Some(timestamp(event.time)),
        actor: event.actor,
        action: event.action,
        target: event.target,
        outcome: event.outcome,
        peer: event.peer,
        details: event.details.into_iter().collect(),
    }
}

/// A protobuf duration.
pub fn duration(value: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(value.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration as a std one: negative or malformed (nanoseconds outside
/// 0..1 000 000 000, which prost would quietly carry into the seconds) is INVALID_ARGUMENT on
/// `field`.
pub fn duration_from_proto(
    value: prost_types::Duration,
    field: &str,
) -> Result<std::time::Duration, Error> {
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(Error::invalid_argument(
            field,
            "must be a non-negative duration with nanos between 0 and 999999999",
        ));
    }
    std::time::Duration::try_from(value)
        .map_err(|_| Error::invalid_argument(field, "must be a non-negative duration"))
}

/// A protobuf timestamp as a chrono one. The protobuf range is 0001-01-01 to 9999-12-31
/// (which also keeps stored times comparable as text on SQLite); outside it, or with bad
/// nanoseconds, INVALID_ARGUMENT on `field`.
pub fn timestamp_from_proto(
    value: prost_types::Timestamp,
    field: &str,
) -> Result<DateTime<Utc>, Error> {
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    u32::try_from(value.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000 && RANGE.contains(&value.seconds))
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        .ok_or_else(|| {
            Error::invalid_argument(field, "is not a valid timestamp (0001-01-01 to 9999-12-31)")
        })
}

/// The fields an update mask names, checked against what the resource lets change: unknown,
/// output-only and unchangeable paths, and an empty mask, are INVALID_ARGUMENT on
/// `update_mask`. `not_here` pairs an unchangeable field with where it is changed instead.
pub fn update_paths<'a>(
    mask: Option<&'a prost_types::FieldMask>,
    resource: &str,
    updatable: &[&str],
    output_only: &[&str],
    not_here: &[(&str, &str)],
) -> Result<Vec<&'a str>, Error> {
    let paths = mask.map(|mask| mask.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid_argument(
            "update_mask",
            format!("name the fields to change: {}", updatable.join(", ")),
        ));
    }
    let mut checked = Vec::with_capacity(paths.len());
    for path in paths {
        let path = path.as_str();
        if updatable.contains(&path) {
            if !checked.contains(&path) {
                checked.push(path);
            }
            continue;
        }
        let message = if output_only.contains(&path) {
            format!("`{path}` is output only")
        } else if let Some((_, instead)) = not_here.iter().find(|(field, _)| *field == path) {
            format!("`{path}` cannot be changed here: {instead}")
        } else {
            format!(
                "`{path}` is not a field of {resource} that can be changed; use {}",
                updatable.join(", ")
            )
        };
        return Err(Error::invalid_argument("update_mask", message));
    }
    Ok(checked)
}
