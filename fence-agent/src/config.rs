//! The agent's configuration file (TOML, default /etc/fence/agent.toml). Every field is
//! optional; unknown fields are errors.
//!
//! ```toml
//! [events]
//! stdout = true                              # one JSON line per event on stdout
//! file = "/var/log/fence/events.jsonl"       # append-only event file
//!
//! [protect]                                  # credential files fenced identities cannot open
//! defaults = true                            # the built-in set (protect::DEFAULT_PROTECTED)
//! paths = ["/srv/app/secrets/**"]            # more paths or globs
//! env_roots = ["/srv", "/opt"]               # .env* files anywhere below these
//!
//! [unix]                                     # sockets fenced identities cannot reach
//! defaults = true                            # container runtimes, system D-Bus, systemd
//! deny = ["/run/admin.sock", "@abstract"]    # more
//!
//! [control]
//! socket = "/run/fence/agent.sock"           # for `fence-agent exec` and `identities`
//!
//! [audit]
//! file = "/var/log/fence/audit.jsonl"        # identity lifecycle events, append-only
//!
//! [persist]
//! enabled = true                             # keep enforcing when the agent exits
//! pin_dir = "/sys/fs/bpf/fence"
//! state_dir = "/var/lib/fence"
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    policy::glob::PathGlob,
    protect::{DEFAULT_PROTECTED, DEFAULT_UNIX_DENY, HostProtection},
};

pub const DEFAULT_PATH: &str = "/etc/fence/agent.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub protect: ProtectConfig,
    #[serde(default)]
    pub unix: UnixConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub persist: PersistConfig,
}

/// Enforcement that outlives the agent: programs, links and the event buffer pinned in bpffs;
/// identity ids kept in the state directory.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PersistConfig {
    /// Keep enforcing after the agent exits (stop, upgrade, crash, SIGKILL). Off by default
    /// for `fence-agent run` by hand; the packaged service turns it on. `fence-agent uninstall`
    /// removes what it leaves.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/fence")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/fence")
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig { enabled: false, pin_dir: default_pin_dir(), state_dir: default_state_dir() }
    }
}

/// The agent's local socket (`fence-agent exec`, `fence-agent identities`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

pub const DEFAULT_SOCKET: &str = "/run/fence/agent.sock";

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { socket: default_socket() }
    }
}

/// The identity lifecycle audit log (creation, change, expiry, removal), kept apart from
/// denial events.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_audit_file")]
    pub file: PathBuf,
}

fn default_audit_file() -> PathBuf {
    PathBuf::from("/var/log/fence/audit.jsonl")
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { file: default_audit_file() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProtectConfig {
    #[serde(default = "yes")]
    pub defaults: bool,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub env_roots: Vec<PathBuf>,
}

impl Default for ProtectConfig {
    fn default() -> Self {
        ProtectConfig { defaults: true, paths: Vec::new(), env_roots: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnixConfig {
    #[serde(default = "yes")]
    pub defaults: bool,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Default for UnixConfig {
    fn default() -> Self {
        UnixConfig { defaults: true, deny: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(default = "yes")]
    pub stdout: bool,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { stdout: true, file: None }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`, or the default path if it exists, or returns the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(Config::default()),
        };
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner().message().trim())
        })?;
        config.host_protection()?;
        Ok(config)
    }

    /// The host's protected set: defaults (unless turned off) plus the configured paths.
    pub fn host_protection(&self) -> Result<HostProtection, String> {
        let glob = |field: String, text: &str| PathGlob::parse(text).map_err(|e| format!("{field}: {e}"));
        let mut files = Vec::new();
        if self.protect.defaults {
            for d in DEFAULT_PROTECTED {
                files.push(glob("protect (built-in)".into(), d)?);
            }
        }
        for (i, p) in self.protect.paths.iter().enumerate() {
            files.push(glob(format!("protect.paths[{i}]"), p)?);
        }
        for (i, r) in self.protect.env_roots.iter().enumerate() {
            if !r.is_absolute() {
                return Err(format!(
                    "protect.env_roots[{i}]: {:?} must be an absolute directory",
                    r.display().to_string()
                ));
            }
        }
        let mut unix_deny = Vec::new();
        let mut unix_deny_abstract = Vec::new();
        if self.unix.defaults {
            for d in DEFAULT_UNIX_DENY {
                unix_deny.push(glob("unix (built-in)".into(), d)?);
            }
        }
        for (i, entry) in self.unix.deny.iter().enumerate() {
            match entry.strip_prefix('@') {
                Some(name) if !name.is_empty() && name.len() <= fence_common::ABSTRACT_NAME_LEN => {
                    unix_deny_abstract.push(name.as_bytes().to_vec());
                }
                Some(_) => return Err(format!("unix.deny[{i}]: {entry:?} is not a valid abstract socket name")),
                None => unix_deny.push(glob(format!("unix.deny[{i}]"), entry)?),
            }
        }
        Ok(HostProtection { files, env_roots: self.protect.env_roots.clone(), unix_deny, unix_deny_abstract })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fields() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse("[events]\nstdout = false\nfile = \"/tmp/e.jsonl\"\n").unwrap();
        assert!(!c.events.stdout);
        assert_eq!(c.events.file.as_deref(), Some(Path::new("/tmp/e.jsonl")));
    }

    #[test]
    fn unknown_and_mistyped_fields_name_the_field() {
        let e = Config::parse("[events]\nstdot = true\n").unwrap_err();
        assert!(e.contains("events") && e.contains("stdot"), "{e}");
        let e = Config::parse("[events]\nstdout = \"yes\"\n").unwrap_err();
        assert!(e.starts_with("events.stdout"), "{e}");
    }

    #[test]
    fn protected_set_defaults_extend_and_replace() {
        let c = Config::parse("").unwrap();
        let h = c.host_protection().unwrap();
        assert!(h.files.iter().any(|g| g.as_str() == "/etc/shadow"));
        assert!(h.unix_deny.iter().any(|g| g.as_str() == "/run/docker.sock"));
        let c = Config::parse("[protect]\ndefaults = false\npaths = [\"/srv/keys/**\"]\nenv_roots = [\"/srv\"]\n[unix]\ndefaults = false\ndeny = [\"@admin\"]\n").unwrap();
        let h = c.host_protection().unwrap();
        assert_eq!(h.files.len(), 1);
        assert!(h.files[0].is_tree());
        assert_eq!(h.unix_deny_abstract, vec![b"admin".to_vec()]);
        assert!(h.unix_deny.is_empty());
    }

    #[test]
    fn bad_protected_paths_name_the_field() {
        let e = Config::parse("[protect]\npaths = [\"relative/x\"]\n").unwrap_err();
        assert!(e.starts_with("protect.paths[0]") && e.contains("must be absolute"), "{e}");
        let e = Config::parse("[protect]\nenv_roots = [\"srv\"]\n").unwrap_err();
        assert!(e.starts_with("protect.env_roots[0]"), "{e}");
        let e = Config::parse("[unix]\ndeny = [\"@\"]\n").unwrap_err();
        assert!(e.starts_with("unix.deny[0]"), "{e}");
    }
}
