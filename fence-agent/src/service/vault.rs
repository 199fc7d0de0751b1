//! The vault's side of the policy service: a verified set from the vault (or its cache)
//! becomes a candidate; once applied, it is the set in force, its serials are the rollback
//! floor, and it is saved as the last-known-good cache. The service also keeps the sync status
//! (`fence-agent status`, `status/<host>` in the vault) and the vault metrics: the sync task
//! only reports what it saw.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use jiff::Timestamp;
use tokio::sync::watch;

use super::{
    PolicyService, PollOutcome, PollReport,
    apply::{ApplyError, Candidate, Extra},
};
use crate::{
    audit::Trigger,
    control::protocol::Source,
    kernel::{ApplyReport, PolicyMaps},
    policy::{glob::PathGlob, validate},
    vault::{
        agent::SyncStatus,
        layout::HostFacts,
        sync::{Cache, VaultSet},
    },
};

/// The vault set in force and the highest serial applied per document: what the sync task
/// compares the vault with, and the floor below which it refuses documents (no rollback).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VaultInForce {
    pub set: VaultSet,
    pub highest: BTreeMap<String, u64>,
}

/// What the service keeps for the vault.
pub struct VaultState {
    pub host: HostFacts,
    pub cache_path: PathBuf,
    pub status: SyncStatus,
    /// Published to the sync task after every change.
    pub in_force: watch::Sender<Arc<VaultInForce>>,
    /// The sync task runs (`fence_vault_sync_running`).
    pub sync_running: bool,
}

impl VaultState {
    pub fn new(
        host: HostFacts,
        cache_path: PathBuf,
        status: SyncStatus,
    ) -> (VaultState, watch::Receiver<Arc<VaultInForce>>) {
        let (in_force, rx) = watch::channel(Arc::new(VaultInForce::default()));
        (VaultState { host, cache_path, status, in_force, sync_running: false }, rx)
    }
}

