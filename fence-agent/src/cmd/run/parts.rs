//! The pieces `run` assembles from the configuration and the loaded object: the grant table
//! and book, egress by name (DNS), the host's protected set and the broker's files.

use std::sync::Arc;

use anyhow::Context as _;

use crate::{
    broker,
    config::Config,
    dns::{self, Upstreams},
    events::summary::AgentEvents,
    fences::{self, Availability},
    kernel::loader::Loader,
    metrics::{self, Metrics},
    policy::glob::PathGlob,
    service::{
        self, ServiceHandle,
        dns::{DnsState, EventReport, PolicyDecide, ServiceLearn, SharedInForce, engine_config},
    },
};

/// Just-in-time grants: the kernel's grant table, the book (kept in the state directory with
/// persistence, so that a restart knows the grants the kernel still enforces), and whether
/// connections can be torn down at a grant's end.
pub(super) fn grants(
    config: &Config,
    plan: &fences::Plan,
    loader: &mut Loader,
) -> anyhow::Result<(service::grants::Grants, Vec<crate::grants::Grant>)> {
    use crate::grants::{GrantBook, boot_id};
    let kernel = loader.take_grant_maps().context("the grant table")?;
    let path = config.persist.enabled.then(|| config.persist.state_dir.join("grants.json"));
    let (book, rebooted) = match &path {
        Some(p) => {
            let (book, rebooted) = GrantBook::load(p, &boot_id());
            for g in &rebooted.0 {
                tracing::warn!(grant = %g.id, identity = %g.identity, target = %g.target, state = g.phase.name(), "the host rebooted since this grant was recorded: it is over");
            }
            (book, rebooted.0)
        }
        None => (GrantBook::new(boot_id(), None), Vec::new()),
    };
    let teardown = match plan.get(fences::grants::UNIT.name) {
        Availability::KernelClock(None) => Ok(()),
        Availability::KernelClock(Some(why)) => Err(why),
        other => Err(other.reason().to_owned()),
    };
    let grants = service::grants::Grants {
        book,
        kernel: Some(Box::new(kernel)),
        config: config.grants.clone(),
        in_policy: Default::default(),
        teardown,
        reach: Default::default(),
    };
    Ok((grants, rebooted))
}

/// Egress by name, when the dns fence loaded and `[dns] enabled`: the resolver engine, and
/// the service's DNS state over the kernel's DNS maps (steering on from here).
pub(super) fn dns_state(
    config: &Config,
    plan: &fences::Plan,
    loader: &mut Loader,
    handle: &ServiceHandle,
    events: &AgentEvents,
) -> anyhow::Result<Option<DnsState>> {
    if !config.dns.enabled {
        tracing::warn!(
            "[dns] enabled = false: fenced identities' DNS is ordinary egress; names in egress rules allow nothing"
        );
        return Ok(None);
    }
    if !plan.get(fences::dns::UNIT.name).enforced() {
        return Ok(None);
    }
    let upstreams = if config.dns.upstream.is_empty() {
        Upstreams::from_resolv_conf(std::path::Path::new("/etc/resolv.conf"))
    } else {
        Upstreams::new(config.dns.upstream.clone())
    };
    // A host without a resolver (no nameserver in resolv.conf) is a state, not a failure: its
    // fenced identities' allowed names get SERVFAIL, each one logged as it happens.
    let upstreams = upstreams.unwrap_or_else(|e| {
        tracing::info!(error = %e, "no upstream DNS server: fenced identities' allowed names get SERVFAIL (set [dns] upstream)");
        Upstreams::none()
    });
    let in_force = SharedInForce::default();
    let engine = Arc::new(dns::Engine::new(
        engine_config(&config.dns),
        upstreams,
        Arc::new(PolicyDecide(in_force.clone())),
        Arc::new(ServiceLearn(handle.clone())),
        Arc::new(EventReport { in_force: in_force.clone(), events: events.clone() }),
    ));
    let maps = loader.take_dns_maps().context("the DNS maps")?;
    let runtime = tokio::runtime::Handle::current();
    let state = DnsState::new(Box::new(maps), config.dns.clone(), runtime, engine, in_force)
        .context("adopting the learned addresses and turning DNS steering on")?;
    tracing::info!(upstream = ?state.engine().upstreams().servers(), "DNS of fenced identities answered by fence");
    Ok(Some(state))
}

/// `fence_dns_*`, read from the resolver's counters and the learned-address table.
pub(super) fn dns_metrics(metrics: &Metrics, dns: &DnsState) {
    use std::sync::atomic::Ordering::Relaxed;
    let engine = dns.engine().clone();
    let stats = dns.stats();
    metrics.dns(Arc::new(move || {
        let m = engine.metrics().snapshot();
        metrics::dns::DnsReading {
            allowed: m.allowed,
            refused: m.refused,
            would_refuse: m.would_refuse,
            upstream_failed: m.upstream_failures,
            learn_failed: m.learn_failures,
            malformed: m.malformed,
            overloaded: m.overloaded,
            answers_held: m.answers_held,
            hold_seconds_total: m.hold_us_total as f64 / 1e6,
            hold_seconds_max: m.hold_us_max as f64 / 1e6,
            learned_addresses: stats.addresses.load(Relaxed),
            evictions: stats.evictions.load(Relaxed),
        }
    }));
}

/// The configured protected set; the agent's own socket is in the unix default-deny set
/// (fenced processes have no business with the agent).
pub(super) fn host_protection(config: &Config, secret_files: Option<&PathGlob>) -> crate::protect::HostProtection {
    let mut host = config.protection.clone();
    if let Ok(g) = PathGlob::parse(&config.control.socket.display().to_string()) {
        host.unix_deny.push(g);
    }
    // The broker's files: protected from every fenced identity but their owner's.
    host.files.extend(secret_files.cloned());
    host
}

/// The broker's `files_dir` (with a vault): made (root's, 0711), emptied of what an earlier
/// run left, and its glob for the protected set; `None` (secret file off, said in the log)
/// when any of it fails.
pub(super) fn secret_files(config: &Config) -> Option<PathGlob> {
    config.vault.as_ref()?;
    let dir = &config.broker.files_dir;
    let ready = broker::files::make_dir(dir)
        .and_then(|()| broker::files::purge(dir))
        .map_err(|e| e.to_string())
        .and_then(|()| PathGlob::parse(&format!("{}/**", dir.display())).map_err(|e| e.to_string()));
    match ready {
        Ok(g) => {
            if !broker::files::on_tmpfs(dir) {
                tracing::warn!(dir = %dir.display(), "broker.files_dir is not on a tmpfs: secret files would reach a disk");
            }
            Some(g)
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "broker.files_dir cannot be made and protected: secret file is off");
            None
        }
    }
}
