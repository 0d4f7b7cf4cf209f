//! The command line: `binderd serve` runs the server; the other commands
//! are the operator's CLI ([`crate::admin`]), speaking to a running binderd.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::admin::{Admin, BindersCommand, BindingsCommand, PoolsCommand, Target};
use crate::backend::process::sandbox::SandboxArgs;
use crate::config::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "binderd",
    version,
    about = "Pools of pre-warmed notebook containers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// List, show or delete bindings.
    Bindings {
        #[command(subcommand)]
        command: BindingsCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Create or replace a binding from a file (the TOML of config/bindings/).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// List or resize pools.
    Pools {
        #[command(subcommand)]
        command: PoolsCommand,
        #[command(flatten)]
        target: Target,
    },
    /// List, stop, pause or resume binders; read their logs.
    Binders {
        #[command(subcommand)]
        command: BindersCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Hand out a binder (a progress bar while it starts), print its URL.
    Spawn {
        binding: String,
        /// One of the binding's profiles (default: its default profile).
        #[arg(long)]
        profile: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The settings binderd would run with.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// (internal) The process backend's helper inside a binder's sandbox.
    #[command(hide = true)]
    Sandbox(SandboxArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every setting `serve` with these flags would use (file, `BINDERD_*`
    /// variables, flags, defaults), where each came from, secrets masked.
    Show(ServeArgs),
}

/// What the command line asks for.
pub enum Run {
    Serve(Box<ServeArgs>),
    ShowConfig(Box<ServeArgs>),
    Sandbox(SandboxArgs),
    Admin(Admin, Target),
}

impl Command {
    pub fn into_run(self) -> Run {
        let (admin, target) = match self {
            Command::Serve(args) => return Run::Serve(Box::new(args)),
            Command::Sandbox(args) => return Run::Sandbox(args),
            Command::Config {
                command: ConfigCommand::Show(args),
            } => return Run::ShowConfig(Box::new(args)),
            Command::Bindings { command, target } => (Admin::Bindings(command), target),
            Command::Apply { file, target } => (Admin::Apply { file }, target),
            Command::Pools { command, target } => (Admin::Pools(command), target),
            Command::Binders { command, target } => (Admin::Binders(command), target),
            Command::Spawn {
                binding,
                profile,
                target,
            } => (Admin::Spawn { binding, profile }, target),
        };
        Run::Admin(admin, target)
    }
}
