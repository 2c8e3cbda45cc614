//! Graceful shutdown: health turns NOT_SERVING, the listener closes so new calls are refused,
//! and calls in flight finish (or are cut after the grace period).

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::spawn_app_with;

/// Waits until the server refuses new connections, for at most five seconds.
async fn wait_until_refused(addr: std::net::SocketAddr) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the listener closes after the drain delay");
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_lets_a_call_in_flight_finish() {
    let mut app = spawn_app_with(|settings| {
        settings.server.drain_delay = Duration::from_millis(100);
    })
    .await;
    let mut health = HealthClient::new(app.channel.clone());
    // A streaming call that stays open across the shutdown: the call in flight.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    app.begin_shutdown();

    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(
        next.status(),
        ServingStatus::NotServing,
        "health turns NOT_SERVING before the listener closes"
    );
    wait_until_refused(app.addr).await;

    // The call in flight is still being served: the server has not stopped under it.
    let still_running = tokio::time::timeout(Duration::from_millis(300), app.stopped()).await;
    assert!(
        still_running.is_err(),
        "the server waits for the call in flight"
    );
    drop(watch);
    drop(health);
}

#[tokio::test]
async fn shutdown_finishes_once_calls_in_flight_end() {
    let mut app = spawn_app_with(|settings| {
        settings.server.shutdown_grace = Duration::from_secs(30);
    })
    .await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    app.begin_shutdown();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);

    // The client ends its call: the server stops well before the 30 s grace.
    drop(watch);
    drop(health);
    tokio::time::timeout(Duration::from_secs(10), app.stopped())
        .await
        .expect("the server stops once no call is in flight")
        .unwrap();
}

#[tokio::test]
async fn shutdown_cuts_calls_still_in_flight_after_the_grace_period() {
    let mut app = spawn_app_with(|settings| {
        settings.server.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();

    app.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), app.stopped())
        .await
        .expect("the grace period bounds the shutdown")
        .unwrap();
    drop(watch);
}
