//! `private_key_jwt` for the load generator: a P-256 key of the bench's own, registered on a
//! client, and client assertions signed ahead of the scenario (signing is the client's work,
//! not the server's, so it is not measured; each is used once).

use anyhow::Context as _;
use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The client of `client-credentials-pkjwt`, its key, and the assertions of the next run.
pub(crate) struct Pkjwt {
    pub(crate) client_id: String,
    signing: EncodingKey,
    /// Keystone's issuer: the assertions' audience.
    issuer: String,
    /// How far Keystone's clock is ahead of this machine's, in seconds (from a token's `iat`):
    /// assertions are stamped with Keystone's time.
    skew: i64,
    pub(crate) assertions: crate::ahead::MadeAhead,
}

impl Pkjwt {
    /// A new P-256 key for `client_id`, and the JWK Set to register; assertions are for the
    /// issuer of `token` (one Keystone just issued), stamped with its clock.
    pub(crate) fn new(client_id: String, token: &str) -> anyhow::Result<(Self, String)> {
        let (issuer, issued_at) = issuer_of(token)?;
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("cannot make a P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("cannot read the P-256 key"))?;
        let point = pair.public_key().as_ref();
        let (x, y) = (
            point.get(1..33).context("a P-256 point")?,
            point.get(33..65).context("a P-256 point")?,
        );
        let jwks = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "bench",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }] });
        Ok((
            Self {
                client_id,
                signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
                issuer,
                skew: issued_at - keystone::clock::system_now().timestamp(),
                assertions: crate::ahead::MadeAhead::default(),
            },
            jwks.to_string(),
        ))
    }

    /// `count` assertions, each with its own `jti`, good for five minutes, made on every core.
    pub(crate) fn sign(&self, count: usize) -> anyhow::Result<Vec<String>> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("bench".to_owned());
        let now = keystone::clock::system_now().timestamp() + self.skew;
        crate::ahead::on_every_core(count, || {
            let claims = serde_json::json!({
                "iss": self.client_id, "sub": self.client_id,
                "aud": self.issuer, "iat": now, "exp": now + 300,
                "jti": uuid::Uuid::new_v4().simple().to_string(),
            });
            Ok(jsonwebtoken::encode(&header, &claims, &self.signing)?)
        })
    }
}

/// The issuer and issue time of a token Keystone issued (`iss`, `iat`), read without
/// checking: the bench only addresses and stamps its assertions with them.
pub(crate) fn issuer_of(token: &str) -> anyhow::Result<(String, i64)> {
    let payload = token.split('.').nth(1).context("a JWT")?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    let issuer = claims["iss"].as_str().context("a token without iss")?;
    let issued_at = claims["iat"].as_i64().context("a token without iat")?;
    Ok((issuer.to_owned(), issued_at))
}
