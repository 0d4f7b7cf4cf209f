//! Starting a process binder from its binding's `command`: the sandbox
//! helper (`binderd sandbox`, through bubblewrap when binders run in
//! namespaces) with the binder's limits, from a cleared environment with
//! binderd's `BINDERD_*` labels, its output into its log.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;

use tokio::process::Command;

use crate::backend::{fill_template, BackendError, BuiltEnv, Instance, StartSpec};

use super::sandbox::SandboxArgs;
use super::workdir::Workdir;
use super::{ports, venv, ProcessBackend, DEFAULT_PATH};
use super::{ENV_BASE_URL, ENV_BINDER, ENV_BINDING, ENV_OWNER, ENV_PORT, ENV_UID};

/// Variables of binderd's environment a binder gets too (the rest of it,
/// its keys above all, stays with binderd).
const BASE_ENV: &[&str] = &["LANG", "LC_ALL", "LC_CTYPE", "TZ"];

/// A binder's log file is kept under this (as Docker's are, 2 × 10 MB):
/// past it, the file starts again.
const LOG_MAX_BYTES: u64 = 10 << 20;

/// One binder on its way to running: what the steps of
/// [`ProcessBackend::spawn_binder`] share.
struct Launch<'s> {
    spec: &'s StartSpec<'s>,
    /// Whether it has a network namespace of its own.
    own_network: bool,
    port: u16,
    /// The binding's command, filled in.
    args: Vec<String>,
    workdir: Workdir,
}

impl ProcessBackend {
    /// Runs the binding's command for a binder; `resume` keeps the working
    /// dir and appends to the log.
    pub(super) async fn spawn_binder(
        &self,
        spec: StartSpec<'_>,
        resume: bool,
    ) -> Result<Instance, BackendError> {
        let own_network = self.own_network(spec.binding)?;
        let (port, listener) = ports::binder_port(own_network)?;
        let args: Vec<String> = spec
            .binding
            .command
            .iter()
            .map(|a| fill_template(a, port, spec.base_url, spec.token))
            .collect();
        let Some(program) = args.first().cloned() else {
            return Err(BackendError::Start("the binding has no command".into()));
        };
        let log = self.open_log(spec.binder_id, resume)?;
        let workdir = self.prepare_workdir(&spec, resume).await?;
        let launch = Launch {
            spec: &spec,
            own_network,
            port,
            args,
            workdir,
        };
        let mut command = self.helper_command(&launch);
        self.set_environment(&mut command, &launch);
        command
            .stdin(match listener {
                Some(l) => Stdio::from(std::os::fd::OwnedFd::from(l)),
                None => Stdio::null(),
            })
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(false);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.release_uid(spec.binder_id);
                return Err(BackendError::Start(format!("cannot run '{program}': {e}")));
            }
        };
        let pid = child
            .id()
            .ok_or_else(|| BackendError::Start(format!("'{program}' exited at once")))?;
        self.reap(spec.binder_id, child, pid as i32);
        Ok(Instance {
            handle: pid.to_string(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        })
    }

    /// The sandbox helper with the binder's limits and command, run
    /// through bubblewrap when binders run in namespaces.
    fn helper_command(&self, launch: &Launch<'_>) -> Command {
        let limits = self.limits.with(launch.spec.binding.resources.wanted());
        let uid = launch.workdir.uid;
        let helper_args = SandboxArgs {
            relay: launch.own_network.then_some(launch.port),
            uid,
            gid: uid,
            nofile: limits.nofile.into(),
            nproc: limits.pids.into(),
            memory: limits.memory_bytes,
            log_max: Some(LOG_MAX_BYTES),
            command: launch.args.clone(),
        };
        let mut command = match &self.bwrap {
            Some(bwrap) => {
                let mut c = Command::new(bwrap);
                c.args(self.bwrap_args(
                    &launch.workdir.dir,
                    uid.is_some(),
                    launch.own_network,
                    built_env(launch.spec),
                ));
                c.arg("--").arg(&self.helper);
                c
            }
            None => Command::new(&self.helper),
        };
        command
            .arg("sandbox")
            .args(helper_args.to_args())
            .current_dir(&launch.workdir.dir);
        command
    }

    /// The binder's environment: cleared, then [`BASE_ENV`], `PATH`, its
    /// built environment's variables, `HOME` (its working dir) and
    /// `TMPDIR`, the binding's `env`, and binderd's `BINDERD_*` labels last
    /// (nothing the binding says replaces them).
    fn set_environment(&self, command: &mut Command, launch: &Launch<'_>) {
        let spec = launch.spec;
        let workdir_text = launch.workdir.dir.to_string_lossy();
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        command
            .env_clear()
            .envs(
                BASE_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .env("PATH", &path)
            .envs(venv::variables(built_env(spec), &path))
            .env("HOME", &launch.workdir.dir)
            .env("TMPDIR", &launch.workdir.tmp)
            .envs(spec.binding.env.iter().map(|(k, v)| {
                let v = fill_template(v, launch.port, spec.base_url, spec.token);
                (k, v.replace("{workdir}", &workdir_text))
            }))
            .env(ENV_OWNER, &self.owner)
            .env(ENV_BINDING, &spec.binding.name)
            .env(ENV_BINDER, spec.binder_id)
            .env(ENV_PORT, launch.port.to_string())
            .env(ENV_BASE_URL, spec.base_url);
        if let Some(uid) = launch.workdir.uid {
            command.env(ENV_UID, uid.to_string());
        }
    }
}

/// The environment built from the binding's `requirements`, if any.
fn built_env<'s>(spec: &'s StartSpec<'_>) -> Option<&'s BuiltEnv> {
    spec.content.and_then(|c| c.env.as_ref())
}
