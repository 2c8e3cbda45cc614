//! DPoP proofs (RFC 9449): a JWT the caller signs with a key of its own for each request,
//! carrying that key's public half. A token bound to the key (`cnf.jkt`, its RFC 7638
//! thumbprint) is good only with a fresh proof signed by it.
//!
//! A proof is checked as strictly as an access token: at most 8 KiB, `typ: dpop+jwt`, an
//! asymmetric algorithm (never `none` nor HMAC), a public key in `jwk` (one with private
//! members is refused: its holder has leaked it), its signature, `htm` and `htu` against the
//! request, `iat` within the window, and `ath` against the access token. That its `jti` was
//! not used before is the caller's next step (the set of used ones is shared by replicas).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{Jwk, ThumbprintHash},
};
use serde::Deserialize;

/// Proofs longer than this are refused before decoding.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The media type of a proof (RFC 9449 section 4.2).
const PROOF_TYPE: &str = "dpop+jwt";

/// The algorithms a proof may be signed with: asymmetric ones only.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The names of [`ALGORITHMS`], as the discovery document lists them.
pub const ALGORITHM_NAMES: &[&str] = &[
    "ES256", "ES384", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

/// Members of a JWK that only a private key has.
pub(crate) const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The HTTP method (`htm`).
    pub method: &'a str,
    /// The HTTP URI (`htu`), compared without query and fragment.
    pub uri: &'a str,
    /// The access token the proof must hash (`ath`); `None` at the token endpoint, where a
    /// proof carries none.
    pub access_token: Option<&'a str>,
}

/// How old a proof may be, and how far clocks may disagree.
#[derive(Debug, Clone, Copy)]
pub struct ProofWindow {
    /// The oldest `iat` accepted, before `now`.
    pub max_age: chrono::Duration,
    /// How far in the future `iat` may be (clock skew).
    pub leeway: chrono::Duration,
}

impl ProofWindow {
    /// How long a proof's `jti` must be remembered to refuse it again: as long as the proof
    /// could be accepted.
    pub fn replay_horizon(&self) -> chrono::Duration {
        self.max_age + self.leeway + self.leeway
    }
}

/// A proof that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The RFC 7638 SHA-256 thumbprint of its key, base64url (`cnf.jkt`).
    pub jkt: String,
    /// Its id, to be used once.
    pub jti: String,
    /// When it was made.
    pub issued_at: DateTime<Utc>,
}

/// Why a proof was refused: a sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DPoP proof: {0}")]
pub struct ProofError(pub &'static str);

/// The claims of a proof.
#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
    #[serde(default)]
    ath: Option<String>,
}

