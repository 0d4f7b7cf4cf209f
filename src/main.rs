//! `binderd`: parse the configuration, set up logging, bind, and run.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use binderd::cli::{Cli, Run};
use binderd::config::Config;

/// sysexits EX_USAGE: bad flags or config.
const EXIT_CONFIG: u8 = 64;

/// The admin commands' usage errors (they print the usage).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // Only `serve` promises one line and 64; elsewhere, the usage.
        Err(e) if std::env::args().nth(1).as_deref() != Some("serve") => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            let text = e.to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments");
            eprintln!("binderd: {}", line.trim_start_matches("error: "));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let args = match cli.command.into_run() {
        Run::Admin(command, target) => return admin(command, target),
        Run::Sandbox(args) => return binderd::backend::process::sandbox::main(args),
        Run::Serve(args) => *args,
        Run::ShowConfig(args) => return show_config(*args),
    };
    // The keys live in binderd's memory only: nothing it starts inherits
    // them (binders start from a cleared environment as well).
    let api_keys = std::env::var("BINDERD_API_KEYS").ok();
    std::env::remove_var("BINDERD_API_KEYS");
    let config = match Config::load(args, api_keys) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("binderd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if config.log_json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("binderd: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// `binderd config show`: the settings, or the one line `serve` would
/// refuse them with (exit 64).
fn show_config(args: binderd::config::ServeArgs) -> ExitCode {
    match Config::show(args, std::env::var("BINDERD_API_KEYS").ok()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("binderd: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(config: Config) -> Result<(), (u8, anyhow::Error)> {
    let runtime = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .map_err(|e| (70, e))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))
            .map_err(|e| (EXIT_CONFIG, e))?;
        binderd::run(config, listener, shutdown_signal())
            .await
            .map_err(|e| (e.exit_code(), anyhow::Error::new(e)))
    })
}

/// Runs an admin command against a running binderd.
fn admin(command: binderd::admin::Admin, target: binderd::admin::Target) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("binderd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout();
    match runtime.block_on(binderd::admin::run(&target, command, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("binderd: {e}");
            ExitCode::from(e.code)
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
