//! `fence-agent run`: the daemon. This file wires the pieces together and owns nothing of the
//! policy: it loads the programs (each fence unit chooses its mechanism), starts the event
//! writer and the policy service, attaches, and then turns signals into messages: SIGHUP is a
//! reload for the policy service, SIGTERM/SIGINT stop everything in order.

use std::{path::PathBuf, process::ExitCode, sync::Arc, sync::RwLock, time::Duration};

use anyhow::Context as _;
use clap::Args;
use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tokio_util::sync::CancellationToken;

use crate::{
    audit::{AuditLog, Trigger},
    broker::{self, Broker, BrokerView},
    btf::Btf,
    cgroup::Cgroups,
    chain::{self, Checkpoints, LogKind, Signer},
    config::Config,
    control,
    events::{
        Directory, EventReader, EventThread, Sinks,
        reader::{CountsFile, FloodControl},
        summary::{AgentEvents, RateLimit},
    },
    fences::{self, Availability, files, files::fanotify::FileFence},
    host::lsm_list,
    kernel::{
        self, Generations,
        loader::{Loader, Reporter, Reporting},
    },
    metrics::{self, Metrics},
    offsets::kernel_offsets,
    persist,
    policy::{PolicyErrors, PolicySet},
    service::{self, Change, Deps, PolicyService, ServiceHandle, VaultState, Views, apply::ApplyError, load_policy},
    vault::agent::VaultAgent,
    watch::Watcher,
};

mod parts;

use parts::{dns_metrics, dns_state, grants, host_protection, secret_files};

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
    // The agent holds vault tokens and the secrets it brokers: no core dump, no ptrace attach
    // by a process of the same uid, /proc/<pid>/mem and environ readable by root only.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not make the agent undumpable");
    }
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // As --help says: errors in the policy or the configuration are exit 2.
            eprintln!("fence-agent: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let cgroups = Cgroups::discover()?.with_managed_parent(config.managed.cgroup_parent.clone());
    // Invalid local policy files stop the agent, unless a vault is configured: then its
    // last-known-good cache may be the policy at start (checked once the kernel side is up).
    let local = load_policy(&args.policy, &cgroups);
    if let (Err(errors), None) = (&local, &config.vault) {
        eprintln!("fence-agent: {errors}");
        return Ok(ExitCode::from(2));
    }
    // SIGHUP is read from a signalfd, which says who sent it (for the audit log). Blocked here,
    // before any other thread exists, so that every thread inherits the block.
    let mut hup_mask = SigSet::empty();
    hup_mask.add(Signal::SIGHUP);
    hup_mask.thread_block().context("blocking SIGHUP")?;
    let hup = SignalFd::with_flags(&hup_mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("signalfd")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, config, cgroups, local, hup))
}