/// Checks `proof` for `request` at `now`.
pub fn verify(
    proof: &str,
    request: ProofRequest<'_>,
    window: ProofWindow,
    now: DateTime<Utc>,
) -> Result<VerifiedProof, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError("longer than 8 KiB"));
    }
    let Some([header, _, _]) = super::jws_parts(proof) else {
        return Err(ProofError("a JWT has three parts"));
    };
    let header: serde_json::Value =
        super::decode_part(header).ok_or(ProofError("the header is not base64url JSON"))?;
    if header.get("typ").and_then(serde_json::Value::as_str) != Some(PROOF_TYPE) {
        return Err(ProofError("typ must be dpop+jwt"));
    }
    let algorithm = match header.get("alg").and_then(serde_json::Value::as_str) {
        Some("ES256") => Algorithm::ES256,
        Some("ES384") => Algorithm::ES384,
        Some("EdDSA") => Algorithm::EdDSA,
        Some("RS256") => Algorithm::RS256,
        Some("RS384") => Algorithm::RS384,
        Some("RS512") => Algorithm::RS512,
        Some("PS256") => Algorithm::PS256,
        Some("PS384") => Algorithm::PS384,
        Some("PS512") => Algorithm::PS512,
        _ => return Err(ProofError("alg must be an asymmetric algorithm")),
    };
    if !ALGORITHMS.contains(&algorithm) {
        return Err(ProofError("alg must be an asymmetric algorithm"));
    }
    let jwk_value = header
        .get("jwk")
        .and_then(serde_json::Value::as_object)
        .ok_or(ProofError("the header carries no jwk"))?;
    if PRIVATE_MEMBERS
        .iter()
        .any(|member| jwk_value.contains_key(*member))
    {
        return Err(ProofError("the jwk is a private key"));
    }
    let jwk: Jwk = serde_json::from_value(serde_json::Value::Object(jwk_value.clone()))
        .map_err(|_| ProofError("the jwk is not a public key Keystone can read"))?;
    let key = DecodingKey::from_jwk(&jwk)
        .map_err(|_| ProofError("the jwk is not a public key Keystone can read"))?;
    let jkt = thumbprint(&jwk)?;

    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &validation)
        .map_err(|error| match error.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => {
                ProofError("jti, htm, htu and iat are required")
            }
            _ => ProofError("the signature does not verify with the jwk"),
        })?
        .claims;

    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(ProofError("jti must hold 1 to 256 bytes"));
    }
    if claims.htm != request.method {
        return Err(ProofError("htm is not this request's method"));
    }
    if !same_uri(&claims.htu, request.uri) {
        return Err(ProofError("htu is not this request's URI"));
    }
    let issued_at =
        DateTime::from_timestamp(claims.iat, 0).ok_or(ProofError("iat is out of range"))?;
    if issued_at > now + window.leeway {
        return Err(ProofError("iat is in the future"));
    }
    if issued_at < now - window.max_age - window.leeway {
        return Err(ProofError("iat is too old"));
    }
    match (request.access_token, claims.ath.as_deref()) {
        (Some(token), Some(ath)) if ath == access_token_hash(token) => {}
        (Some(_), _) => return Err(ProofError("ath does not hash the access token")),
        (None, _) => {}
    }
    Ok(VerifiedProof {
        jkt,
        jti: claims.jti,
        issued_at,
    })
}

/// `ath`: the base64url SHA-256 of an access token.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The RFC 7638 SHA-256 thumbprint of a public key, base64url.
fn thumbprint(jwk: &Jwk) -> Result<String, ProofError> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| ProofError("the jwk is not a public key Keystone can read"))
}

