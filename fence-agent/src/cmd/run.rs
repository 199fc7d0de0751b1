//! `fence-agent run`: probe, load, attach, apply, report events; SIGHUP reloads the policy
//! atomically, SIGTERM/SIGINT detach and exit; changes to files the policy names are resolved
//! again as they happen; identities expire on time; the control socket serves
//! `fence-agent exec` and `fence-agent identities`; every identity lifecycle change is audited.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use jiff::Timestamp;
use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    audit::{AuditLog, Trigger, changes},
    btf::Btf,
    cgroup::Cgroups,
    config::Config,
    control::{self, Call, Request},
    enforcer::Enforcer,
    events::{
        Directory, EventReader, Sinks,
        reader::FloodControl,
        summary::{AgentEvents, RateLimit},
    },
    fanotify::FileFence,
    host::{file_mechanism, lsm_list},
    manager::{Applied, ApplyError, ExtraProtection, PolicyManager, load_policy},
    mechanisms::{Availability, report},
    metrics::{self, Metrics},
    offsets::kernel_offsets,
    persist,
    policy::{PolicySet, glob::PathGlob},
    protect::HostProtection,
    vault::{
        agent::{SharedStatus, Source, SyncRequest, VaultAgent},
        layout::HostFacts,
        sync::VaultSet,
    },
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
    let mut host = config.protection.clone();
    // Fenced processes have no business with the agent: its socket is in the default-deny set.
    if let Ok(g) = PathGlob::parse(&config.control.socket.display().to_string()) {
        host.unix_deny.push(g);
    }
    let cgroups = Cgroups::discover()?;
    // Invalid local policy files stop the agent, unless a vault is configured: then its
    // last-known-good cache may be the policy at start (checked once the kernel side is up).
    let local = load_policy(&args.policy, &cgroups);
    if let (Err(errors), None) = (&local, &config.vault) {
        eprintln!("fence-agent: {errors}");
        return Ok(ExitCode::from(2));
    }
    let sinks = Sinks::from_config(&config.events)?;
    let audit = AuditLog::open(&config.audit.file)?;
    // SIGHUP is read from a signalfd, which says who sent it (for the audit log). Blocked here,
    // before the runtime's threads exist, so that every thread inherits the block.
    let mut hup_mask = SigSet::empty();
    hup_mask.add(Signal::SIGHUP);
    hup_mask.thread_block().context("blocking SIGHUP")?;
    let hup = SignalFd::with_flags(&hup_mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("signalfd")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(Setup { args, config, cgroups, host, local, sinks, audit, hup }))
}

struct Setup {
    args: RunArgs,
    config: Config,
    cgroups: Cgroups,
    host: HostProtection,
    local: Result<PolicySet, crate::policy::PolicyErrors>,
    sinks: Sinks,
    audit: AuditLog,
    hup: SignalFd,
}

