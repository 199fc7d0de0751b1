//! `fence-agent grant`: just-in-time grants. A fenced workload requests one of its identity's
//! grantable targets for a while (the agent learns the identity from the kernel, never from
//! the request); root on the host approves, denies, revokes and lists.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};

use crate::{
    cmd::console::VaultArgs,
    config::DEFAULT_WORKLOAD_SOCKET,
    control::{
        CallError, Request, call,
        protocol::{GrantOp, GrantReply, GrantView},
    },
    grants::Phase,
    vault::layout::grants::Verdict,
};

/// Exit code: the request was refused (bad input, not allowed).
const REFUSED: u8 = 2;
/// Exit code: a person (or the pending timeout) denied it.
const DENIED: u8 = 3;
/// Exit code: `--wait` ran out while the request was still pending.
const STILL_PENDING: u8 = 4;

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Ask for a grantable target of your identity, for a while (from inside the workload).
    ///
    /// Exit codes: 0 the request is recorded (with --wait: the grant is active), 1 the agent
    /// could not be asked, 2 the request was refused, 3 denied, 4 still pending when --wait
    /// ran out.
    Request(RequestArgs),
    /// Approve a pending request: root on the host, or a console through the vault (-c with
    /// --key: a decision signed for that request and host).
    Approve(DecideArgs),
    /// Deny a pending request (root on the host, or a console with -c and --key).
    Deny(DecideArgs),
    /// End an active grant now (root on the host, or a console with -c and --key): new
    /// connects, execs and opens are refused at once and TCP connections opened under it are
    /// closed.
    Revoke(DecideArgs),
    /// Pending and active grants (root: all; a fenced process: its identity's).
    List(ListArgs),
    /// One grant.
    Show(ShowArgs),
}

/// The operators' socket (approve, deny, revoke).
#[derive(Debug, Args)]
pub struct Socket {
    /// The agent's control socket (default: `[control] socket` of /etc/fence/agent.toml, else
    /// /run/fence/agent.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// The workloads' socket (request, list, show): reachable from inside a fence.
#[derive(Debug, Args)]
pub struct WorkloadSocket {
    /// The agent's workload socket (default /run/fence/workload.sock; a workload does not
    /// read the agent's configuration, which may be among the files fenced from it).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl Socket {
    fn path(&self) -> anyhow::Result<PathBuf> {
        crate::cmd::socket_of(self.socket.clone(), None, crate::cmd::SocketKind::Control)
    }
}

impl WorkloadSocket {
    fn path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_WORKLOAD_SOCKET)))
    }
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The grantable target (a name in the identity's `grants:`).
    pub target: String,
    /// How long (90s, 30m, 2h); at most the target's max_ttl and the host's cap.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: String,
    /// The identity (root on the host only; a fenced process always asks for its own).
    #[arg(long)]
    pub identity: Option<String>,
    /// Wait until the request is approved or denied, at most this long (default 10m when
    /// given without a value).
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "10m", value_parser = parse_duration)]
    pub wait: Option<Duration>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: WorkloadSocket,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    pub id: String,
    #[arg(long, default_value = "")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: Socket,
    /// Console: decide through the vault of this configuration ([vault] table).
    #[arg(long, short = 'c', value_name = "PATH", requires = "key")]
    pub config: Option<PathBuf>,
    /// Console: the signing key (see `policy keygen`); the agents must list its public key.
    #[arg(long, value_name = "PATH", requires = "config")]
    pub key: Option<PathBuf>,
    /// Console: the request's host (default: whichever host has the request).
    #[arg(long)]
    pub host: Option<String>,
    /// Console: how long the signed decision may be acted on.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub valid_for: Duration,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub identity: Option<String>,
    /// Ended grants too.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: WorkloadSocket,
    /// Console: the requests waiting in the vault of this configuration, every host.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: WorkloadSocket,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text).map_err(|e| e.to_string())
}

pub fn main(command: GrantCommand) -> anyhow::Result<ExitCode> {
    match command {
        GrantCommand::Request(a) => request(a),
        GrantCommand::Approve(a) => decide(a, Verdict::Approve),
        GrantCommand::Deny(a) => decide(a, Verdict::Deny),
        GrantCommand::Revoke(a) => decide(a, Verdict::Revoke),
        GrantCommand::Show(a) => one(&a.socket.path()?, GrantOp::Show { id: a.id }, a.json),
        GrantCommand::List(a) => list(a),
    }
}

