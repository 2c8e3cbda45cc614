//! Transport limits: message sizes per service, header-list size, and server-side deadlines.

use std::time::Duration;

use keystone::proto::pb::{self, IssueTokenRequest, issue_token_request::Grant};
use tonic::{Code, metadata::MetadataValue};

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

#[tokio::test]
async fn auth_takes_small_messages_only_and_admin_services_larger_ones() {
    let app = spawn_app().await;
    app.create_user("alice", PASSWORD, &[]).await;
    // 100 KiB of scopes: over Auth's 64 KiB.
    let mut request = login("alice", PASSWORD);
    request.scopes = vec!["a:b".repeat(1024); 33];
    let status = app.auth().issue_token(request).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

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
    let mut holder = app.auth();
    let held = tokio::spawn(async move { holder.issue_token(login("alice", PASSWORD)).await });
    // Shed calls answer at once; keep asking until one meets the held slot.
    let mut shed = None;
    for _ in 0..200 {
        match app.auth().get_jwks(pb::GetJwksRequest {}).await {
            Err(status) => {
                shed = Some(status);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let status = shed.expect("a call met the held slot and was shed");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    held.await
        .unwrap()
        .expect("the call holding the slot finished");
    app.auth()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("served once the slot is free");
    app.stop().await.unwrap();
}
