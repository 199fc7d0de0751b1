//! `fence-agent dns`: egress by name in the running agent: per identity, the names it resolved
//! and the addresses it may reach until their expiry.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::control::{Request, call, protocol::DnsReply};

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket (default: `[control] socket` of the configuration, else
    /// /run/fence/agent.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The agent's configuration, for the socket it names (default /etc/fence/agent.toml).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

pub fn main(args: DnsArgs) -> anyhow::Result<ExitCode> {
    let answer: DnsReply = call(
        &crate::cmd::socket_of(args.socket.clone(), args.config.as_deref(), crate::cmd::SocketKind::Control)?,
        &Request::Dns,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !answer.enabled {
        println!("egress by name is off ([dns] enabled = false, or the kernel lacks the dns fence's hooks)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<40} {:<40} {:>8}", "IDENTITY", "NAME", "ADDRESS", "TTL");
    for l in &answer.learned {
        println!("{:<20} {:<40} {:<40} {:>7}s", l.identity, l.name, l.address, l.expires_in);
    }
    println!("{} address(es); {} evicted by the caps since start", answer.learned.len(), answer.evictions);
    Ok(ExitCode::SUCCESS)
}
