//! The first admin: `keystone bootstrap-admin` and the `KEYSTONE_BOOTSTRAP_ADMIN_*` settings.
//! Until the admin API exists, the tests look at the database itself.

use keystone::App;
use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection, Statement};
use secrecy::SecretString;

use crate::{
    cli::{keystone, run, run_beside},
    helpers::{
        ADMIN_PASSWORD, ADMIN_SCOPE, TEST_PEPPER, TestDatabase, reason, spawn_app_on,
        spawn_app_with, test_settings, with_bearer,
    },
};

struct AdminRow {
    username: String,
    password_hash: String,
    password_change_required: bool,
    roles: String,
}

async fn admin_row(db: &DatabaseConnection, username: &str) -> Option<AdminRow> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            match db.get_database_backend() {
                sea_orm::DatabaseBackend::Postgres => {
                    "SELECT u.username, u.password_hash, u.password_change_required, \
                     (SELECT string_agg(r.name, ',') FROM user_roles ur JOIN roles r ON r.id = ur.role_id \
                      WHERE ur.user_id = u.id) AS roles FROM users u WHERE u.username_normalized = $1"
                }
                _ => {
                    "SELECT u.username, u.password_hash, u.password_change_required, \
                     (SELECT group_concat(r.name, ',') FROM user_roles ur JOIN roles r ON r.id = ur.role_id \
                      WHERE ur.user_id = u.id) AS roles FROM users u WHERE u.username_normalized = $1"
                }
            },
            [username.into()],
        ))
        .await
        .unwrap()?;
    Some(AdminRow {
        username: row.try_get("", "username").unwrap(),
        password_hash: row.try_get("", "password_hash").unwrap(),
        password_change_required: row.try_get("", "password_change_required").unwrap(),
        roles: row
            .try_get::<Option<String>>("", "roles")
            .unwrap()
            .unwrap_or_default(),
    })
}

async fn audit_details(db: &DatabaseConnection, action: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "SELECT details FROM audit_events WHERE action = $1",
        [action.into()],
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.try_get::<String>("", "details").unwrap())
    .collect()
}

