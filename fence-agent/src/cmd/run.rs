//! `fence-agent run`: probe, load, attach, apply, report events; SIGHUP reloads the policy
//! atomically, SIGTERM/SIGINT detach and exit; changes to files the policy names (programs
//! replaced by upgrades, protected files created or renamed) are resolved again as they happen.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    btf::Btf,
    cgroup::Cgroups,
    config::Config,
    enforcer::Enforcer,
    events::{Directory, EventReader, Sinks},
    fanotify::FileFence,
    host::{file_mechanism, lsm_list},
    manager::{Applied, ApplyError, PolicyManager, load_policy},
    mechanisms::{Availability, report},
    offsets::kernel_offsets,
    policy::PolicySet,
    protect::HostProtection,
    watch::Watcher,
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
    let host = config.host_protection().map_err(anyhow::Error::msg).context("the agent configuration")?;
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
    runtime.block_on(serve(args, cgroups, host, set, sinks))
}

async fn serve(
    args: RunArgs,
    cgroups: Cgroups,
    host: HostProtection,
    set: PolicySet,
    sinks: Sinks,
) -> anyhow::Result<ExitCode> {
    // Signal handlers first: a SIGTERM during start-up must still detach cleanly.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let offsets = match Btf::from_sys_fs().and_then(|b| kernel_offsets(&b)) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "kernel BTF unusable: the exec, file and unix fences cannot use kernel programs");
            None
        }
    };
    let mut enforcer = Enforcer::load(&cgroups, offsets).context("loading the eBPF programs")?;
    for a in enforcer.attachments() {
        tracing::info!(program = a.program, hook = a.hook, target = %a.target, "attached");
    }
    let (agent_events_tx, agent_events) = mpsc::unbounded_channel();
    let files = file_mechanism(enforcer.plan());
    let file_fence =
        (files == Availability::Fanotify).then(|| FileFence::new(agent_events_tx.clone(), cgroups.clone()));
    for row in report(enforcer.plan(), &files, lsm_list().as_deref()) {
        if row.enforced {
            tracing::info!(fence = row.fence, mechanism = %row.mechanism, notes = %row.notes, "fence enforced");
        } else {
            tracing::warn!(fence = row.fence, notes = %row.notes, remedy = row.remedy.as_deref().unwrap_or(""), "fence NOT ENFORCED on this host");
        }
    }
    let directory = Arc::new(RwLock::new(Directory::default()));
    let ring = enforcer.take_events()?;
    let mut reader =
        EventReader::new(ring, agent_events, directory.clone(), sinks).context("watching the event ring buffer")?;
    let mut manager = PolicyManager::new(enforcer, directory, host, file_fence);
    match manager.apply(set) {
        Ok(applied) => log_applied(applied),
        Err(ApplyError::Policy(errors)) => {
            eprintln!("fence-agent: {errors}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    }
    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let mut watcher = match Watcher::start(changed_tx) {
        Ok(mut w) => {
            w.set(&manager.watch_dirs());
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable: files named by the policy are resolved only at start and on SIGHUP");
            None
        }
    };
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
            Some(()) = changed.recv() => {
                // Let a burst of changes (an upgrade, a rename) settle, then resolve once.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while changed.try_recv().is_ok() {}
                if let Some(result) = tokio::task::block_in_place(|| manager.reapply()) {
                    match result {
                        Ok(applied) => {
                            tracing::info!(sequence = applied.report.sequence, "files named by the policy changed on disk; applied the new resolution");
                        }
                        Err(e) => tracing::error!("re-resolving after a file change failed; the previous policy stays in force: {e}"),
                    }
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: detaching and exiting"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: detaching and exiting"); break; }
        }
        if let Some(w) = &mut watcher {
            w.set(&manager.watch_dirs());
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Let the reader write what the kernel already reported, then detach.
    tokio::time::sleep(Duration::from_millis(50)).await;
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
            let live = manager.current().map(|a| a.report.sequence).unwrap_or_default();
            tracing::error!(live_sequence = live, "reload refused; the previous policy stays in force: {e}");
        }
    }
}

fn log_applied(applied: &Applied) {
    let c = &applied.compiled;
    tracing::info!(
        sequence = applied.report.sequence,
        generation = applied.report.generation,
        entries = applied.report.entries,
        identities = c.identities.len(),
        protected_files = c.protected.len(),
        "policy applied"
    );
    for identity in &applied.set.identities {
        let cgroups: Vec<&str> = identity.cgroups.iter().map(|cg| cg.path.as_str()).collect();
        if identity.expired {
            tracing::warn!(identity = %identity.name, ?cgroups, "identity has EXPIRED: enforcing deny-all");
            continue;
        }
        let programs = applied.resolved.identities.get(&identity.name).map_or(0, |r| r.exec.len());
        tracing::info!(
            identity = %identity.name,
            mode = %identity.mode,
            version = %identity.version,
            ?cgroups,
            egress_rules = identity.egress.len(),
            exec = %identity.exec.as_ref().map_or("unrestricted".to_owned(), |_| format!("allow-list of {programs} programs")),
            unix = if identity.unix.is_some() { "allow-list" } else { "host default-deny" },
            file_exceptions = identity.file_exceptions.len(),
            "identity fenced"
        );
    }
}
