//! `fence-agent status`: where this host's policy came from (vault, last-known-good cache or
//! local files), its versions, and the vault sync state; `--hosts`: every host's status as
//! the agents report it to the vault.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    cmd::console::{self, VaultArgs},
    config::DEFAULT_SOCKET,
    control::{Request, call},
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Every host's status, read from the vault (console use; needs --config with [vault]).
    #[arg(long)]
    pub hosts: bool,
    #[command(flatten)]
    pub vault: VaultArgs,
}

pub fn main(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.hosts {
        return console::hosts(&args.vault, args.json);
    }
    let answer = call(&args.socket, &Request::Status).map_err(anyhow::Error::msg)?;
    if answer["ok"] != true {
        anyhow::bail!("{}", answer["error"].as_str().unwrap_or("the agent refused"));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let v = &answer["vault"];
    println!("source: {}   policy sequence: {}", answer["source"].as_str().unwrap_or("?"), answer["sequence"]);
    if v.is_object() {
        let f = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
        println!("vault: {}   host: {}   signatures: {}", f("vault"), f("hostname"), f("signatures"));
        println!(
            "last poll: {}   last success: {}   last applied: {}",
            f("last_poll"),
            f("last_success"),
            f("last_applied")
        );
        println!("consecutive failures: {}   last error: {}", v["consecutive_failures"], f("last_error"));
        if let Some(applied) = v["applied"].as_object() {
            for (path, version) in applied {
                println!("    {path} v{version}");
            }
        }
    } else {
        println!("vault: not configured (policy from the local files)");
    }
    for p in answer["policy"].as_array().into_iter().flatten() {
        println!(
            "  {}  [{}]  {}{}",
            p["identity"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            if p["expired"] == true { "  EXPIRED" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
