//! The agent's configuration file (TOML, default /etc/fence/agent.toml). Every field is
//! optional; unknown fields are errors.
//!
//! ```toml
//! [events]
//! stdout = true                              # one JSON line per event on stdout
//! file = "/var/log/fence/events.jsonl"       # append-only event file
//! max_bytes = 67108864                       # rotate past 64 MiB (0: never)
//! keep = 5                                   # rotated files kept: events.jsonl.1 … .5
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
//!
//! [metrics]                                  # Prometheus metrics; off when absent
//! listen = "127.0.0.1:9477"                  # loopback only (127.0.0.0/8 or [::1])
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
    #[serde(default)]
    pub metrics: MetricsConfig,
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

/// Prometheus metrics over HTTP (see `metrics`): off unless `listen` is set, and only ever on a
/// loopback address.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `"127.0.0.1:9477"` or `"[::1]:9477"`: an address of 127.0.0.0/8 or ::1 and a port.
    #[serde(default, deserialize_with = "loopback_listen")]
    pub listen: Option<std::net::SocketAddr>,
}

fn loopback_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    use serde::de::Error as _;
    let text = String::deserialize(d)?;
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        D::Error::custom(format!("{text:?} is not an IP address and port (e.g. \"127.0.0.1:9477\" or \"[::1]:9477\")"))
    })?;
    if !addr.ip().is_loopback() {
        return Err(D::Error::custom(format!(
            "{addr} is not a loopback address (metrics are served only on loopback)"
        )));
    }
    if addr.port() == 0 {
        return Err(D::Error::custom(format!("{addr} has no port (port 0 would be a random one no scraper knows)")));
    }
    Ok(Some(addr))
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

/// Where denial events go (see `events::sink`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// One JSON line per event on stdout (to the journal with fields when stdout is the journal).
    #[serde(default = "yes")]
    pub stdout: bool,
    /// The event file: append-only, never truncated, rotated by size.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Rotate the event file before a line would take it past this size; 0: never rotate.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`events.jsonl.1` newest … `events.jsonl.<keep>` oldest).
    #[serde(default = "default_keep", deserialize_with = "rotated_files_kept")]
    pub keep: u32,
    /// Flood control: events written per second per (identity, operation, verdict), enforced
    /// in the kernel; the rest are counted and reported as one summary per interval. 0: no
    /// limit.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Events of one (identity, operation, verdict) that may come at once before the limit.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Seconds between summaries of suppressed and dropped events (1 to 3600).
    #[serde(default = "default_summary_interval", deserialize_with = "summary_interval")]
    pub summary_interval: u32,
}

pub const DEFAULT_RATE_LIMIT: u32 = 50;
pub const DEFAULT_RATE_BURST: u32 = 200;
pub const DEFAULT_SUMMARY_INTERVAL: u32 = 10;

fn default_rate_limit() -> u32 {
    DEFAULT_RATE_LIMIT
}

fn default_rate_burst() -> u32 {
    DEFAULT_RATE_BURST
}

fn default_summary_interval() -> u32 {
    DEFAULT_SUMMARY_INTERVAL
}

fn summary_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error as _;
    let secs = u32::deserialize(d)?;
    if !(1..=3600).contains(&secs) {
        return Err(D::Error::custom(format!("must be between 1 and 3600 seconds (got {secs})")));
    }
    Ok(secs)
}

fn yes() -> bool {
    true
}

pub const DEFAULT_EVENTS_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_EVENTS_KEEP: u32 = 5;
/// More rotated files than this is a mistake (each rotation renames every one of them).
pub const MAX_EVENTS_KEEP: u32 = 1000;

fn default_max_bytes() -> u64 {
    DEFAULT_EVENTS_MAX_BYTES
}

fn default_keep() -> u32 {
    DEFAULT_EVENTS_KEEP
}

