//! The agent's own endpoints and files: `[control]` (its socket), `[audit]` (the identity
//! lifecycle log), `[persist]` (enforcement that outlives it) and `[metrics]`.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

pub const DEFAULT_SOCKET: &str = "/run/fence/agent.sock";

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

/// Prometheus metrics over HTTP (see `metrics`): off unless `listen` is set, and only on a
/// loopback address unless `allow_remote` says otherwise.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `"127.0.0.1:9477"` or `"[::1]:9477"`: an address of 127.0.0.0/8 or ::1 and a port (not 0).
    #[serde(default, deserialize_with = "listen_addr")]
    pub listen: Option<SocketAddr>,
    /// Serve on a non-loopback `listen` address too: no TLS, no authentication (the agent warns
    /// at start); for a scraper that cannot run on the host.
    #[serde(default)]
    pub allow_remote: bool,
}

impl MetricsConfig {
    /// A non-loopback `listen` needs `allow_remote`.
    pub fn check(&self) -> Result<(), String> {
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() && !self.allow_remote => Err(format!(
                "metrics.listen: {addr} is not a loopback address (metrics are served only on loopback unless \
                 metrics.allow_remote = true; there is no TLS or authentication)"
            )),
            _ => Ok(()),
        }
    }
}

fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    use serde::de::Error as _;
    let text = String::deserialize(d)?;
    let addr: SocketAddr = text.parse().map_err(|_| {
        D::Error::custom(format!("{text:?} is not an IP address and port (e.g. \"127.0.0.1:9477\" or \"[::1]:9477\")"))
    })?;
    if addr.port() == 0 {
        return Err(D::Error::custom(format!("{addr} has no port (port 0 would be a random one no scraper knows)")));
    }
    Ok(Some(addr))
}

/// The agent's local sockets: `socket` for operators (`fence-agent exec`, `identities`,
/// `grant approve`...; in the unix default-deny set, so fenced processes cannot reach it where
/// the unix fence is enforced), and `workload_socket` for what fenced workloads may ask
/// (`grant request`, `grant list`/`show` of their own identity), which answers nothing else.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_workload_socket")]
    pub workload_socket: PathBuf,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_workload_socket() -> PathBuf {
    PathBuf::from(DEFAULT_WORKLOAD_SOCKET)
}

/// Where workloads ask (`[control] workload_socket`).
pub const DEFAULT_WORKLOAD_SOCKET: &str = "/run/fence/workload.sock";

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { socket: default_socket(), workload_socket: default_workload_socket() }
    }
}

/// The identity lifecycle audit log (creation, change, expiry, removal), kept apart from
/// denial events.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_audit_file")]
    pub file: PathBuf,
    /// Time between signed checkpoints of the audit log and of the event file, when lines
    /// were added (and at rotation and stop): whole seconds, 1 to 86400 (`checkpoint_interval
    /// = 300` in the file).
    #[serde(default = "default_checkpoint_interval", deserialize_with = "checkpoint_interval")]
    pub checkpoint_interval: std::time::Duration,
}

fn default_audit_file() -> PathBuf {
    PathBuf::from("/var/log/fence/audit.jsonl")
}

fn default_checkpoint_interval() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn checkpoint_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    super::seconds_in(d, 1, 86_400)
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { file: default_audit_file(), checkpoint_interval: default_checkpoint_interval() }
    }
}

/// Where the cgroups of managed identities (`managed: true`, the workloads of `fence-agent
/// exec`) are made.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManagedConfig {
    /// A cgroup path from the cgroup2 root that must exist, e.g. the packaged
    /// `/fence.slice/fence-workloads.service`: the workloads are charged to it, not to the
    /// agent, and outlive agent restarts. Unset: below the agent's own cgroup (which then
    /// needs `Delegate=yes` under systemd).
    #[serde(default, deserialize_with = "cgroup_parent")]
    pub cgroup_parent: Option<String>,
}

fn cgroup_parent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error as _;
    let text = String::deserialize(d)?;
    let parts: Vec<&str> = text.split('/').filter(|p| !p.is_empty()).collect();
    if !text.starts_with('/') {
        return Err(D::Error::custom(format!("{text:?} is not a cgroup path from the root (it starts with /)")));
    }
    if parts.is_empty() {
        return Err(D::Error::custom("the root cgroup holds every process of the host; name a cgroup below it"));
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(D::Error::custom(format!("{text:?}: '.' and '..' are not allowed in cgroup paths")));
    }
    if text.contains('\n') {
        return Err(D::Error::custom(format!("{text:?}: a cgroup path has no line breaks")));
    }
    Ok(Some(format!("/{}", parts.join("/"))))
}
