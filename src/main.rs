//! The `keystone` binary: read the command line and settings, start telemetry, run the command,
//! turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser as _;
use keystone::{
    Settings,
    cli::{self, Cli, Command},
    telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("keystone: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keystone: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Inside the runtime: the trace exporter, when there is one, runs on it.
    let telemetry = {
        let _runtime = runtime.enter();
        telemetry::init(&settings.log, std::io::stdout, ansi)
    };
    let _telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("keystone: cannot start logging: {error:#}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli.command.unwrap_or(Command::Serve), settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "keystone failed");
            eprintln!("keystone: {error:#}");
            ExitCode::FAILURE
        }
    }
}
