//! `fence-agent identities`: each identity of the running agent, its selectors, resolved
//! cgroups, live process count, mode, policy version and expiry.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    config::DEFAULT_SOCKET,
    control::{Request, call},
};

#[derive(Debug, Args)]
pub struct IdentitiesArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn main(args: IdentitiesArgs) -> anyhow::Result<ExitCode> {
    let answer = call(&args.socket, &Request::Identities).map_err(anyhow::Error::msg)?;
    if answer["ok"] != true {
        anyhow::bail!("{}", answer["error"].as_str().unwrap_or("the agent refused"));
    }
    let list = answer["identities"].as_array().cloned().unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for i in &list {
        let s = |k: &str| i[k].as_str().unwrap_or("-").to_owned();
        let state = if i["expired"] == true { "EXPIRED (deny-all)".to_owned() } else { s("mode") };
        println!("{}  [{}]  {} process(es)", s("name"), state, i["processes"]);
        println!("    owner: {}   purpose: {}", s("owner"), s("purpose"));
        println!("    policy: {}   expires: {}", s("policy_version"), s("expires"));
        println!("    exec: {}   unix: {}   egress rules: {}", s("exec"), s("unix"), i["egress_rules"]);
        for sel in i["selectors"].as_array().into_iter().flatten() {
            let id = sel["cgroup_id"].as_u64().map_or("not present".to_owned(), |id| format!("id {id}"));
            let unit = sel["unit"].as_str().map(|u| format!(" {u}")).unwrap_or_default();
            println!(
                "    {}{unit}: {} ({id}, {} process(es))",
                sel["kind"].as_str().unwrap_or("?"),
                sel["cgroup"].as_str().unwrap_or("?"),
                sel["processes"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
