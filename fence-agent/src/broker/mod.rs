//! The credential broker: a fenced process asks for one of its identity's secrets (the
//! policy's `secrets:`) over the workload socket; the policy service decides from the kernel's
//! answer who is asking ([`Ticket`]); the broker fetches the value from the vault with a token
//! it makes for that identity alone, and hands it back on the same connection.
//!
//! - One token per identity, made through `[broker] token_role` with only the identity's vault
//!   policy (`policy_prefix` + name): a mapping mistake here cannot read another identity's
//!   secrets, the vault refuses it.
//! - KV values are kept `cache_ttl` (0: never), wiped when dropped.
//! - A dynamic credential is leased to a token of its own, which lives one period (the
//!   secret's ttl) and may be renewed up to `max_ttl` and the end of the grant it depends on:
//!   revoking that token revokes the lease (the database user is dropped), and the vault does
//!   so by itself when the token expires, with the agent stopped or killed. A request in the
//!   second half of a period renews both by a period (in use); a lease no one asks for ends. The broker revokes it at the
//!   lease's end, when its grant ends or is revoked, when the identity leaves the policy, on
//!   `secret revoke`, and when the agent stops (`revoke_on_shutdown`).
//! - Values reach no log, event, metric, audit line, error, file or environment; the agent is
//!   not dumpable.

pub mod answer;
pub mod audit;
pub mod files;
mod leases;

pub use leases::Lease;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::{
    config::BrokerConfig,
    policy::{SecretSource, SecretSpec},
    vault::client::{Secret, TokenLife, VaultClient, VaultError},
};

/// A dynamic secret without a `ttl` in the policy gets this (capped by `max_ttl`).
const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

/// (identity, secret, what) of a repeated audit line.
type GateKey = (String, String, String);

/// Held while a lease is made or renewed.
type MakingLock = Arc<tokio::sync::Mutex<()>>;

/// Leases one identity may hold at once (each is a vault token and, say, a database user).
pub const MAX_LEASES: usize = 32;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("the agent has no [vault] configured: it cannot hand out secrets")]
    NoVault,
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the vault has no value at {mount}/{path} key {key:?} (KV v2) for secret {name:?}")]
    NotFound { name: String, mount: String, path: String, key: String },
    #[error("the grant of secret {0:?} ends in less than a second")]
    GrantEnding(String),
    #[error("secret {name:?} has no field {field:?} (it has: {has})")]
    NoField { name: String, field: String, has: String },
    #[error("secret {0:?} is a single value (a KV secret): a field does not apply")]
    NotFields(String),
    #[error("writing the secret file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("secret files are off: {0} could not be made and protected at start (see the agent's log)")]
    FilesUnprotected(String),
    #[error("identity {0:?} holds {MAX_LEASES} leases already; a new one is made when one ends")]
    TooManyLeases(String),
}

/// What the policy service decided about a request: the caller's identity (attested by the
/// kernel), the secret's specification, and the grant in force it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub identity: String,
    pub spec: SecretSpec,
    /// The grant's id and how long it has left.
    pub grant: Option<(String, Duration)>,
}

/// What a request gets.
#[derive(Debug)]
pub enum Value {
    Kv(Arc<Secret>),
    Dynamic(Arc<Lease>),
}

#[derive(Debug)]
pub struct Delivery {
    pub value: Value,
    /// From the cache, or a lease already held.
    pub cached: bool,
    /// A lease held, renewed for this request.
    pub renewed: bool,
}

/// A lease that ended, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub identity: String,
    pub name: String,
    pub lease_id: String,
    pub grant: Option<String>,
    pub why: String,
    /// Its time was up (its ttl, its grant's end), as opposed to ended early.
    pub on_time: bool,
    /// Revoked in the vault (else the vault ends it when its token expires).
    pub revoked: bool,
}

#[derive(Default)]
struct State {
    /// Each identity's token for KV reads, and when it was made.
    tokens: HashMap<String, (Arc<Secret>, Instant, Duration)>,
    /// KV values by (identity, secret name): where they were read from, and when.
    kv: HashMap<(String, String), (SecretSource, Arc<Secret>, Instant)>,
    /// Dynamic leases held, the newest of each (identity, secret name) last.
    leases: Vec<Arc<Lease>>,
    /// Files written by `secret file`.
    files: Vec<Written>,
}

/// A file `secret file` wrote.
struct Written {
    identity: String,
    /// Its name in the identity's directory.
    file: String,
    /// The secret's name and where it came from (removed when the policy changes either).
    name: String,
    source: SecretSource,
    /// The lease it holds a credential of (removed at its end).
    lease_id: Option<String>,
    /// The grant it was given under (removed at its end).
    grant: Option<String>,
}