/// Whether two HTTP URIs are the same, ignoring query and fragment (RFC 9449 section 4.3),
/// after normalizing case and default ports.
fn same_uri(claimed: &str, actual: &str) -> bool {
    let strip = |uri: &str| {
        url::Url::parse(uri).ok().map(|mut url| {
            url.set_query(None);
            url.set_fragment(None);
            url
        })
    };
    match (strip(claimed), strip(actual)) {
        (Some(claimed), Some(actual)) => {
            matches!(claimed.scheme(), "http" | "https") && claimed == actual
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
    };
    use jsonwebtoken::{EncodingKey, Header};

    const URI: &str = "https://api.example.com/orders";

    /// A P-256 key: its signing half and its public JWK.
    fn new_key() -> (EncodingKey, serde_json::Value) {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn proof_with(
        key: &EncodingKey,
        jwk: &serde_json::Value,
        typ: &str,
        claims: &serde_json::Value,
    ) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.jwk = Some(serde_json::from_value(jwk.clone()).unwrap());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn claims(now: DateTime<Utc>, token: Option<&str>) -> serde_json::Value {
        let mut claims = serde_json::json!({
            "jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": URI, "iat": now.timestamp(),
        });
        if let Some(token) = token {
            claims["ath"] = access_token_hash(token).into();
        }
        claims
    }

    fn window() -> ProofWindow {
        ProofWindow {
            max_age: chrono::Duration::seconds(60),
            leeway: chrono::Duration::seconds(5),
        }
    }

    fn request(token: Option<&str>) -> ProofRequest<'_> {
        ProofRequest {
            method: "GET",
            uri: URI,
            access_token: token,
        }
    }

    #[test]
    fn a_good_proof_gives_the_rfc_7638_thumbprint_of_its_key() {
        let now = crate::clock::system_now();
        let (key, jwk) = new_key();
        let proof = proof_with(&key, &jwk, "dpop+jwt", &claims(now, Some("at")));
        let verified = verify(&proof, request(Some("at")), window(), now).unwrap();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            jwk["x"], jwk["y"]
        );
        let expected = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ));
        assert_eq!(verified.jkt, expected);
        assert_eq!(verified.jti, "e1j3V_bKic8-LAEB");
        // The query and fragment do not count; case and default ports do not either.
        let elsewhere = ProofRequest {
            uri: "HTTPS://API.example.com:443/orders?page=2#top",
            ..request(Some("at"))
        };
        assert!(verify(&proof, elsewhere, window(), now).is_ok());
    }

    #[test]
    fn a_proof_for_another_request_time_or_token_is_refused() {
        let now = crate::clock::system_now();
        let (key, jwk) = new_key();
        let good = claims(now, Some("at"));
        let refused = |claims: &serde_json::Value, request: ProofRequest<'_>| {
            verify(
                &proof_with(&key, &jwk, "dpop+jwt", claims),
                request,
                window(),
                now,
            )
            .unwrap_err()
        };
        let other = ProofRequest {
            method: "POST",
            ..request(Some("at"))
        };
        assert_eq!(refused(&good, other).0, "htm is not this request's method");
        let other = ProofRequest {
            uri: "https://api.example.com/invoices",
            ..request(Some("at"))
        };
        assert_eq!(refused(&good, other).0, "htu is not this request's URI");
        assert_eq!(
            refused(&good, request(Some("another token"))).0,
            "ath does not hash the access token"
        );
        assert_eq!(
            refused(&claims(now, None), request(Some("at"))).0,
            "ath does not hash the access token"
        );
        let mut future = good.clone();
        future["iat"] = (now.timestamp() + 30).into();
        assert_eq!(
            refused(&future, request(Some("at"))).0,
            "iat is in the future"
        );
        let mut old = good.clone();
        old["iat"] = (now.timestamp() - 120).into();
        assert_eq!(refused(&old, request(Some("at"))).0, "iat is too old");
        let mut no_jti = good.clone();
        no_jti.as_object_mut().unwrap().remove("jti");
        assert_eq!(
            refused(&no_jti, request(Some("at"))).0,
            "jti, htm, htu and iat are required"
        );
    }

    #[test]
    fn unsigned_symmetric_private_foreign_and_oversized_proofs_are_refused() {
        let now = crate::clock::system_now();
        let (key, jwk) = new_key();
        let good = claims(now, None);
        let at = |proof: &str| verify(proof, request(None), window(), now).unwrap_err().0;
        assert_eq!(
            at(&proof_with(&key, &jwk, "JWT", &good)),
            "typ must be dpop+jwt"
        );

        // Signed by another key than the one it carries.
        let (other, _) = new_key();
        assert_eq!(
            at(&proof_with(&other, &jwk, "dpop+jwt", &good)),
            "the signature does not verify with the jwk"
        );

        let encode = |header: serde_json::Value, signature: &str| {
            format!(
                "{}.{}.{signature}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(good.to_string())
            )
        };
        let none = serde_json::json!({ "typ": "dpop+jwt", "alg": "none", "jwk": jwk });
        assert_eq!(at(&encode(none, "")), "alg must be an asymmetric algorithm");
        let hmac = serde_json::json!({
            "typ": "dpop+jwt", "alg": "HS256", "jwk": { "kty": "oct", "k": "c2VjcmV0" },
        });
        assert_eq!(
            at(&encode(hmac, "x")),
            "alg must be an asymmetric algorithm"
        );
        let mut private = jwk.clone();
        private["d"] = "c2VjcmV0".into();
        let leaked = serde_json::json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": private });
        assert_eq!(at(&encode(leaked, "x")), "the jwk is a private key");
        let keyless = serde_json::json!({ "typ": "dpop+jwt", "alg": "ES256" });
        assert_eq!(at(&encode(keyless, "x")), "the header carries no jwk");

        let mut huge = good.clone();
        huge["pad"] = "x".repeat(MAX_PROOF_BYTES).into();
        assert_eq!(
            at(&proof_with(&key, &jwk, "dpop+jwt", &huge)),
            "longer than 8 KiB"
        );
        assert_eq!(at("a.b"), "a JWT has three parts");
    }
}
