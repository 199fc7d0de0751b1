//! `[protect]` and `[unix]`: the host's protected set (see `protect`), parsed once into globs,
//! with the agent's own vault credentials, CA and state directory added.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::VaultConfig;
use crate::{
    policy::glob::PathGlob,
    protect::{DEFAULT_PROTECTED, DEFAULT_UNIX_DENY, HostProtection},
};

/// `[protect]` as written: credential files fenced identities cannot open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProtectSection {
    /// Start from the built-in set (`protect::DEFAULT_PROTECTED`).
    #[serde(default = "yes")]
    defaults: bool,
    /// More paths or globs.
    #[serde(default)]
    paths: Vec<String>,
    /// `.env*` files anywhere below these (absolute) directories.
    #[serde(default)]
    env_roots: Vec<PathBuf>,
}

impl Default for ProtectSection {
    fn default() -> Self {
        ProtectSection { defaults: true, paths: Vec::new(), env_roots: Vec::new() }
    }
}

/// `[unix]` as written: sockets fenced identities cannot reach.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnixSection {
    /// Start from the built-in set (`protect::DEFAULT_UNIX_DENY`).
    #[serde(default = "yes")]
    defaults: bool,
    /// More socket paths or globs, or `@name` for an abstract socket.
    #[serde(default)]
    deny: Vec<String>,
}

impl Default for UnixSection {
    fn default() -> Self {
        UnixSection { defaults: true, deny: Vec::new() }
    }
}

fn yes() -> bool {
    true
}

/// The host's protected set: the defaults (unless turned off) plus the configured paths, and
/// always the agent's vault credentials, the CA it trusts, its state (the policy cache and its
/// rollback floor) and its logs (`logs`: each file and its rotated copies, so that a fenced
/// root can neither read, truncate nor remove the evidence), wherever they are. Errors name
/// the field.
pub(super) fn host_protection(
    protect: &ProtectSection,
    unix: &UnixSection,
    vault: Option<&VaultConfig>,
    state_dir: &Path,
    logs: &[(&str, &Path)],
) -> Result<HostProtection, String> {
    let glob = |field: &str, text: &str| PathGlob::parse(text).map_err(|e| format!("{field}: {e}"));
    let mut files = Vec::new();
    if protect.defaults {
        for d in DEFAULT_PROTECTED {
            files.push(glob("protect (built-in)", d)?);
        }
    }
    for (i, p) in protect.paths.iter().enumerate() {
        files.push(glob(&format!("protect.paths[{i}]"), p)?);
    }
    if let Some(v) = vault {
        for (field, f) in v.agent_files() {
            files.push(glob(field, &f.display().to_string())?);
        }
        let state = state_dir.display().to_string();
        files.push(glob("persist.state_dir", &format!("{}/**", state.trim_end_matches('/')))?);
    }
    for (field, log) in logs {
        files.push(glob(field, &format!("{}*", log.display()))?);
    }
    for (i, r) in protect.env_roots.iter().enumerate() {
        if !r.is_absolute() {
            return Err(format!("protect.env_roots[{i}]: {:?} must be an absolute directory", r.display().to_string()));
        }
    }
    let mut unix_deny = Vec::new();
    let mut unix_deny_abstract = Vec::new();
    if unix.defaults {
        for d in DEFAULT_UNIX_DENY {
            unix_deny.push(glob("unix (built-in)", d)?);
        }
    }
    for (i, entry) in unix.deny.iter().enumerate() {
        match entry.strip_prefix('@') {
            Some(name) if !name.is_empty() && name.len() <= fence_common::ABSTRACT_NAME_LEN => {
                unix_deny_abstract.push(name.as_bytes().to_vec());
            }
            Some(_) => return Err(format!("unix.deny[{i}]: {entry:?} is not a valid abstract socket name")),
            None => unix_deny.push(glob(&format!("unix.deny[{i}]"), entry)?),
        }
    }
    Ok(HostProtection { files, env_roots: protect.env_roots.clone(), unix_deny, unix_deny_abstract })
}
