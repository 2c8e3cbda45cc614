//! Bulkheads: admin listings and audit reads run on a pool of their own, so that however many
//! of them wait on the database, logins and token issuance keep their connections; and a call
//! that finds its pool taken answers `UNAVAILABLE` after `database.acquire_timeout`, not
//! sqlx's 30 seconds.

use std::time::{Duration, Instant};

use keystone::proto::pb::ListClientsRequest;
use sea_orm::{ConnectionTrait as _, Database, TransactionTrait as _};
use tonic::Code;

use crate::helpers::{TestDatabase, postgres_url, reason, say_skipped, spawn_app_on, with_bearer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stuck_admin_listings_cannot_starve_logins() {
    let Some(server_url) = postgres_url() else {
        say_skipped(
            "stuck_admin_listings_cannot_starve_logins",
            "needs PostgreSQL (KEYSTONE_TEST_DATABASE_URL) to hold a table lock",
        );
        return;
    };
    let database = TestDatabase::fresh_postgres(&server_url).await;
    let url = database.url().to_owned();
    let app = spawn_app_on(database, |settings| {
        settings.database.max_connections = 4;
        settings.database.admin_max_connections = 2;
        settings.database.acquire_timeout = Duration::from_secs(1);
    })
    .await;
    let admin = app.admin_token().await;
    app.create_user("alice", "correct horse battery staple", &[])
        .await;
    app.create_client("reporting", &[], &[], None, true).await;

    // Another session holds a table that listing clients reads and logins never touch:
    // every listing of clients waits on it.
    let blocker = Database::connect(&url).await.unwrap();
    let lock = blocker.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE client_audiences IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let mut listings = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let mut client = app.client_admin();
        let admin = admin.clone();
        listings.spawn(async move {
            let started = Instant::now();
            let answer = client
                .list_clients(with_bearer(ListClientsRequest::default(), &admin))
                .await;
            (answer.map(|_| ()), started.elapsed())
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Logins go on while the listings wait: they have connections of their own.
    for _ in 0..3 {
        app.login("alice", "correct horse battery staple")
            .await
            .expect("a login is not starved by stuck listings");
    }

    // Listings beyond their pool are refused quickly; the ones holding it finish once the
    // lock goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    lock.commit().await.unwrap();
    let (mut refused, mut served) = (0, 0);
    while let Some(outcome) = listings.join_next().await {
        match outcome.unwrap() {
            (Ok(()), _) => served += 1,
            (Err(status), waited) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(reason(&status), "UNAVAILABLE");
                assert!(
                    waited < Duration::from_secs(10),
                    "refused after the acquire timeout, not sqlx's 30 s: {waited:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(served, 2, "the admin pool's two connections served");
    assert_eq!(refused, 4);
    blocker.close().await.unwrap();
    app.stop().await.unwrap();
}
