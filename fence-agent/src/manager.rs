//! The policy manager: validates a policy set against this host, compiles it and hands it to
//! the enforcer; keeps the event directory in step. A set that fails anywhere is not applied
//! and the live policy stays as it was.

use std::path::PathBuf;

use jiff::Timestamp;
use thiserror::Error;

use crate::{
    cgroup::Cgroups,
    compile::{CompiledPolicy, IdAllocator, compile},
    enforcer::{ApplyReport, Enforcer, EnforcerError},
    events::SharedDirectory,
    policy::{PolicyErrors, PolicySet, load_paths, validate},
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
    pub compiled: CompiledPolicy,
    pub report: ApplyReport,
}

pub struct PolicyManager {
    enforcer: Enforcer,
    ids: IdAllocator,
    directory: SharedDirectory,
    current: Option<Applied>,
}

impl PolicyManager {
    pub fn new(enforcer: Enforcer, directory: SharedDirectory) -> PolicyManager {
        PolicyManager {
            enforcer,
            ids: IdAllocator::default(),
            directory,
            current: None,
        }
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    pub fn current(&self) -> Option<&Applied> {
        self.current.as_ref()
    }

    /// Compiles and applies `set`; on success it is the live policy.
    pub fn apply(&mut self, set: PolicySet) -> Result<&Applied, ApplyError> {
        let compiled = compile(&set, &mut self.ids)?;
        // The directory learns new identities before the kernel can report on them.
        self.directory
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .update(&compiled);
        let report = self.enforcer.apply(&compiled)?;
        Ok(self.current.insert(Applied {
            set,
            compiled,
            report,
        }))
    }
}
