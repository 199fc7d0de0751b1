//! `fence-agent exec --identity NAME -- CMD ARGS...`: asks the running agent to move this
//! process into the identity's cgroup, checks that it is there, then replaces itself with CMD,
//! so CMD's first instruction already runs fenced. If anything fails, CMD is not run.
//!
//! `--new-session` runs CMD in a session of its own, without a controlling terminal: it can
//! still read and write the terminal it was given, but cannot push input into it (TIOCSTI,
//! which the caller's shell would run outside the fence; the kernel allows TIOCSTI only on
//! the caller's controlling terminal, or to CAP_SYS_ADMIN). With BPF LSM fence refuses
//! TIOCSTI to fenced identities anyway; without it, use `--new-session` from a terminal.

use std::{
    ffi::OsString,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicI32, Ordering},
};

use nix::{
    sys::signal::{SigHandler, Signal, kill, signal},
    unistd::{Pid, setsid},
};

use clap::Args;

use crate::{
    cgroup::Cgroups,
    control::{Request, call, protocol::Entered},
};

/// Exit status when fencing failed and the command was not run (as `env`, `timeout`).
const NOT_RUN: u8 = 125;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The identity to run the command as (it needs a `managed: true` selector).
    #[arg(long, short = 'i', value_name = "NAME")]
    pub identity: String,
    /// Run CMD in a new session, detached from the caller's controlling terminal (CMD keeps
    /// the terminal as stdin/stdout but cannot inject input into it).
    #[arg(long)]
    pub new_session: bool,
    /// The agent's control socket (default: `[control] socket` of the configuration, else
    /// /run/fence/agent.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The agent's configuration, for the socket it names (default /etc/fence/agent.toml).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

pub fn main(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let refuse = |why: &str| {
        eprintln!("fence-agent exec: {why}; {:?} was not run", args.command[0]);
        Ok(ExitCode::from(NOT_RUN))
    };
    let socket =
        match crate::cmd::socket_of(args.socket.clone(), args.config.as_deref(), crate::cmd::SocketKind::Control) {
            Ok(s) => s,
            Err(e) => return refuse(&e.to_string()),
        };
    let expected = match call::<Entered>(&socket, &Request::Enter { identity: args.identity.clone() }) {
        Ok(Entered { cgroup, move_self: false }) => cgroup,
        Ok(Entered { cgroup, move_self: true }) => {
            let procs = Cgroups::discover().map(|c| c.dir(&cgroup).join("cgroup.procs"));
            if let Err(e) =
                procs.map_err(|e| e.to_string()).and_then(|p| std::fs::write(p, "0").map_err(|e| e.to_string()))
            {
                return refuse(&format!("moving into {cgroup}: {e}"));
            }
            cgroup
        }
        Err(e) => return refuse(&e.to_string()),
    };
    // Trust, but verify: never run the command outside the fence.
    match Cgroups::path_of_process("self") {
        Some(now) if now == expected || now.starts_with(&format!("{expected}/")) => {}
        other => return refuse(&format!("this process is in cgroup {other:?}, not {expected}")),
    }
    let mut command = std::process::Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    // A process group leader (a shell's job) cannot start a session: then CMD runs as a child
    // that does, and this process waits for it, passing on the terminal's signals.
    if args.new_session && setsid().is_err() {
        return in_new_session(command, &args.command[0]);
    }
    let err = command.exec();
    eprintln!("fence-agent exec: cannot run {:?}: {err}", args.command[0]);
    Ok(ExitCode::from(exec_failure(&err)))
}

fn exec_failure(err: &std::io::Error) -> u8 {
    if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }
}

/// The child running CMD, for the signal handler (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(sig: nix::libc::c_int) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0
        && let Ok(sig) = Signal::try_from(sig)
    {
        let _ = kill(Pid::from_raw(child), sig);
    }
}

/// Runs `command` as a child in a session of its own; exits as it did (128 + signal when it
/// was killed, as shells report).
fn in_new_session(mut command: std::process::Command, name: &OsString) -> anyhow::Result<ExitCode> {
    // SAFETY: setsid is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(|| setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("fence-agent exec: cannot run {name:?}: {err}");
            return Ok(ExitCode::from(exec_failure(&err)));
        }
    };
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
        // SAFETY: the handler only reads an atomic and calls kill(2), both async-signal-safe.
        unsafe { signal(sig, SigHandler::Handler(pass_on)) }?;
    }
    let status = child.wait()?;
    Ok(ExitCode::from(match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => 1,
    }))
}
