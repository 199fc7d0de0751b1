//! The policy manager: resolves a policy set on this host, compiles it and hands it to the
//! enforcer (and to the fanotify file fence where that is the mechanism); keeps the event
//! directory in step. A set that fails anywhere is not applied and the live policy stays.

use std::{collections::BTreeSet, path::PathBuf};

use jiff::Timestamp;
use serde::Serialize;
use thiserror::Error;

use crate::{
    cgroup::Cgroups,
    compile::{CompiledPolicy, IdAllocator, compile},
    enforcer::{ApplyReport, Enforcer, EnforcerError},
    events::SharedDirectory,
    fanotify::FileFence,
    hold::Holder,
    policy::{PolicyErrors, PolicySet, SelectorKind, glob::PathGlob, load_paths, validate},
    protect::HostProtection,
    resolve::{Resolved, resolve},
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
    #[error("applying the policy to the kernel failed (the previous policy stays in force): {0}")]
    Enforcer(#[from] EnforcerError),
}

/// Reads, parses and validates the policy files at `paths` for this host.
pub fn load_policy(paths: &[PathBuf], cgroups: &Cgroups) -> Result<PolicySet, PolicyErrors> {
    let docs = load_paths(paths)?;
    validate(&docs, Some(cgroups), Timestamp::now())
}

/// Protected files and `.env` roots added to the configured ones (by the vault's host
/// assignment).
pub type ExtraProtection = (Vec<PathGlob>, Vec<PathBuf>);

pub struct Applied {
    pub set: PolicySet,
    pub resolved: Resolved,
    pub compiled: CompiledPolicy,
    pub report: ApplyReport,
}

pub struct PolicyManager {
    enforcer: Enforcer,
    ids: IdAllocator,
    directory: SharedDirectory,
    /// The configured protected set, and what is in force: it plus the vault's additions.
    base_host: HostProtection,
    host: HostProtection,
    extra: ExtraProtection,
    cgroup_root: PathBuf,
    files: Option<FileFence>,
    /// Keeps protection on protected inodes that move away from their paths.
    held: Holder,
    /// Where the identity ids are kept across restarts.
    ids_path: Option<PathBuf>,
    current: Option<Applied>,
}

impl PolicyManager {
    pub fn new(
        enforcer: Enforcer,
        directory: SharedDirectory,
        host: HostProtection,
        cgroups: &Cgroups,
        files: Option<FileFence>,
        ids_path: Option<PathBuf>,
    ) -> PolicyManager {
        PolicyManager {
            enforcer,
            ids: ids_path.as_deref().map(IdAllocator::load).unwrap_or_default(),
            ids_path,
            directory,
            base_host: host.clone(),
            host,
            extra: (Vec::new(), Vec::new()),
            cgroup_root: cgroups.root().to_owned(),
            files,
            held: Holder::default(),
            current: None,
        }
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    pub fn enforcer_mut(&mut self) -> &mut Enforcer {
        &mut self.enforcer
    }

    pub fn current(&self) -> Option<&Applied> {
        self.current.as_ref()
    }

    /// Applies `set` with `extra` protected files and `.env` roots (from the vault's host
    /// assignment) added to the configured ones; on failure the previous additions stay.
    pub fn apply_with_extra(&mut self, set: PolicySet, extra: (Vec<PathGlob>, Vec<PathBuf>)) -> Result<(), ApplyError> {
        let previous = (self.host.clone(), self.extra.clone());
        let mut host = self.base_host.clone();
        host.files.extend(extra.0.iter().cloned());
        host.env_roots.extend(extra.1.iter().cloned());
        self.host = host;
        self.extra = extra;
        if let Err(e) = self.apply(set) {
            (self.host, self.extra) = previous;
            return Err(e);
        }
        Ok(())
    }

    /// Resolves, compiles and applies `set`; on success it is the live policy.
    pub fn apply(&mut self, set: PolicySet) -> Result<&Applied, ApplyError> {
        let mut resolved = resolve(&set, &self.host, &self.cgroup_root);
        self.held.update(&mut resolved);
        self.apply_resolved(set, resolved)
    }

    /// Resolves the live policy again (files changed on disk). Returns `None` when nothing
    /// changed, so the kernel is not touched.
    pub fn reapply(&mut self) -> Option<Result<&Applied, ApplyError>> {
        let current = self.current.as_ref()?;
        let mut resolved = resolve(&current.set, &self.host, &self.cgroup_root);
        self.held.update(&mut resolved);
        if resolved == current.resolved {
            return None;
        }
        let set = current.set.clone();
        Some(self.apply_resolved(set, resolved))
    }

    fn apply_resolved(&mut self, set: PolicySet, resolved: Resolved) -> Result<&Applied, ApplyError> {
        let compiled = compile(&set, &resolved, &mut self.ids)?;
        if let Some(path) = &self.ids_path
            && let Err(e) = self.ids.save(path)
        {
            tracing::warn!(error = %e, path = %path.display(), "saving identity ids failed; events recorded before a restart may name the wrong identity");
        }
        {
            // The directory learns new identities and paths before the kernel can report on them.
            let mut dir = self.directory.write().unwrap_or_else(|p| p.into_inner());
            dir.update(&compiled);
            dir.set_objects(resolved.names());
        }
        let report = self.enforcer.apply(&compiled)?;
        if let Some(files) = &mut self.files
            && let Err(e) = files.update(&compiled, &resolved, &self.held)
        {
            tracing::error!(error = %e, "updating the fanotify file fence failed; it keeps the previous marks");
        }
        for w in &resolved.warnings {
            tracing::warn!("{w}");
        }
        Ok(self.current.insert(Applied { set, resolved, compiled, report }))
    }

    /// Directories whose changes can change what the live policy resolves to.
    pub fn watch_dirs(&self) -> BTreeSet<PathBuf> {
        self.current.as_ref().map(|a| a.resolved.watch.clone()).unwrap_or_default()
    }
}

/// Why `fence-agent exec` was refused.
#[derive(Debug, Error)]
pub enum EnterError {
    #[error("no identity \"{0}\" in the policy this agent enforces")]
    Unknown(String),
    #[error("identity \"{0}\" has no `managed: true` selector, so processes cannot be started in it")]
    NotManaged(String),
    #[error("identity \"{0}\" has expired")]
    Expired(String),
    #[error("the caller is already fenced as identity \"{0}\"; a fenced process cannot change identity")]
    AlreadyFenced(String),
    #[error("moving pid {pid} into {path}: {source}")]
    Move { pid: u32, path: String, source: std::io::Error },
    #[error("the agent has no policy applied yet")]
    NoPolicy,
}

/// The state of one identity, for `fence-agent identities`.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityStatus {
    pub name: String,
    pub owner: String,
    pub purpose: String,
    pub mode: &'static str,
    pub policy_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub expired: bool,
    pub selectors: Vec<SelectorStatus>,
    pub processes: usize,
    pub egress_rules: usize,
    pub exec: String,
    pub unix: String,
    pub file_exceptions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectorStatus {
    /// cgroup, unit or managed.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub cgroup: String,
    /// The cgroup's current id; absent when it does not exist (a unit that is not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    pub processes: usize,
}

impl PolicyManager {
    /// The identity a process in cgroup `path` carries: the deepest bound ancestor, as the
    /// kernel decides.
    pub fn identity_of_cgroup(&self, path: &str) -> Option<&str> {
        let applied = self.current.as_ref()?;
        let mut best: Option<(&str, usize)> = None;
        for identity in &applied.compiled.identities {
            for (bound, _) in &identity.cgroups {
                if (path == bound || path.starts_with(&format!("{bound}/")))
                    && best.is_none_or(|(_, len)| bound.len() > len)
                {
                    best = Some((identity.name.as_str(), bound.len()));
                }
            }
        }
        best.map(|(name, _)| name)
    }

    /// Moves process `pid` into identity `name`'s managed cgroup; returns the cgroup path.
    pub fn enter(&self, name: &str, pid: u32) -> Result<String, EnterError> {
        let applied = self.current.as_ref().ok_or(EnterError::NoPolicy)?;
        let identity = applied
            .set
            .identities
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| EnterError::Unknown(name.to_owned()))?;
        let managed = identity
            .cgroups
            .iter()
            .find(|c| c.kind == SelectorKind::Managed)
            .ok_or_else(|| EnterError::NotManaged(name.to_owned()))?;
        if identity.expired {
            return Err(EnterError::Expired(name.to_owned()));
        }
        if let Some(current) = Cgroups::path_of_process(&pid.to_string())
            && let Some(other) = self.identity_of_cgroup(&current)
            && other != name
        {
            return Err(EnterError::AlreadyFenced(other.to_owned()));
        }
        let dir = self.cgroup_root.join(managed.path.trim_start_matches('/'));
        let moved =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()));
        moved.map_err(|source| EnterError::Move { pid, path: managed.path.clone(), source })?;
        Ok(managed.path.clone())
    }

    /// Every identity of the live policy and its state on this host.
    pub fn identities(&self) -> Vec<IdentityStatus> {
        let Some(applied) = self.current.as_ref() else { return Vec::new() };
        applied
            .set
            .identities
            .iter()
            .map(|i| {
                let selectors: Vec<SelectorStatus> = i
                    .cgroups
                    .iter()
                    .map(|cg| {
                        let dir = self.cgroup_root.join(cg.path.trim_start_matches('/'));
                        let (kind, unit) = match &cg.kind {
                            SelectorKind::Cgroup => ("cgroup", None),
                            SelectorKind::Unit(u) => ("unit", Some(u.clone())),
                            SelectorKind::Managed => ("managed", None),
                        };
                        SelectorStatus {
                            kind,
                            unit,
                            cgroup: cg.path.clone(),
                            cgroup_id: crate::cgroup::id_of(&dir).ok(),
                            processes: crate::cgroup::process_count(&dir),
                        }
                    })
                    .collect();
                let programs = applied.resolved.identities.get(&i.name).map_or(0, |r| r.exec.len());
                IdentityStatus {
                    name: i.name.clone(),
                    owner: i.owner.clone(),
                    purpose: i.purpose.clone(),
                    mode: i.mode.as_str(),
                    policy_version: i.version.to_string(),
                    created: i.created.map(|t| t.to_string()),
                    expires: i.expires.map(|t| t.to_string()),
                    expired: i.expired,
                    processes: selectors.iter().map(|s| s.processes).sum(),
                    selectors,
                    egress_rules: i.egress.len(),
                    exec: i
                        .exec
                        .as_ref()
                        .map_or("unrestricted".into(), |_| format!("allow-list ({programs} programs)")),
                    unix: if i.unix.is_some() { "allow-list".into() } else { "host default-deny".into() },
                    file_exceptions: i.file_exceptions.len(),
                }
            })
            .collect()
    }

    /// The next moment an identity of the live policy expires.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        let applied = self.current.as_ref()?;
        applied.set.identities.iter().filter(|i| !i.expired).filter_map(|i| i.expires).min()
    }

    /// Marks identities whose expiry has passed as expired (deny-all) and applies. `None` when
    /// none did.
    pub fn expire_due(&mut self, now: Timestamp) -> Option<Result<&Applied, ApplyError>> {
        let current = self.current.as_ref()?;
        let mut set = current.set.clone();
        let mut changed = false;
        for i in &mut set.identities {
            if !i.expired && i.expires.is_some_and(|e| e <= now) {
                i.expired = true;
                changed = true;
            }
        }
        changed.then(|| self.apply(set))
    }
}
