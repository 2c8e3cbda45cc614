//! Server reflection, v1 and v1alpha: what `grpcurl list` and `grpcurl describe` use.

use keystone::config::ReflectionMode;
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{reason, spawn_app, spawn_app_with, with_bearer};

const EXPECTED_SERVICES: &[&str] = &[
    "keystone.v1.Auth",
    "keystone.v1.UserAdmin",
    "keystone.v1.ClientAdmin",
    "grpc.health.v1.Health",
    "envoy.service.auth.v3.Authorization",
];

async fn list_v1(channel: tonic::transport::Channel) -> Result<Vec<String>, tonic::Status> {
    list_v1_as(channel, None).await
}

async fn list_v1_as(
    channel: tonic::transport::Channel,
    bearer: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let requests = tokio_stream::iter([request]);
    let request = match bearer {
        Some(token) => with_bearer(requests, token),
        None => tonic::Request::new(requests),
    };
    let mut responses = client.server_reflection_info(request).await?.into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")?
        .message_response
        .expect("a message");
    match response {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => Ok(list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect()),
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    let app = spawn_app().await;
    let services = list_v1(app.channel.clone()).await.unwrap();
    for expected in EXPECTED_SERVICES {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_v1alpha_lists_every_service_and_describes_with_comments() {
    let app = spawn_app().await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let requests = [
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        },
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "keystone.v1.Auth".to_owned(),
                ),
            ),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("the first answer lists services");
    };
    let services: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in EXPECTED_SERVICES {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }

    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("the second answer carries file descriptors");
    };
    let auth_file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|file| file.name() == "keystone/v1/auth.proto")
        .expect("auth.proto is described");
    let service = &auth_file.service[0];
    assert_eq!(service.name(), "Auth");
    let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
    for rpc in [
        "IssueToken",
        "Authenticate",
        "Introspect",
        "Revoke",
        "Register",
        "Logout",
        "ChangePassword",
        "GetJwks",
    ] {
        assert!(methods.contains(&rpc), "{rpc} missing from {methods:?}");
    }
    // Doc comments travel with the descriptor, so `grpcurl describe` shows them.
    let comments: Vec<_> = auth_file
        .source_code_info
        .as_ref()
        .expect("source info is kept")
        .location
        .iter()
        .filter_map(|location| location.leading_comments.as_deref())
        .collect();
    assert!(
        comments.iter().any(|c| c.contains("hot path")),
        "the Authenticate doc comment is served"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_can_be_switched_off() {
    let app = spawn_app_with(|settings| settings.reflection = ReflectionMode::Off).await;
    let status = list_v1(app.channel.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn admin_reflection_needs_an_admin_token() {
    let app = spawn_app_with(|settings| {
        settings.reflection = ReflectionMode::Admin;
        settings.tokens.user_audiences = vec!["app".into()];
    })
    .await;
    app.create_user("root", "correct horse battery staple", &["admin"])
        .await;
    app.create_user("plain", "correct horse battery staple", &[])
        .await;
    let admin = app
        .login_with(
            "root",
            "correct horse battery staple",
            &[crate::helpers::ADMIN_SCOPE],
            "",
        )
        .await
        .unwrap()
        .access_token;
    // The admin's token for an application cannot be replayed here.
    let for_app = app
        .login_with("root", "correct horse battery staple", &[], "app")
        .await
        .unwrap()
        .access_token;
    let plain = app
        .login("plain", "correct horse battery staple")
        .await
        .unwrap()
        .access_token;

    let status = list_v1(app.channel.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = list_v1_as(app.channel.clone(), Some("not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = list_v1_as(app.channel.clone(), Some(&plain))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&status), "INSUFFICIENT_SCOPE");
    let status = list_v1_as(app.channel.clone(), Some(&for_app))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason(&status), "AUDIENCE_MISMATCH");
    let services = list_v1_as(app.channel.clone(), Some(&admin)).await.unwrap();
    assert!(
        services.iter().any(|s| s == "keystone.v1.Auth"),
        "{services:?}"
    );
    app.stop().await.unwrap();
}