#[tokio::test]
async fn bootstrap_admin_prints_a_generated_password_once_and_refuses_a_second_time() {
    let database = TestDatabase::fresh().await;
    let (code, stdout, stderr) = run(keystone()
        .args(["bootstrap-admin", "--username", "Root"])
        .env("KEYSTONE_DATABASE_URL", database.url()));
    assert_eq!(code, 0, "{stderr}");
    let password = stdout
        .lines()
        .find_map(|line| line.split("first login): ").nth(1))
        .expect("the password is printed")
        .trim()
        .to_owned();
    assert_eq!(password.chars().count(), 24);

    let db = Database::connect(database.url()).await.unwrap();
    let admin = admin_row(&db, "root").await.expect("the admin exists");
    assert_eq!(admin.username, "Root");
    assert_eq!(admin.roles, "admin");
    assert!(
        admin.password_change_required,
        "a generated password must be changed"
    );
    assert!(admin.password_hash.starts_with("$argon2id$"));
    assert!(!admin.password_hash.contains(&password));
    for details in audit_details(&db, "user.bootstrap_admin").await {
        assert!(
            !details.contains(&password),
            "the audit trail holds the password"
        );
    }

    let (code, stdout, stderr) = run(keystone()
        .args(["bootstrap-admin", "--username", "root"])
        .env("KEYSTONE_DATABASE_URL", database.url()));
    assert_eq!(code, 1, "a second bootstrap of the same name fails");
    assert!(stderr.contains("exists already"), "{stderr}");
    assert!(
        !stdout.contains("password"),
        "no password is printed: {stdout}"
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn bootstrap_settings_create_the_admin_once_with_the_given_password() {
    let password = "a-long-bootstrap-passphrase";
    let configure = |settings: &mut keystone::Settings| {
        settings.bootstrap_admin_username = Some("ops".to_owned());
        settings.bootstrap_admin_password = Some(SecretString::from(password));
    };
    let app = spawn_app_with(configure).await;
    let db = Database::connect(app.database_url()).await.unwrap();
    let admin = admin_row(&db, "ops").await.expect("the admin exists");
    assert_eq!(admin.roles, "admin");
    assert!(
        !admin.password_change_required,
        "a given password need not be changed"
    );
    let first_hash = admin.password_hash;
    db.close().await.unwrap();

    // A restart with the same settings leaves the admin as it is.
    let database = app.stop_keeping_database().await;
    let app = spawn_app_on(database, configure).await;
    let db = Database::connect(app.database_url()).await.unwrap();
    assert_eq!(
        admin_row(&db, "ops").await.unwrap().password_hash,
        first_hash
    );
    db.close().await.unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_weak_bootstrap_password_stops_the_start_without_showing_it() {
    let database = TestDatabase::fresh().await;
    let mut settings = test_settings(database.url());
    settings.bootstrap_admin_username = Some("ops".to_owned());
    settings.bootstrap_admin_password = Some(SecretString::from("1qaz2wsx3edc4rfv"));
    let error = App::build(settings).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("bootstrap"), "{message}");
    assert!(message.contains("common"), "{message}");
    assert!(!message.contains("1qaz2wsx3edc4rfv"), "{message}");
}

#[tokio::test]
async fn the_bootstrap_admin_is_not_made_again_once_an_admin_exists() {
    use keystone::proto::pb::DeleteUserRequest;
    let password = "a-long-bootstrap-passphrase";
    let configure = |settings: &mut keystone::Settings| {
        settings.bootstrap_admin_username = Some("ops".to_owned());
        settings.bootstrap_admin_password = Some(SecretString::from(password));
    };
    let app = spawn_app_with(configure).await;
    // Another admin takes over and deletes the bootstrap admin, on purpose.
    let alice = app.create_user("alice", ADMIN_PASSWORD, &["admin"]).await;
    let ops = {
        let db = Database::connect(app.database_url()).await.unwrap();
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT id FROM users WHERE username_normalized = 'ops'",
            ))
            .await
            .unwrap()
            .expect("the bootstrap admin exists");
        let id: uuid::Uuid = row.try_get("", "id").unwrap();
        db.close().await.unwrap();
        id
    };
    assert_ne!(ops, alice);
    let token = app
        .login_with("alice", ADMIN_PASSWORD, &[ADMIN_SCOPE], "")
        .await
        .unwrap()
        .access_token;
    app.user_admin()
        .delete_user(with_bearer(
            DeleteUserRequest {
                id: ops.to_string(),
            },
            &token,
        ))
        .await
        .expect("an admin deletes the bootstrap admin");

    // Started again with the same environment: it does not come back.
    let database = app.stop_keeping_database().await;
    let app = spawn_app_on(database, configure).await;
    let db = Database::connect(app.database_url()).await.unwrap();
    assert!(
        admin_row(&db, "ops").await.is_none(),
        "the deleted bootstrap admin was made again"
    );
    db.close().await.unwrap();
    let status = app.login("ops", password).await.unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_locked_out_admin_is_let_back_in_by_a_client_or_the_shell() {
    use keystone::proto::pb::UnlockUserRequest;
    // The guesses below are more than a name's rate limit lets through.
    let app = spawn_app_with(|settings| {
        settings.limits.per_username = keystone::config::Quota::OFF;
    })
    .await;
    let root = app.create_user("root", ADMIN_PASSWORD, &["admin"]).await;
    let lock_out = || async {
        for _ in 0..6 {
            let _ = app.login("root", "an attacker's guess").await;
        }
        let status = app.login("root", ADMIN_PASSWORD).await.unwrap_err();
        assert_eq!(reason(&status), "ACCOUNT_LOCKED");
    };

    // A service client allowed keystone:admin: client credentials know no lockout.
    lock_out().await;
    let secret = app
        .create_client("break-glass", &[ADMIN_SCOPE], &[], None, true)
        .await;
    let token = app
        .client_token("break-glass", &secret, &[ADMIN_SCOPE], "")
        .await
        .expect("a locked admin does not lock the break-glass client")
        .access_token;
    app.user_admin()
        .unlock_user(with_bearer(
            UnlockUserRequest {
                id: root.to_string(),
            },
            &token,
        ))
        .await
        .expect("the client unlocks the admin");
    app.login("root", ADMIN_PASSWORD)
        .await
        .expect("the admin is back in");

    // From a shell with the servers' settings.
    lock_out().await;
    let (code, stdout, stderr) = run_beside(
        keystone()
            .args(["unlock-user", "root"])
            .env("KEYSTONE_DATABASE_URL", app.database_url())
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("unlocked `root`"), "{stdout}");
    app.login("root", ADMIN_PASSWORD)
        .await
        .expect("the admin is back in");
    let (code, _, stderr) = run_beside(
        keystone()
            .args(["unlock-user", "nobody"])
            .env("KEYSTONE_DATABASE_URL", app.database_url())
            .env("KEYSTONE_SECRETS__PEPPER", TEST_PEPPER),
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("nobody"), "{stderr}");
    app.stop().await.unwrap();
}
