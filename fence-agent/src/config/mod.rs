//! The agent's configuration file (TOML, default /etc/fence/agent.toml). Every field is
//! optional; unknown fields are errors.
//!
//! [`Config::load`] and [`Config::parse`] read the file once into typed values: durations,
//! URLs, socket addresses, public keys, globs. Every rule is checked there, and every error
//! names the field (`vault.timeout: must be between 1 and 300 seconds (got 0)`); what uses a
//! [`Config`] takes its values as they are. The sections are in `events` (`[events]`), `agent`
//! (`[control]`, `[audit]`, `[persist]`, `[metrics]`), `protect` (`[protect]` and `[unix]`,
//! read into the host's [`HostProtection`]) and `vault` (`[vault]`).
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
//! socket = "/run/fence/agent.sock"           # for operators: `exec`, `identities`, `grant approve`
//! workload_socket = "/run/fence/workload.sock"  # for fenced workloads: `grant request`
//!
//! [audit]
//! file = "/var/log/fence/audit.jsonl"        # identity lifecycle events, append-only
//! checkpoint_interval = 300                  # seconds between signed log checkpoints
//!
//! [persist]
//! enabled = true                             # keep enforcing when the agent exits
//! pin_dir = "/sys/fs/bpf/fence"
//! state_dir = "/var/lib/fence"
//!
//! [metrics]                                  # Prometheus metrics; off when absent
//! listen = "127.0.0.1:9477"                  # loopback (127.0.0.0/8 or [::1]) ...
//! allow_remote = false                       # ... unless true: any address, no TLS/auth (warned)
//!
//! [dns]                                      # egress by name (see `dns`)
//! enabled = true                             # steer fenced identities' DNS to the agent
//! resolvers = "127.153.0.0/16"               # one loopback address per identity, port 53
//! upstream = ["192.0.2.53"]                  # default: /etc/resolv.conf's nameservers
//! refuse_with = "refused"                    # or "nxdomain"
//! ttl_grace = 30                             # seconds a learned address outlives its TTL
//! ttl_floor = 5                              # ... at least
//! ttl_cap = 3600                             # ... at most
//! learn_local_addresses = false              # answers naming loopback/link-local/metadata/this host
//!
//! [grants]                                   # just-in-time grants (see `grants`)
//! max_ttl = "8h"                             # the longest grant, whatever a policy says
//! pending_timeout = "1h"                     # unapproved requests are denied after this
//! max_pending = 16                           # open requests per identity
//!
//! [broker]                                   # the credential broker (see `broker`; needs [vault])
//! kv_mount = "secret"                        # KV v2 mount of the identities' kv: secrets
//! token_role = "fence-broker"                # auth/token/create/ROLE: each identity's own token
//! policy_prefix = "fence-identity-"          # the vault policy of identity NAME is PREFIX + NAME
//! cache_ttl = "30s"                          # a KV value is read again after this
//!
//! [vault]                                    # central policy (OpenBao/Vault KV v2); off when absent
//! address = "https://vault.example.com:8200"
//! ca_file = "/etc/fence/vault-ca.pem"        # the only trust anchor when set
//! role_id_file = "/etc/fence/vault-role-id"  # AppRole (or token_file)
//! secret_id_file = "/etc/fence/vault-secret-id"
//! ```

mod agent;
mod broker;
mod dns;
pub mod dropin;
mod events;
mod grants;
mod protect;
#[cfg(test)]
mod tests;
mod vault;

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

pub use self::{
    agent::{
        AuditConfig, ControlConfig, DEFAULT_SOCKET, DEFAULT_WORKLOAD_SOCKET, ManagedConfig, MetricsConfig,
        PersistConfig,
    },
    broker::BrokerConfig,
    dns::{DnsConfig, RefuseWith},
    events::{
        DEFAULT_EVENTS_KEEP, DEFAULT_EVENTS_MAX_BYTES, DEFAULT_RATE_BURST, DEFAULT_RATE_LIMIT,
        DEFAULT_SUMMARY_INTERVAL, EventFormat, EventsConfig, MAX_EVENTS_KEEP,
    },
    grants::GrantsConfig,
    vault::{
        DEFAULT_VAULT_AUTH_MOUNT, DEFAULT_VAULT_FULL_RESYNC, DEFAULT_VAULT_MOUNT, DEFAULT_VAULT_POLL_INTERVAL,
        DEFAULT_VAULT_PREFIX, DEFAULT_VAULT_TIMEOUT, VaultAuth, VaultConfig, signing_key_bytes,
    },
};
use crate::protect::HostProtection;

pub const DEFAULT_PATH: &str = "/etc/fence/agent.toml";

