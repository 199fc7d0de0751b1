//! The running agent's vault side: at start, the last-known-good cache (verified again) is
//! offered as the policy; then a task polls the vault, hands each new verified set to the
//! policy service (which validates and applies it whole, or keeps what it has), reports every
//! poll to the service (which keeps the status and the metrics), and writes the status it gets
//! back to the vault as `status/<host>` for the console, with its compliance report
//! (`status/<host>/report`). It never applies anything itself.

use std::{collections::BTreeMap, path::Path, path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    client::VaultClient,
    layout::{HostFacts, status_path},
    sign::{PublicKey, Verifier},
    sync::{Cache, SyncError, Syncer, jitter, next_wait},
};
pub use crate::control::protocol::Source;
use crate::{
    config::VaultConfig,
    service::{Change, Outcome, PollOutcome, PollReport, ServiceHandle, VaultInForce},
};

/// Longest wait between polls while the vault fails.
const BACKOFF_CAP: Duration = Duration::from_secs(120);
/// How often the status document is rewritten when nothing changes.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(60);

/// What `fence-agent status` shows, and what the agent writes to `status/<host>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncStatus {
    pub hostname: String,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// `verified` (with the key ids) or `NOT VERIFIED` when no signing key is configured.
    pub signatures: String,
    /// Document path -> KV version of the set in force (from the vault or the cache).
    pub applied: BTreeMap<String, u64>,
    /// Assignment rules that match this host.
    pub rules: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// The vault holds a set this agent refuses (signature, rollback, validation...): the
    /// previous policy stays in force; `last_error` says why.
    #[serde(default)]
    pub refusing: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_in_seconds: Option<u64>,
}

/// Everything the agent needs for the vault, built at start.
pub struct VaultAgent {
    /// The status before the service takes it over.
    pub status: SyncStatus,
    pub verifier: Verifier,
    pub host: HostFacts,
    pub cache_path: PathBuf,
    pub interval: Duration,
    syncer: Option<Syncer>,
    /// Publishes this host's compliance report (see [`super::report`]).
    publisher: Option<super::report::Publisher>,
}

impl VaultAgent {
    /// Builds the client and verifier. A configuration the client refuses (a missing CA
    /// file...) leaves the agent on its cache or local policy, with the error in the status.
    pub fn new(cfg: &VaultConfig, state_dir: &Path, kernel_hostname: &str) -> VaultAgent {
        let host = HostFacts {
            hostname: cfg.hostname.clone().unwrap_or_else(|| kernel_hostname.to_owned()),
            labels: cfg.labels.clone(),
        };
        if cfg.hostname.is_none()
            && let Err(why) = crate::names::check_host_name(kernel_hostname)
        {
            tracing::error!(
                hostname = kernel_hostname,
                "the kernel's host name is not one fence can use ({why}): this host's status is not written to the vault; set vault.hostname"
            );
        }
        let verifier = Verifier::new(cfg.signing_keys.clone());
        let signatures = if verifier.is_enforcing() {
            format!("verified ({})", verifier.keys().iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", "))
        } else {
            tracing::warn!(
                "vault.signing_keys is empty: policy documents from the vault are NOT verified; anyone who can write to the vault path can change enforcement"
            );
            "NOT VERIFIED (no vault.signing_keys)".to_owned()
        };
        let mut status = SyncStatus {
            hostname: host.hostname.clone(),
            vault: Some(cfg.base_address().to_owned()),
            signatures,
            ..SyncStatus::default()
        };
        let syncer = match VaultClient::new(cfg) {
            Ok(client) => Some(Syncer::new(
                std::sync::Arc::new(client),
                verifier.clone(),
                host.clone(),
                cfg.full_resync,
                cfg.max_index_age.map(|age| age.as_secs()),
            )),
            Err(e) => {
                tracing::error!(error = %e, "the vault client cannot be set up; enforcing the cached or local policy");
                status.last_error = Some(format!("vault client: {e}"));
                None
            }
        };
        VaultAgent {
            status,
            verifier,
            host,
            cache_path: state_dir.join("policy-cache.json"),
            interval: cfg.poll_interval,
            syncer,
            publisher: None,
        }
    }

    /// The cached set, verified again (keys may have changed since it was written), if any.
    pub fn cached(&mut self) -> Option<Cache> {
        let cache = match Cache::load(&self.cache_path) {
            Ok(c) => c?,
            Err(e) => {
                tracing::error!(error = %e, "the last-known-good policy cache is unusable");
                self.status.last_error = Some(e.to_string());
                return None;
            }
        };
        if let Err(e) = cache.set.verify(&self.verifier, &cache.highest) {
            tracing::error!(error = %e, path = %self.cache_path.display(), "the cached policy fails verification; not used");
            self.status.last_error = Some(format!("cache: {e}"));
            return None;
        }
        Some(cache)
    }

    /// The vault client (its login), for the credential broker; `None` when it could not be
    /// set up.
    pub fn client(&self) -> Option<std::sync::Arc<VaultClient>> {
        self.syncer.as_ref().map(Syncer::shared_client)
    }

    /// Publishes this host's compliance report to the vault, from the logs `config` names.
    pub fn publish_reports(&mut self, config: &crate::config::Config) {
        self.publisher = Some(super::report::Publisher::new(config.clone()));
    }

    /// Whether the polling task can run (the client could be set up).
    pub fn can_sync(&self) -> bool {
        self.syncer.is_some()
    }

    /// Starts the polling task; `None` if the vault cannot be used.
    pub fn spawn(
        &mut self,
        service: ServiceHandle,
        in_force: watch::Receiver<Arc<VaultInForce>>,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut syncer = self.syncer.take()?;
        let interval = self.interval;
        let mut publisher = self.publisher.take();
        Some(tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = run(&mut syncer, &service, &in_force, interval, publisher.as_mut()) => {}
            }
        }))
    }
}

