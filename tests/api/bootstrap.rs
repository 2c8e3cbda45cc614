//! The first admin: `keystone bootstrap-admin` and the `KEYSTONE_BOOTSTRAP_ADMIN_*` settings.
//! Until the admin API exists, the tests look at the database itself.

use keystone::App;
use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection, Statement};
use secrecy::SecretString;

use crate::{
    cli::{keystone, run},
    helpers::{TestDatabase, spawn_app_on, spawn_app_with, test_settings},
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
