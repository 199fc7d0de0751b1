//! `fence-agent policy check`: validate policy files without loading anything.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};
use jiff::Timestamp;

use crate::{
    cgroup::Cgroups,
    compile::{IdAllocator, compile},
    policy::{CgroupResolver, PolicyErrors, load_paths, validate},
    resolve::Resolved,
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files (all problems are listed; exit status 2 if any).
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files or directories.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Do not check cgroups against this host (for checking policies meant for other hosts).
    #[arg(long)]
    pub offline: bool,
}

pub fn main(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let cgroups = if args.offline { None } else { Some(Cgroups::discover()?) };
    let result = load_paths(&args.paths).and_then(|docs| {
        let resolver = cgroups.as_ref().map(|c| c as &dyn CgroupResolver);
        let set = validate(&docs, resolver, Timestamp::now())?;
        compile(&set, &Resolved::default(), &mut IdAllocator::default())?;
        Ok::<_, PolicyErrors>(set)
    });
    match result {
        Ok(set) => {
            for identity in &set.identities {
                let state = if identity.expired { " (EXPIRED: deny-all)" } else { "" };
                println!(
                    "ok: identity \"{}\" mode {} {} egress rule(s), {} cgroup(s){state}",
                    identity.name,
                    identity.mode,
                    identity.egress.len(),
                    identity.cgroups.len()
                );
            }
            println!("policy ok: {} identities", set.identities.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::from(2))
        }
    }
}
