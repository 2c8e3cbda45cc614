//! TLS on every listener, tried with real clients: tonic over rustls for gRPC, hyper over
//! tokio-rustls for HTTP. Client certificates asked for and checked; files that cannot be used
//! stop the start; a certificate changed on disk is used for new connections while calls go on.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Empty};
use keystone::{App, config::ClientAuth, proto::pb::GetJwksRequest};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{TestDatabase, spawn_app_tls, test_settings};

/// A certificate authority of the test's own.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
pub(crate) struct Leaf {
    pub(crate) cert: String,
    pub(crate) key: String,
}

impl Leaf {
    /// The certificate's DER.
    pub(crate) fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_slice(self.cert.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// A self-signed client certificate for `name`.
    pub(crate) fn self_signed(name: &str, uri: Option<&str>) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Self {
            cert: params.self_signed(&key).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost`.
    pub(crate) fn server(&self) -> Leaf {
        self.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    pub(crate) fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate with the subject `CN=<common_name>,O=<organization>` and a URI
    /// subject alternative name such as a SPIFFE ID.
    pub(crate) fn workload(&self, common_name: &str, organization: &str, uri: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Most general first, as certificates list them (rcgen starts with a CN of its own).
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, organization);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A client certificate valid only from `from` to `until` (years).
    pub(crate) fn client_valid(&self, name: &str, from: i32, until: i32) -> Leaf {
        self.leaf_valid(
            &[name],
            ExtendedKeyUsagePurpose::ClientAuth,
            Some((from, until)),
        )
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.leaf_valid(names, usage, None)
    }

    fn leaf_valid(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        years: Option<(i32, i32)>,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        if let Some((from, until)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 1, 1);
        }
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The server's files in a folder of the test's own.
pub(crate) struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub(crate) fn new(server: &Leaf, client_ca: Option<&Ca>) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write_server(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.path("client-ca.pem"), &ca.pem).unwrap();
        }
        files
    }

    pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write_server(&self, server: &Leaf) {
        std::fs::write(self.path("tls.key"), &server.key).unwrap();
        std::fs::write(self.path("tls.crt"), &server.cert).unwrap();
    }

    pub(crate) fn configure(
        &self,
        settings: &mut keystone::Settings,
        client_auth: Option<ClientAuth>,
    ) {
        settings.tls.cert_file = Some(self.path("tls.crt"));
        settings.tls.key_file = Some(self.path("tls.key"));
        if client_auth.is_some() {
            settings.tls.client_ca_file = Some(self.path("client-ca.pem"));
        }
        settings.tls.client_auth = client_auth;
        settings.tls.reload_interval = Duration::from_millis(100);
    }
}

pub(crate) fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost")
}

pub(crate) fn presenting(config: ClientTlsConfig, leaf: &Leaf) -> ClientTlsConfig {
    config.identity(Identity::from_pem(&leaf.cert, &leaf.key))
}

/// A new TLS connection to the gRPC listener; `Err` names what failed.
pub(crate) async fn connect(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// A gRPC health check on a new TLS connection; `Err` names what failed.
pub(crate) async fn check_over(addr: SocketAddr, tls: ClientTlsConfig) -> Result<i32, String> {
    let channel = connect(addr, tls).await?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|response| response.into_inner().status)
        .map_err(|e| format!("call: {e}"))
}

/// A TLS connection with rustls: what the server presented and the protocol agreed.
pub(crate) async fn handshake(
    addr: SocketAddr,
    ca: &Ca,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let stream = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
}

/// `GET path` over HTTPS with hyper: the status.
async fn https_get(addr: SocketAddr, ca: &Ca, path: &str) -> u16 {
    let stream = handshake(addr, ca, b"http/1.1").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Whether a plaintext request gets any HTTP answer.
async fn plaintext_answers(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/")
}

#[tokio::test]
async fn every_listener_speaks_tls_and_nothing_else() {
    let ca = Ca::new("keystone test CA");
    let files = Files::new(&ca.server(), None);
    let app = spawn_app_tls(|s| files.configure(s, None), trusting(&ca)).await;

    // gRPC over TLS, ALPN h2.
    let jwks = app.auth().get_jwks(GetJwksRequest {}).await.unwrap();
    assert!(!jwks.into_inner().keys.is_empty());
    let grpc = handshake(app.addr, &ca, b"h2").await.unwrap();
    assert_eq!(grpc.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let version = grpc.get_ref().1.protocol_version();
    assert!(
        matches!(
            version,
            Some(rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2)
        ),
        "{version:?}"
    );

    // HTTP over TLS, ALPN http/1.1.
    assert_eq!(
        https_get(app.http_addr, &ca, "/.well-known/jwks.json").await,
        200
    );
    assert_eq!(https_get(app.http_addr, &ca, "/healthz").await, 200);

    // Plaintext gets nothing on either.
    assert!(!plaintext_answers(app.http_addr).await);
    let plaintext = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .is_err()
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_tls_file_that_cannot_be_used_stops_the_start_naming_it() {
    let ca = Ca::new("keystone test CA");
    let files = Files::new(&ca.server(), None);
    let other = ca.server();
    std::fs::write(files.path("other.key"), &other.key).unwrap();
    std::fs::write(files.path("garbage.crt"), "not a certificate").unwrap();
    for (change, expected) in [
        (
            Box::new(|s: &mut keystone::Settings| {
                s.tls.cert_file = Some(Path::new("/nonexistent/tls.crt").to_owned());
            }) as Box<dyn Fn(&mut keystone::Settings)>,
            ["tls.cert_file", "/nonexistent/tls.crt"],
        ),
        (
            Box::new(|s: &mut keystone::Settings| {
                s.tls.key_file = Some(files.path("other.key"));
            }),
            ["tls.key_file", "does not go with tls.cert_file"],
        ),
        (
            Box::new(|s: &mut keystone::Settings| {
                s.tls.cert_file = Some(files.path("garbage.crt"));
            }),
            ["tls.cert_file", "holds no PEM certificate"],
        ),
    ] {
        let database = TestDatabase::fresh().await;
        let mut settings = test_settings(database.url());
        files.configure(&mut settings, None);
        change(&mut settings);
        let error = match App::build(settings).await {
            Ok(_) => panic!("a server started with {expected:?}"),
            Err(error) => format!("{error:#}"),
        };
        for part in expected {
            assert!(error.contains(part), "{part}: {error}");
        }
    }
}

#[tokio::test]
async fn client_certificates_are_checked_against_the_client_ca() {
    let ca = Ca::new("keystone test CA");
    let clients = Ca::new("clients CA");
    let strangers = Ca::new("another CA");
    let (ours, theirs) = (clients.client("orders"), strangers.client("orders"));

    // Required: only a certificate of the client CA gets through.
    let files = Files::new(&ca.server(), Some(&clients));
    let app = spawn_app_tls(
        |s| files.configure(s, Some(ClientAuth::Required)),
        presenting(trusting(&ca), &ours),
    )
    .await;
    assert_eq!(
        check_over(app.addr, presenting(trusting(&ca), &ours)).await,
        Ok(1)
    );
    assert!(
        check_over(app.addr, trusting(&ca)).await.is_err(),
        "no certificate"
    );
    assert!(
        check_over(app.addr, presenting(trusting(&ca), &theirs))
            .await
            .is_err(),
        "a certificate of another CA"
    );
    app.stop().await.unwrap();

    // Optional: no certificate is fine; a wrong one is not.
    let files = Files::new(&ca.server(), Some(&clients));
    let app = spawn_app_tls(
        |s| files.configure(s, Some(ClientAuth::Optional)),
        trusting(&ca),
    )
    .await;
    assert_eq!(check_over(app.addr, trusting(&ca)).await, Ok(1));
    assert_eq!(
        check_over(app.addr, presenting(trusting(&ca), &ours)).await,
        Ok(1)
    );
    assert!(
        check_over(app.addr, presenting(trusting(&ca), &theirs))
            .await
            .is_err()
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_changed_on_disk_is_used_while_calls_go_on() {
    let ca = Ca::new("keystone test CA");
    let first = ca.server();
    let files = Files::new(&first, None);
    let app = spawn_app_tls(|s| files.configure(s, None), trusting(&ca)).await;
    let presented = |stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        stream.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    let before = presented(&handshake(app.addr, &ca, b"h2").await.unwrap());
    assert_eq!(
        before,
        CertificateDer::from_pem_slice(first.cert.as_bytes())
            .unwrap()
            .as_ref()
    );

    // Load: calls on the open connection and on new ones, all through the change.
    let (addr, channel, tls) = (app.addr, app.channel.clone(), trusting(&ca));
    let load = tokio::spawn(async move {
        let (mut calls, mut failures) = (0, Vec::new());
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while tokio::time::Instant::now() < until {
            if let Err(error) = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
            {
                failures.push(format!("open connection: {error}"));
            }
            if let Err(error) = check_over(addr, tls.clone()).await {
                failures.push(format!("new connection: {error}"));
            }
            calls += 2;
        }
        (calls, failures)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = ca.server();
    files.write_server(&second);
    let (calls, failures) = load.await.unwrap();
    assert!(calls > 10, "{calls} calls");
    assert!(failures.is_empty(), "{failures:?}");

    let after = presented(&handshake(app.addr, &ca, b"h2").await.unwrap());
    assert_eq!(
        after,
        CertificateDer::from_pem_slice(second.cert.as_bytes())
            .unwrap()
            .as_ref(),
        "new connections get the new certificate"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_tls_handshake_must_finish_within_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = Ca::new("keystone test CA");
    let files = Files::new(&ca.server(), None);
    let app = spawn_app_tls(
        |s| {
            files.configure(s, None);
            s.server.handshake_timeout = Duration::from_millis(400);
        },
        trusting(&ca),
    )
    .await;
    for addr in [app.addr, app.http_addr] {
        // Silent, then half a ClientHello: both are cut at the timeout.
        for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(opening).await.unwrap();
            let started = tokio::time::Instant::now();
            let mut byte = [0_u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
                .await
                .expect("the server closes the connection");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
            assert!(
                started.elapsed() >= Duration::from_millis(300),
                "closed after {:?}, before the timeout",
                started.elapsed()
            );
        }
    }
    // On gRPC, a finished handshake is not enough: the HTTP/2 preface must follow in time.
    let mut idle = handshake(app.addr, &ca, b"h2").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut byte))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A whole handshake in time is served.
    assert_eq!(check_over(app.addr, trusting(&ca)).await, Ok(1));
    app.stop().await.unwrap();
}