/// The agent's configuration, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub events: EventsConfig,
    /// The host's protected set (`[protect]`, `[unix]`), parsed: the built-in defaults unless
    /// turned off, the configured paths, globs and abstract socket names, and, with a vault,
    /// the agent's vault credentials, CA file and state directory.
    pub protection: HostProtection,
    pub control: ControlConfig,
    pub audit: AuditConfig,
    pub persist: PersistConfig,
    pub metrics: MetricsConfig,
    /// The central vault policies come from; `None` (no `[vault]` table): no vault.
    pub vault: Option<VaultConfig>,
    pub dns: DnsConfig,
    pub grants: GrantsConfig,
    pub broker: BrokerConfig,
    pub managed: ManagedConfig,
}

/// The file as written; [`Config::parse`] checks it into a [`Config`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    events: EventsConfig,
    #[serde(default)]
    protect: protect::ProtectSection,
    #[serde(default)]
    unix: protect::UnixSection,
    #[serde(default)]
    control: ControlConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    persist: PersistConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    vault: Option<vault::VaultSection>,
    #[serde(default)]
    dns: dns::DnsSection,
    #[serde(default)]
    grants: grants::GrantsSection,
    #[serde(default)]
    broker: broker::BrokerSection,
    #[serde(default)]
    managed: ManagedConfig,
}

impl TryFrom<ConfigFile> for Config {
    type Error = String;

    fn try_from(file: ConfigFile) -> Result<Config, String> {
        let vault = file.vault.map(VaultConfig::try_from).transpose()?;
        let mut logs = vec![("audit.file", file.audit.file.as_path())];
        if let Some(events) = &file.events.file {
            logs.push(("events.file", events.as_path()));
        }
        file.metrics.check()?;
        let protection =
            protect::host_protection(&file.protect, &file.unix, vault.as_ref(), &file.persist.state_dir, &logs)?;
        Ok(Config {
            events: file.events,
            protection,
            control: file.control,
            audit: file.audit,
            persist: file.persist,
            metrics: file.metrics,
            vault,
            dns: DnsConfig::try_from(file.dns)?,
            grants: GrantsConfig::try_from(file.grants)?,
            broker: BrokerConfig::try_from(file.broker)?,
            managed: file.managed,
        })
    }
}

impl Default for Config {
    /// What an empty file says.
    fn default() -> Self {
        Config::try_from(ConfigFile::default()).expect("the built-in defaults are valid")
    }
}

/// A whole number of seconds from `min` to `max`.
fn seconds_in<'de, D: serde::Deserializer<'de>>(d: D, min: u64, max: u64) -> Result<Duration, D::Error> {
    use serde::de::Error as _;
    let secs = u64::deserialize(d)?;
    if !(min..=max).contains(&secs) {
        return Err(D::Error::custom(format!("must be between {min} and {max} seconds (got {secs})")));
    }
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`, or the default path if it exists, or returns the defaults; then the
    /// drop-in files beside it ([`dropin`]: `agent.d/*.toml`), in name order.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, text) = match path {
            Some(p) => (p.to_owned(), None),
            None if Path::new(DEFAULT_PATH).exists() => (PathBuf::from(DEFAULT_PATH), None),
            // No agent.toml: its drop-ins alone, over the defaults.
            None => (PathBuf::from(DEFAULT_PATH), Some(String::new())),
        };
        let read = |p: &Path| fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source });
        let text = match text {
            Some(t) => t,
            None => read(&path)?,
        };
        let dropins = dropin::files(&dropin::dir_of(&path))?;
        if dropins.is_empty() {
            return Config::parse(&text).map_err(|message| ConfigError::Invalid { path, message });
        }
        let table = |p: &Path, text: &str| {
            text.parse::<toml::Table>().map_err(|e| ConfigError::Invalid { path: p.to_owned(), message: e.to_string() })
        };
        let mut merged = table(&path, &text)?;
        for f in &dropins {
            dropin::merge(&mut merged, table(f, &read(f)?)?);
        }
        Config::from_table(merged).map_err(|message| {
            let names: Vec<String> = dropins.iter().map(|f| f.display().to_string()).collect();
            ConfigError::Invalid { path, message: format!("{message} (with the drop-ins {})", names.join(", ")) }
        })
    }

    /// Checks a configuration already read into a table (a file and its drop-ins, merged).
    fn from_table(table: toml::Table) -> Result<Config, String> {
        let file: ConfigFile = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner().message().trim())
        })?;
        Config::try_from(file)
    }

    /// Parses and checks a configuration file's text. The error names the field and says why.
    pub fn parse(text: &str) -> Result<Config, String> {
        let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        let file: ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner().message().trim())
        })?;
        Config::try_from(file)
    }
}
