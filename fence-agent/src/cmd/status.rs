//! `fence-agent status`: where this host's policy came from (vault, last-known-good cache or
//! local files), its versions, and the vault sync state; `--hosts`: every host's status as
//! the agents report it to the vault.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    cmd::console::{self, VaultArgs},
    control::{Request, call, protocol::StatusReply},
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket (default: `[control] socket` of the configuration, else
    /// /run/fence/agent.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Every host's status, read from the vault (console use; needs --config with [vault]).
    #[arg(long)]
    pub hosts: bool,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Exit status when the vault sync is failing.
const VAULT_FAILING: u8 = 3;

pub fn main(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.hosts {
        return console::hosts(&args.vault, args.json);
    }
    let socket =
        crate::cmd::socket_of(args.socket.clone(), args.vault.config.as_deref(), crate::cmd::SocketKind::Control)?;
    let answer: StatusReply = call(&socket, &Request::Status)?;
    // The vault's last poll failed (it cannot be asked, or it holds a policy this agent
    // refuses): shown, and said by the exit status too.
    let code = match &answer.vault {
        Some(v) if v.consecutive_failures > 0 => ExitCode::from(VAULT_FAILING),
        _ => ExitCode::SUCCESS,
    };
    if args.json {
        // The same shape as the socket's answer.
        let mut v = serde_json::to_value(&answer)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".into(), true.into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let sequence = answer.sequence.map_or("-".to_owned(), |s| s.to_string());
    println!("source: {}   policy sequence: {sequence}", answer.source.as_str());
    match &answer.vault {
        Some(v) => {
            println!("vault: {}   host: {}   signatures: {}", dash(&v.vault), v.hostname, v.signatures);
            println!(
                "last poll: {}   last success: {}   last applied: {}",
                dash(&v.last_poll),
                dash(&v.last_success),
                dash(&v.last_applied)
            );
            println!("consecutive failures: {}   last error: {}", v.consecutive_failures, dash(&v.last_error));
            for (path, version) in &v.applied {
                println!("    {path} v{version}");
            }
        }
        None => println!("vault: not configured (policy from the local files)"),
    }
    for p in &answer.policy {
        println!("  {}  [{}]  {}{}", p.identity, p.mode, p.version, if p.expired { "  EXPIRED" } else { "" });
    }
    Ok(code)
}
