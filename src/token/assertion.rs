//! Client assertions by a client's own key (`private_key_jwt`, RFC 7523 section 2.2 and OpenID
//! Connect Core section 9): a short-lived JWT the client signs with a private key whose public
//! half an admin registered (`Client.jwks_json`), instead of sending a secret.
//!
//! Registered keys are public keys only (a member only a private key has is refused: its
//! holder has leaked it), asymmetric, each with the algorithm it signs with (its `alg`, or the
//! one its curve implies; RSA keys of 2048 bits or more, `RS256` unless they say otherwise).
//!
//! An assertion is checked as strictly as an access token: at most 8 KiB; no key, key URL or
//! `crit` in its header; the key named by `kid` (or the only key) and the algorithm pinned to
//! it, so `alg: none` and HMAC cannot pass; then `iss` = `sub` = the client's id, `aud` naming
//! Keystone (its issuer or its token endpoint), `exp` in the future but at most
//! [`MAX_LIFETIME`] away, `nbf` and `iat` not in the future, and a `jti`. That the `jti` was not
//! used before is the caller's next step (the set of used ones is shared by replicas).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

use super::{Audience, UntrustedHeader, decode_part, dpop::PRIVATE_MEMBERS, jws_parts};

/// Assertions longer than this are refused before decoding.
pub const MAX_ASSERTION_BYTES: usize = 8 * 1024;

/// The furthest in the future an assertion's `exp` may be: its `jti` is remembered that long.
pub const MAX_LIFETIME: chrono::Duration = chrono::Duration::hours(1);

/// The `client_assertion_type` of a JWT assertion (RFC 7523 section 2.2).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The most keys a client may register.
pub const MAX_KEYS: usize = 8;

/// The longest `jwks_json` a client may register, in bytes.
pub const MAX_JWKS_BYTES: usize = 16 * 1024;

/// A client's registered public keys, each with the algorithm it signs with.
pub struct ClientKeys {
    keys: Vec<ClientKey>,
}

struct ClientKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|key| (&key.kid, key.algorithm)))
            .finish()
    }
}

/// Why registered keys or an assertion were refused: a sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AssertionError(pub &'static str);

impl ClientKeys {
    /// Parses a JWK Set (RFC 7517 section 5) as registered: `{"keys": [...]}`, 1 to
    /// [`MAX_KEYS`] public signing keys, distinct `kid`s, at most [`MAX_JWKS_BYTES`].
    pub fn parse(jwks_json: &str) -> Result<Self, AssertionError> {
        if jwks_json.len() > MAX_JWKS_BYTES {
            return Err(AssertionError("the key set is longer than 16 KiB"));
        }
        #[derive(Deserialize)]
        struct KeySet {
            keys: Vec<serde_json::Map<String, serde_json::Value>>,
        }
        let set: KeySet = serde_json::from_str(jwks_json)
            .map_err(|_| AssertionError("must be a JWK Set: {\"keys\": [...]}"))?;
        if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
            return Err(AssertionError("a key set holds 1 to 8 keys"));
        }
        let mut keys: Vec<ClientKey> = Vec::with_capacity(set.keys.len());
        for member in set.keys {
            refuse_private(&member)?;
            let key = key_of(member)?;
            if key.kid.is_some() && keys.iter().any(|other| other.kid == key.kid) {
                return Err(AssertionError("two keys share a `kid`"));
            }
            keys.push(key);
        }
        if keys.len() > 1 && keys.iter().any(|key| key.kid.is_none()) {
            return Err(AssertionError(
                "with several keys, each needs a `kid` (assertions name theirs)",
            ));
        }
        Ok(Self { keys })
    }

    /// Parses a JWK Set an issuer publishes (a Kubernetes cluster's `/openid/v1/jwks`, a SPIRE
    /// bundle): the signing keys Keystone can use (`use` absent, `sig`, or SPIFFE's
    /// `jwt-svid`) are kept and the others left out; a set with no usable key, with a private
    /// member, or with a `kid` twice is refused whole.
    pub fn parse_published(jwks_json: &[u8]) -> Result<Self, AssertionError> {
        #[derive(Deserialize)]
        struct KeySet {
            keys: Vec<serde_json::Value>,
        }
        let set: KeySet = serde_json::from_slice(jwks_json)
            .map_err(|_| AssertionError("not a JWK Set: {\"keys\": [...]}"))?;
        if set.keys.len() > MAX_PUBLISHED_KEYS {
            return Err(AssertionError("the set holds more than 100 keys"));
        }
        let mut keys: Vec<ClientKey> = Vec::new();
        for member in set.keys {
            let serde_json::Value::Object(mut member) = member else {
                continue;
            };
            refuse_private(&member)?;
            match member.get("use").map(serde_json::Value::as_str) {
                None | Some(Some("sig")) => {}
                Some(Some("jwt-svid")) => {
                    member.remove("use");
                }
                _ => continue,
            }
            let Ok(key) = key_of(member) else {
                continue;
            };
            if key.kid.is_some() && keys.iter().any(|other| other.kid == key.kid) {
                return Err(AssertionError("two keys share a `kid`"));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(AssertionError(
                "the set holds no signing key Keystone can use (EC P-256 or P-384, Ed25519, \
                 RSA of 2048 bits or more)",
            ));
        }
        Ok(Self { keys })
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this `kid`, or, for `None`, whether there is only one key (which an
    /// assertion naming no `kid` is checked with).
    pub fn knows(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|key| key.kid.as_deref() == Some(kid)),
            None => self.keys.len() == 1,
        }
    }
}