pub struct Broker {
    vault: Option<Arc<VaultClient>>,
    config: BrokerConfig,
    hostname: String,
    /// Where refusals go as events (the event writer's queue of agent-made events).
    events: Option<crate::events::summary::AgentEvents>,
    /// The policy service's latest view (grants in force), checked again before a lease or
    /// file is handed over.
    view: Option<tokio::sync::watch::Receiver<BrokerView>>,
    /// `files_dir` was made, emptied and protected at start.
    files_ready: bool,
    state: tokio::sync::Mutex<State>,
    /// One lease (or renewal) made at a time per (identity, secret): concurrent requests
    /// wait and share it, rather than each making a token and a database user.
    making: std::sync::Mutex<HashMap<(String, String), MakingLock>>,
    /// Repeated audit lines (refusals, values served again) at most once a second per
    /// (identity, secret, action), the others counted into the next: a workload asking in a
    /// loop cannot grow the audit log without bound.
    audit_gate: std::sync::Mutex<HashMap<GateKey, (Instant, u64)>>,
}

impl Broker {
    pub fn new(
        vault: Option<Arc<VaultClient>>,
        config: BrokerConfig,
        hostname: String,
        events: Option<crate::events::summary::AgentEvents>,
    ) -> Broker {
        Broker {
            vault,
            config,
            hostname,
            events,
            view: None,
            files_ready: false,
            state: tokio::sync::Mutex::new(State::default()),
            making: std::sync::Mutex::new(HashMap::new()),
            audit_gate: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether a repeated audit line for (`identity`, `name`, `what`: the refusal's reason, or
    /// a value served again) is written now, and how many were left out since the last one;
    /// `None`: leave this one out.
    pub fn audit_gate(&self, identity: &str, name: &str, what: &str) -> Option<u64> {
        let mut gate = self.audit_gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if gate.len() > 4096 {
            gate.retain(|_, (at, n)| *n > 0 || now.duration_since(*at) < Duration::from_secs(60));
        }
        let key = (identity.to_owned(), name.to_owned(), what.to_owned());
        match gate.get_mut(&key) {
            Some((at, left_out)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                gate.insert(key, (now, 0));
                Some(0)
            }
        }
    }

    /// Follows the policy service's view, checked again before a lease is handed over.
    pub fn with_view(mut self, view: tokio::sync::watch::Receiver<BrokerView>) -> Broker {
        self.view = Some(view);
        self
    }

    /// `files_dir` is ready (made, emptied, in the protected set): `secret file` may write.
    pub fn with_files(mut self, ready: bool) -> Broker {
        self.files_ready = ready;
        self
    }

    /// The lock under which `key`'s lease is made or renewed.
    fn making_lock(&self, key: &(String, String)) -> MakingLock {
        let mut m = self.making.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(key.clone()).or_default().clone()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// A `secret-refused` event for `refusal` of `peer`'s request for `name`.
    pub fn refused(&self, refusal: &crate::service::Refusal, name: &str, peer: &crate::control::Peer) {
        use fence_common::{EventHeader, EventKind, Mechanism, Operation, Reason, Verdict};
        let Some(events) = &self.events else { return };
        let mut comm = [0u8; 16];
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{}/comm", peer.pid)) {
            let c = c.trim_end().as_bytes();
            comm[..c.len().min(15)].copy_from_slice(&c[..c.len().min(15)]);
        }
        let status = crate::proc_status::Status::of(peer.pid);
        let header = EventHeader {
            kind: EventKind::Secret as u8,
            verdict: Verdict::Denied as u8,
            operation: Operation::SecretGet as u8,
            mechanism: Mechanism::Broker as u8,
            identity: refusal.identity_id,
            boot_ns: crate::grants::boot_ns(),
            pid: peer.pid,
            tgid: peer.pid,
            // The peer's credentials (SO_PEERCRED) are its effective ids; the real ones from
            // /proc, if it is still there.
            uid: status.uid,
            gid: status.gid,
            euid: peer.uid,
            egid: peer.gid,
            ppid: status.ppid,
            policy_version: refusal.policy_version,
            reason: if refusal.needs_grant { Reason::SecretNeedsGrant } else { Reason::SecretNotAllowed } as u8,
            comm,
            ..EventHeader::default()
        };
        let event = crate::events::decode::SecretEvent { header, name: name.to_owned(), why: refusal.why.clone() };
        events.send(crate::events::decode::KernelEvent::Secret(Box::new(event)));
    }

    /// The value `ticket` asks for: from the cache or a lease held when still good, else
    /// from the vault.
    pub async fn fetch(&self, ticket: &Ticket) -> Result<Delivery, BrokerError> {
        let vault = self.vault.as_deref().ok_or(BrokerError::NoVault)?;
        let key = (ticket.identity.clone(), ticket.spec.name.clone());
        match &ticket.spec.source {
            SecretSource::Kv { path, key: field } => {
                if !self.config.cache_ttl.is_zero() {
                    let state = self.state.lock().await;
                    if let Some((source, v, at)) = state.kv.get(&key)
                        && *source == ticket.spec.source
                        && at.elapsed() < self.config.cache_ttl
                    {
                        return Ok(Delivery { value: Value::Kv(v.clone()), cached: true, renewed: false });
                    }
                }
                let token = self.identity_token(vault, &ticket.identity).await?;
                let value = vault.kv_value_with(&token, &self.config.kv_mount, path, field).await?;
                let value = Arc::new(value.ok_or_else(|| BrokerError::NotFound {
                    name: ticket.spec.name.clone(),
                    mount: self.config.kv_mount.clone(),
                    path: path.clone(),
                    key: field.clone(),
                })?);
                if !self.config.cache_ttl.is_zero() {
                    self.state.lock().await.kv.insert(key, (ticket.spec.source.clone(), value.clone(), Instant::now()));
                }
                Ok(Delivery { value: Value::Kv(value), cached: false, renewed: false })
            }
            SecretSource::Dynamic { path, ttl } => self.fetch_dynamic(vault, ticket, key, path, *ttl).await,
        }
    }

    /// The identity's token for KV reads, made anew when two thirds of its life have passed.
    async fn identity_token(&self, vault: &VaultClient, identity: &str) -> Result<Arc<Secret>, BrokerError> {
        {
            let state = self.state.lock().await;
            if let Some((t, at, ttl)) = state.tokens.get(identity)
                && at.elapsed() < *ttl * 2 / 3
            {
                return Ok(t.clone());
            }
        }
        let made = Instant::now();
        let display = format!("fence-{identity}");
        let life = TokenLife { ttl: self.config.token_ttl, max: self.config.token_ttl };
        let t = vault.identity_token(&self.config.token_role, &self.config.policy_of(identity), life, &display).await?;
        let token = Arc::new(t.token);
        // The vault's answer, bounded by what was asked. The token it replaces is not revoked:
        // a request may still be reading with it, and it expires by itself (token_ttl).
        let ttl = t.ttl.min(self.config.token_ttl);
        self.state.lock().await.tokens.insert(identity.to_owned(), (token.clone(), made, ttl));
        Ok(token)
    }

    /// The text `secret file` or `secret get --field` gives of `d`: a KV value, one field of
    /// a dynamic credential, or all its fields as a JSON object (in a wiped buffer).
    pub fn text_of(name: &str, d: &Delivery, field: Option<&str>) -> Result<zeroize::Zeroizing<Vec<u8>>, BrokerError> {
        match (&d.value, field) {
            (Value::Kv(v), None) => Ok(zeroize::Zeroizing::new(v.expose().as_bytes().to_vec())),
            (Value::Kv(_), Some(_)) => Err(BrokerError::NotFields(name.to_owned())),
            (Value::Dynamic(l), Some(f)) => match l.fields.get(f) {
                Some(v) => Ok(zeroize::Zeroizing::new(v.expose().as_bytes().to_vec())),
                None => Err(BrokerError::NoField {
                    name: name.to_owned(),
                    field: f.to_owned(),
                    has: l.fields.keys().cloned().collect::<Vec<_>>().join(", "),
                }),
            },
            (Value::Dynamic(l), None) => {
                let plain: BTreeMap<&str, &str> = l.fields.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
                // Sized up front: no reallocation leaves a copy behind.
                let mut out = zeroize::Zeroizing::new(Vec::with_capacity(
                    l.fields.iter().map(|(k, v)| (k.len() + v.expose().len()) * 6 + 8).sum::<usize>() + 2,
                ));
                serde_json::to_writer(&mut *out, &plain).map_err(|e| BrokerError::File {
                    path: String::new(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                Ok(out)
            }
        }
    }

    /// `secret file`: `d` written to `<files_dir>/<identity>/<name>[.<field>]`, 0400, owned by
    /// `uid`:`gid`; removed with its lease (or when the identity loses the secret).
    pub async fn write_file(
        &self,
        ticket: &Ticket,
        d: &Delivery,
        field: Option<&str>,
        uid: u32,
        gid: u32,
    ) -> Result<std::path::PathBuf, BrokerError> {
        let name = &ticket.spec.name;
        let text = Broker::text_of(name, d, field)?;
        let file = match field {
            Some(f) => format!("{name}.{f}"),
            None => name.clone(),
        };
        if !self.files_ready {
            return Err(BrokerError::FilesUnprotected(self.config.files_dir.display().to_string()));
        }
        let files_dir = &self.config.files_dir;
        let path = files::write(files_dir, &ticket.identity, &file, &text, uid, gid).map_err(|source| {
            BrokerError::File { path: files_dir.join(&ticket.identity).join(&file).display().to_string(), source }
        })?;
        let lease_id = match &d.value {
            Value::Dynamic(l) => Some(l.lease_id.clone()),
            Value::Kv(_) => None,
        };
        let grant = ticket.grant.as_ref().map(|(id, _)| id.clone());
        let mut state = self.state.lock().await;
        state.files.retain(|w| !(w.identity == ticket.identity && w.file == file));
        state.files.push(Written {
            identity: ticket.identity.clone(),
            file,
            name: name.clone(),
            source: ticket.spec.source.clone(),
            lease_id,
            grant,
        });
        drop(state);
        // A grant that ended while the file was written takes it with it.
        if !self.grant_in_force(ticket.grant.as_ref().map(|(id, _)| id.as_str())) {
            self.remove_files(|w| w.identity == ticket.identity && w.name == *name).await;
            return Err(BrokerError::GrantEnding(name.clone()));
        }
        Ok(path)
    }

    /// Removes the files `which` selects.
    async fn remove_files(&self, which: impl Fn(&Written) -> bool) {
        let gone: Vec<Written> = {
            let mut state = self.state.lock().await;
            let (gone, kept): (Vec<Written>, Vec<Written>) = state.files.drain(..).partition(|w| which(w));
            state.files = kept;
            gone
        };
        for w in gone {
            files::remove(&self.config.files_dir, &w.identity, &w.file);
        }
    }

    /// Whether `grant` (none: nothing to check) is in force in the service's latest view.
    fn grant_in_force(&self, grant: Option<&str>) -> bool {
        match (grant, &self.view) {
            (Some(g), Some(view)) => view.borrow().grants.contains(g),
            _ => true,
        }
    }

    /// Leases past their end, those whose grant is no longer in force, those of identities (or
    /// secrets) the policy no longer has: ended.
    pub async fn sweep(&self, view: &BrokerView) -> Vec<Ended> {
        let now = Instant::now();
        let same = |identity: &str, name: &str, source: &SecretSource| {
            view.secrets.get(&(identity.to_owned(), name.to_owned())).is_some_and(|s| s.source == *source)
        };
        {
            let mut state = self.state.lock().await;
            state.kv.retain(|(identity, name), (source, _, _)| same(identity, name, source));
            state.tokens.retain(|identity, _| view.secrets.keys().any(|(i, _)| i == identity));
        }
        // Files of a secret the policy changed or dropped, or of a grant no longer in force.
        self.remove_files(|w| {
            !same(&w.identity, &w.name, &w.source) || w.grant.as_ref().is_some_and(|g| !view.grants.contains(g))
        })
        .await;
        self.end_leases_timed(|l| {
            if l.ends() <= now {
                Some(("its time is up".to_owned(), true))
            } else if let Some(g) = &l.grant
                && !view.grants.contains(g)
            {
                Some((format!("grant {g} is no longer in force"), view.ended_on_time.contains(g)))
            } else if !same(&l.identity, &l.name, &l.source) {
                Some(("the policy no longer gives the identity this secret (or changed it)".to_owned(), false))
            } else {
                None
            }
        })
        .await
    }

    /// At shutdown: every lease revoked (`revoke_on_shutdown`), every identity token too.
    pub async fn shutdown(&self) -> Vec<Ended> {
        let ended = if self.config.revoke_on_shutdown {
            self.end_leases(|_| Some("the agent stopped".into())).await
        } else {
            vec![]
        };
        self.remove_files(|_| true).await;
        let tokens: Vec<Arc<Secret>> = self.state.lock().await.tokens.drain().map(|(_, (t, _, _))| t).collect();
        if let Some(v) = &self.vault {
            for t in tokens {
                let _ = v.revoke_token(&t).await;
            }
        }
        ended
    }
}

/// What the broker needs to know of the policy service's state: the secrets each identity may
/// have, and the grants in force (published by the service after every change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerView {
    /// (identity, secret name) -> what the policy says of it now.
    pub secrets: BTreeMap<(String, String), SecretSpec>,
    /// Ids of the grants in force.
    pub grants: BTreeSet<String>,
    /// Ids of grants that expired (rather than being revoked), recently.
    pub ended_on_time: BTreeSet<String>,
}
