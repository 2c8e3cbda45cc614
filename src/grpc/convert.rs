//! proto ⇄ domain conversions and metadata helpers shared by the adapters.

use chrono::{DateTime, Utc};
use tonic::metadata::MetadataMap;

use crate::{
    error::{Error, Reason},
    proto::pb,
    service::auth::CallContext,
    token::{Claims, Kind, MAX_TOKEN_BYTES},
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

/// What the transport knows of the caller.
pub fn call_context<T>(request: &tonic::Request<T>) -> CallContext {
    CallContext {
        peer: request
            .remote_addr()
            .map(|addr| addr.ip().to_string())
            .unwrap_or_default(),
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
    }
}

/// The `User` message of a domain user. Never a password or a hash.
pub fn user_to_proto(user: &crate::domain::User, failed_login_attempts: i32) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        username: user.username.clone(),
        email: user.email.clone(),
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
