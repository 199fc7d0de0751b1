//! `fence-agent identities`: each identity of the running agent, its selectors, resolved
//! cgroups, live process count, mode, policy version and expiry.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use crate::control::{
    Request, call,
    protocol::{IdentitiesReply, IdentityStatus},
};

#[derive(Debug, Args)]
pub struct IdentitiesArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List, per fenced process, the environment variables that look like credentials (names
    /// and why, never values). Exit status 3 when any is found.
    #[arg(long)]
    pub check_env: bool,
    /// The agent's control socket (default: `[control] socket` of the configuration, else
    /// /run/fence/agent.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The agent's configuration, for the socket it names (default /etc/fence/agent.toml).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

pub fn main(args: IdentitiesArgs) -> anyhow::Result<ExitCode> {
    let answer: IdentitiesReply = call(
        &crate::cmd::socket_of(args.socket.clone(), args.config.as_deref(), crate::cmd::SocketKind::Control)?,
        &Request::Identities,
    )?;
    if args.check_env {
        return check_env(&answer.identities, args.json);
    }
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
    let exec = i.exec_programs.map_or("unrestricted".to_owned(), |n| format!("allow-list ({n} programs)"));
    let unix = if i.standing.unix_allow.is_some() { "allow-list" } else { "host default-deny" };
    println!("    exec: {exec}   unix: {unix}   egress rules: {}", i.egress_rules);
    println!("    standing: {}", i.standing);
    for g in &i.grantable {
        println!("    grantable: {g}");
    }
    for g in &i.granted {
        println!("    GRANTED: {} {} ({}s left)", g.id, g.target, g.seconds_left);
    }
    for sel in &i.selectors {
        let id = sel.cgroup_id.map_or("not present".to_owned(), |id| format!("id {id}"));
        let unit = sel.unit.as_ref().map(|u| format!(" {u}")).unwrap_or_default();
        println!("    {}{unit}: {} ({id}, {} process(es))", sel.kind, sel.cgroup, sel.processes);
    }
}

/// Credential-looking environment variables of one fenced process (names and why, never values).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct EnvFinding {
    pub identity: String,
    pub pid: u32,
    pub comm: String,
    pub variables: Vec<crate::credscan::Finding>,
}

/// Every process of every identity's cgroups, its environment scanned; and how many processes
/// were gone or unreadable.
pub(crate) fn env_findings(identities: &[IdentityStatus]) -> anyhow::Result<(Vec<EnvFinding>, usize)> {
    let cgroups = crate::cgroup::Cgroups::discover()?;
    let proc_root = std::path::Path::new("/proc");
    let mut found = Vec::new();
    let mut unreadable = 0usize;
    for i in identities {
        let mut pids: Vec<u32> =
            i.selectors.iter().flat_map(|s| crate::cgroup::processes_below(&cgroups.dir(&s.cgroup))).collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            match crate::credscan::scan_process(proc_root, pid) {
                Ok(v) if !v.is_empty() => {
                    let comm =
                        std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm")).unwrap_or_default();
                    found.push(EnvFinding {
                        identity: i.name.clone(),
                        pid,
                        comm: comm.trim().to_owned(),
                        variables: v,
                    });
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((found, unreadable))
}

/// `--check-env`.
fn check_env(identities: &[IdentityStatus], json: bool) -> anyhow::Result<ExitCode> {
    let (found, unreadable) = env_findings(identities)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for f in &found {
            let vars: Vec<String> = f.variables.iter().map(|v| format!("{} ({})", v.name, why_text(v.why))).collect();
            println!("{}  pid {} ({}): {}", f.identity, f.pid, f.comm, vars.join(", "));
        }
        let n: usize = found.iter().map(|f| f.variables.len()).sum();
        println!(
            "{n} credential-looking variable(s) in {} process(es); {unreadable} process(es) gone or unreadable",
            found.len()
        );
    }
    Ok(if found.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

pub(crate) fn why_text(why: crate::credscan::Why) -> String {
    serde_json::to_value(why)
        .ok()
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_default()
}
