//! The command line: `keystone serve` (the default), `keystone migrate [up|down|status]`,
//! `keystone keys …`, `keystone bootstrap-admin`, `keystone unlock-user`. Settings come from the same places for every command. The
//! bootstrap password is the one secret ever printed: on purpose, once, to the operator.
//!
//! Layer: the top, beside [`crate::app`], which it uses with the services and the store.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret as _;

use crate::{
    App, Settings, app,
    clock::{SharedClock, SystemClock},
    cluster::{Event, Redis},
    domain::ScopeSet,
    secrets::Pepper,
    service::{ADMIN_SCOPE, Actor, BootstrapOutcome, UserAdminService},
    shutdown,
    store::Store,
    token::KeyManager,
};

/// Keystone: the identity service other services trust.
///
/// Settings come from defaults, then the TOML file given by --config (or KEYSTONE_CONFIG), then
/// KEYSTONE_* environment variables (sections nested with `__`, e.g.
/// KEYSTONE_TOKENS__ACCESS_TTL=10m). With no settings at all, Keystone serves gRPC on
/// 127.0.0.1:50051 with an SQLite file `keystone.db` in the current directory.
#[derive(Debug, Parser)]
#[command(name = "keystone", version, about, long_about)]
pub struct Cli {
    /// A TOML settings file.
    #[arg(long, global = true, env = "KEYSTONE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Keystone's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC until SIGTERM or Ctrl-C (the default).
    Serve,
    /// Apply, roll back or list the database migrations (`up` when no subcommand is given).
    Migrate {
        /// What to do; `up` (apply every pending migration) when omitted.
        #[command(subcommand)]
        command: Option<MigrateCommand>,
    },
    /// Rotate, withdraw or list the token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create an admin (role `admin`) and print its generated password, once. The admin must
    /// change it at first login. Fails if the username is taken.
    BootstrapAdmin {
        /// The admin's username.
        #[arg(long)]
        username: String,
        /// The admin's email address (default: <username>@keystone.invalid).
        #[arg(long)]
        email: Option<String>,
    },
    /// Break glass: unlock an account locked by failed logins or by an admin (for an admin
    /// an attacker has locked out). Needs only the settings a server has (the database);
    /// audited as done by `cli`.
    UnlockUser {
        /// The username or email of the account.
        username: String,
    },
}

/// `keystone keys …`. Running servers pick changes up within `keys.reload_interval`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Start a rotation now: a new key is published at once and signs after
    /// `keys.publish_ahead`; the old one stays published until its tokens have expired.
    Rotate,
    /// Withdraw a compromised key at once: it leaves the JWKS and every token it signed fails.
    /// If it was signing, a new key signs immediately.
    Revoke {
        /// The key id (`kid`). A kid is base64url and may begin with `-`: it is taken as the
        /// id, not as an option.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
    /// List the keys with their state and times.
    List,
    /// Seal every live private key under the current key-encryption key (after changing
    /// `secrets.key_encryption_key`, once every replica has the new key and the old one as
    /// `secrets.previous_key_encryption_key`).
    Reseal,
}

/// `keystone migrate …`.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Apply pending migrations: all of them, or the next N.
    Up {
        /// How many to apply.
        #[arg(short = 'n', long)]
        steps: Option<u32>,
    },
    /// Roll back the last N applied migrations. This drops data.
    Down {
        /// How many to roll back.
        #[arg(short = 'n', long, default_value_t = 1)]
        steps: u32,
    },
    /// List every migration and whether it is applied.
    Status,
}

/// Runs one command to its end.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = App::build(settings).await?;
            app.run_until(shutdown::signal()).await
        }
        Command::UnlockUser { username } => {
            let (store, service) = user_admin(&settings).await?;
            let outcome = unlock_user(&service, &store, &username).await;
            store.close().await;
            let record = outcome?;
            println!(
                "unlocked `{}` (id {}); failed logins forgotten",
                record.user.username.as_str(),
                record.user.id
            );
            Ok(())
        }
        Command::BootstrapAdmin { username, email } => {
            let (store, service) = user_admin(&settings).await?;
            // An operator's own command: made even where other admins exist.
            let outcome = service
                .bootstrap_admin(&username, email.as_deref(), None, false)
                .await;
            store.close().await;
            match outcome? {
                Some(BootstrapOutcome {
                    user,
                    generated_password: Some(password),
                }) => {
                    println!(
                        "created admin `{}` (id {})",
                        user.username.as_str(),
                        user.id
                    );
                    println!(
                        "password (shown once; change it at first login): {}",
                        password.expose_secret()
                    );
                    Ok(())
                }
                Some(BootstrapOutcome { user, .. }) => {
                    println!(
                        "created admin `{}` (id {})",
                        user.username.as_str(),
                        user.id
                    );
                    Ok(())
                }
                None => {
                    anyhow::bail!("a user named `{username}` exists already; nothing was changed")
                }
            }
        }
        Command::Keys(command) => {
            let store = app::open_database(&settings).await?;
            let clock: SharedClock = Arc::new(SystemClock);
            // The servers' pepper, never a new one: a key sealed with another would be lost.
            let pepper = Pepper::load_existing(
                settings.secrets.pepper.as_ref(),
                &settings.secrets.pepper_file,
            )
            .context("cannot load the pepper (secrets.pepper or secrets.pepper_file)")?;
            let keys = app::key_manager(&settings, &store, &clock, &pepper)?;
            let changes = !matches!(command, KeysCommand::List);
            let result = manage_keys(&keys, &store, command).await;
            store.close().await;
            if changes && result.is_ok() {
                announce_key_change(&settings).await;
            }
            result
        }
        Command::Migrate { command } => {
            let store = Store::connect(&settings.database_url, &settings.database)
                .await
                .context("cannot connect to the database (database_url)")?;
            let command = command.unwrap_or(MigrateCommand::Up { steps: None });
            let result = migrate(&store, command).await;
            store.close().await;
            result
        }
    }
}

