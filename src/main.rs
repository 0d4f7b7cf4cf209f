//! `binderd`: parse the configuration, set up logging, bind, and run.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use binderd::config::{Cli, Command, Config};

/// sysexits EX_USAGE: bad flags or config.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
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
    let Command::Serve(args) = cli.command;
    let config = match Config::load(args, std::env::var("BINDERD_API_KEYS").ok()) {
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