/// A decision: on this host's agent, or signed into the vault with `-c`.
fn decide(a: DecideArgs, verdict: Verdict) -> anyhow::Result<ExitCode> {
    if let (Some(config), Some(key)) = (&a.config, &a.key) {
        let vault = VaultArgs { config: Some(config.clone()) };
        return crate::cmd::console::grants::decide(crate::cmd::console::grants::DecideArgs {
            vault: &vault,
            key,
            id: &a.id,
            host: a.host.as_deref(),
            verdict,
            reason: &a.reason,
            valid_for: a.valid_for,
        });
    }
    let op = match verdict {
        Verdict::Approve => GrantOp::Approve { id: a.id },
        Verdict::Deny => GrantOp::Deny { id: a.id, reason: a.reason },
        Verdict::Revoke => GrantOp::Revoke { id: a.id, reason: a.reason },
    };
    one(&a.socket.path()?, op, a.json)
}

/// Calls the agent; a refusal is exit 2 with the agent's reason, no answer exit 1.
fn ask(socket: &std::path::Path, op: GrantOp) -> Result<GrantReply, ExitCode> {
    match call::<GrantReply>(socket, &Request::Grant(op)) {
        Ok(r) => Ok(r),
        Err(CallError::Refused(why)) => {
            eprintln!("fence-agent: refused: {why}");
            Err(ExitCode::from(REFUSED))
        }
        Err(e) => {
            eprintln!("fence-agent: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn one(socket: &std::path::Path, op: GrantOp, json: bool) -> anyhow::Result<ExitCode> {
    let reply = match ask(socket, op) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    print(&reply.grants, json)?;
    Ok(ExitCode::SUCCESS)
}

fn request(a: RequestArgs) -> anyhow::Result<ExitCode> {
    let op =
        GrantOp::Request { target: a.target, ttl_seconds: a.ttl.as_secs(), reason: a.reason, identity: a.identity };
    let socket = a.socket.path()?;
    let reply = match ask(&socket, op) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let Some(mut grant) = reply.grants.into_iter().next_back() else {
        anyhow::bail!("the agent answered without the grant");
    };
    if let Some(limit) = a.wait {
        let until = Instant::now() + limit;
        while grant.grant.phase == Phase::Pending && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(500));
            match ask(&socket, GrantOp::Show { id: grant.grant.id.clone() }) {
                Ok(r) => grant = r.grants.into_iter().next_back().unwrap_or(grant),
                Err(code) => return Ok(code),
            }
        }
    }
    print(std::slice::from_ref(&grant), a.json)?;
    Ok(match (&grant.grant.phase, a.wait) {
        (Phase::Active { .. }, _) | (Phase::Pending, None) => ExitCode::SUCCESS,
        (Phase::Pending, Some(_)) => ExitCode::from(STILL_PENDING),
        _ => ExitCode::from(DENIED),
    })
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    if let Some(config) = a.config {
        return crate::cmd::console::grants::list(&VaultArgs { config: Some(config) }, a.json);
    }
    let reply = match ask(&a.socket.path()?, GrantOp::List { identity: a.identity }) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let grants: Vec<GrantView> = reply.grants.into_iter().filter(|g| a.all || !g.grant.phase.ended()).collect();
    print(&grants, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print(grants: &[GrantView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(grants)?);
        return Ok(());
    }
    println!(
        "{:<18} {:<16} {:<16} {:<9} {:>9} {:>6}  BY / REASON",
        "ID", "IDENTITY", "TARGET", "STATE", "REMAINING", "USES"
    );
    for v in grants {
        let g = &v.grant;
        let remaining = v.expires_in.map_or("-".to_owned(), |s| crate::duration::show(Duration::from_secs(s)));
        let uses = v.uses.map_or("-".to_owned(), |u| u.to_string());
        // Reasons come from workloads and consoles: nothing in them reaches the terminal raw.
        let who = crate::names::printable(&match &g.phase {
            Phase::Active { approver, .. } => approver.clone(),
            Phase::Denied { by, reason } | Phase::Revoked { by, reason, .. } => format!("{by}: {reason}"),
            _ => g.reason.clone(),
        });
        println!(
            "{:<18} {:<16} {:<16} {:<9} {:>9} {:>6}  {who}",
            g.id,
            g.identity,
            g.target,
            g.phase.name(),
            remaining,
            uses
        );
    }
    Ok(())
}
