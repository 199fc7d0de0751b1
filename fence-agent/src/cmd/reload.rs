//! `fence-agent reload`: the running agent reads its policy again (as SIGHUP does) and this
//! command waits for the outcome: exit 0 when it is applied (or nothing changed), 2 when it is
//! refused (the errors printed; the previous policy stays in force), 1 when the agent cannot be
//! asked. The unit's `ExecReload=`, so that `systemctl reload fence-agent` fails when the new
//! policy does.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::control::{CallError, Request, call, protocol::Reloaded};

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The agent's configuration (for its control socket).
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The agent's control socket (default: `[control] socket` of the configuration).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// The policy was refused.
const REFUSED: u8 = 2;

pub fn main(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let socket = crate::cmd::socket_of(args.socket, args.config.as_deref(), crate::cmd::SocketKind::Control)?;
    Ok(match call::<Reloaded>(&socket, &Request::Reload) {
        Ok(r) => {
            match r.sequence {
                Some(s) => println!("policy {} (sequence {s})", r.outcome),
                None => println!("policy {}", r.outcome),
            }
            ExitCode::SUCCESS
        }
        Err(CallError::Refused(why)) => {
            eprintln!("fence-agent: the policy was refused; the previous one stays in force: {why}");
            ExitCode::from(REFUSED)
        }
        Err(e) => {
            eprintln!("fence-agent: {e}");
            ExitCode::FAILURE
        }
    })
}
