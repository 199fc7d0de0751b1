//! The running agent's vault loop: at start, the last-known-good cache (verified again) is the
//! policy when there is one; then a task polls the vault and hands each new verified set to
//! the main loop, which validates and applies it whole or keeps what it has. The status
//! (source, versions, last sync, last error) is shared with `fence-agent status`, the
//! metrics, and written to the vault as `status/<host>` for the console.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    client::VaultClient,
    layout::{HostFacts, status_path},
    sign::{PublicKey, Verifier},
    sync::{Cache, SyncError, Syncer, VaultSet, jitter, next_wait},
};
use crate::{config::VaultConfig, metrics::Metrics};

/// The gauge that says whether the polling task runs (0 once it has stopped: restart the agent).
pub const SYNC_RUNNING: &str = "fence_vault_sync_running";
pub const SYNC_RUNNING_HELP: &str = "1 while the vault sync task runs; 0 once it has stopped (restart the agent).";

/// Longest wait between polls while the vault fails.
const BACKOFF_CAP: Duration = Duration::from_secs(120);
/// How often the status document is rewritten when nothing changes.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(60);

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The local policy files (`--policy`): no vault configured, or nothing better yet.
    #[default]
    Local,
    /// The last-known-good cache, applied at start before the vault answered.
    Cache,
    /// The vault.
    Vault,
}

/// What `fence-agent status` shows, and what the agent writes to `status/<host>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncStatus {
    pub hostname: String,
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// `verified` (with the key ids) or `NOT VERIFIED` when no signing key is configured.
    pub signatures: String,
    /// Document path -> KV version of the set in force (from the vault or the cache).
    pub applied: BTreeMap<String, u64>,
    /// Assignment rules that match this host.
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_poll: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// The vault holds a set this agent refuses (signature, rollback, validation...): the
    /// previous policy stays in force; `last_error` says why.
    #[serde(default)]
    pub refusing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires_in_seconds: Option<u64>,
}

pub type SharedStatus = Arc<Mutex<SyncStatus>>;

/// A verified set for the main loop; it answers whether it applied it.
pub struct SyncRequest {
    pub set: VaultSet,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Everything the agent needs for the vault, built at start.
pub struct VaultAgent {
    pub status: SharedStatus,
    pub verifier: Verifier,
    pub host: HostFacts,
    pub cache_path: PathBuf,
    pub interval: Duration,
    syncer: Option<Syncer>,
    /// A configured signing key does not parse: nothing from the vault or the cache is used.
    keys_unusable: bool,
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
        // The configuration refuses a signing key that cannot be used.
        let keys = cfg.signing_keys.clone();
        let key_error: Option<String> = None;
        let verifier = Verifier::new(keys);
        let signatures = if verifier.is_enforcing() {
            format!("verified ({})", verifier.keys().iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", "))
        } else {
            "NOT VERIFIED (no vault.signing_keys)".to_owned()
        };
        if !verifier.is_enforcing() {
            tracing::warn!(
                "vault.signing_keys is empty: policy documents from the vault are NOT verified; anyone who can write to the vault path can change enforcement"
            );
        }
        let mut status = SyncStatus {
            hostname: host.hostname.clone(),
            vault: Some(cfg.base_address().to_owned()),
            signatures,
            last_error: key_error.clone(),
            ..SyncStatus::default()
        };
        let syncer = match (&key_error, VaultClient::new(cfg)) {
            (None, Ok(client)) => Some(Syncer::new(
                client,
                verifier.clone(),
                host.clone(),
                cfg.full_resync,
                cfg.max_index_age.map(|age| age.as_secs()),
            )),
            (Some(e), _) => {
                tracing::error!("{e}; the vault is not used");
                None
            }
            (None, Err(e)) => {
                tracing::error!(error = %e, "the vault client cannot be set up; enforcing the cached or local policy");
                status.last_error = Some(format!("vault client: {e}"));
                None
            }
        };
        let status = Arc::new(Mutex::new(status));
        VaultAgent {
            status,
            verifier,
            host,
            cache_path: state_dir.join("policy-cache.json"),
            interval: cfg.poll_interval,
            syncer,
            keys_unusable: key_error.is_some(),
        }
    }

    /// The cached set, verified again (keys may have changed since it was written), if any.
    /// Not with a signing key that does not parse: the cache could not be verified.
    pub fn cached(&mut self) -> Option<Cache> {
        if self.keys_unusable {
            tracing::error!(
                "vault.signing_keys has a key that cannot be used; the policy cache is not trusted without it"
            );
            return None;
        }
        let cache = match Cache::load(&self.cache_path) {
            Ok(c) => c?,
            Err(e) => {
                tracing::error!(error = %e, "the last-known-good policy cache is unusable");
                lock(&self.status).last_error = Some(e.to_string());
                return None;
            }
        };
        if let Err(e) = cache.set.verify(&self.verifier, &cache.highest) {
            tracing::error!(error = %e, path = %self.cache_path.display(), "the cached policy fails verification; not used");
            lock(&self.status).last_error = Some(format!("cache: {e}"));
            return None;
        }
        Some(cache)
    }

    /// The cached set was applied at start.
    pub fn adopt(&mut self, cache: &Cache, rules: Vec<String>) {
        if let Some(s) = &mut self.syncer {
            s.adopt(cache);
        }
        let mut st = lock(&self.status);
        st.source = Source::Cache;
        st.applied = cache.set.versions();
        st.rules = rules;
        st.last_applied = Some(jiff::Timestamp::now().to_string());
    }

    /// Starts the polling task; `None` if the vault cannot be used.
    pub fn spawn(&mut self, tx: mpsc::Sender<SyncRequest>, metrics: Metrics) -> Option<tokio::task::JoinHandle<()>> {
        let syncer = self.syncer.take()?;
        let status = self.status.clone();
        let cache_path = self.cache_path.clone();
        let interval = self.interval;
        metrics.vault_sync_running(true);
        Some(tokio::spawn(run(syncer, tx, status, cache_path, interval, metrics)))
    }
}

fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, SyncStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The polling loop.
async fn run(
    mut syncer: Syncer,
    tx: mpsc::Sender<SyncRequest>,
    status: SharedStatus,
    cache_path: PathBuf,
    interval: Duration,
    metrics: Metrics,
) {
    // Failures to reach the vault back off; a refusal of what it holds does not (the fix is
    // picked up at the next poll), but is reported at every poll until the index moves.
    let mut failures = 0u32;
    let mut unreachable = 0u32;
    let mut last_status_write: Option<(std::time::Instant, SyncStatus)> = None;
    loop {
        let now = jiff::Timestamp::now().to_string();
        let outcome = syncer.poll().await;
        let (error, refusing) = match outcome {
            Ok(None) => (None, false),
            Ok(Some(set)) => {
                let e = apply(&mut syncer, &tx, &status, &cache_path, set).await.err();
                let refusing = e.is_some();
                (e, refusing)
            }
            Err(e) => {
                if !e.is_transient() && !matches!(e, SyncError::StillRefused(_)) {
                    // Counted here; a refusal by validation is counted where it is applied.
                    metrics.policy_rejected();
                }
                (Some(describe(&e)), !e.is_transient())
            }
        };
        unreachable = if error.is_some() && !refusing { unreachable + 1 } else { 0 };
        {
            let mut st = lock(&status);
            st.last_poll = Some(now.clone());
            st.index_version = syncer.index_version();
            st.token_expires_in_seconds = syncer.client().token_expires_in().map(|d| d.as_secs());
            st.refusing = refusing;
            if syncer.in_sync() && st.source == Source::Cache {
                // The cache in force is what the vault holds.
                st.source = Source::Vault;
            }
            match &error {
                None => {
                    failures = 0;
                    st.last_success = Some(now.clone());
                    st.last_error = None;
                    st.consecutive_failures = 0;
                }
                Some(e) => {
                    failures += 1;
                    metrics.vault_sync_failed();
                    if st.last_error.as_deref() != Some(e.as_str()) {
                        tracing::error!(error = %e, "vault sync failed; the policy in force stays");
                    }
                    st.last_error = Some(e.clone());
                    st.consecutive_failures = failures;
                }
            }
            record_metrics(&metrics, &st);
        }
        write_status(&syncer, &status, &mut last_status_write).await;
        tokio::time::sleep(next_wait(interval, unreachable, BACKOFF_CAP, jitter())).await;
    }
}

/// Hands a verified set to the main loop; on success it becomes the cache.
async fn apply(
    syncer: &mut Syncer,
    tx: &mpsc::Sender<SyncRequest>,
    status: &SharedStatus,
    cache_path: &Path,
    set: VaultSet,
) -> Result<(), String> {
    let (reply, answer) = oneshot::channel();
    if tx.send(SyncRequest { set: set.clone(), reply }).await.is_err() {
        return Err("the agent is stopping".into());
    }
    match answer.await {
        Ok(Ok(())) => {
            let rules = set.prepare(syncer.host()).map(|p| p.assignment.rules).unwrap_or_default();
            syncer.applied(set);
            if let Err(e) = syncer.cache().save(cache_path) {
                tracing::error!(error = %e, "saving the last-known-good cache failed; a restart without the vault would fall back further");
            }
            let mut st = lock(status);
            st.source = Source::Vault;
            st.applied = syncer.current().versions();
            st.rules = rules;
            st.last_applied = Some(jiff::Timestamp::now().to_string());
            Ok(())
        }
        Ok(Err(e)) => {
            let reason = format!("refused the vault's policy (the previous one stays): {e}");
            syncer.refused(reason.clone());
            Err(reason)
        }
        Err(_) => Err("the agent is stopping".into()),
    }
}

/// The error for logs and status: never a secret (the client's errors carry none).
fn describe(e: &SyncError) -> String {
    e.to_string()
}

fn record_metrics(m: &Metrics, st: &SyncStatus) {
    let source = match st.source {
        Source::Local => "local",
        Source::Cache => "cache",
        Source::Vault => "vault",
    };
    m.policy_source(source);
    m.vault_sync_failures(st.consecutive_failures);
    m.vault_policy_refused(st.refusing);
    if let Some(ts) = st.last_success.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        m.vault_last_success(ts.as_second() as f64);
    }
    if let Some(v) = st.index_version {
        m.vault_index_version(v);
    }
}

/// Writes `status/<host>` when it changed, and every heartbeat otherwise; best effort.
async fn write_status(syncer: &Syncer, status: &SharedStatus, last: &mut Option<(std::time::Instant, SyncStatus)>) {
    let current = lock(status).clone();
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
    let data = match serde_json::to_value(&current) {
        Ok(v) => v,
        Err(_) => return,
    };
    match syncer.client().kv_write(&path, &data, None).await {
        Ok(_) => *last = Some((std::time::Instant::now(), comparable)),
        Err(e) => {
            if last.is_none() {
                tracing::warn!(error = %e, "writing this host's status to the vault failed (the console will not see it)");
            }
            *last = Some((std::time::Instant::now(), comparable));
        }
    }
}