impl<M: PolicyMaps + 'static> PolicyService<M> {
    /// A vault set as a candidate: its documents validated together for this host, the
    /// host's assignment's extra protected files; and the assignment rules that matched.
    pub(super) fn vault_candidate(
        &self,
        set: &VaultSet,
        source: Source,
    ) -> Result<(Candidate, Vec<String>), ApplyError> {
        let host = &self.vault.as_ref().ok_or_else(|| ApplyError::Vault("no vault is configured".into()))?.host;
        let prepared = set.prepare(host).map_err(|e| ApplyError::Vault(e.to_string()))?;
        let policy = validate(&prepared.docs, Some(&self.deps.cgroups), Timestamp::now())?;
        let mut extra = Extra { files: Vec::new(), env_roots: prepared.assignment.env_roots.clone() };
        for p in &prepared.assignment.protect_paths {
            extra.files.push(
                PathGlob::parse(p).map_err(|e| ApplyError::Vault(format!("assignments: protect path {p:?}: {e}")))?,
            );
        }
        Ok((Candidate { set: policy, extra, source, fresh: true }, prepared.assignment.rules))
    }

    /// A verified set from the vault: applied whole, or refused with the previous policy left
    /// in force. Once applied it is the set in force and the cache.
    pub(super) fn vault_set(&mut self, set: VaultSet) -> Result<Option<ApplyReport>, ApplyError> {
        // The set in force again (a poll that raced the previous apply): nothing to do.
        let from_vault = self.live.as_ref().is_some_and(|l| l.source != Source::Local);
        if from_vault && self.vault.as_ref().is_some_and(|v| v.in_force.borrow().set == set) {
            return Ok(None);
        }
        let (candidate, rules) = self.vault_candidate(&set, Source::Vault)?;
        let report = self.apply(candidate, Trigger::new("vault"))?;
        tracing::info!(documents = set.versions().len(), "applied the policy from the vault");
        let Some(vault) = &mut self.vault else { return Ok(Some(report)) };
        let mut in_force = (**vault.in_force.borrow()).clone();
        set.raise(&mut in_force.highest);
        in_force.set = set;
        let cache = Cache {
            schema: 2,
            saved_at: Timestamp::now().to_string(),
            set: in_force.set.clone(),
            highest: in_force.highest.clone(),
        };
        if let Err(e) = cache.save(&vault.cache_path) {
            tracing::error!(error = %e, "saving the last-known-good cache failed; a restart without the vault would fall back further");
        }
        vault.status.applied = in_force.set.versions();
        vault.status.rules = rules;
        vault.status.last_applied = Some(Timestamp::now().to_string());
        vault.status.source = Source::Vault;
        vault.in_force.send_replace(Arc::new(in_force));
        self.record_vault_metrics();
        Ok(Some(report))
    }

    /// The cached set was applied at start: it is the set in force.
    pub(super) fn adopt_cache(&mut self, cache: Cache, rules: Vec<String>) {
        let Some(vault) = &mut self.vault else { return };
        vault.status.source = Source::Cache;
        vault.status.applied = cache.set.versions();
        vault.status.rules = rules;
        vault.status.last_applied = Some(Timestamp::now().to_string());
        vault.in_force.send_replace(Arc::new(VaultInForce { set: cache.set, highest: cache.highest }));
        self.record_vault_metrics();
    }

    /// The vault's set, while it (or its cache) is the policy in force.
    pub(super) fn vault_set_in_force(&self) -> Option<VaultSet> {
        let vault = self.vault.as_ref()?;
        let in_force = vault.in_force.borrow();
        let from_vault = self.live.as_ref().is_some_and(|l| l.source != Source::Local);
        (from_vault && in_force.set.index.is_some()).then(|| in_force.set.clone())
    }

    /// One poll's outcome into the status and the metrics; the status to publish.
    pub(super) fn vault_polled(&mut self, report: PollReport) -> Option<SyncStatus> {
        let vault = self.vault.as_mut()?;
        let now = Timestamp::now().to_string();
        let st = &mut vault.status;
        st.last_poll = Some(now.clone());
        st.index_version = report.index_version;
        st.token_expires_in_seconds = report.token_expires_in;
        if report.in_sync && st.source == Source::Cache {
            // The cache in force is what the vault holds.
            st.source = Source::Vault;
        }
        match report.outcome {
            PollOutcome::Ok => {
                st.refusing = false;
                st.last_success = Some(now);
                st.last_error = None;
                st.consecutive_failures = 0;
            }
            PollOutcome::Failed { error, refusing, new_refusal } => {
                st.refusing = refusing;
                st.consecutive_failures += 1;
                if st.last_error.as_deref() != Some(error.as_str()) {
                    tracing::error!(error = %error, "vault sync failed; the policy in force stays");
                }
                st.last_error = Some(error);
                self.views.metrics.vault_sync_failed();
                if new_refusal {
                    self.views.metrics.policy_rejected();
                }
            }
        }
        self.record_vault_metrics();
        self.vault.as_ref().map(|v| v.status.clone())
    }

    /// The sync task has ended: a bug, not an outage. The policy in force stays.
    pub(super) fn vault_stopped(&mut self, why: &str) {
        tracing::error!(
            "{why}; the policy in force stays, but no vault changes are picked up until the agent restarts"
        );
        if let Some(vault) = &mut self.vault {
            vault.status.last_error = Some(format!("{why}; restart the agent"));
            vault.status.refusing = false;
            vault.sync_running = false;
        }
        self.record_vault_metrics();
    }

    /// The vault gauges, from the status.
    pub(super) fn record_vault_metrics(&self) {
        let Some(vault) = &self.vault else { return };
        let m = &self.views.metrics;
        let st = &vault.status;
        m.vault_sync_running(vault.sync_running);
        m.policy_source(st.source.as_str());
        m.vault_sync_failures(st.consecutive_failures);
        m.vault_policy_refused(st.refusing);
        if let Some(ts) = st.last_success.as_deref().and_then(|t| t.parse::<Timestamp>().ok()) {
            m.vault_last_success(ts.as_second() as f64);
        }
        if let Some(v) = st.index_version {
            m.vault_index_version(v);
        }
    }
}