/// The most keys read from an issuer's published set.
const MAX_PUBLISHED_KEYS: usize = 100;

/// Refuses a key holding a member only a private key has: its holder has leaked it.
fn refuse_private(
    member: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), AssertionError> {
    if PRIVATE_MEMBERS
        .iter()
        .any(|name| member.contains_key(*name))
    {
        return Err(AssertionError(
            "a key holds a private member (d, p, q, …): register the public key only, and \
             treat this private key as leaked",
        ));
    }
    Ok(())
}

/// One public signing key, with the algorithm it signs with.
fn key_of(member: serde_json::Map<String, serde_json::Value>) -> Result<ClientKey, AssertionError> {
    let jwk: Jwk = serde_json::from_value(serde_json::Value::Object(member))
        .map_err(|_| AssertionError("a key is not a JWK Keystone can read"))?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|key_use| *key_use != PublicKeyUse::Signature)
    {
        return Err(AssertionError("a key's `use` must be `sig`"));
    }
    let algorithm = algorithm_of(&jwk)?;
    let key = DecodingKey::from_jwk(&jwk)
        .map_err(|_| AssertionError("a key is not a public key Keystone can read"))?;
    Ok(ClientKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
    })
}

/// The algorithm a registered key signs with: its `alg`, which must suit the key, or the one
/// its type and curve imply.
fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, AssertionError> {
    let declared = jwk.common.key_algorithm;
    let algorithm = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES384))
            if ec.curve == EllipticCurve::P384 =>
        {
            Algorithm::ES384
        }
        (AlgorithmParameters::OctetKeyPair(okp), None | Some(KeyAlgorithm::EdDSA))
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        (AlgorithmParameters::RSA(rsa), declared) => {
            let modulus = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_err(|_| AssertionError("an RSA key's `n` is not base64url"))?;
            let start = modulus.iter().take_while(|byte| **byte == 0).count();
            let significant = &modulus[start..];
            let bits = significant.len() * 8
                - significant
                    .first()
                    .map_or(0, |first| first.leading_zeros() as usize);
            if bits < 2048 {
                return Err(AssertionError("an RSA key must have at least 2048 bits"));
            }
            match declared {
                None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                Some(KeyAlgorithm::PS384) => Algorithm::PS384,
                Some(KeyAlgorithm::PS512) => Algorithm::PS512,
                Some(_) => return Err(AssertionError("an RSA key's `alg` must be RS* or PS*")),
            }
        }
        _ => {
            return Err(AssertionError(
                "a key must be EC P-256 (ES256), P-384 (ES384), OKP Ed25519 (EdDSA) or RSA, \
                 with an `alg` that suits it",
            ));
        }
    };
    Ok(algorithm)
}

