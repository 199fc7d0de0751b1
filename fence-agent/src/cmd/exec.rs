//! `fence-agent exec --identity NAME -- CMD ARGS...`: asks the running agent to move this
//! process into the identity's cgroup, checks that it is there, then replaces itself with CMD,
//! so CMD's first instruction already runs fenced. If anything fails, CMD is not run.

use std::{ffi::OsString, os::unix::process::CommandExt as _, path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    cgroup::Cgroups,
    config::DEFAULT_SOCKET,
    control::{Request, call, protocol::Entered},
};

/// Exit status when fencing failed and the command was not run (as `env`, `timeout`).
const NOT_RUN: u8 = 125;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The identity to run the command as (it needs a `managed: true` selector).
    #[arg(long, short = 'i', value_name = "NAME")]
    pub identity: String,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

pub fn main(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let refuse = |why: &str| {
        eprintln!("fence-agent exec: {why}; {:?} was not run", args.command[0]);
        Ok(ExitCode::from(NOT_RUN))
    };
    let expected = match call::<Entered>(&args.socket, &Request::Enter { identity: args.identity.clone() }) {
        Ok(a) => a.cgroup,
        Err(e) => return refuse(&e.to_string()),
    };
    // Trust, but verify: never run the command outside the fence.
    match Cgroups::path_of_process("self") {
        Some(now) if now == expected || now.starts_with(&format!("{expected}/")) => {}
        other => return refuse(&format!("this process is in cgroup {other:?}, not {expected}")),
    }
    let err = std::process::Command::new(&args.command[0]).args(&args.command[1..]).exec();
    eprintln!("fence-agent exec: cannot run {:?}: {err}", args.command[0]);
    Ok(ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }))
}