/// What is running once the agent has started.
struct Running {
    service: ServiceHandle,
    service_thread: std::thread::JoinHandle<()>,
    events: EventThread,
    pinned: bool,
    sync_task: Option<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    /// The broker's lease keeper; it revokes at shutdown.
    broker_task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

async fn serve(
    args: RunArgs,
    config: Config,
    cgroups: Cgroups,
    local: Result<PolicySet, PolicyErrors>,
    hup: SignalFd,
) -> anyhow::Result<ExitCode> {
    // Signal handlers first: a SIGTERM during start-up must still detach cleanly.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // SAFETY: the signalfd lives as long as the AsyncFd and always reports its own fd.
    let hup = unsafe { AsyncFd::register_with_interest(hup, Interest::READABLE) }.map_err(std::io::Error::from)?;
    let running = match start(args, &config, cgroups, local).await? {
        Ok(r) => r,
        Err(errors) => {
            eprintln!("fence-agent: {errors}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
    let mut running = running;
    // systemd's watchdog: pinged from this loop, so a wedged agent is restarted.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            ready = hup.readable() => {
                let mut guard = ready.context("waiting for SIGHUP")?;
                let sender = hup.get_ref().read_signal().ok().flatten();
                guard.clear_ready();
                if let Some(info) = sender {
                    let by = Trigger::by("reload", info.ssi_pid, info.ssi_uid).by;
                    running.service.notify(Change::Reload { by });
                }
            }
            ended = async { running.sync_task.as_mut().expect("guarded").await }, if running.sync_task.is_some() => {
                // A bug, not an outage (the loop never returns on its own).
                running.sync_task = None;
                let why = match ended {
                    Err(e) if e.is_panic() => "the vault sync task panicked (a bug; see the log)",
                    _ => "the vault sync task ended",
                };
                running.service.vault_stopped(why.to_owned());
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            _ = term.recv() => { tracing::info!("SIGTERM: exiting"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: exiting"); break; }
        }
    }
    shutdown(running, &config).await;
    Ok(ExitCode::SUCCESS)
}

/// Loads, applies the first policy, attaches and starts every task. `Ok(Err(..))`: the
/// policy at start has errors (exit 2).
async fn start(
    args: RunArgs,
    config: &Config,
    cgroups: Cgroups,
    local: Result<PolicySet, PolicyErrors>,
) -> anyhow::Result<Result<Running, PolicyErrors>> {
    let listener = control::listen(&config.control.socket).await?;
    let workloads = control::listen(&config.control.workload_socket).await?;
    let offsets = match Btf::from_sys_fs().and_then(|b| kernel_offsets(&b)) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(error = %e, "kernel BTF unusable: the exec, file and unix fences cannot use kernel programs");
            None
        }
    };
    // The run's token: its programs report events while the reporter map holds it.
    let token = u64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(1).max(1);
    let run = config.persist.enabled.then(|| persist::prepare(&config.persist.pin_dir, token)).transpose()?;
    let reporting = Reporting { token, shared: run.as_ref().map(|_| config.persist.pin_dir.clone()) };
    let mut loader = Loader::open(offsets, &reporting).context("loading the eBPF programs")?;
    let plan = fences::load(&mut loader).context("loading the eBPF programs")?;
    let own_cgroup = Cgroups::path_of_process("self")
        .context("no cgroup v2 path in /proc/self/cgroup")
        .and_then(|path| crate::cgroup::id_of(&cgroups.dir(&path)).with_context(|| format!("cgroup {path}")))
        .context("finding the agent's own cgroup (its exemption from the fence is bound to it)")?;
    loader.protect_agent(std::process::id(), own_cgroup).context("registering the agent's process")?;
    let mut reporter = loader.take_reporter(token).context("the reporter map")?;
    if let Some(run) = &run {
        loader.pin_under(run.links());
    }
    // Each decision is reported by one run. If an earlier run's programs report (their pins
    // are there), they go on until the take-over; if none do, this run reports from its
    // first attachment on.
    let earlier = run.as_ref().map(|r| persist::runs(&config.persist.pin_dir, Some(&r.dir))).unwrap_or_default();
    if !persist::reporter_alive(reporter.current()?, &earlier) {
        reporter.claim().context("taking the event reporting")?;
    }
    let (agent_events_tx, agent_events) = AgentEvents::new().context("the agent's event queue")?;
    let metrics = Metrics::new();
    if let Some(addr) = config.metrics.listen {
        let started = if config.metrics.allow_remote {
            metrics::start_remote(addr, metrics.clone()).await
        } else {
            metrics::start(addr, metrics.clone()).await
        };
        started.with_context(|| format!("metrics.listen = {addr}"))?;
        tracing::info!(%addr, "metrics served (Prometheus text format) at /metrics");
    }
    let fence_rows = log_mechanisms(&plan, &metrics);
    let directory = Arc::new(RwLock::new(Directory::default()));
    let signer = log_signer(config);
    let mut reader = event_reader(config, &mut loader, run.as_ref(), agent_events, directory.clone(), &metrics)?;
    if let Some(s) = &signer {
        reader.checkpoints(checkpoints(config, s, LogKind::Events));
    }
    let (handle, inbox) = service::channel();
    let mut vault = config.vault.as_ref().map(|v| VaultAgent::new(v, &config.persist.state_dir, &hostname()));
    if let Some(v) = vault.as_mut() {
        v.publish_reports(config);
    }
    let cache = vault.as_mut().and_then(VaultAgent::cached);
    let (vault_state, in_force) = match &vault {
        Some(va) => {
            let (mut state, rx) = VaultState::new(va.host.clone(), va.cache_path.clone(), va.status.clone());
            state.sync_running = va.can_sync();
            (Some(state), Some(rx))
        }
        None => (None, None),
    };
    let files = (plan.get(files::UNIT.name) == Availability::Fanotify)
        .then(|| FileFence::new(agent_events_tx.clone(), cgroups.clone()));
    let watcher = match Watcher::start(handle.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable: files named by the policy are resolved only at start and on SIGHUP");
            None
        }
    };
    let mut audit = AuditLog::open(&config.audit.file)?;
    if let Some(s) = &signer {
        audit.checkpoints(checkpoints(config, s, LogKind::Audit));
    }
    let views = Views { directory, files, watcher, audit, metrics };
    let files = secret_files(config);
    let files_ready = files.is_some();
    let deps = Deps {
        cgroups: cgroups.clone(),
        host: host_protection(config, files.as_ref()),
        policy_paths: args.policy,
        hostname: hostname(),
        ids_path: config.persist.enabled.then(|| config.persist.state_dir.join("identity-ids.json")),
        secret_files: files.as_ref().map(|_| config.broker.files_dir.clone()),
        fences: fence_rows,
    };
    let kernel = Generations::new(loader.take_policy_maps()?).context("reading the policy maps")?;
    let dns = dns_state(config, &plan, &mut loader, &handle, &agent_events_tx)?;
    if let Some(d) = &dns {
        dns_metrics(&views.metrics, d);
    }
    // The global programs attach now (with an empty policy they let everything through; a
    // previous run's pinned programs keep enforcing meanwhile); the cgroup programs attach
    // where the first policy fences, as the policy service applies it.
    loader.attach_global(&cgroups).context("attaching the eBPF programs")?;
    for a in loader.attachments() {
        tracing::info!(program = a.program, hook = a.hook, target = %a.target, "attached");
    }
    let (grants, rebooted) = grants(config, &plan, &mut loader)?;
    let mut service = PolicyService::new(kernel, Some(Box::new(loader)), deps, views, vault_state);
    if let Some(dns) = dns {
        service.with_dns(dns);
    }
    service.with_grants(grants, rebooted);
    let (view_tx, view) = tokio::sync::watch::channel(BrokerView::default());
    service.with_broker(view_tx);
    match service.start(local, cache) {
        Ok(()) => service.grants_due(),
        Err(ApplyError::Policy(errors)) => return Ok(Err(errors)),
        Err(e) => return Err(e.into()),
    }
    // Before any grant can be approved (the control sockets and the vault task start below):
    // a slot this run opens must not find an earlier run's programs, whose policy may still
    // tag rules of an ended grant with it, attached.
    if let Some(run) = &run {
        take_over(run, &mut reader, &mut reporter, config)?;
    }
    let service_thread = service.spawn(inbox).context("starting the policy service")?;
    let events = reader.spawn().context("starting the event writer")?;
    let stop = CancellationToken::new();
    // The broker shares the sync task's vault login (taken before the task takes the syncer).
    let broker_vault = vault.as_ref().and_then(VaultAgent::client);
    let sync_task = match (&mut vault, in_force) {
        (Some(va), Some(rx)) => va.spawn(handle.clone(), rx, stop.clone()),
        _ => None,
    };
    let broker = Arc::new(
        Broker::new(
            broker_vault,
            config.broker.clone(),
            vault.as_ref().map_or_else(hostname, |v| v.host.hostname.clone()),
            Some(agent_events_tx.clone()),
        )
        .with_view(view.clone())
        .with_files(files_ready),
    );
    let broker_task = tokio::spawn(broker_loop(broker.clone(), handle.clone(), view, stop.clone()));
    let server =
        tokio::spawn(control::serve(listener, handle.clone(), broker.clone(), stop.clone(), control::Socket::Admin));
    tokio::spawn(control::serve(workloads, handle.clone(), broker, stop.clone(), control::Socket::Workload));
    tracing::info!(cgroup2 = %cgroups.root().display(), control = %config.control.socket.display(), "fence is enforcing");
    Ok(Ok(Running {
        service: handle,
        service_thread,
        events,
        pinned: run.is_some(),
        sync_task,
        server,
        broker_task,
        stop,
    }))
}

/// The broker's leases follow the policy service's state: a lease ends at its time, when its
/// grant ends, when the identity loses the secret; at shutdown, all of them (if configured).
async fn broker_loop(
    broker: Arc<Broker>,
    service: ServiceHandle,
    mut view: tokio::sync::watch::Receiver<BrokerView>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = view.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
        let now = view.borrow_and_update().clone();
        let ended = broker.sweep(&now).await;
        broker::answer::audit_ended(&service, &broker, &ended, broker::audit::Action::Revoked);
    }
    let ended = broker.shutdown().await;
    broker::answer::audit_ended(&service, &broker, &ended, broker::audit::Action::Revoked);
}

