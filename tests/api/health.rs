//! `grpc.health.v1.Health`: the server and each Keystone service report SERVING once the
//! database answers.

use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_every_service() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "keystone.v1.Auth",
        "keystone.v1.UserAdmin",
        "keystone.v1.ClientAdmin",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("health of {service:?}: {status}"))
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "health of {service:?}"
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn health_of_an_unknown_service_is_not_found() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "keystone.v1.Nothing".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await.unwrap();
}
