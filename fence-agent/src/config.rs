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
//!
//! [vault]                                    # central policy (OpenBao/Vault KV v2); off when absent
//! address = "https://vault.example.com:8200"
//! ca_file = "/etc/fence/vault-ca.pem"        # the only trust anchor when set
//! role_id_file = "/etc/fence/vault-role-id"  # AppRole (or token_file)
//! secret_id_file = "/etc/fence/vault-secret-id"
//! ```

use std::{
    collections::BTreeMap,
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
    /// The central vault policies come from; `None` (no `[vault]` table): no vault.
    #[serde(default)]
    pub vault: Option<VaultConfig>,
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

/// The central vault (OpenBao or HashiCorp Vault, KV v2) that holds fence's policies; see
/// `vault::client`. Credential files are checked (mode, owner) when the client reads them, not
/// here: a config may be checked on another machine.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://host:port` (a path prefix is allowed); `http://` only with `insecure`.
    pub address: String,
    /// Allow plain HTTP (development only; the client warns at every start).
    #[serde(default)]
    pub insecure: bool,
    /// PEM bundle that is then the only trust anchor (pinning); else the system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Sent as `X-Vault-Namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The KV v2 mount.
    #[serde(default = "default_vault_mount")]
    pub mount: String,
    /// Where fence's documents are in the mount (may be empty: the mount's root).
    #[serde(default = "default_vault_prefix")]
    pub prefix: String,
    /// AppRole: the role_id, with `secret_id_file`.
    #[serde(default)]
    pub role_id_file: Option<PathBuf>,
    /// AppRole: the secret_id (0600 or stricter, owned by root or the agent's uid).
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// `secret_id_file` holds a response-wrapping token, unwrapped once at the first login.
    #[serde(default)]
    pub secret_id_wrapped: bool,
    /// A token instead of AppRole (console use); same permission rule.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where AppRole is mounted.
    #[serde(default = "default_vault_auth_mount")]
    pub auth_mount: String,
    /// Seconds between polls of the change index (1 to 3600).
    #[serde(default = "default_vault_poll_interval", deserialize_with = "vault_poll_interval")]
    pub poll_interval: u64,
    /// Seconds between full re-reads of every document (10 to 86400).
    #[serde(default = "default_vault_full_resync", deserialize_with = "vault_full_resync")]
    pub full_resync: u64,
    /// Public keys documents must be signed with: `ed25519:<base64 of 32 bytes>`.
    #[serde(default, deserialize_with = "vault_signing_keys")]
    pub signing_keys: Vec<String>,
    /// This host's labels, matched by assignments.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The host name assignments match (default: the kernel's host name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Seconds one request may take (1 to 300).
    #[serde(default = "default_vault_timeout", deserialize_with = "vault_timeout")]
    pub timeout: u64,
    /// Refuse an index the console issued longer ago than this (seconds, 60 to 31536000):
    /// a vault writer cannot then hold hosts on an old, validly signed policy for longer.
    /// The console must push (`policy push` re-signs the index) more often than this. Off by
    /// default.
    #[serde(default, deserialize_with = "vault_max_index_age")]
    pub max_index_age: Option<u64>,
}

pub const DEFAULT_VAULT_MOUNT: &str = "secret";
pub const DEFAULT_VAULT_PREFIX: &str = "fence";
pub const DEFAULT_VAULT_AUTH_MOUNT: &str = "approle";
pub const DEFAULT_VAULT_POLL_INTERVAL: u64 = 5;
pub const DEFAULT_VAULT_FULL_RESYNC: u64 = 600;
pub const DEFAULT_VAULT_TIMEOUT: u64 = 10;

fn default_vault_mount() -> String {
    DEFAULT_VAULT_MOUNT.to_owned()
}

fn default_vault_prefix() -> String {
    DEFAULT_VAULT_PREFIX.to_owned()
}

fn default_vault_auth_mount() -> String {
    DEFAULT_VAULT_AUTH_MOUNT.to_owned()
}

fn default_vault_poll_interval() -> u64 {
    DEFAULT_VAULT_POLL_INTERVAL
}

fn default_vault_full_resync() -> u64 {
    DEFAULT_VAULT_FULL_RESYNC
}

fn default_vault_timeout() -> u64 {
    DEFAULT_VAULT_TIMEOUT
}

fn seconds_in<'de, D: serde::Deserializer<'de>>(d: D, min: u64, max: u64) -> Result<u64, D::Error> {
    use serde::de::Error as _;
    let secs = u64::deserialize(d)?;
    if !(min..=max).contains(&secs) {
        return Err(D::Error::custom(format!("must be between {min} and {max} seconds (got {secs})")));
    }
    Ok(secs)
}

