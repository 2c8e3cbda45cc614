//! Access tokens: JWTs after RFC 9068 (`typ: at+jwt`), signed with the ring's active key and
//! verified against the published keys, with expiry checked against the [`Clock`].
//!
//! Verification trusts nothing in a token before its signature is checked with a key Keystone
//! chose: the algorithm is pinned to the key named by `kid` (so `alg: none` and HMAC keyed
//! with a public key cannot pass), header-supplied keys (`jwk`, `jku`, `x5u`, `x5c`) and `crit`
//! are refused outright, oversized tokens are refused before any decoding, and every RFC 9068
//! claim must be present with its JSON type. Revocation is the caller's next step.
//!
//! The keys: [`ring`] is what signing and verifying read (no I/O); [`rotation`] keeps it in
//! step with the database and rotates keys; [`sealing`] encrypts private keys at rest.
//!
//! Layer: uses [`crate::store`] (keys as rows), [`crate::cluster`] (reload announcements),
//! [`crate::secrets`], [`crate::config`] and [`crate::domain`]; [`crate::service`], the HTTP
//! JWKS and the command line use it.
//!
//! [`Clock`]: crate::clock::Clock

pub mod assertion;
pub mod dpop;
pub mod ring;
pub mod rotation;
pub mod sealing;

pub use self::{
    ring::{KeyRing, KeySet, PublicJwk},
    rotation::{KeyManager, KeyReloads},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The three parts of a compact JWS (header, payload, signature), unchecked; `None` unless
/// there are exactly three.
pub(crate) fn jws_parts(jws: &str) -> Option<[&str; 3]> {
    let mut parts = jws.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => Some([header, payload, signature]),
        _ => None,
    }
}

/// A part of a compact JWS read as base64url JSON, unchecked.
pub(crate) fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// Tokens longer than this are refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The media type of access tokens (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A person.
    User,
    /// A service client.
    Service,
}

/// `aud`: one audience or several (RFC 7519 section 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// The audiences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Audience::One(one) => vec![one.clone()],
            Audience::Many(many) => many.clone(),
        }
    }

    /// Whether `audience` is one of them.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// The claims of a Keystone access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user's id or the client's id.
    pub sub: String,
    /// Audiences.
    pub aud: Audience,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Token id.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// User or service.
    pub kind: Kind,
    /// The user's roles at issue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The session (refresh family) of a user token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The username of a user token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// What the token is bound to (RFC 7800): it is accepted only from a caller proving it
    /// holds that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Who acts for the subject (RFC 8693 section 4.1): the client that exchanged a token for
    /// this one, its own `act` naming the hop before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<ActClaim>,
}

/// `act` (RFC 8693 section 4.1): one party in a delegation chain, and the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActClaim {
    /// The acting party: a client's id, or the subject of the actor token it presented.
    pub sub: String,
    /// The client that made the exchange (RFC 8693 section 4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The party that acted before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<ActClaim>>,
}

impl ActClaim {
    /// The chain from this actor back, the nearest first.
    pub fn chain(&self) -> impl Iterator<Item = &ActClaim> {
        std::iter::successors(Some(self), |actor| actor.act.as_deref())
    }
}

impl Claims {
    /// The actors of a delegated token, the nearest first; none for a token issued directly.
    pub fn actors(&self) -> impl Iterator<Item = &ActClaim> {
        self.act.iter().flat_map(ActClaim::chain)
    }
}

/// `cnf`: the key a token is bound to. A member Keystone does not know makes the token
/// invalid (never a token bound to nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// `x5t#S256`: the base64url SHA-256 of the TLS client certificate (RFC 8705 section 3.1).
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    /// `jkt`: the base64url RFC 7638 thumbprint of a DPoP key (RFC 9449 section 6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Well-formed, but not a valid Keystone token (signature, key, type, claims).
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// Past its expiry (and the leeway).
    #[error("expired token")]
    Expired,
}

/// Signs access tokens with the ring's active key.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    ring: KeyRing,
}

impl TokenIssuer {
    /// An issuer over `ring`.
    pub fn new(ring: KeyRing) -> Self {
        Self { ring }
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let keys = self.ring.snapshot();
        let key = keys
            .signing
            .as_ref()
            .ok_or_else(|| Error::internal(anyhow::anyhow!("no signing key is active")))?;
        key.compact(claims)
    }
}