/// What an assertion must say.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The client it is from (`iss` and `sub`).
    pub client_id: &'a str,
    /// What it may be addressed to (`aud`): Keystone's issuer and its token endpoint.
    pub audiences: &'a [String],
    /// How far clocks may disagree, in seconds.
    pub leeway: i64,
}

/// An assertion that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// Its id, to be used once.
    pub jti: String,
    /// When it expires: until then its `jti` must be remembered.
    pub expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

/// The client an assertion of its own key claims to be from, unchecked: its `sub` when its
/// `iss` says the same (RFC 7521 section 4.2; a workload token's issuer is another party),
/// which client to look up when no `client_id` was sent. Nothing is trusted until [`verify`]
/// says so.
pub fn claimed_client(assertion: &str) -> Option<String> {
    let claims = unverified_claims(assertion)?;
    let sub = claims.get("sub")?.as_str()?;
    (claims.get("iss")?.as_str()? == sub).then(|| sub.to_owned())
}

/// The `iss` an assertion names, unchecked: which trusted issuer's keys to check it with.
pub fn claimed_issuer(assertion: &str) -> Option<String> {
    unverified_claims(assertion)?
        .get("iss")?
        .as_str()
        .map(str::to_owned)
}

/// The `kid` an assertion's header names, unchecked (`None`: none, or no readable header):
/// whether the cached keys can check it, or the issuer's must be fetched again.
pub fn claimed_kid(assertion: &str) -> Option<String> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return None;
    }
    let header: UntrustedHeader = decode_part(assertion.split('.').next()?)?;
    header.kid?.as_str().map(str::to_owned)
}

/// An assertion's claims, read without checking anything.
fn unverified_claims(assertion: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return None;
    }
    decode_part(assertion.split('.').nth(1)?)
}

/// Why an assertion was refused, and whether its signature had checked out: until it has,
/// the caller is told nothing (which keys a client has is not for strangers to probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What is wrong.
    pub why: AssertionError,
    /// Whether the signature verified with a registered key before the refusal.
    pub signed: bool,
}

/// Checks `assertion` against the client's `keys` and what it must say, at `now`.
pub fn verify(
    assertion: &str,
    keys: &ClientKeys,
    expected: Expected<'_>,
    now: DateTime<Utc>,
) -> Result<VerifiedAssertion, Refusal> {
    let claims = signed_claims(
        assertion,
        keys,
        "iss, sub, aud and exp are required, with their JSON types",
    )
    .map_err(|(why, signed)| Refusal { why, signed })?;
    check_claims(claims, expected, now).map_err(|why| Refusal { why, signed: true })
}

/// What a workload's token (a Kubernetes service-account token, a SPIRE JWT-SVID) must say.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadExpected<'a> {
    /// Its issuer (`iss`).
    pub issuer: &'a str,
    /// What it must be addressed to (one of its `aud`).
    pub audience: &'a str,
    /// The oldest it may be, by its `iat`, in seconds.
    pub max_age: i64,
    /// How far clocks may disagree, in seconds.
    pub leeway: i64,
}

/// A workload's token that checked out: whom it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedWorkload {
    /// Its `sub` (`system:serviceaccount:payments:api`, `spiffe://example.org/ns/payments`).
    pub subject: String,
}