/// The key that signs the logs' checkpoints (see [`crate::chain`]), made the first time. The
/// logs are still chained without it, but nothing vouches for their last lines.
fn log_signer(config: &Config) -> Option<Arc<Signer>> {
    match Signer::open(&config.persist.state_dir) {
        Ok(s) => {
            tracing::info!(key_id = s.key_id(), public_key = %config.persist.state_dir.join(chain::PUBLIC_FILE).display(), "log checkpoints are signed");
            Some(Arc::new(s))
        }
        Err(e) => {
            tracing::warn!(error = %e, "log checkpoints are NOT signed: the logs are chained, but their last lines are not vouched for");
            None
        }
    }
}

fn checkpoints(config: &Config, signer: &Arc<Signer>, log: LogKind) -> Checkpoints {
    let log_file = match log {
        LogKind::Events => config.events.file.clone().unwrap_or_default(),
        LogKind::Audit => config.audit.file.clone(),
    };
    Checkpoints {
        signer: signer.clone(),
        interval: config.audit.checkpoint_interval,
        state_file: log.checkpoint_file(&config.persist.state_dir),
        log_file,
        host: hostname(),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// Logs each fence's mechanism (or why there is none) and sets the mechanism metric; the
/// rows, for `status`.
fn log_mechanisms(plan: &fences::Plan, metrics: &Metrics) -> Vec<crate::control::protocol::FenceState> {
    let rows = plan.report(lsm_list().as_deref());
    metrics.mechanisms(&rows);
    for row in &rows {
        if row.enforced {
            tracing::info!(fence = row.fence, mechanism = %row.mechanism, notes = %row.notes, "fence enforced");
        } else {
            tracing::warn!(fence = row.fence, notes = %row.notes, remedy = row.remedy.as_deref().unwrap_or(""), "fence NOT ENFORCED on this host");
        }
    }
    rows.iter().map(Into::into).collect()
}

/// The event writer over the kernel's ring buffer (pinned with persistence) and counters.
fn event_reader(
    config: &Config,
    loader: &mut Loader,
    run: Option<&persist::Run>,
    agent_events: crate::events::summary::AgentEventsRx,
    directory: crate::events::SharedDirectory,
    metrics: &Metrics,
) -> anyhow::Result<EventReader> {
    let sinks = Sinks::from_config(&config.events)?;
    let ring = loader.take_events(run.map(persist::Run::events).as_deref())?;
    let limit = RateLimit { per_second: config.events.rate_limit, burst: config.events.rate_burst };
    loader.set_event_limit(limit.kernel()).context("setting the event rate limit")?;
    let pins = run.map(|r| (r.counters(), r.rate()));
    let stats = match loader.take_event_stats(pins.as_ref().map(|(c, r)| (c.as_path(), r.as_path()))) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "the kernel's suppressed and dropped counts cannot be read; no summaries for them");
            None
        }
    };
    let flood = FloodControl { stats, limit, interval: config.events.summary_interval };
    let mut reader = EventReader::new(ring, agent_events, directory, sinks, flood, Some(metrics.clone()))
        .context("watching the event ring buffer")?;
    if let Some(run) = run {
        reader.save_counts(CountsFile { path: config.persist.state_dir.join("event-counts.json"), run: run.name() });
        reader.sequence_file(config.persist.state_dir.join("event-sequence"));
    }
    Ok(reader)
}