fn rotated_files_kept<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error as _;
    let keep = u32::deserialize(d)?;
    if keep < 1 {
        return Err(D::Error::custom("must be at least 1 (the live file is rotated to <file>.1)"));
    }
    if keep > MAX_EVENTS_KEEP {
        return Err(D::Error::custom(format!("must be at most {MAX_EVENTS_KEEP} (got {keep})")));
    }
    Ok(keep)
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            stdout: true,
            file: None,
            max_bytes: DEFAULT_EVENTS_MAX_BYTES,
            keep: DEFAULT_EVENTS_KEEP,
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_burst: DEFAULT_RATE_BURST,
            summary_interval: DEFAULT_SUMMARY_INTERVAL,
        }
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
    fn event_file_rotation_defaults_and_limits() {
        let c = Config::parse("").unwrap();
        assert_eq!((c.events.max_bytes, c.events.keep), (64 * 1024 * 1024, 5));
        let c = Config::parse("[events]\nmax_bytes = 0\nkeep = 1\n").unwrap();
        assert_eq!((c.events.max_bytes, c.events.keep), (0, 1));
        let e = Config::parse("[events]\nkeep = 0\n").unwrap_err();
        assert!(e.starts_with("events.keep: must be at least 1"), "{e}");
        let e = Config::parse("[events]\nkeep = 1001\n").unwrap_err();
        assert!(e.starts_with("events.keep: must be at most 1000"), "{e}");
        let e = Config::parse("[events]\nkeep = -1\n").unwrap_err();
        assert!(e.starts_with("events.keep: "), "{e}");
        let e = Config::parse("[events]\nmax_bytes = -5\n").unwrap_err();
        assert!(e.starts_with("events.max_bytes: "), "{e}");
        let e = Config::parse("[events]\nmax_bytes = \"64M\"\n").unwrap_err();
        assert!(e.starts_with("events.max_bytes: "), "{e}");
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

    #[test]
    fn metrics_are_off_by_default_and_served_only_on_loopback() {
        assert_eq!(Config::parse("").unwrap().metrics.listen, None);
        assert_eq!(Config::parse("[metrics]\n").unwrap().metrics.listen, None);
        for ok in ["127.0.0.1:9477", "127.1.2.3:9477", "[::1]:9477"] {
            let c = Config::parse(&format!("[metrics]\nlisten = \"{ok}\"\n")).unwrap();
            assert_eq!(c.metrics.listen, Some(ok.parse().unwrap()));
        }
        let e = Config::parse("[metrics]\nlisten = \"10.0.0.5:9477\"\n").unwrap_err();
        assert_eq!(e, "metrics.listen: 10.0.0.5:9477 is not a loopback address (metrics are served only on loopback)");
        for bad in ["0.0.0.0:9477", "[::]:9477", "[::ffff:127.0.0.1]:9477", "192.168.1.1:80"] {
            let e = Config::parse(&format!("[metrics]\nlisten = \"{bad}\"\n")).unwrap_err();
            assert!(e.starts_with("metrics.listen: ") && e.contains("is not a loopback address"), "{e}");
        }
        let e = Config::parse("[metrics]\nlisten = \"localhost:9477\"\n").unwrap_err();
        assert!(e.starts_with("metrics.listen: \"localhost:9477\" is not an IP address and port"), "{e}");
        let e = Config::parse("[metrics]\nlisten = \"127.0.0.1\"\n").unwrap_err();
        assert!(e.contains("is not an IP address and port"), "{e}");
        let e = Config::parse("[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap_err();
        assert!(e.starts_with("metrics.listen: 127.0.0.1:0 has no port"), "{e}");
        let e = Config::parse("[metrics]\nlisten = 9477\n").unwrap_err();
        assert!(e.starts_with("metrics.listen: "), "{e}");
        let e = Config::parse("[metrics]\nlisen = \"127.0.0.1:9477\"\n").unwrap_err();
        assert!(e.contains("metrics") && e.contains("lisen"), "{e}");
    }
}