/// Checks a workload's token against its issuer's `keys` and what it must say, at `now`. It
/// may be used again until it expires, as its workload does: it is the workload's identity,
/// not a one-time proof.
pub fn verify_workload(
    assertion: &str,
    keys: &ClientKeys,
    expected: WorkloadExpected<'_>,
    now: DateTime<Utc>,
) -> Result<VerifiedWorkload, Refusal> {
    let claims: Claims = signed_claims(
        assertion,
        keys,
        "iss, sub, aud and exp are required, with their JSON types",
    )
    .map_err(|(why, signed)| Refusal { why, signed })?;
    let refuse = |why: &'static str| Refusal {
        why: AssertionError(why),
        signed: true,
    };
    let Some(iat) = claims.iat else {
        return Err(refuse("iat is required: the token's age is checked"));
    };
    if claims.iss != expected.issuer {
        return Err(refuse("iss is not the trusted issuer's"));
    }
    if !claims.aud.contains(expected.audience) {
        return Err(refuse(
            "aud does not name what this issuer's tokens must be addressed to (Keystone's \
             issuer unless configured otherwise)",
        ));
    }
    if claims.sub.is_empty() || claims.sub.len() > 256 {
        return Err(refuse("sub must hold 1 to 256 bytes"));
    }
    let seconds = now.timestamp();
    if seconds >= claims.exp.saturating_add(expected.leeway) {
        return Err(refuse("the token has expired"));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > seconds.saturating_add(expected.leeway))
    {
        return Err(refuse("the token is not valid yet (nbf)"));
    }
    if iat > seconds.saturating_add(expected.leeway) {
        return Err(refuse("the token was issued in the future (iat)"));
    }
    if iat < seconds - expected.max_age - expected.leeway {
        return Err(refuse(
            "the token is older than this issuer's max_assertion_age (iat)",
        ));
    }
    Ok(VerifiedWorkload {
        subject: claims.sub,
    })
}

/// The claims of an assertion signed by one of `keys`; a refusal says whether the signature
/// had verified (claims of the wrong shape under a good signature: `shape` says what they
/// must be).
fn signed_claims<C: serde::de::DeserializeOwned>(
    assertion: &str,
    keys: &ClientKeys,
    shape: &'static str,
) -> Result<C, (AssertionError, bool)> {
    let key = key_for(assertion, keys).map_err(|why| (why, false))?;
    let mut validation = Validation::new(key.algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<C>(assertion, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|error| match error.kind() {
            // The signature verified: the claims are what is wrong.
            jsonwebtoken::errors::ErrorKind::Json(_) => (AssertionError(shape), true),
            _ => (
                AssertionError("the assertion's signature does not verify"),
                false,
            ),
        })
}

/// The registered key an assertion's header names, refusing headers that bring their own.
fn key_for<'a>(assertion: &str, keys: &'a ClientKeys) -> Result<&'a ClientKey, AssertionError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError("the assertion is longer than 8 KiB"));
    }
    let Some([header, _, _]) = jws_parts(assertion) else {
        return Err(AssertionError("the assertion is not a JWT (three parts)"));
    };
    let header: UntrustedHeader = decode_part(header).ok_or(AssertionError(
        "the assertion's header is not base64url JSON",
    ))?;
    if header.brings_a_key() {
        return Err(AssertionError(
            "keys in the assertion's header are not accepted: it is checked with the client's \
             registered keys",
        ));
    }
    let key = match header.kid.as_ref() {
        Some(kid) => {
            let kid = kid
                .as_str()
                .ok_or(AssertionError("the assertion's kid is not a string"))?;
            keys.keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .ok_or(AssertionError("no registered key has the assertion's kid"))?
        }
        None => match keys.keys.as_slice() {
            [only] => only,
            _ => return Err(AssertionError("the assertion names no kid")),
        },
    };
    // The key decides the algorithm, never the assertion.
    let named = header
        .alg
        .as_str()
        .and_then(|name| name.parse::<Algorithm>().ok());
    if named != Some(key.algorithm) {
        return Err(AssertionError(
            "the assertion's alg is not the registered key's",
        ));
    }
    Ok(key)
}