/// Takes over from earlier runs once ours are attached and pinned (there is no moment without
/// enforcement): takes the event reporting from them, writes out what their programs recorded
/// (events, and the counts of events lost or suppressed after their agent's last summary),
/// then removes their pins.
fn take_over(
    run: &persist::Run,
    reader: &mut EventReader,
    reporter: &mut Reporter,
    config: &Config,
) -> anyhow::Result<()> {
    let earlier = persist::runs(&config.persist.pin_dir, Some(&run.dir));
    if !earlier.is_empty() {
        // From this write on our programs report, theirs (still attached, still enforcing)
        // do not: a decision made by both is reported once. (A BPF LSM refusal is reported by
        // whichever program makes it; ours come first in the chain, so theirs refuse only
        // what our policy allows.)
        reporter.claim().context("taking the event reporting over")?;
        // Their programs that read the previous reporter finish: what they recorded is
        // complete, and their ring buffers and counters no longer change.
        kernel::grace_period();
    }
    for old in earlier {
        let pins = persist::earlier(&old);
        let events = pins.events.map_or(0, |ring| reader.drain_ring(ring));
        let started = persist::token_of(&old).and_then(|t| jiff::Timestamp::from_nanosecond(i128::from(t)).ok());
        let summaries =
            pins.stats.as_ref().map_or(0, |stats| reader.report_earlier(&persist::name_of(&old), started, stats));
        let links = persist::remove_run(&old)?;
        tracing::info!(run = %old.display(), links, events, summaries, "took over from an earlier run (its events and counts written out, its links removed)");
    }
    tracing::info!(pins = %run.dir.display(), "enforcement is pinned: it stays when the agent exits");
    Ok(())
}

/// Stops in order: no new requests, the vault task, the policy service (after what it was
/// already sent), the event writer (after what the kernel already reported), then the
/// programs (detached unless pinned).
async fn shutdown(running: Running, config: &Config) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let Running { service, service_thread, events, pinned, sync_task, server, broker_task, stop } = running;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    // The leases are revoked (and audited) before the service, which writes the audit log, stops.
    let _ = tokio::time::timeout(Duration::from_secs(10), broker_task).await;
    if let Some(t) = sync_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = std::fs::remove_file(&config.control.socket);
    let _ = std::fs::remove_file(&config.control.workload_socket);
    service.stop();
    // The service owns the programs: they detach (unless pinned) as its thread ends.
    let _ = tokio::task::spawn_blocking(move || {
        let _ = service_thread.join();
        events.stop();
    })
    .await;
    if pinned {
        tracing::info!("exiting; the pinned programs keep enforcing the last applied policy");
    } else {
        tracing::info!("detached");
    }
}
