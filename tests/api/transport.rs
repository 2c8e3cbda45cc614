//! Transport limits: message sizes per service, header-list size, server-side deadlines, load
//! shedding, connections per listener, silent connections, HTTP/2 settings and keep-alive.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use keystone::proto::pb::{self, IssueTokenRequest, issue_token_request::Grant};
use tonic::{Code, metadata::MetadataValue};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::helpers::{spawn_app, spawn_app_with, with_bearer};

const PASSWORD: &str = "correct horse battery staple";

fn login(username: &str, password: &str) -> IssueTokenRequest {
    IssueTokenRequest {
        grant: Some(Grant::Password(pb::PasswordGrant {
            username: username.to_owned(),
            password: password.to_owned(),
        })),
        ..Default::default()
    }
}

/// What gRPC's own implementations answer a message over the limit: RESOURCE_EXHAUSTED, here
/// with the reason MESSAGE_TOO_LARGE.
fn assert_too_large(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(crate::helpers::reason(status), "MESSAGE_TOO_LARGE");
}

#[tokio::test]
async fn auth_takes_small_messages_only_and_admin_services_larger_ones() {
    let app = spawn_app().await;
    app.create_user("alice", PASSWORD, &[]).await;
    // 100 KiB of scopes: over Auth's 64 KiB.
    let mut request = login("alice", PASSWORD);
    request.scopes = vec!["a:b".repeat(1024); 33];
    let status = app.auth().issue_token(request).await.unwrap_err();
    assert_too_large(&status);
    // A megabyte of password, of bearer token, ten of username: the same answer.
    let mut request = login("alice", &"p".repeat(1 << 20));
    request.scopes.clear();
    assert_too_large(&app.auth().issue_token(request).await.unwrap_err());
    let status = app
        .auth()
        .authenticate(pb::AuthenticateRequest {
            token: "t".repeat(1 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_too_large(&status);
    let status = app
        .auth()
        .issue_token(login(&"u".repeat(10 << 20), PASSWORD))
        .await
        .unwrap_err();
    assert_too_large(&status);

    // The same size is read by an admin service, which then judges the content.
    let admin = app.admin_token().await;
    let status = app
        .user_admin()
        .create_role(with_bearer(
            pb::CreateRoleRequest {
                role: Some(pb::Role {
                    name: "big".to_owned(),
                    description: "d".repeat(100 * 1024),
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Nothing was lost: the server still serves, and the login works.
    app.login("alice", PASSWORD).await.expect("the login works");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_oversized_header_block_is_refused_and_the_server_goes_on() {
    // Below hyper's own default (16 KiB), so that the setting is what refuses.
    let app = spawn_app_with(|settings| settings.server.max_header_list_size = 8192).await;
    let padded = |size: usize| {
        let mut request = tonic::Request::new(pb::GetJwksRequest {});
        request.metadata_mut().insert(
            "x-padding",
            MetadataValue::try_from("p".repeat(size)).unwrap(),
        );
        request
    };
    app.auth()
        .get_jwks(padded(6 * 1024))
        .await
        .expect("6 KiB of headers is within 8 KiB");
    app.auth()
        .get_jwks(padded(10 * 1024))
        .await
        .expect_err("10 KiB of headers is over 8 KiB");
    app.auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("other calls are served");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_call_past_its_deadline_ends_with_deadline_exceeded_and_changes_nothing() {
    let app = spawn_app_with(|settings| {
        // Slow hashing, so that a login outlasts the deadlines below.
        settings.auth.argon2.memory_kib = 64 * 1024;
        settings.auth.argon2.iterations = 8;
        settings.server.request_timeout = Duration::from_millis(20);
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    // The server's deadline, for a call that brings none.
    let status = app.login("alice", PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    app.stop().await.unwrap();

    let app = spawn_app_with(|settings| {
        settings.auth.argon2.memory_kib = 64 * 1024;
        settings.auth.argon2.iterations = 8;
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    // A login its caller gives up on (here tonic's client cancels the call after 5 ms)
    // still runs to its end, so the attempt it counted toward the lock is settled: abandoned
    // logins with the right password lock nobody out (the lock threshold is 5).
    for _ in 0..6 {
        let mut request = tonic::Request::new(login("alice", PASSWORD));
        request.set_timeout(Duration::from_millis(5));
        app.auth().issue_token(request).await.unwrap_err();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.login("alice", PASSWORD)
        .await
        .expect("abandoned calls lock nobody out");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_calls_are_shed_at_once_not_queued() {
    let app = spawn_app_with(|settings| {
        settings.server.concurrency_limit = 1;
        // Slow hashing, so that one login holds the only slot for a while.
        settings.auth.argon2.memory_kib = 64 * 1024;
        settings.auth.argon2.iterations = 16;
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let hold = || {
        let mut holder = app.auth();
        tokio::spawn(async move { holder.issue_token(login("alice", PASSWORD)).await })
    };
    let mut held = hold();
    // Shed calls answer at once; keep asking until one meets the held slot. When a call took
    // the slot before the login could, the login is the one shed: it starts again.
    let mut shed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while shed.is_none() && tokio::time::Instant::now() < deadline {
        if held.is_finished() {
            match held.await.unwrap() {
                Err(status) if status.code() == Code::ResourceExhausted => {
                    held = hold();
                    continue;
                }
                other => panic!("the login ended before any call met its slot: {other:?}"),
            }
        }
        match app.auth().get_jwks(pb::GetJwksRequest {}).await {
            Err(status) => shed = Some(status),
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let status = shed.expect("a call met the held slot and was shed");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Counted as the caller saw it, without the path it asked for.
    let metrics = crate::helpers::http(app.http_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.body.contains(
            r#"keystone_grpc_requests_total{method="unknown",code="RESOURCE_EXHAUSTED"}"#
        ),
        "{}",
        metrics.body
    );
    held.await
        .unwrap()
        .expect("the call holding the slot finished");
    app.auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("served once the slot is free");
    app.stop().await.unwrap();
}

/// On HTTP the bound is one for all the OAuth and discovery routes, not one per route: a slow
/// login on `/oauth2/token` holding the only slot sheds a JWKS request (503) at once, while the
/// probes, bounded apart, still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_http_requests_on_any_route_are_shed() {
    let app = spawn_app_with(|settings| {
        settings.server.concurrency_limit = 1;
        settings.auth.argon2.memory_kib = 64 * 1024;
        settings.auth.argon2.iterations = 16;
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let http_addr = app.http_addr;
    let hold = || {
        tokio::spawn(async move {
            crate::helpers::http(
                http_addr,
                "POST",
                "/oauth2/token",
                &[("content-type", "application/x-www-form-urlencoded")],
                "grant_type=password&username=alice&password=correct+horse+battery+staple",
            )
            .await
            .status
        })
    };
    let mut held = hold();
    let mut shed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while shed.is_none() && tokio::time::Instant::now() < deadline {
        if held.is_finished() {
            match held.await.unwrap() {
                // The JWKS request took the slot first: the login was shed; again.
                503 => {
                    held = hold();
                    continue;
                }
                other => panic!("the login ended before any request met its slot: {other}"),
            }
        }
        let jwks = crate::helpers::http(http_addr, "GET", "/.well-known/jwks.json", &[], "").await;
        match jwks.status {
            503 => {
                // The probes have a bound of their own: a flood never fails a liveness probe.
                assert_eq!(
                    crate::helpers::http(http_addr, "GET", "/healthz", &[], "")
                        .await
                        .status,
                    200
                );
                shed = Some(jwks);
            }
            200 => tokio::time::sleep(Duration::from_millis(2)).await,
            other => panic!("JWKS answered {other}"),
        }
    }
    let shed = shed.expect("a request on another route met the held slot and was shed");
    assert_eq!(shed.json()["error"], "temporarily_unavailable");
    assert_eq!(
        held.await.unwrap(),
        200,
        "the login holding the slot finished"
    );
    assert_eq!(
        crate::helpers::http(http_addr, "GET", "/.well-known/jwks.json", &[], "")
            .await
            .status,
        200
    );
    app.stop().await.unwrap();
}

/// The HTTP/2 client preface, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Whether the server closed `stream` (end of stream or reset) within `within`, without
/// sending anything.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0_u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whether the server ended `stream` within `within`, whatever it sent first.
async fn ended_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut received = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut received))
        .await
        .is_ok()
}

/// Whether a new connection to `addr` is served: a health check on gRPC, `/healthz` on HTTP.
async fn served(addr: SocketAddr, grpc: bool) -> bool {
    if grpc {
        let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
    } else {
        // By hand: a connection refused while the server has not yet seen a slot freed is a
        // `false`, not a panic.
        let probe = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await?;
            let mut received = Vec::new();
            stream.read_to_end(&mut received).await?;
            Ok::<_, std::io::Error>(received.starts_with(b"HTTP/1.1 200"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(true))
        )
    }
}

/// Holds connections to `addr` until a limit of two is reached (the test's own channel holds
/// one gRPC connection), checks that one more is closed at once, and returns those held.
async fn fill(addr: SocketAddr, grpc: bool) -> Vec<TcpStream> {
    let held = usize::from(grpc);
    let mut open = Vec::new();
    for _ in held..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Something sent, so it is not closed as silent; a request not finished.
        let start: &[u8] = if grpc {
            H2_PREFACE
        } else {
            b"GET /healthz HTTP/1.1\r\n"
        };
        stream.write_all(start).await.unwrap();
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "{addr}: a connection past the limit was not closed"
    );
    open
}

#[tokio::test]
async fn each_listener_closes_connections_past_max_connections_at_once() {
    let app = spawn_app_with(|settings| settings.server.max_connections = 2).await;
    for (addr, grpc) in [(app.addr, true), (app.http_addr, false)] {
        let mut open = fill(addr, grpc).await;
        // A slot freed is taken again.
        drop(open.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !served(addr, grpc).await {
            assert!(
                Instant::now() < deadline,
                "{addr}: a freed slot was not taken again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(open);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn one_address_cannot_take_every_slot_but_a_trusted_proxy_may() {
    let app = spawn_app_with(|settings| settings.server.max_connections_per_ip = 2).await;
    for (addr, grpc) in [(app.addr, true), (app.http_addr, false)] {
        drop(fill(addr, grpc).await);
    }
    app.stop().await.unwrap();

    // From a trusted proxy, connections are not capped per address.
    let app = spawn_app_with(|settings| {
        settings.server.max_connections_per_ip = 2;
        settings.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(H2_PREFACE).await.unwrap();
        open.push(stream);
    }
    assert!(served(app.addr, true).await);
    drop(open);
    app.stop().await.unwrap();
}

/// Checks that the server closes `stream` once a timeout of 300 ms has run, not before.
async fn closed_by_the_timeout(stream: &mut TcpStream, what: &str) {
    let opened = Instant::now();
    assert!(
        closed_within(stream, Duration::from_secs(5)).await,
        "{what} kept its connection"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(250),
        "{what}: closed too soon"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout() {
    let app = spawn_app_with(|settings| {
        settings.server.handshake_timeout = Duration::from_millis(300);
        settings.server.http_idle_timeout = Duration::from_millis(300);
    })
    .await;
    for (addr, grpc) in [(app.addr, true), (app.http_addr, false)] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        closed_by_the_timeout(&mut silent, &format!("{addr}: a silent connection")).await;
        // One that speaks is served.
        assert!(served(addr, grpc).await, "{addr}");
    }
    // On gRPC, the whole HTTP/2 preface must arrive in that time: a piece of it is not enough.
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(&H2_PREFACE[..10]).await.unwrap();
    closed_by_the_timeout(&mut half, "a half-sent preface").await;
    // On HTTP/1.1, a request's head must arrive within `http_idle_timeout`: one byte at a
    // time does not keep a connection.
    let mut slow = TcpStream::connect(app.http_addr).await.unwrap();
    let opened = Instant::now();
    let mut ended = false;
    for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\n" {
        if slow.write_all(&[*byte]).await.is_err() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ended || ended_within(&mut slow, Duration::from_secs(5)).await,
        "a request head trickling in kept its connection"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "{:?}",
        opened.elapsed()
    );
    app.stop().await.unwrap();
}

/// HTTP/2 frames in `bytes`: (type, flags, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + length {
            break;
        }
        frames.push((bytes[3], bytes[4], bytes[9..9 + length].to_vec()));
        bytes = &bytes[9 + length..];
    }
    frames
}

#[tokio::test]
async fn grpc_announces_its_stream_and_header_limits_and_drops_peers_that_ignore_pings() {
    let app = spawn_app_with(|settings| {
        settings.server.max_concurrent_streams = 7;
        settings.server.max_header_list_size = 9000;
        settings.server.keepalive_interval = Duration::from_millis(200);
        settings.server.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    // A peer that completes the handshake, then never answers anything.
    let mut peer = TcpStream::connect(app.addr).await.unwrap();
    peer.write_all(H2_PREFACE).await.unwrap();
    let opened = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut received))
        .await
        .expect("the server closed the connection")
        .unwrap();
    let frames = frames(&received);
    // SETTINGS (type 4) first: MAX_CONCURRENT_STREAMS (3) and MAX_HEADER_LIST_SIZE (6).
    let (kind, _, settings) = frames.first().expect("a SETTINGS frame");
    assert_eq!(*kind, 4);
    let setting = |id: u16| {
        settings.chunks_exact(6).find_map(|entry| {
            (u16::from_be_bytes([entry[0], entry[1]]) == id)
                .then(|| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
        })
    };
    assert_eq!(setting(3), Some(7), "{settings:?}");
    assert_eq!(setting(6), Some(9000), "{settings:?}");
    // Then a PING (type 6) it never got an answer to, and the connection closed.
    assert!(
        frames
            .iter()
            .any(|(kind, flags, _)| *kind == 6 && flags & 1 == 0),
        "no keep-alive PING: {frames:?}"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(400),
        "closed before the keep-alive timed out"
    );
    assert!(served(app.addr, true).await);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_connections_are_recycled_at_their_maximum_age_streams_included() {
    let app = spawn_app_with(|settings| {
        settings.server.max_connection_age = Duration::from_millis(500);
    })
    .await;
    // A connection of its own, whose age starts now.
    let opened = Instant::now();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    // A stream that never ends by itself: a GOAWAY alone would let it hold its connection
    // (and its slot) for ever. It is cut after the age and the grace (the age, here).
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the first status");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream outlived the connection's age and grace"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "cut before the grace: {:?}",
        opened.elapsed()
    );
    // The same client goes on, on a new connection (a call that meets the cut connection
    // may fail first, as UNAVAILABLE: retried, as clients should).
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(status) = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
    {
        assert!(
            Instant::now() < deadline,
            "the client did not reconnect: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();
}