async fn serve(s: Setup) -> anyhow::Result<ExitCode> {
    let Setup { args, config, cgroups, host, local, sinks, mut audit, hup } = s;
    // Signal handlers first: a SIGTERM during start-up must still detach cleanly.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // SAFETY: the signalfd lives as long as the AsyncFd and always reports its own fd.
    let hup = unsafe { AsyncFd::register_with_interest(hup, Interest::READABLE) }.map_err(std::io::Error::from)?;

    let listener = control::listen(&config.control.socket).await?;
    let offsets = match Btf::from_sys_fs().and_then(|b| kernel_offsets(&b)) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "kernel BTF unusable: the exec, file and unix fences cannot use kernel programs");
            None
        }
    };
    let run = match config.persist.enabled {
        true => Some(persist::prepare(&config.persist.pin_dir)?),
        false => None,
    };
    let mut enforcer = Enforcer::load(offsets).context("loading the eBPF programs")?;
    let (agent_events_tx, agent_events) = AgentEvents::new();
    let files = file_mechanism(enforcer.plan());
    let file_fence =
        (files == Availability::Fanotify).then(|| FileFence::new(agent_events_tx.clone(), cgroups.clone()));
    let metrics = Metrics::new();
    if let Some(addr) = config.metrics.listen {
        metrics::start(addr, metrics.clone()).await.with_context(|| format!("metrics.listen = {addr}"))?;
        tracing::info!(%addr, "metrics served (Prometheus text format) at /metrics");
    }
    let rows = report(enforcer.plan(), &files, lsm_list().as_deref());
    metrics.mechanisms(&rows);
    for row in rows {
        if row.enforced {
            tracing::info!(fence = row.fence, mechanism = %row.mechanism, notes = %row.notes, "fence enforced");
        } else {
            tracing::warn!(fence = row.fence, notes = %row.notes, remedy = row.remedy.as_deref().unwrap_or(""), "fence NOT ENFORCED on this host");
        }
    }
    let directory = Arc::new(RwLock::new(Directory::default()));
    let ring = enforcer.take_events(run.as_ref().map(persist::Run::events).as_deref())?;
    let limit = RateLimit { per_second: config.events.rate_limit, burst: config.events.rate_burst };
    enforcer.set_event_limit(limit.kernel()).context("setting the event rate limit")?;
    let stats = match enforcer.take_event_stats() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "the kernel's suppressed and dropped counts cannot be read; no summaries for them");
            None
        }
    };
    let flood = FloodControl { stats, limit, interval: config.events.summary_interval };
    let mut reader = EventReader::new(ring, agent_events, directory.clone(), sinks, flood, Some(metrics.clone()))
        .context("watching the event ring buffer")?;
    let ids_path = config.persist.enabled.then(|| config.persist.state_dir.join("identity-ids.json"));
    let mut manager = PolicyManager::new(enforcer, directory, host, &cgroups, file_fence, ids_path);
    let hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    // With a vault: the last-known-good cache, if it verifies and validates, is the policy at
    // start; else the local policy files. The vault's set replaces it once fetched.
    let mut vault = config.vault.as_ref().map(|v| VaultAgent::new(v, &config.persist.state_dir, &hostname));
    // The last vault set in force (re-applied on SIGHUP instead of the local files).
    let mut vault_set: Option<VaultSet> = None;
    if let Some(va) = &mut vault
        && let Some(cache) = va.cached()
    {
        let applied = vault_policy(&cache.set, &va.host, &cgroups).and_then(|(set, extra, rules)| {
            apply_startup(&mut manager, &mut audit, &hostname, &metrics, set, extra)
                .map(|()| rules)
                .map_err(|e| e.to_string())
        });
        match applied {
            Ok(rules) => {
                tracing::info!(documents = cache.set.versions().len(), saved = %cache.saved_at, "enforcing the last-known-good policy from the vault cache until the vault answers");
                va.adopt(&cache, rules);
                vault_set = Some(cache.set);
            }
            Err(e) => tracing::error!("the cached vault policy cannot be applied; enforcing the local policy: {e}"),
        }
    }
    if vault_set.is_none() {
        let applied = local
            .map_err(ApplyError::from)
            .and_then(|set| apply_startup(&mut manager, &mut audit, &hostname, &metrics, set, Default::default()));
        match applied {
            Ok(()) => {}
            Err(ApplyError::Policy(errors)) => {
                eprintln!("fence-agent: {errors}");
                return Ok(ExitCode::from(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The maps hold the policy: attach (with pins, a previous run's programs still enforce
    // until ours are attached and pinned).
    manager.enforcer_mut().attach(&cgroups).context("attaching the eBPF programs")?;
    for a in manager.enforcer().attachments() {
        tracing::info!(program = a.program, hook = a.hook, target = %a.target, "attached");
    }
    if let Some(run) = &run {
        manager.enforcer_mut().pin_links(&run.links()).context("pinning the program links")?;
        for old in persist::runs(&config.persist.pin_dir, Some(&run.dir)) {
            let events = persist::events_of(&old).map_or(0, |ring| reader.drain_ring(ring));
            let links = persist::remove_run(&old)?;
            tracing::info!(run = %old.display(), links, events, "took over from an earlier run (its events written out, its links removed)");
        }
        tracing::info!(pins = %run.dir.display(), "enforcement is pinned: it stays when the agent exits");
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
    let (sync_tx, mut sync_rx) = mpsc::channel::<SyncRequest>(1);
    let mut sync_task = vault.as_mut().and_then(|va| va.spawn(sync_tx, metrics.clone()));
    let vault_status = vault.as_ref().map(|va| va.status.clone());
    let vault_host = vault.as_ref().map(|va| va.host.clone());
    let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
    let server = tokio::spawn(control::serve(listener, calls_tx));
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
    tracing::info!(cgroup2 = %cgroups.root().display(), control = %config.control.socket.display(), "fence is enforcing");

    // systemd's watchdog: pinged from this loop, so a wedged agent is restarted.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    loop {
        let expiry = manager.next_expiry();
        let until_expiry = expiry.map_or(Duration::from_secs(3600), |e| {
            let left = e.duration_since(Timestamp::now());
            Duration::try_from(left).unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            ready = hup.readable() => {
                let mut guard = ready.context("waiting for SIGHUP")?;
                let sender = match hup.get_ref().read_signal() {
                    Ok(Some(info)) => Some((info.ssi_pid, info.ssi_uid)),
                    _ => None,
                };
                guard.clear_ready();
                if let Some((pid, uid)) = sender {
                    let trigger = Trigger::by("reload", pid, uid);
                    match (&vault_set, &vault_host) {
                        // The vault's policy is in force: SIGHUP resolves it again; the local
                        // files do not replace it.
                        (Some(set), Some(host)) => {
                            tracing::info!(by = ?trigger.by, "SIGHUP: applying the vault's policy again (the local policy files are not used while it is in force)");
                            let _ = apply_vault(&mut manager, &mut audit, &hostname, &metrics, &cgroups, (host, set), trigger);
                        }
                        _ => reload(&mut manager, &mut audit, &hostname, &metrics, &args, &cgroups, trigger),
                    }
                }
            }
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
            Some(call) = calls.recv() => answer(&manager, vault_status.as_ref(), call),
            Some(req) = sync_rx.recv() => {
                let result = match &vault_host {
                    Some(host) => apply_vault(&mut manager, &mut audit, &hostname, &metrics, &cgroups, (host, &req.set), Trigger::new("vault")),
                    None => Err("no vault configured".to_owned()),
                };
                if result.is_ok() {
                    vault_set = Some(req.set);
                }
                let _ = req.reply.send(result);
            }
            ended = async { sync_task.as_mut().expect("guarded").await }, if sync_task.is_some() => {
                // A bug, not an outage (the loop never returns): keep enforcing what is in
                // force, and say so where operators look.
                sync_task = None;
                let why = match ended {
                    Err(e) if e.is_panic() => "the vault sync task panicked (a bug; see the log)".to_owned(),
                    _ => "the vault sync task ended".to_owned(),
                };
                tracing::error!("{why}; the policy in force stays, but no vault changes are picked up until the agent restarts");
                if let Some(st) = &vault_status {
                    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
                    st.last_error = Some(format!("{why}; restart the agent"));
                    st.refusing = false;
                }
                metrics.vault_sync_running(false);
            }
            _ = tokio::time::sleep(until_expiry), if expiry.is_some() => {
                let old = manager.current().map(|a| a.set.clone());
                match tokio::task::block_in_place(|| manager.expire_due(Timestamp::now())) {
                    Some(Ok(applied)) => {
                        let records = changes(old.as_ref(), &applied.set, &Trigger::new("expiry"), &hostname, Timestamp::now());
                        log_applied(applied, &metrics);
                        write_audit(&mut audit, &records);
                    }
                    Some(Err(e)) => tracing::error!("applying an expiry failed; the previous policy stays in force: {e}"),
                    None => {}
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            _ = term.recv() => { tracing::info!("SIGTERM: exiting"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: exiting"); break; }
        }
        if let Some(w) = &mut watcher {
            w.set(&manager.watch_dirs());
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if run.is_some() {
        tracing::info!("exiting; the pinned programs keep enforcing the last applied policy");
    }
    server.abort();
    if let Some(t) = sync_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&config.control.socket);
    // Let the reader write what the kernel already reported, then detach.
    tokio::time::sleep(Duration::from_millis(50)).await;
    events.abort();
    drop(manager);
    if run.is_none() {
        tracing::info!("detached");
    }
    Ok(ExitCode::SUCCESS)
}

/// The startup apply, with the vault cache's extra protection if it is the source.
fn apply_startup(
    manager: &mut PolicyManager,
    audit: &mut AuditLog,
    hostname: &str,
    metrics: &Metrics,
    set: PolicySet,
    extra: ExtraProtection,
) -> Result<(), ApplyError> {
    let old = manager.current().map(|a| a.set.clone());
    tokio::task::block_in_place(|| manager.apply_with_extra(set, extra))?;
    if let Some(applied) = manager.current() {
        let records = changes(old.as_ref(), &applied.set, &Trigger::new("startup"), hostname, Timestamp::now());
        log_applied(applied, metrics);
        write_audit(audit, &records);
    }
    Ok(())
}

/// A vault set as a policy: its documents validated together for this host, and the host's
/// assignment (extra protected files, matched rules).
fn vault_policy(
    set: &VaultSet,
    host: &HostFacts,
    cgroups: &Cgroups,
) -> Result<(PolicySet, ExtraProtection, Vec<String>), String> {
    let prepared = set.prepare(host).map_err(|e| e.to_string())?;
    let policy = crate::policy::validate(&prepared.docs, Some(cgroups), Timestamp::now()).map_err(|e| e.to_string())?;
    let mut globs = Vec::new();
    for p in &prepared.assignment.protect_paths {
        globs.push(PathGlob::parse(p).map_err(|e| format!("assignments: protect path {p:?}: {e}"))?);
    }
    Ok((policy, (globs, prepared.assignment.env_roots.clone()), prepared.assignment.rules))
}

/// Applies a set from the vault: validated whole, applied whole, or refused with the
/// previous policy left in force.
fn apply_vault(
    manager: &mut PolicyManager,
    audit: &mut AuditLog,
    hostname: &str,
    metrics: &Metrics,
    cgroups: &Cgroups,
    (host, set): (&HostFacts, &VaultSet),
    trigger: Trigger,
) -> Result<(), String> {
    let (policy, extra, _rules) = match vault_policy(set, host, cgroups) {
        Ok(p) => p,
        Err(e) => {
            metrics.policy_rejected();
            tracing::error!("the vault's policy is refused; the previous one stays in force: {e}");
            return Err(e);
        }
    };
    let old = manager.current().map(|a| a.set.clone());
    match tokio::task::block_in_place(|| manager.apply_with_extra(policy, extra)) {
        Ok(()) => {
            if let Some(applied) = manager.current() {
                let records = changes(old.as_ref(), &applied.set, &trigger, hostname, Timestamp::now());
                log_applied(applied, metrics);
                write_audit(audit, &records);
            }
            tracing::info!(documents = set.versions().len(), "applied the policy from the vault");
            Ok(())
        }
        Err(e) => {
            metrics.policy_rejected();
            tracing::error!("applying the vault's policy failed; the previous one stays in force: {e}");
            Err(e.to_string())
        }
    }
}

/// Applies `set`, logs it and writes the lifecycle changes to the audit log.
fn apply(
    manager: &mut PolicyManager,
    audit: &mut AuditLog,
    hostname: &str,
    metrics: &Metrics,
    set: PolicySet,
    trigger: Trigger,
) -> Result<(), ApplyError> {
    let old = manager.current().map(|a| a.set.clone());
    let applied = tokio::task::block_in_place(|| manager.apply(set))?;
    let records = changes(old.as_ref(), &applied.set, &trigger, hostname, Timestamp::now());
    log_applied(applied, metrics);
    write_audit(audit, &records);
    Ok(())
}

fn write_audit(audit: &mut AuditLog, records: &[crate::audit::AuditRecord]) {
    if let Err(e) = audit.write(records) {
        tracing::error!(error = %e, "writing the identity audit log failed");
    }
}

fn reload(
    manager: &mut PolicyManager,
    audit: &mut AuditLog,
    hostname: &str,
    metrics: &Metrics,
    args: &RunArgs,
    cgroups: &Cgroups,
    trigger: Trigger,
) {
    tracing::info!(by = ?trigger.by, "SIGHUP: reloading policy");
    let result = load_policy(&args.policy, cgroups)
        .map_err(ApplyError::from)
        .and_then(|set| apply(manager, audit, hostname, metrics, set, trigger));
    if let Err(e) = result {
        metrics.policy_rejected();
        let live = manager.current().map(|a| a.report.sequence).unwrap_or_default();
        tracing::error!(live_sequence = live, "reload refused; the previous policy stays in force: {e}");
    }
}

/// Answers a control socket request.
fn answer(manager: &PolicyManager, vault: Option<&SharedStatus>, call: Call) {
    let Call { request, peer, reply } = call;
    let response = match request {
        Request::Enter { identity } => match manager.enter(&identity, peer.pid) {
            Ok(cgroup) => {
                tracing::info!(identity = %identity, pid = peer.pid, uid = peer.uid, cgroup = %cgroup, "process entered identity");
                serde_json::json!({"ok": true, "cgroup": cgroup})
            }
            Err(e) => {
                tracing::warn!(identity = %identity, pid = peer.pid, uid = peer.uid, "exec refused: {e}");
                control::error(&e.to_string())
            }
        },
        Request::Identities if peer.uid != 0 => control::error("only root may list identities"),
        Request::Identities => serde_json::json!({"ok": true, "identities": manager.identities()}),
        Request::Status if peer.uid != 0 => control::error("only root may read the status"),
        Request::Status => {
            let live = manager.current();
            let policy: Vec<serde_json::Value> = live
                .map(|a| {
                    a.compiled
                        .identities
                        .iter()
                        .map(|i| serde_json::json!({"identity": i.name, "version": i.version.to_string(), "mode": i.mode.to_string(), "expired": i.expired}))
                        .collect()
                })
                .unwrap_or_default();
            let sync = vault.map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone());
            serde_json::json!({
                "ok": true,
                "source": sync.as_ref().map_or("local", |s| match s.source {
                    Source::Local => "local",
                    Source::Cache => "cache",
                    Source::Vault => "vault",
                }),
                "sequence": live.map(|a| a.report.sequence),
                "policy": policy,
                "vault": sync,
            })
        }
    };
    let _ = reply.send(response);
}

fn log_applied(applied: &Applied, metrics: &Metrics) {
    let c = &applied.compiled;
    let identities: Vec<(String, String, String)> =
        c.identities.iter().map(|i| (i.name.clone(), i.version.to_string(), i.mode.to_string())).collect();
    metrics.policy_applied_now(&identities);
    for (map, entries, capacity) in [
        (fence_common::maps::IDENTITIES, c.identities.len(), fence_common::capacity::IDENTITIES),
        (fence_common::maps::CGROUPS, c.cgroups.len(), fence_common::capacity::CGROUPS),
        (fence_common::maps::NET4, c.net4.len(), fence_common::capacity::NET4),
        (fence_common::maps::NET6, c.net6.len(), fence_common::capacity::NET6),
        (fence_common::maps::EXEC, c.exec.len(), fence_common::capacity::EXEC),
        (fence_common::maps::PROTECTED, c.protected.len(), fence_common::capacity::PROTECTED),
        (fence_common::maps::FILE_EXCEPT, c.file_exceptions.len(), fence_common::capacity::FILE_EXCEPT),
        (fence_common::maps::UNIX, c.unix.len(), fence_common::capacity::UNIX),
        (fence_common::maps::UNIX_ABSTRACT, c.unix_abstract.len(), fence_common::capacity::UNIX_ABSTRACT),
        (fence_common::maps::UNITS, c.units.len(), fence_common::capacity::UNITS),
    ] {
        // One generation is live; an apply briefly holds two (each map has room for both).
        metrics.map_occupancy(map, entries as u64, u64::from(capacity));
    }
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