/// What a signed assertion must say, at `now`.
fn check_claims(
    claims: Claims,
    expected: Expected<'_>,
    now: DateTime<Utc>,
) -> Result<VerifiedAssertion, AssertionError> {
    if claims.iss != expected.client_id || claims.sub != expected.client_id {
        return Err(AssertionError("iss and sub must both be the client's id"));
    }
    if !expected
        .audiences
        .iter()
        .any(|audience| claims.aud.contains(audience))
    {
        return Err(AssertionError(
            "aud must name Keystone: its issuer or its token endpoint",
        ));
    }
    let jti = claims.jti.unwrap_or_default();
    if jti.is_empty() || jti.len() > 256 {
        return Err(AssertionError("jti must hold 1 to 256 bytes"));
    }
    let seconds = now.timestamp();
    if seconds >= claims.exp.saturating_add(expected.leeway) {
        return Err(AssertionError("the assertion has expired"));
    }
    if claims.exp > seconds.saturating_add(MAX_LIFETIME.num_seconds() + expected.leeway) {
        return Err(AssertionError(
            "the assertion lives too long: exp at most an hour ahead",
        ));
    }
    for (claim, at) in [("nbf", claims.nbf), ("iat", claims.iat)] {
        if at.is_some_and(|at| at > seconds.saturating_add(expected.leeway)) {
            return Err(if claim == "nbf" {
                AssertionError("the assertion is not valid yet (nbf)")
            } else {
                AssertionError("the assertion was issued in the future (iat)")
            });
        }
    }
    if claims
        .iat
        .is_some_and(|iat| iat < seconds - MAX_LIFETIME.num_seconds() - expected.leeway)
    {
        return Err(AssertionError("the assertion is too old (iat)"));
    }
    Ok(VerifiedAssertion {
        jti,
        expires_at: DateTime::from_timestamp(claims.exp.saturating_add(expected.leeway), 0)
            .ok_or(AssertionError("exp is out of range"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
    };
    use jsonwebtoken::{EncodingKey, Header as JwtHeader};

    const CLIENT: &str = "payments";
    const ISSUER: &str = "https://auth.example.com";
    static AUDIENCES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

    /// A P-256 key pair: its signing key and its public JWK.
    fn key(kid: &str) -> (EncodingKey, serde_json::Value) {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn sign(key: &EncodingKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = JwtHeader::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn claims(now: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "iss": CLIENT, "sub": CLIENT, "aud": format!("{ISSUER}/oauth2/token"),
            "exp": now.timestamp() + 60, "iat": now.timestamp(), "jti": "a1",
        })
    }

    fn expected() -> Expected<'static> {
        Expected {
            client_id: CLIENT,
            audiences: AUDIENCES
                .get_or_init(|| vec![ISSUER.to_owned(), format!("{ISSUER}/oauth2/token")]),
            leeway: 30,
        }
    }

    fn keys(jwks: &[serde_json::Value]) -> ClientKeys {
        ClientKeys::parse(&serde_json::json!({ "keys": jwks }).to_string()).unwrap()
    }

    #[test]
    fn a_good_assertion_passes_and_each_broken_rule_is_refused() {
        let now = crate::clock::system_now();
        let (signing, jwk) = key("k1");
        let (other, other_jwk) = key("k2");
        let registered = keys(&[jwk.clone(), other_jwk]);
        let good = sign(&signing, Some("k1"), &claims(now));
        let verified = verify(&good, &registered, expected(), now).unwrap();
        assert_eq!(verified.jti, "a1");
        assert_eq!(verified.expires_at.timestamp(), now.timestamp() + 90);

        let with = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut claims = claims(now);
            change(&mut claims);
            sign(&signing, Some("k1"), &claims)
        };
        let cases: Vec<(&str, String, bool)> = vec![
            (
                "another key under k1's kid",
                sign(&other, Some("k1"), &claims(now)),
                false,
            ),
            (
                "no kid among several keys",
                sign(&signing, None, &claims(now)),
                false,
            ),
            (
                "an unknown kid",
                sign(&signing, Some("k9"), &claims(now)),
                false,
            ),
            (
                "iss of another",
                with(&|c| c["iss"] = "orders".into()),
                true,
            ),
            (
                "sub of another",
                with(&|c| c["sub"] = "orders".into()),
                true,
            ),
            (
                "another audience",
                with(&|c| c["aud"] = "https://other.example.com".into()),
                true,
            ),
            (
                "expired",
                with(&|c| c["exp"] = (now.timestamp() - 31).into()),
                true,
            ),
            (
                "an hour and more ahead",
                with(&|c| c["exp"] = (now.timestamp() + 3700).into()),
                true,
            ),
            (
                "not valid yet",
                with(&|c| c["nbf"] = (now.timestamp() + 120).into()),
                true,
            ),
            (
                "issued in the future",
                with(&|c| c["iat"] = (now.timestamp() + 120).into()),
                true,
            ),
            (
                "too old",
                with(&|c| c["iat"] = (now.timestamp() - 4000).into()),
                true,
            ),
            (
                "no jti",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("jti");
                }),
                true,
            ),
            (
                "no exp",
                with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                true,
            ),
            ("garbage", "a.b.c".to_owned(), false),
            ("two parts", "a.b".to_owned(), false),
        ];
        for (case, assertion, signed) in cases {
            let refusal = verify(&assertion, &registered, expected(), now).unwrap_err();
            assert_eq!(refusal.signed, signed, "{case}: {refusal:?}");
        }
        // `alg: none`, HMAC keyed with the public key, a key in the header.
        let payload = good.split('.').nth(1).unwrap();
        let forge = |header: serde_json::Value, signature: &str| {
            format!(
                "{}.{payload}.{signature}",
                URL_SAFE_NO_PAD.encode(header.to_string())
            )
        };
        let hmac = jsonwebtoken::encode(
            &JwtHeader {
                kid: Some("k1".into()),
                ..JwtHeader::new(Algorithm::HS256)
            },
            &claims(now),
            &EncodingKey::from_secret(jwk.to_string().as_bytes()).unwrap(),
        )
        .unwrap();
        for (case, assertion) in [
            (
                "alg none",
                forge(serde_json::json!({"alg": "none", "kid": "k1"}), ""),
            ),
            ("HMAC", hmac),
            (
                "a key in the header",
                forge(
                    serde_json::json!({"alg": "ES256", "kid": "k1", "jwk": jwk}),
                    "c2ln",
                ),
            ),
        ] {
            let refusal = verify(&assertion, &registered, expected(), now).unwrap_err();
            assert!(
                !refusal.signed,
                "{case}: nothing is said before the signature checks out"
            );
        }
    }

    #[test]
    fn a_published_set_keeps_the_keys_keystone_can_use() {
        let (_, jwk) = key("k1");
        let mut svid = key("k2").1;
        svid["use"] = "jwt-svid".into();
        let mut x509 = key("x").1;
        x509["use"] = "x509-svid".into();
        let mut encrypting = key("e").1;
        encrypting["use"] = "enc".into();
        let set = serde_json::json!({ "keys": [
            jwk, svid, x509, encrypting.clone(), {"kty": "OKP", "crv": "X25519", "x": "eA"},
            "not a key",
        ]});
        let keys = ClientKeys::parse_published(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.knows(Some("k1")) && keys.knows(Some("k2")));
        assert!(!keys.knows(Some("x")) && !keys.knows(None));

        let mut private = key("p").1;
        private["d"] = "c2VjcmV0".into();
        let (_, twin) = key("k1");
        for (case, set) in [
            ("a private key", serde_json::json!({ "keys": [private] })),
            (
                "a symmetric key",
                serde_json::json!({ "keys": [{"kty": "oct", "k": "eA"}] }),
            ),
            ("no usable key", serde_json::json!({ "keys": [encrypting] })),
            (
                "a kid twice",
                serde_json::json!({ "keys": [key("k1").1, twin] }),
            ),
            ("not a set", serde_json::json!([])),
        ] {
            assert!(
                ClientKeys::parse_published(set.to_string().as_bytes()).is_err(),
                "{case}"
            );
        }
    }

    #[test]
    fn a_workload_token_is_checked_against_its_issuer() {
        let now = crate::clock::system_now();
        let (signing, jwk) = key("k1");
        let keys = ClientKeys::parse_published(
            serde_json::json!({ "keys": [jwk] }).to_string().as_bytes(),
        )
        .unwrap();
        let expected = WorkloadExpected {
            issuer: "https://cluster",
            audience: ISSUER,
            max_age: 600,
            leeway: 30,
        };
        let claims = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut claims = serde_json::json!({
                "iss": "https://cluster", "sub": "system:serviceaccount:a:b",
                "aud": [ISSUER, "https://other"], "exp": now.timestamp() + 60,
                "iat": now.timestamp(),
            });
            change(&mut claims);
            sign(&signing, Some("k1"), &claims)
        };
        let verified = verify_workload(&claims(&|_| {}), &keys, expected, now).unwrap();
        assert_eq!(verified.subject, "system:serviceaccount:a:b");
        for (case, token) in [
            ("another issuer", claims(&|c| c["iss"] = "https://x".into())),
            (
                "another audience",
                claims(&|c| c["aud"] = "https://x".into()),
            ),
            (
                "expired",
                claims(&|c| c["exp"] = (now.timestamp() - 31).into()),
            ),
            (
                "too old",
                claims(&|c| c["iat"] = (now.timestamp() - 700).into()),
            ),
            (
                "from the future",
                claims(&|c| c["iat"] = (now.timestamp() + 120).into()),
            ),
            (
                "not yet",
                claims(&|c| c["nbf"] = (now.timestamp() + 120).into()),
            ),
            ("no sub", claims(&|c| c["sub"] = "".into())),
            (
                "no iat",
                claims(&|c| {
                    c.as_object_mut().unwrap().remove("iat");
                }),
            ),
        ] {
            let refusal = verify_workload(&token, &keys, expected, now).unwrap_err();
            assert!(refusal.signed, "{case}: said once the signature verified");
        }
    }

    #[test]
    fn only_public_signing_keys_are_registered() {
        let (_, jwk) = key("k1");
        assert!(ClientKeys::parse(&serde_json::json!({ "keys": [jwk] }).to_string()).is_ok());
        let mut private = jwk.clone();
        private["d"] = "c2VjcmV0".into();
        let mut encrypting = jwk.clone();
        encrypting["use"] = "enc".into();
        let mut hmac_alg = jwk.clone();
        hmac_alg["alg"] = "HS256".into();
        let mut unnamed = jwk.clone();
        unnamed.as_object_mut().unwrap().remove("kid");
        let small_rsa = serde_json::json!({
            "kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5_u8; 128]), "e": "AQAB",
        });
        for (case, set) in [
            ("a private key", serde_json::json!({ "keys": [private] })),
            (
                "an encryption key",
                serde_json::json!({ "keys": [encrypting] }),
            ),
            (
                "HS256 on an EC key",
                serde_json::json!({ "keys": [hmac_alg] }),
            ),
            (
                "a symmetric key",
                serde_json::json!({ "keys": [{"kty": "oct", "k": "c2VjcmV0"}] }),
            ),
            ("1024-bit RSA", serde_json::json!({ "keys": [small_rsa] })),
            ("no keys", serde_json::json!({ "keys": [] })),
            (
                "a kid twice",
                serde_json::json!({ "keys": [jwk.clone(), jwk.clone()] }),
            ),
            (
                "several keys, one without a kid",
                serde_json::json!({ "keys": [jwk.clone(), unnamed] }),
            ),
            ("not a set", jwk.clone()),
        ] {
            assert!(ClientKeys::parse(&set.to_string()).is_err(), "{case}");
        }
        assert!(ClientKeys::parse(&"x".repeat(MAX_JWKS_BYTES + 1)).is_err());
    }
}
