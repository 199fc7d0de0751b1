//! `fence-agent run`: probe, load, attach, apply, report events; SIGHUP reloads the policy
//! atomically, SIGTERM/SIGINT detach and exit.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroup::Cgroups,
    config::Config,
    enforcer::Enforcer,
    events::{Directory, EventReader, Sinks},
    manager::{Applied, ApplyError, PolicyManager, load_policy},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file or directory (YAML, TOML or JSON). Repeatable.
    #[arg(long, short = 'p', required = true, value_name = "PATH")]
    pub policy: Vec<PathBuf>,
    /// Agent configuration (TOML). Default: /etc/fence/agent.toml if it exists.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let cgroups = Cgroups::discover()?;
    let set = match load_policy(&args.policy, &cgroups) {
        Ok(set) => set,
        Err(errors) => {
            eprintln!("fence-agent: {errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let sinks = Sinks::open(config.events.stdout, config.events.file.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, cgroups, set, sinks))
}

async fn serve(
    args: RunArgs,
    cgroups: Cgroups,
    set: crate::policy::PolicySet,
    sinks: Sinks,
) -> anyhow::Result<ExitCode> {
    // Signal handlers first: a SIGTERM during start-up must still detach cleanly.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let mut enforcer = Enforcer::load(&cgroups).context("loading the eBPF programs")?;
    for a in enforcer.attachments() {
        tracing::info!(program = a.program, hook = a.hook, cgroup = %a.cgroup.display(), "attached");
    }
    let directory = Arc::new(RwLock::new(Directory::default()));
    let ring = enforcer.take_events()?;
    let mut reader = EventReader::new(ring, directory.clone(), sinks)
        .context("watching the event ring buffer")?;
    let mut manager = PolicyManager::new(enforcer, directory);
    match manager.apply(set) {
        Ok(applied) => log_applied(applied),
        Err(ApplyError::Policy(errors)) => {
            eprintln!("fence-agent: {errors}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    }
    let events = tokio::spawn(async move {
        reader.run().await;
    });
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
    tracing::info!(cgroup2 = %cgroups.root().display(), "fence is enforcing");

    loop {
        tokio::select! {
            _ = hup.recv() => reload(&mut manager, &args, &cgroups),
            _ = term.recv() => { tracing::info!("SIGTERM: detaching and exiting"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: detaching and exiting"); break; }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Let the reader write what the kernel already reported, then detach.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    events.abort();
    drop(manager);
    tracing::info!("detached");
    Ok(ExitCode::SUCCESS)
}

fn reload(manager: &mut PolicyManager, args: &RunArgs, cgroups: &Cgroups) {
    tracing::info!("SIGHUP: reloading policy");
    let result = load_policy(&args.policy, cgroups)
        .map_err(ApplyError::from)
        .and_then(|set| tokio::task::block_in_place(|| manager.apply(set).map(|_| ())));
    match result {
        Ok(()) => {
            if let Some(applied) = manager.current() {
                log_applied(applied);
            }
        }
        Err(e) => {
            let live = manager
                .current()
                .map(|a| a.report.sequence)
                .unwrap_or_default();
            tracing::error!(
                live_sequence = live,
                "reload refused; the previous policy stays in force: {e}"
            );
        }
    }
}

fn log_applied(applied: &Applied) {
    tracing::info!(
        sequence = applied.report.sequence,
        generation = applied.report.generation,
        entries = applied.report.entries,
        identities = applied.compiled.identities.len(),
        "policy applied"
    );
    for identity in &applied.compiled.identities {
        let cgroups: Vec<&str> = identity.cgroups.iter().map(|(p, _)| p.as_str()).collect();
        if identity.expired {
            tracing::warn!(identity = %identity.name, ?cgroups, "identity has EXPIRED: enforcing deny-all");
        } else {
            tracing::info!(
                identity = %identity.name,
                mode = %identity.mode,
                version = %identity.version,
                ?cgroups,
                egress_rules = identity.rule_names.len(),
                "identity fenced"
            );
        }
    }
}
