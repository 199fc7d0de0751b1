//! The host's protected set: credential files no fenced identity may open (unless its policy
//! names an exception), and unix sockets no fenced identity may reach unless its allow-list
//! names them. Defaults below; `[protect]` and `[unix]` in agent.toml extend or replace them.

use std::path::PathBuf;

use crate::policy::glob::PathGlob;

/// Credentials found on Linux hosts. `dir/**` protects a directory and everything below it.
pub const DEFAULT_PROTECTED: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh/ssh_host_*_key",
    "/root/.ssh/id_*",
    "/root/.ssh/authorized_keys",
    "/root/.ssh/authorized_keys2",
    "/home/*/.ssh/id_*",
    "/home/*/.ssh/authorized_keys",
    "/home/*/.ssh/authorized_keys2",
    "/root/.aws/**",
    "/home/*/.aws/**",
    "/root/.config/gcloud/**",
    "/home/*/.config/gcloud/**",
    "/root/.azure/**",
    "/home/*/.azure/**",
    "/root/.kube/config",
    "/home/*/.kube/config",
    "/etc/kubernetes/*.conf",
    "/etc/rancher/k3s/k3s.yaml",
    "/var/run/secrets/**",
    "/run/secrets/**",
    // fence's own configuration and state (vault credentials, policy cache).
    "/etc/fence/**",
    "/var/lib/fence/**",
];

/// Sockets through which a process can have another, more privileged process run code or
/// start containers for it.
pub const DEFAULT_UNIX_DENY: &[&str] = &[
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/podman/podman.sock",
    "/run/user/*/podman/podman.sock",
    "/run/user/*/docker.sock",
    "/run/dbus/system_bus_socket",
    "/run/systemd/private",
    // The per-user service manager and session bus: `systemd-run --user` starts code outside
    // the fence through either.
    "/run/user/*/systemd/private",
    "/run/user/*/bus",
    // Daemons that resolve or look up for their callers, outside the fence: a name lookup
    // through them is egress no rule judged.
    "/run/nscd/socket",
    "/run/systemd/resolve/io.systemd.Resolve",
    "/run/snapd.socket",
    "/run/libvirt/libvirt-sock",
];

/// The host's protected set, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProtection {
    pub files: Vec<PathGlob>,
    /// `.env*` files anywhere below these directories are protected.
    pub env_roots: Vec<PathBuf>,
    pub unix_deny: Vec<PathGlob>,
    /// Abstract socket names (without the leading NUL).
    pub unix_deny_abstract: Vec<Vec<u8>>,
}

/// Public halves of key pairs match `id_*` but are not secrets.
pub fn is_public_key(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "pub")
}