/// The polling loop.
async fn run(
    syncer: &mut Syncer,
    service: &ServiceHandle,
    in_force: &watch::Receiver<Arc<VaultInForce>>,
    interval: Duration,
    mut publisher: Option<&mut super::report::Publisher>,
) {
    // Failures to reach the vault back off; a refusal of what it holds does not (the fix is
    // picked up at the next poll), but is reported at every poll until the index moves.
    let mut unreachable = 0u32;
    let mut last_status_write: Option<(std::time::Instant, SyncStatus)> = None;
    loop {
        let current = in_force.borrow().clone();
        let outcome = match syncer.poll(&current).await {
            Ok(None) => PollOutcome::Ok,
            Ok(Some(set)) => match service.change(Change::Vault(Box::new(set))).await {
                Outcome::Applied { .. } | Outcome::Unchanged => {
                    syncer.accepted();
                    PollOutcome::Ok
                }
                Outcome::Refused(e) => {
                    let reason = format!("refused the vault's policy (the previous one stays): {e}");
                    syncer.refused(reason.clone());
                    PollOutcome::Failed { error: reason, refusing: true, new_refusal: false }
                }
            },
            Err(e) => PollOutcome::Failed {
                error: e.to_string(),
                refusing: !e.is_transient(),
                new_refusal: !e.is_transient() && !matches!(e, SyncError::StillRefused(_)),
            },
        };
        let failed_to_ask = matches!(&outcome, PollOutcome::Failed { refusing: false, .. });
        unreachable = if failed_to_ask { unreachable + 1 } else { 0 };
        let report = PollReport {
            index_version: syncer.index_version(),
            token_expires_in: syncer.client().token_expires_in().map(|d| d.as_secs()),
            in_sync: syncer.in_sync(),
            outcome,
        };
        if let Some(status) = service.vault_polled(report).await {
            write_status(syncer, status, &mut last_status_write).await;
        }
        if !failed_to_ask {
            super::grants::round(syncer, service).await;
            if let Some(p) = publisher.as_deref_mut() {
                p.poll(syncer.client(), service).await;
            }
        }
        tokio::time::sleep(next_wait(interval, unreachable, BACKOFF_CAP, jitter())).await;
    }
}

/// Writes `status/<host>` when it changed, and every heartbeat otherwise; best effort.
async fn write_status(syncer: &Syncer, current: SyncStatus, last: &mut Option<(std::time::Instant, SyncStatus)>) {
    let mut comparable = current.clone();
    comparable.last_poll = None;
    comparable.last_success = None;
    comparable.token_expires_in_seconds = None;
    if let Some((at, prev)) = last
        && *prev == comparable
        && at.elapsed() < STATUS_HEARTBEAT
    {
        return;
    }
    let Ok(path) = status_path(&current.hostname) else { return };
    let Ok(data) = serde_json::to_value(&current) else { return };
    if let Err(e) = syncer.client().kv_write(&path, &data, None).await
        && last.is_none()
    {
        tracing::warn!(error = %e, "writing this host's status to the vault failed (the console will not see it)");
    }
    *last = Some((std::time::Instant::now(), comparable));
}