/// How many verified tokens are remembered (about half a kilobyte each).
const VERIFIED_CACHE_SIZE: usize = 32_768;

/// Verifies access tokens against the published keys. Tokens that verified are remembered, by
/// SHA-256 of the whole token (never by signature alone: another payload under a known
/// signature must not hit), so that a token presented again skips the signature check; the
/// times and the key still being published are checked on every hit, and revocation by the
/// caller after.
#[derive(Clone)]
pub struct TokenVerifier {
    ring: KeyRing,
    issuer: String,
    leeway: i64,
    verified: std::sync::Arc<quick_cache::sync::Cache<[u8; 32], std::sync::Arc<Verified>>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("verified", &self.verified.len())
            .finish_non_exhaustive()
    }
}

/// A token that verified: its claims and the key that signed it.
#[derive(Debug)]
struct Verified {
    claims: Claims,
    kid: String,
}

/// The header fields a token (or a client assertion) may carry; anything that brings its own
/// key is refused.
#[derive(Deserialize)]
pub(crate) struct UntrustedHeader {
    pub(crate) alg: serde_json::Value,
    pub(crate) typ: Option<serde_json::Value>,
    pub(crate) kid: Option<serde_json::Value>,
    jwk: Option<serde_json::Value>,
    jku: Option<serde_json::Value>,
    x5u: Option<serde_json::Value>,
    x5c: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

impl UntrustedHeader {
    /// Whether it brings a key, or a key's address, of its own (or `crit`): never trusted.
    pub(crate) fn brings_a_key(&self) -> bool {
        self.jwk.is_some()
            || self.jku.is_some()
            || self.x5u.is_some()
            || self.x5c.is_some()
            || self.crit.is_some()
    }
}

impl TokenVerifier {
    /// A verifier for tokens of `issuer`, tolerating `leeway` of clock skew.
    pub fn new(ring: KeyRing, issuer: String, leeway: std::time::Duration) -> Self {
        Self {
            ring,
            issuer,
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
            verified: std::sync::Arc::new(quick_cache::sync::Cache::new(VERIFIED_CACHE_SIZE)),
        }
    }

    /// The clock skew tolerated, in seconds.
    pub fn leeway_seconds(&self) -> i64 {
        self.leeway
    }

