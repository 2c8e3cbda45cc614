//! `keystone-migrate`: the schema migrations on their own, for a Helm hook or CI job that should
//! not carry the whole server. `keystone migrate` does the same from the main binary.

use clap::{Parser, Subcommand};
use migrations::{Migrator, MigratorTrait};
use sea_orm_migration::sea_orm::Database;

#[derive(Parser)]
#[command(version, about = "Apply or roll back Keystone's database migrations")]
struct Cli {
    /// Database to migrate, e.g. `postgres://keystone@db/keystone` or `sqlite://keystone.db?mode=rwc`.
    #[arg(
        long,
        env = "KEYSTONE_DATABASE_URL",
        default_value = "sqlite://keystone.db?mode=rwc",
        hide_env_values = true
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations (all, or the next N).
    Up {
        #[arg(short = 'n', long)]
        steps: Option<u32>,
    },
    /// Roll back the last N applied migrations (default 1).
    Down {
        #[arg(short = 'n', long, default_value_t = 1)]
        steps: u32,
    },
    /// List every migration and whether it is applied.
    Status,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The error comes from the driver; it never contains the URL's password.
            eprintln!("keystone-migrate: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), sea_orm_migration::DbErr> {
    let db = Database::connect(cli.database_url.as_str()).await?;
    match cli.command {
        Command::Up { steps } => Migrator::up(&db, steps).await?,
        Command::Down { steps } => Migrator::down(&db, Some(steps)).await?,
        Command::Status => {
            for migration in Migrator::get_migration_with_status(&db).await? {
                println!("{:<8} {}", migration.status().to_string(), migration.name());
            }
        }
    }
    Ok(())
}
