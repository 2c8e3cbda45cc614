//! Entry points for the fuzz targets in `fuzz/` (built only under `cfg(fuzzing)`, which
//! cargo-fuzz sets): each feeds arbitrary bytes to a parser that hostile callers reach, and
//! may only return. A panic, a hang or a sanitizer report is a finding.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Uri, header};
use prost::Message as _;

use crate::{
    config::KeyAlgorithm,
    domain::{Email, RoleName, Scope, ScopeSet, Username},
    proto::pb,
    token::{KeyRing, TokenVerifier},
};

/// A verifier over a key made once, and a fixed "now".
fn verifier() -> &'static (TokenVerifier, DateTime<Utc>) {
    static VERIFIER: OnceLock<(TokenVerifier, DateTime<Utc>)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let ring =
            KeyRing::ephemeral(KeyAlgorithm::EdDSA).unwrap_or_else(|_| std::process::abort());
        (
            TokenVerifier::new(
                ring,
                "https://auth.example.com".to_owned(),
                std::time::Duration::from_secs(30),
            ),
            crate::clock::system_now(),
        )
    })
}

/// The token verifier: nothing it is given verifies (no token was signed with its key).
pub fn token_verifier(data: &[u8]) {
    let (verifier, now) = verifier();
    let token = String::from_utf8_lossy(data);
    if verifier.verify(&token, *now).is_ok() {
        // A token nobody signed verified: the worst finding there is.
        std::process::abort();
    }
}

/// The request decoders: protobuf requests and the validation behind them, OAuth forms and
/// their credentials, page tokens, `grpc-timeout`, `X-Forwarded-For` and
/// `X-Forwarded-Client-Cert`, client certificate names, DPoP proofs. The first byte picks
/// one.
pub fn decoders(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 8 {
        0 => {
            if let Ok(request) = pb::CreateUserRequest::decode(rest) {
                let _ = Username::parse(&request.username);
                let _ = Email::parse(&request.email);
                for role in &request.roles {
                    let _ = RoleName::parse(role);
                }
            }
        }
        1 => {
            if let Ok(request) = pb::IssueTokenRequest::decode(rest) {
                let _ = ScopeSet::parse(request.scopes.iter().map(String::as_str));
            }
        }
        2 => {
            let _ = ScopeSet::parse_space_separated(&text);
            let _ = Scope::parse(&text);
        }
        3 => {
            let (authorization, body) = rest.split_at(rest.len().min(usize::from(which) / 8));
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            if let Ok(value) = HeaderValue::from_bytes(authorization) {
                headers.insert(header::AUTHORIZATION, value);
            }
            let uri = Uri::from_static("/oauth2/token");
            let _ = crate::http::oauth::read_form(&uri, &headers, body);
            let _ = crate::http::oauth::basic_credentials(&headers);
        }
        4 => {
            let pager = crate::service::paging::Pager::new(crate::secrets::Pepper::from_secret(
                &secrecy::SecretString::from("fuzz".repeat(8)),
            ));
            let _ = pager.request(10, &text, "users\0");
        }
        5 => {
            let _ = crate::grpc::deadline::parse_grpc_timeout(&text);
            let _ = text.parse::<crate::config::Quota>();
            let _ = crate::domain::unambiguous_path(&text);
            let _ = crate::domain::DistinguishedName::parse(&text);
            let _ = crate::domain::SubjectAltName::parse(&text);
            let _ = crate::domain::Thumbprint::parse(&text);
            let _ = crate::token::dpop::verify(
                &text,
                crate::token::dpop::ProofRequest {
                    method: "GET",
                    uri: "https://api.example.com/orders",
                    access_token: Some("token"),
                },
                crate::token::dpop::ProofWindow {
                    max_age: chrono::Duration::seconds(60),
                    leeway: chrono::Duration::seconds(30),
                },
                verifier().1,
            );
        }
        6 => {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(rest) {
                headers.insert("x-forwarded-for", value.clone());
                headers.insert("x-forwarded-client-cert", value);
            }
            let _ = crate::client_ip::forwarded_certificate(&headers);
            let proxies = crate::client_ip::TrustedProxies::new(&[ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 8)
                    .unwrap_or_else(|_| std::process::abort()),
            )]);
            let _ = proxies.client_ip(std::net::Ipv4Addr::new(10, 0, 0, 1).into(), &headers);
        }
        _ => {
            if let Ok(request) = pb::UpdateUserRequest::decode(rest) {
                let _ = crate::grpc::convert::update_paths(
                    request.update_mask.as_ref(),
                    "a user",
                    &["email", "enabled", "email_verified"],
                    &["id", "created_at"],
                    &[("roles", "use AssignRoles")],
                );
            }
        }
    }
}