    /// Checks the signature and the claims at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed("too long"));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0_u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some(hit) = self.verified.get(&key) {
            // A key withdrawn since (`keystone keys revoke`) takes its tokens with it.
            if !self.ring.snapshot().verifying.contains_key(&hit.kid) {
                self.verified.remove(&key);
                return Err(VerifyError::Invalid("unknown key id"));
            }
            self.check_times(&hit.claims, now)?;
            return Ok(hit.claims.clone());
        }
        let (claims, kid) = self.verify_signed(token, now)?;
        self.verified.insert(
            key,
            std::sync::Arc::new(Verified {
                claims: claims.clone(),
                kid,
            }),
        );
        Ok(claims)
    }

    /// The full check: header, key, signature, claims, times. Returns the claims and the kid.
    fn verify_signed(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(Claims, String), VerifyError> {
        let Some([header, payload, signature]) = jws_parts(token) else {
            return Err(VerifyError::Malformed("a JWT has three parts"));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(VerifyError::Malformed("a JWT has three non-empty parts"));
        }
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| VerifyError::Malformed("the header is not base64url"))?;
        let header: UntrustedHeader = serde_json::from_slice(&header)
            .map_err(|_| VerifyError::Malformed("the header is not a JSON object"))?;
        if header.brings_a_key() {
            return Err(VerifyError::Invalid("keys in the header are not accepted"));
        }
        match header.typ.as_ref().and_then(serde_json::Value::as_str) {
            Some(typ)
                if typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
                    || typ.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(VerifyError::Invalid("not an access token (typ)")),
        }
        let Some(kid) = header.kid.as_ref().and_then(serde_json::Value::as_str) else {
            return Err(VerifyError::Invalid("no key id"));
        };
        let keys = self.ring.snapshot();
        let Some(key) = keys.verifying.get(kid) else {
            return Err(VerifyError::Invalid("unknown key id"));
        };
        // The key decides the algorithm, never the token.
        let expected = match key.algorithm {
            jsonwebtoken::Algorithm::EdDSA => "EdDSA",
            jsonwebtoken::Algorithm::ES256 => "ES256",
            _ => return Err(VerifyError::Invalid("unsupported key")),
        };
        if header.alg.as_str() != Some(expected) {
            return Err(VerifyError::Invalid("the algorithm does not match the key"));
        }

        let mut validation = Validation::new(key.algorithm);
        // Time, audience and issuer are checked below against the Clock and the settings.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey => VerifyError::Invalid("bad signature"),
                ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    VerifyError::Malformed("a part is not base64url")
                }
                ErrorKind::Json(_) => VerifyError::Invalid("claims missing or of the wrong type"),
                _ => VerifyError::Invalid("verification failed"),
            })?
            .claims;

        if claims.iss != self.issuer {
            return Err(VerifyError::Invalid("wrong issuer"));
        }
        if claims.exp <= claims.iat {
            return Err(VerifyError::Invalid("expires before it was issued"));
        }
        if claims.jti.is_empty() || claims.sub.is_empty() {
            return Err(VerifyError::Invalid("empty jti or sub"));
        }
        self.check_times(&claims, now)?;
        Ok((claims, kid.to_owned()))
    }

    /// `nbf`, `iat` and `exp` against `now`, with the leeway.
    fn check_times(&self, claims: &Claims, now: DateTime<Utc>) -> Result<(), VerifyError> {
        let now = now.timestamp();
        if claims.nbf > now.saturating_add(self.leeway) {
            return Err(VerifyError::Invalid("not valid yet"));
        }
        if claims.iat > now.saturating_add(self.leeway) {
            return Err(VerifyError::Invalid("issued in the future"));
        }
        if now >= claims.exp.saturating_add(self.leeway) {
            return Err(VerifyError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyAlgorithm;
    use proptest::prelude::*;

    fn verifier_and_token() -> (TokenVerifier, String, DateTime<Utc>) {
        let ring = KeyRing::ephemeral(KeyAlgorithm::EdDSA).expect("an ephemeral key");
        let now = crate::clock::system_now();
        let claims = Claims {
            iss: "https://auth.example.com".to_owned(),
            sub: "alice".to_owned(),
            aud: Audience::One("keystone".to_owned()),
            exp: now.timestamp() + 600,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: "01".to_owned(),
            client_id: "keystone".to_owned(),
            scope: "a:b".to_owned(),
            kind: Kind::User,
            roles: Vec::new(),
            sid: None,
            preferred_username: None,
            cnf: None,
            act: None,
        };
        let token = TokenIssuer::new(ring.clone())
            .sign(&claims)
            .expect("the token is signed");
        let verifier = TokenVerifier::new(
            ring,
            "https://auth.example.com".to_owned(),
            std::time::Duration::from_secs(30),
        );
        (verifier, token, now)
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            // Arbitrary bytes, encoded as a segment should be.
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
            // JSON objects with the header members an attacker would try.
            (
                prop_oneof![
                    Just("none"),
                    Just("HS256"),
                    Just("EdDSA"),
                    Just("ES256"),
                    Just("RS256"),
                    Just("")
                ],
                any::<Option<String>>(),
                prop_oneof![Just("at+jwt"), Just("JWT"), Just("")],
            )
                .prop_map(|(alg, kid, typ)| {
                    let header = serde_json::json!({ "alg": alg, "kid": kid, "typ": typ });
                    URL_SAFE_NO_PAD.encode(header.to_string())
                }),
            // Anything at all.
            ".{0,64}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_string_is_accepted_or_panics(token in ".{0,2000}") {
            let (verifier, _, now) = verifier_and_token();
            prop_assert!(verifier.verify(&token, now).is_err());
        }

        #[test]
        fn no_forged_three_segment_token_is_accepted(
            header in segment(),
            claims in segment(),
            signature in segment(),
        ) {
            let (verifier, _, now) = verifier_and_token();
            let token = format!("{header}.{claims}.{signature}");
            prop_assert!(verifier.verify(&token, now).is_err());
        }

        #[test]
        fn a_token_changed_anywhere_is_refused(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (verifier, token, now) = verifier_and_token();
            prop_assert!(verifier.verify(&token, now).is_ok());
            let mut bytes = token.into_bytes();
            let at = at.index(bytes.len());
            prop_assume!(bytes[at] != byte);
            bytes[at] = byte;
            // Any change is refused (a change that is not UTF-8 cannot even be presented).
            if let Ok(changed) = String::from_utf8(bytes) {
                prop_assert!(verifier.verify(&changed, now).is_err(), "{changed}");
            }
        }
    }
}
