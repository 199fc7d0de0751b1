//! `fence-agent report`: evidence per control from the running agent (its fences, identities,
//! policy source) and its logs (denials, grants, secrets delivered, the logs' integrity); see
//! [`crate::report`].

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use jiff::Timestamp;

use crate::{
    cmd::{
        console::{
            VaultArgs,
            reports::{Format, reports},
        },
        logs::parse_since,
    },
    config::Config,
    control::{
        Request, call,
        protocol::{IdentitiesReply, StatusReply},
    },
    report::{Status, build, gather, render},
};

pub const REPORT_HELP: &str = "\
Controls: NIST 800-53 AC-6, IA-5, SC-7; ISO 27001 5.15, 5.16; SOC 2 CC6.1; GDPR data
minimisation. Each finding is met, partial or not met, with the reason.

Exit status:
  0  no finding is 'not met'
  2  the report could not be made (the agent does not answer, a log cannot be read)
  3  some finding is 'not met'

Examples:
  fence-agent report --markdown --since 30d > fence-report.md
  fence-agent report --json | jq '.controls[] | select(.status != \"met\")'
  fence-agent report --hosts --markdown -c console.toml > fleet-report.md

--hosts: each agent with a [vault] publishes its report as status/<host>/report after its
first poll, when the policy in force changes, and at least hourly; a report not rewritten for
two hours is marked STALE. Exit 2 there also when a host's report cannot be read.";

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Print JSON (the findings and the evidence they were drawn from).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print Markdown: a table per control, then identities, fences and log integrity.
    #[arg(long)]
    pub markdown: bool,
    /// The period for denials, grants and secrets: RFC 3339, or a duration back from now (30d).
    /// Default: all the logs hold.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<Timestamp>,
    /// The agent's control socket (default: `[control] socket` of the configuration).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Every host's report, as its agent published it to the vault (console use; needs
    /// --config with [vault]), with a table of each control's status per host.
    #[arg(long, conflicts_with_all = ["since", "socket"])]
    pub hosts: bool,
    /// The agent's configuration (its socket, logs and state directory); with --hosts, a
    /// configuration with a [vault] table. Default: /etc/fence/agent.toml.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Exit status when some finding is not met.
const NOT_MET: u8 = 3;

pub fn main(args: ReportArgs) -> anyhow::Result<ExitCode> {
    run(args).or_else(|e| {
        eprintln!("fence-agent report: {e:#}");
        Ok(ExitCode::from(2))
    })
}

fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    if args.hosts {
        let format = if args.json {
            Format::Json
        } else if args.markdown {
            Format::Markdown
        } else {
            Format::Text
        };
        return reports(&VaultArgs { config: args.config }, format);
    }
    // A configuration that does not load is an error: defaults would read other files.
    let config = Config::load(args.config.as_deref())?;
    let socket = crate::cmd::socket_of(args.socket.clone(), args.config.as_deref(), crate::cmd::SocketKind::Control)?;
    let status: StatusReply = call(&socket, &Request::Status).context("asking the agent for its status")?;
    let identities = call::<IdentitiesReply>(&socket, &Request::Identities)
        .context("asking the agent for its identities")?
        .identities;
    let host = gather::host_name(&status);
    let inputs = gather::local(&config, host, status, identities, args.since)?;
    let report = build(inputs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.markdown {
        print!("{}", render::markdown(&report));
    } else {
        print!("{}", render::text(&report));
    }
    Ok(if report.status == Status::NotMet { ExitCode::from(NOT_MET) } else { ExitCode::SUCCESS })
}
