//! The policy manager: resolves a policy set on this host, compiles it and hands it to the
//! enforcer (and to the fanotify file fence where that is the mechanism); keeps the event
//! directory in step. A set that fails anywhere is not applied and the live policy stays.

use std::{collections::BTreeSet, path::PathBuf};

use jiff::Timestamp;
use thiserror::Error;

use crate::{
    cgroup::Cgroups,
    compile::{CompiledPolicy, IdAllocator, compile},
    enforcer::{ApplyReport, Enforcer, EnforcerError},
    events::SharedDirectory,
    fanotify::FileFence,
    hold::Holder,
    policy::{PolicyErrors, PolicySet, load_paths, validate},
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
    host: HostProtection,
    files: Option<FileFence>,
    /// Keeps protection on protected inodes that move away from their paths.
    held: Holder,
    current: Option<Applied>,
}

impl PolicyManager {
    pub fn new(
        enforcer: Enforcer,
        directory: SharedDirectory,
        host: HostProtection,
        files: Option<FileFence>,
    ) -> PolicyManager {
        PolicyManager {
            enforcer,
            ids: IdAllocator::default(),
            directory,
            host,
            files,
            held: Holder::default(),
            current: None,
        }
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    pub fn current(&self) -> Option<&Applied> {
        self.current.as_ref()
    }

    /// Resolves, compiles and applies `set`; on success it is the live policy.
    pub fn apply(&mut self, set: PolicySet) -> Result<&Applied, ApplyError> {
        let mut resolved = resolve(&set, &self.host);
        self.held.update(&mut resolved);
        self.apply_resolved(set, resolved)
    }

    /// Resolves the live policy again (files changed on disk). Returns `None` when nothing
    /// changed, so the kernel is not touched.
    pub fn reapply(&mut self) -> Option<Result<&Applied, ApplyError>> {
        let current = self.current.as_ref()?;
        let mut resolved = resolve(&current.set, &self.host);
        self.held.update(&mut resolved);
        if resolved == current.resolved {
            return None;
        }
        let set = current.set.clone();
        Some(self.apply_resolved(set, resolved))
    }

    fn apply_resolved(&mut self, set: PolicySet, resolved: Resolved) -> Result<&Applied, ApplyError> {
        let compiled = compile(&set, &resolved, &mut self.ids)?;
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
