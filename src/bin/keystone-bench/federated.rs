//! `client-credentials-federated`: the bench plays a Kubernetes cluster. It serves the
//! cluster's key set (one RS256 key) on loopback at `--jwks-addr`, which the server trusts as
//! `[[federation.issuers]]` (scripts/bench.sh writes that setting), and presents one projected
//! service-account token, addressed to Keystone, on every call, as a pod does: the server
//! checks it against the keys it cached after the first call.

use std::net::SocketAddr;

use anyhow::Context as _;
use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair, KeySize},
    signature::{KeyPair as _, RSA_PKCS1_SHA256},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// The issuer the bench plays (its tokens' `iss`).
pub(crate) const ISSUER: &str = "https://kubernetes.keystone-bench.invalid";

/// What the server's `[[federation.issuers]]` calls it.
pub(crate) const ISSUER_NAME: &str = "keystone-bench";

/// The workload client of `client-credentials-federated`, its pod's service account (one per
/// run: an identity names one client), and the pod's token.
pub(crate) struct Federated {
    pub(crate) client_id: String,
    pub(crate) subject: String,
    pub(crate) token: String,
}

impl Federated {
    /// Serves a new key's set on `addr` for as long as the bench runs, and signs a token for
    /// the issuer of `keystone_token` (one Keystone just issued), stamped with its clock and
    /// good for an hour.
    pub(crate) async fn start(
        client_id: String,
        addr: SocketAddr,
        keystone_token: &str,
    ) -> anyhow::Result<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("cannot make an RSA key"))?;
        let public = pair.public_key();
        let jwks = serde_json::json!({ "keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": client_id,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        }] })
        .to_string();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve the bench's key set on --jwks-addr {addr}"))?;
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || std::future::ready(jwks.clone())),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });

        let (issuer, issued_at) = crate::assertion::issuer_of(keystone_token)?;
        let subject = format!("system:serviceaccount:keystone-bench:{client_id}");
        let encode = |value: serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let input = format!(
            "{}.{}",
            encode(serde_json::json!({ "alg": "RS256", "kid": client_id })),
            encode(serde_json::json!({
                "iss": ISSUER, "sub": subject, "aud": [issuer],
                "iat": issued_at, "nbf": issued_at, "exp": issued_at + 3600,
            })),
        );
        let mut signature = vec![0; public.modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| anyhow::anyhow!("cannot sign the bench's service-account token"))?;
        Ok(Self {
            client_id,
            subject,
            token: format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)),
        })
    }
}
