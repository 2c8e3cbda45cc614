//! DPoP for the load generator: a P-256 key of the bench's own, a token bound to it from
//! `POST /oauth2/token` (plain HTTP/1.1 over TCP, or TLS with `--ca-file`), and proofs made
//! ahead of a scenario (signing them is the client's work, not the server's, so it is not
//! measured; each is used once and is good for a minute).

use std::sync::Arc;

use anyhow::Context as _;
use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::{Args, tls::TlsClient};

/// The resource the `authenticate-dpop` proofs are for.
pub(crate) const RESOURCE: &str = "https://api.example.com/orders";

/// The bench's DPoP key.
pub(crate) struct DpopKey {
    signing: EncodingKey,
    header: Header,
}

impl DpopKey {
    /// A new P-256 key.
    pub(crate) fn new() -> anyhow::Result<Self> {
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
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".to_owned());
        header.jwk = Some(serde_json::from_value(jwk)?);
        Ok(Self {
            signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
            header,
        })
    }

    /// A proof for `method uri`, made now, for `token` if given.
    pub(crate) fn proof(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut claims = serde_json::json!({
            "jti": uuid::Uuid::new_v4().simple().to_string(),
            "htm": method,
            "htu": uri,
            "iat": keystone::clock::system_now().timestamp(),
        });
        if let Some(token) = token {
            claims["ath"] = URL_SAFE_NO_PAD
                .encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    token.as_bytes(),
                ))
                .into();
        }
        Ok(jsonwebtoken::encode(&self.header, &claims, &self.signing)?)
    }

    /// `count` proofs for `GET RESOURCE` with `token`, made on every core.
    pub(crate) fn proofs(&self, token: &str, count: usize) -> anyhow::Result<Vec<String>> {
        crate::ahead::on_every_core(count, || self.proof("GET", RESOURCE, Some(token)))
    }
}

/// A token of the bench client bound to `key`, from `/oauth2/token` at `--http-addr`.
pub(crate) async fn bound_token(
    args: &Args,
    tls: Option<&Arc<TlsClient>>,
    key: &DpopKey,
    client_id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    let discovery = http(
        args,
        tls,
        "GET",
        "/.well-known/openid-configuration",
        &[],
        "",
    )
    .await?;
    let endpoint = discovery["token_endpoint"]
        .as_str()
        .context("the discovery document names no token_endpoint")?
        .to_owned();
    let proof = key.proof("POST", &endpoint, None)?;
    let form = serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", "keystone:introspect"),
    ])?;
    let issued = http(
        args,
        tls,
        "POST",
        "/oauth2/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("dpop", &proof),
        ],
        &form,
    )
    .await?;
    anyhow::ensure!(
        issued["token_type"] == "DPoP",
        "the token endpoint did not bind the token: {issued}"
    );
    issued["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token")
}

/// One HTTP/1.1 request to `--http-addr`, its JSON answer.
async fn http(
    args: &Args,
    tls: Option<&Arc<TlsClient>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = url::Url::parse(&args.http_addr).context("--http-addr")?;
    let addr = url
        .socket_addrs(|| Some(8080))
        .context("--http-addr")?
        .into_iter()
        .next()
        .context("--http-addr names no address")?;
    let host = url.host_str().unwrap_or("localhost");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {}", args.http_addr))?;
    let answer = match (url.scheme(), tls) {
        ("https", Some(tls)) => exchange(tls.http_connect(stream).await?, &request).await?,
        ("https", None) => anyhow::bail!("an https:// --http-addr needs --ca-file"),
        _ => exchange(stream, &request).await?,
    };
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the answer has no body")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{method} {path}: {head}\n{body}"
    );
    serde_json::from_str(body).with_context(|| format!("{method} {path}: not JSON: {body}"))
}

async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &str,
) -> anyhow::Result<Vec<u8>> {
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer).await {
        Ok(_) => Ok(answer),
        // A TLS peer that closes without close_notify: what was read is the answer.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {
            Ok(answer)
        }
        Err(error) => Err(error.into()),
    }
}