fn vault_poll_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    seconds_in(d, 1, 3600)
}

fn vault_full_resync<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    seconds_in(d, 10, 86400)
}

fn vault_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    seconds_in(d, 1, 300)
}

fn vault_max_index_age<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    seconds_in(d, 60, 31_536_000).map(Some)
}

fn vault_signing_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error as _;
    let keys = Vec::<String>::deserialize(d)?;
    for (i, key) in keys.iter().enumerate() {
        signing_key_bytes(key).map_err(|why| D::Error::custom(format!("[{i}]: {key:?} {why}")))?;
    }
    Ok(keys)
}

/// The 32 bytes of an `ed25519:<base64>` public key (the format only: the point itself is
/// checked by `vault::sign`).
pub fn signing_key_bytes(text: &str) -> Result<[u8; 32], String> {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let b64 = text.strip_prefix("ed25519:").ok_or("is not an Ed25519 public key (\"ed25519:<base64>\")")?;
    let bytes = STANDARD.decode(b64).map_err(|e| format!("is not valid base64 after \"ed25519:\" ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("is {} bytes, not the 32 of an Ed25519 public key", bytes.len()))
}

/// A mount or prefix: `/`-separated names, none empty, `.` or `..`, no control characters.
fn vault_path_field(field: &str, text: &str, may_be_empty: bool) -> Result<(), String> {
    if text.is_empty() {
        return if may_be_empty { Ok(()) } else { Err(format!("vault.{field}: must not be empty")) };
    }
    for segment in text.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.chars().any(char::is_control) {
            return Err(format!(
                "vault.{field}: {text:?} is not a path of names separated by \"/\" (no empty, \".\" or \"..\" parts, no leading or trailing \"/\")"
            ));
        }
    }
    Ok(())
}

impl VaultConfig {
    /// What deserialization cannot check alone: the address, the choice of authentication and
    /// names used in paths and headers. Errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        let address = &self.address;
        let url = url::Url::parse(address).map_err(|e| format!("vault.address: {address:?} is not a URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.insecure => {}
            "http" => {
                return Err(format!(
                    "vault.address: {address} is plain HTTP; set vault.insecure = true to allow it (development only)"
                ));
            }
            other => return Err(format!("vault.address: {address} has scheme {other:?}; use https://")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("vault.address: {address} has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("vault.address: must not carry a user name or password".to_owned());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("vault.address: {address} must have no query or fragment"));
        }
        let absolute = |field: &str, path: &Option<PathBuf>| match path {
            Some(p) if !p.is_absolute() => {
                Err(format!("vault.{field}: {:?} must be an absolute path", p.display().to_string()))
            }
            _ => Ok(()),
        };
        absolute("ca_file", &self.ca_file)?;
        absolute("role_id_file", &self.role_id_file)?;
        absolute("secret_id_file", &self.secret_id_file)?;
        absolute("token_file", &self.token_file)?;
        if let Some(ns) = &self.namespace
            && (ns.is_empty() || !ns.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(format!("vault.namespace: {ns:?} must be a non-empty name of printable ASCII characters"));
        }
        vault_path_field("mount", &self.mount, false)?;
        vault_path_field("prefix", &self.prefix, true)?;
        vault_path_field("auth_mount", &self.auth_mount, false)?;
        let approle = self.role_id_file.is_some() || self.secret_id_file.is_some();
        match (approle, self.token_file.is_some()) {
            (true, true) => {
                return Err(
                    "vault: give either role_id_file and secret_id_file (AppRole) or token_file, not both".to_owned()
                );
            }
            (false, false) => {
                return Err("vault: give role_id_file and secret_id_file (AppRole) or token_file".to_owned());
            }
            _ => {}
        }
        if approle && self.role_id_file.is_none() {
            return Err("vault.role_id_file: is required with vault.secret_id_file (AppRole)".to_owned());
        }
        if approle && self.secret_id_file.is_none() {
            return Err("vault.secret_id_file: is required with vault.role_id_file (AppRole)".to_owned());
        }
        if self.secret_id_wrapped && !approle {
            return Err("vault.secret_id_wrapped: applies only to AppRole (secret_id_file)".to_owned());
        }
        for (key, value) in &self.labels {
            if key.is_empty()
                || key.len() > 63
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            {
                return Err(format!("vault.labels: {key:?} is not a label name (1 to 63 of A-Z a-z 0-9 . _ - /)"));
            }
            if value.len() > 256 || value.chars().any(char::is_control) {
                return Err(format!(
                    "vault.labels.{key}: the value must be at most 256 bytes without control characters"
                ));
            }
        }
        if let Some(host) = &self.hostname
            && (host.is_empty()
                || host.len() > 253
                || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!("vault.hostname: {host:?} is not a host name (1 to 253 of A-Z a-z 0-9 . _ -)"));
        }
        Ok(())
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
        if let Some(vault) = &config.vault {
            vault.validate()?;
        }
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
        // The agent's vault credentials, the CA it trusts and its state (the policy cache and
        // its rollback floor): no fenced identity may read or change them, wherever they are,
        // with or without the built-in defaults.
        if let Some(v) = &self.vault {
            for (field, f) in [
                ("vault.role_id_file", &v.role_id_file),
                ("vault.secret_id_file", &v.secret_id_file),
                ("vault.token_file", &v.token_file),
                ("vault.ca_file", &v.ca_file),
            ] {
                if let Some(f) = f {
                    files.push(glob(field.into(), &f.display().to_string())?);
                }
            }
            let state = self.persist.state_dir.display().to_string();
            files.push(glob("persist.state_dir".into(), &format!("{}/**", state.trim_end_matches('/')))?);
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
    fn vault_credentials_ca_and_state_are_always_protected() {
        let c = Config::parse(
            "[protect]\ndefaults = false\n[persist]\nstate_dir = \"/srv/fence-state/\"\n[vault]\naddress = \"https://v\"\n\
             role_id_file = \"/k/role\"\nsecret_id_file = \"/k/secret\"\nca_file = \"/k/ca.pem\"\n",
        )
        .unwrap();
        let h = c.host_protection().unwrap();
        let globs: Vec<&str> = h.files.iter().map(|g| g.as_str()).collect();
        assert_eq!(globs, ["/k/role", "/k/secret", "/k/ca.pem", "/srv/fence-state/**"]);
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

    const VAULT_MIN: &str =
        "[vault]\naddress = \"https://vault.example.com:8200\"\ntoken_file = \"/root/.vault-token\"\n";

    fn vault_err(extra: &str) -> String {
        Config::parse(&format!("{VAULT_MIN}{extra}")).unwrap_err()
    }

    #[test]
    fn vault_is_off_by_default_and_has_defaults() {
        assert_eq!(Config::parse("").unwrap().vault, None);
        let v = Config::parse(VAULT_MIN).unwrap().vault.unwrap();
        assert_eq!((v.mount.as_str(), v.prefix.as_str(), v.auth_mount.as_str()), ("secret", "fence", "approle"));
        assert_eq!((v.poll_interval, v.full_resync, v.timeout), (5, 600, 10));
        assert!(!v.insecure && !v.secret_id_wrapped && v.signing_keys.is_empty() && v.labels.is_empty());
        assert_eq!(v.token_file.as_deref(), Some(Path::new("/root/.vault-token")));
    }

    #[test]
    fn vault_full_table() {
        let key = format!("ed25519:{}", "A".repeat(43) + "=");
        let text = format!(
            "[vault]\naddress = \"https://vault:8200/\"\ninsecure = false\nca_file = \"/etc/fence/vault-ca.pem\"\n\
             namespace = \"team-a/sub\"\nmount = \"kv/fleet\"\nprefix = \"\"\nrole_id_file = \"/etc/fence/r\"\n\
             secret_id_file = \"/etc/fence/s\"\nsecret_id_wrapped = true\nauth_mount = \"approle-fence\"\n\
             poll_interval = 3600\nfull_resync = 10\nsigning_keys = [\"{key}\"]\nlabels = {{ env = \"prod\", \"team/x\" = \"a b\" }}\n\
             hostname = \"web-1.example\"\ntimeout = 300\n"
        );
        let v = Config::parse(&text).unwrap().vault.unwrap();
        assert_eq!(v.namespace.as_deref(), Some("team-a/sub"));
        assert_eq!((v.mount.as_str(), v.prefix.as_str()), ("kv/fleet", ""));
        assert!(v.secret_id_wrapped);
        assert_eq!(signing_key_bytes(&v.signing_keys[0]).unwrap(), [0u8; 32]);
        assert_eq!(v.labels["env"], "prod");
        assert_eq!(v.labels["team/x"], "a b");
        assert_eq!(v.hostname.as_deref(), Some("web-1.example"));
        assert_eq!((v.poll_interval, v.full_resync, v.timeout), (3600, 10, 300));
    }

    #[test]
    fn vault_address_must_be_https_unless_insecure() {
        let plain = "[vault]\naddress = \"http://x\"\ntoken_file = \"/t\"\n";
        assert_eq!(
            Config::parse(plain).unwrap_err(),
            "vault.address: http://x is plain HTTP; set vault.insecure = true to allow it (development only)"
        );
        assert!(Config::parse(&format!("{plain}insecure = true\n")).unwrap().vault.unwrap().insecure);
        for (address, why) in [
            ("vault:8200", "scheme"),
            ("ftp://vault", "scheme \"ftp\""),
            ("not a url", "is not a URL"),
            ("https://user:pw@vault", "user name or password"),
            ("https://vault/?x=1", "no query or fragment"),
        ] {
            let e = Config::parse(&format!("[vault]\naddress = \"{address}\"\ntoken_file = \"/t\"\n")).unwrap_err();
            assert!(e.starts_with("vault.address: ") && e.contains(why), "{address}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
        let e = Config::parse("[vault]\ntoken_file = \"/t\"\n").unwrap_err();
        assert!(e.contains("vault") && e.contains("address"), "{e}");
    }

    #[test]
    fn vault_auth_is_approle_or_token_file() {
        let base = "[vault]\naddress = \"https://v\"\n";
        let e = Config::parse(base).unwrap_err();
        assert_eq!(e, "vault: give role_id_file and secret_id_file (AppRole) or token_file");
        let e = Config::parse(&format!("{base}role_id_file = \"/r\"\nsecret_id_file = \"/s\"\ntoken_file = \"/t\"\n"))
            .unwrap_err();
        assert_eq!(e, "vault: give either role_id_file and secret_id_file (AppRole) or token_file, not both");
        let e = Config::parse(&format!("{base}role_id_file = \"/r\"\n")).unwrap_err();
        assert!(e.starts_with("vault.secret_id_file: is required"), "{e}");
        let e = Config::parse(&format!("{base}secret_id_file = \"/s\"\n")).unwrap_err();
        assert!(e.starts_with("vault.role_id_file: is required"), "{e}");
        let e = vault_err("secret_id_wrapped = true\n");
        assert!(e.starts_with("vault.secret_id_wrapped: "), "{e}");
        let e = Config::parse(&format!("{base}role_id_file = \"r\"\nsecret_id_file = \"/s\"\n")).unwrap_err();
        assert!(e.starts_with("vault.role_id_file: \"r\" must be an absolute path"), "{e}");
        assert!(vault_err("ca_file = \"ca.pem\"\n").starts_with("vault.ca_file: "));
        let ok = Config::parse(&format!("{base}role_id_file = \"/r\"\nsecret_id_file = \"/s\"\n")).unwrap();
        assert_eq!(ok.vault.unwrap().secret_id_file.as_deref(), Some(Path::new("/s")));
    }

    #[test]
    fn vault_numbers_names_and_keys_name_the_field() {
        for (extra, field) in [
            ("poll_interval = 0\n", "vault.poll_interval: must be between 1 and 3600 seconds (got 0)"),
            ("poll_interval = 3601\n", "vault.poll_interval: must be between 1 and 3600"),
            ("full_resync = 9\n", "vault.full_resync: must be between 10 and 86400"),
            ("full_resync = 86401\n", "vault.full_resync: must be between 10 and 86400"),
            ("timeout = 0\n", "vault.timeout: must be between 1 and 300"),
            ("max_index_age = 59\n", "vault.max_index_age: must be between 60 and 31536000"),
            ("timeout = \"10s\"\n", "vault.timeout: "),
            ("mount = \"\"\n", "vault.mount: must not be empty"),
            ("mount = \"/secret\"\n", "vault.mount: "),
            ("prefix = \"a//b\"\n", "vault.prefix: "),
            ("prefix = \"../x\"\n", "vault.prefix: "),
            ("auth_mount = \"approle/\"\n", "vault.auth_mount: "),
            ("namespace = \"\"\n", "vault.namespace: "),
            ("namespace = \"a b\"\n", "vault.namespace: "),
            ("hostname = \"web/1\"\n", "vault.hostname: "),
            ("labels = { \"\" = \"x\" }\n", "vault.labels: "),
            ("labels = { env = \"a\\nb\" }\n", "vault.labels.env: "),
            ("signing_keys = [\"AAAA\"]\n", "vault.signing_keys: [0]: \"AAAA\" is not an Ed25519 public key"),
            ("signing_keys = [\"ed25519:!!\"]\n", "vault.signing_keys: [0]: \"ed25519:!!\" is not valid base64"),
            ("signing_keys = [\"ed25519:AAAA\"]\n", "vault.signing_keys: [0]: \"ed25519:AAAA\" is 3 bytes"),
            ("adress = \"x\"\n", "vault.adress: unknown field `adress`"),
        ] {
            let e = vault_err(extra);
            assert!(e.starts_with(field), "{extra}: {e}");
        }
    }
}
