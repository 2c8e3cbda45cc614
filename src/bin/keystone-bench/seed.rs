//! What the scenarios need, made before they run: the client, the users, the tokens; and the
//! argon2 limit the password scenario is compared with.

use std::sync::atomic::AtomicUsize;

use anyhow::Context as _;
use keystone::proto::pb::{
    Client, ClientCredentialsGrant, CreateClientRequest, CreateUserRequest, IssueTokenRequest,
    PasswordGrant, auth_client::AuthClient, client_admin_client::ClientAdminClient,
    issue_token_request::Grant, user_admin_client::UserAdminClient,
};
use tonic::transport::Channel;

use crate::{Args, Fixtures};

/// Logs the admin in, creates a bench client, and mints tokens.
pub(crate) async fn seed(args: &Args, channel: &Channel) -> anyhow::Result<Fixtures> {
    let mut auth = AuthClient::new(channel.clone());
    let admin = auth
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::Password(PasswordGrant {
                username: args.admin.clone(),
                password: args.password.clone(),
            })),
            // Keystone's own scopes are never implied: asked for by name.
            scopes: vec!["keystone:admin".into()],
            ..Default::default()
        })
        .await
        .context("the admin cannot log in")?
        .into_inner()
        .access_token;
    let client_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
    // The relay of `token-exchange`: it may exchange tokens meant for it, for another audience.
    let relay_id = format!("{client_id}-relay");
    let relay_secret = create_client(
        channel,
        &admin,
        Client {
            client_id: relay_id.clone(),
            name: "keystone-bench (token exchange)".into(),
            allowed_audiences: vec!["bench-downstream".into()],
            token_exchange: true,
            ..Default::default()
        },
    )
    .await
    .context("cannot create the bench's relay client")?;
    let secret = create_client(
        channel,
        &admin,
        Client {
            client_id: client_id.clone(),
            name: "keystone-bench".into(),
            allowed_scopes: vec!["keystone:introspect".into()],
            // Its tokens are for Keystone, so that it may see them active when it
            // introspects them (RFC 7662 section 4); and for the relay.
            allowed_audiences: vec!["keystone".into(), relay_id.clone()],
            ..Default::default()
        },
    )
    .await
    .context("cannot create the bench client")?;
    let token = mint(&mut auth, &client_id, &secret).await?;
    let for_relay = auth
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                client_id: client_id.clone(),
                client_secret: secret.clone(),
                ..Default::default()
            })),
            audience: relay_id.clone(),
            ..Default::default()
        })
        .await
        .context("cannot mint the token to exchange")?
        .into_inner()
        .access_token;
    let fresh = mint_many(
        channel,
        &client_id,
        &secret,
        args.fresh_tokens,
        args.concurrency,
    )
    .await
    .context("cannot mint the fresh tokens")?;
    let password = format!("bench {} horse staple", uuid::Uuid::new_v4().simple());
    let mut users = Vec::with_capacity(args.users.max(1));
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    for n in 0..args.users.max(1) {
        let username = format!("bench{}u{n}", &run_id[..8]);
        let mut request = tonic::Request::new(CreateUserRequest {
            username: username.clone(),
            email: format!("{username}@bench.invalid"),
            password: password.clone(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {admin}").parse()?);
        UserAdminClient::new(channel.clone())
            .create_user(request)
            .await
            .context("cannot create a bench user")?;
        users.push(username);
    }
    let pkjwt = if args
        .scenarios
        .split(',')
        .any(|s| s.trim() == "client-credentials-pkjwt")
    {
        let (pkjwt, jwks) = crate::assertion::Pkjwt::new(format!("{client_id}-pkjwt"), &token)?;
        create_client(
            channel,
            &admin,
            Client {
                client_id: pkjwt.client_id.clone(),
                name: "keystone-bench (private_key_jwt)".into(),
                jwks_json: jwks,
                ..Default::default()
            },
        )
        .await
        .context("cannot create the bench's private_key_jwt client")?;
        Some(pkjwt)
    } else {
        None
    };
    let federated = if args
        .scenarios
        .split(',')
        .any(|s| s.trim() == "client-credentials-federated")
    {
        let federated = crate::federated::Federated::start(
            format!("{client_id}-federated"),
            args.jwks_addr,
            &token,
        )
        .await?;
        create_client(
            channel,
            &admin,
            Client {
                client_id: federated.client_id.clone(),
                name: "keystone-bench (workload identity)".into(),
                federated_identities: vec![keystone::proto::pb::FederatedIdentity {
                    issuer_name: crate::federated::ISSUER_NAME.into(),
                    subject: federated.subject.clone(),
                }],
                ..Default::default()
            },
        )
        .await
        .with_context(|| {
            format!(
                "cannot create the bench's workload client: the server must trust the issuer \
                 `{}` ({}) with jwks_uri http://{}/jwks (scripts/bench.sh sets this up)",
                crate::federated::ISSUER_NAME,
                crate::federated::ISSUER,
                args.jwks_addr
            )
        })?;
        Some(federated)
    } else {
        None
    };
    let mtls_client_id = match &args.cert_file {
        Some(cert) => Some(seed_mtls_client(channel, &admin, cert).await?),
        None => None,
    };
    Ok(Fixtures {
        mtls_client_id,
        pkjwt,
        federated,
        dpop: None,
        exchange: Exchange {
            client_id: relay_id,
            secret: relay_secret,
            subject_token: for_relay,
        },
        client_id,
        secret,
        token,
        fresh,
        next_fresh: AtomicUsize::new(0),
        users,
        password,
        tls: crate::tls_client(args)?,
        sessions: std::sync::Mutex::default(),
    })
}

/// What `token-exchange` sends: the relay's credentials and the token it exchanges.
pub(crate) struct Exchange {
    pub(crate) client_id: String,
    pub(crate) secret: String,
    pub(crate) subject_token: String,
}

/// Creates `client` as `admin`; its secret (empty for one that needs none).
async fn create_client(channel: &Channel, admin: &str, client: Client) -> anyhow::Result<String> {
    let mut request = tonic::Request::new(CreateClientRequest {
        client: Some(client),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse()?);
    Ok(ClientAdminClient::new(channel.clone())
        .create_client(request)
        .await?
        .into_inner()
        .client_secret)
}

/// A client that authenticates by the bench's certificate (its thumbprint registered: RFC 8705
/// `self_signed_tls_client_auth`, which also takes a certificate of the client CA).
async fn seed_mtls_client(
    channel: &Channel,
    admin: &str,
    cert: &std::path::Path,
) -> anyhow::Result<String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let pem = std::fs::read(cert)
        .with_context(|| format!("cannot read --cert-file {}", cert.display()))?;
    let der = CertificateDer::from_pem_slice(&pem).context("--cert-file holds no certificate")?;
    let thumbprint: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let client_id = format!("bench-mtls-{}", uuid::Uuid::new_v4().simple());
    create_client(
        channel,
        admin,
        Client {
            client_id: client_id.clone(),
            name: "keystone-bench (mTLS)".into(),
            tls_client_certificate_sha256: vec![thumbprint],
            ..Default::default()
        },
    )
    .await
    .context("cannot create the bench's mTLS client")?;
    Ok(client_id)
}

/// Mints `count` tokens with `workers` calls in flight.
pub(crate) async fn mint_many(
    channel: &Channel,
    client_id: &str,
    secret: &str,
    count: usize,
    workers: usize,
) -> anyhow::Result<Vec<String>> {
    let workers = workers.max(1);
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let share = count / workers + usize::from(worker < count % workers);
        let mut auth = AuthClient::new(channel.clone());
        let (client_id, secret) = (client_id.to_owned(), secret.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut tokens = Vec::with_capacity(share);
            for _ in 0..share {
                tokens.push(mint(&mut auth, &client_id, &secret).await?);
            }
            anyhow::Ok(tokens)
        }));
    }
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// A password login of the `n`th user; its tokens.
pub(crate) async fn login(
    auth: &mut AuthClient<Channel>,
    fixtures: &Fixtures,
    n: usize,
) -> Result<keystone::proto::pb::TokenResponse, tonic::Status> {
    auth.issue_token(IssueTokenRequest {
        grant: Some(Grant::Password(PasswordGrant {
            username: fixtures.users[n % fixtures.users.len()].clone(),
            password: fixtures.password.clone(),
        })),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// The argon2 limit: cores ÷ the time of one verification with the server's parameters,
/// measured here right before it is used (the fastest of 15, one at a time: the highest
/// limit, so the hardest target).
pub(crate) fn argon2_limit(args: &Args) -> anyhow::Result<f64> {
    use argon2::{PasswordHasher as _, PasswordVerifier as _};
    let params = argon2::Params::new(
        args.argon2_memory_kib,
        args.argon2_iterations,
        args.argon2_parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = argon2::password_hash::SaltString::encode_b64(b"keystone-bench-salt")
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2
        .hash_password(b"correct horse battery staple", &salt)
        .map_err(|e| anyhow::anyhow!("hash: {e}"))?;
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let started = keystone::clock::monotonic();
            let _ = argon2.verify_password(b"correct horse battery staple", &hash);
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // For the record: what every core verifying at once achieves (they share memory
    // bandwidth and cache, so it is less than the limit).
    let started = keystone::clock::monotonic();
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(|| {
                for _ in 0..8 {
                    let _ = argon2.verify_password(b"correct horse battery staple", &hash);
                }
            });
        }
    });
    eprintln!(
        "argon2: one verification {:.1} ms; every core at once {:.0}/s",
        times[0] * 1000.0,
        (cores * 8) as f64 / started.elapsed().as_secs_f64()
    );
    Ok(cores as f64 / times[0])
}

pub(crate) async fn mint(
    auth: &mut AuthClient<Channel>,
    client_id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    Ok(auth
        .issue_token(IssueTokenRequest {
            grant: Some(Grant::ClientCredentials(ClientCredentialsGrant {
                client_id: client_id.to_owned(),
                client_secret: secret.to_owned(),
                ..Default::default()
            })),
            scopes: vec!["keystone:introspect".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .access_token)
}
