//! `fence-agent dns`: egress by name in the running agent: per identity, the names it resolved
//! and the addresses it may reach until their expiry.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    config::DEFAULT_SOCKET,
    control::{Request, call, protocol::DnsReply},
};

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn main(args: DnsArgs) -> anyhow::Result<ExitCode> {
    let answer: DnsReply = call(&args.socket, &Request::Dns)?;
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
