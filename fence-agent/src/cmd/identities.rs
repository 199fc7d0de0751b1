//! `fence-agent identities`: each identity of the running agent, its selectors, resolved
//! cgroups, live process count, mode, policy version and expiry.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    config::DEFAULT_SOCKET,
    control::{
        Request, call,
        protocol::{IdentitiesReply, IdentityStatus},
    },
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
    let answer: IdentitiesReply = call(&args.socket, &Request::Identities)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer.identities)?);
        return Ok(ExitCode::SUCCESS);
    }
    for i in &answer.identities {
        print_identity(i);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_identity(i: &IdentityStatus) {
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let state = if i.expired { "EXPIRED (deny-all)".to_owned() } else { i.mode.to_string() };
    println!("{}  [{state}]  {} process(es)", i.name, i.processes);
    println!("    owner: {}   purpose: {}", i.owner, i.purpose);
    println!("    policy: {}   expires: {}", i.policy_version, or_dash(&i.expires));
    println!("    exec: {}   unix: {}   egress rules: {}", i.exec, i.unix, i.egress_rules);
    println!("    standing: {}", i.standing);
    for g in &i.grantable {
        println!("    grantable: {g}");
    }
    for g in &i.granted {
        println!("    GRANTED: {g}");
    }
    for sel in &i.selectors {
        let id = sel.cgroup_id.map_or("not present".to_owned(), |id| format!("id {id}"));
        let unit = sel.unit.as_ref().map(|u| format!(" {u}")).unwrap_or_default();
        println!("    {}{unit}: {} ({id}, {} process(es))", sel.kind, sel.cgroup, sel.processes);
    }
}