/// The user administration of the database in the settings, for commands run from a shell.
async fn user_admin(settings: &Settings) -> anyhow::Result<(Store, UserAdminService)> {
    let store = app::open_database(settings).await?;
    let clock: SharedClock = Arc::new(SystemClock);
    let bus = app::connect_bus(settings).await?;
    let revocations = app::load_revocations(settings, &store, &bus, &clock).await?;
    let pepper = Pepper::load(
        settings.secrets.pepper.as_ref(),
        &settings.secrets.pepper_file,
    )?;
    let service = app::user_admin_service(
        settings,
        &store,
        &clock,
        app::password_hasher(settings).await?,
        &revocations,
        &bus,
        &pepper,
    );
    Ok((store, service))
}

async fn unlock_user(
    service: &UserAdminService,
    store: &Store,
    username: &str,
) -> anyhow::Result<crate::domain::UserRecord> {
    let Some(user) = store
        .find_user_by_login(&crate::domain::normalize(username))
        .await?
    else {
        anyhow::bail!("no user has the username or email `{username}`");
    };
    // Whoever runs this holds the database and the settings: as much as an admin.
    let actor = Actor {
        subject: "cli".to_owned(),
        scopes: ScopeSet::parse([ADMIN_SCOPE])?,
        peer: "local shell".to_owned(),
    };
    Ok(service.unlock_user(&actor, &user.id.to_string()).await?)
}

async fn manage_keys(keys: &KeyManager, store: &Store, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate => {
            keys.refresh().await?;
            let kid = keys.rotate().await?;
            println!("published key {kid}; it signs after keys.publish_ahead");
        }
        KeysCommand::Revoke { kid } => {
            if !keys.revoke(&kid).await? {
                anyhow::bail!("no live key has the id `{kid}`");
            }
            println!("revoked key {kid}; its tokens are refused");
        }
        KeysCommand::Reseal => {
            let resealed = keys.reseal().await?;
            println!(
                "sealed {} key(s) under the current key-encryption key{}",
                resealed.len(),
                if resealed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", resealed.join(", "))
                }
            );
        }
        KeysCommand::List => {
            for key in store.all_keys().await? {
                println!(
                    "{:<18} {:<6} {:<8} created {} activates {}{}",
                    key.kid,
                    key.algorithm,
                    key.state,
                    key.created_at.to_rfc3339(),
                    key.activates_at.to_rfc3339(),
                    key.revoked_at
                        .map(|at| format!(" revoked {}", at.to_rfc3339()))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Tells running replicas on Redis that the keys changed, so they reload them at once
/// (without Redis, or if this fails, they do within `keys.reload_interval`).
async fn announce_key_change(settings: &Settings) {
    let Some(url) = &settings.redis_url else {
        return;
    };
    let budget = settings
        .revocation
        .redis_timeout
        .max(Duration::from_millis(500));
    match Redis::connect(url, &settings.cluster.name, budget, Duration::from_secs(2)).await {
        Ok(redis) => {
            if let Err(error) = redis.publish(Event::Keys.to_payload()).await {
                eprintln!(
                    "could not tell running replicas on Redis ({error}); they reload the keys within keys.reload_interval"
                );
            }
            redis.quit().await;
        }
        Err(error) => eprintln!(
            "could not reach Redis ({error}); running replicas reload the keys within keys.reload_interval"
        ),
    }
}

async fn migrate(store: &Store, command: MigrateCommand) -> anyhow::Result<()> {
    match command {
        MigrateCommand::Up { steps } => {
            store.migrate_up(steps).await?;
            println!("migrations applied");
        }
        MigrateCommand::Down { steps } => {
            store.migrate_down(steps).await?;
            println!("rolled back {steps} migration(s)");
        }
        MigrateCommand::Status => {
            for migration in store.migration_status().await? {
                let state = if migration.applied {
                    "applied"
                } else {
                    "pending"
                };
                println!("{state:<8} {}", migration.name);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn a_kid_beginning_with_a_hyphen_is_a_kid() {
        let cli = Cli::try_parse_from(["keystone", "keys", "revoke", "-3xYz_Q"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Keys(KeysCommand::Revoke { kid })) if kid == "-3xYz_Q"
        ));
    }
}
