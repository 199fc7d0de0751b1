//! One file per subcommand.

pub mod console;
pub mod dns;
pub mod doctor;
pub mod exec;
pub mod grant;
pub mod identities;
pub mod logs;
pub mod policy;
pub mod reload;
pub mod report;
pub mod run;
pub mod secret;
pub mod status;
pub mod suggest;
pub mod uninstall;

use std::path::{Path, PathBuf};

/// Which of the agent's sockets a command talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `[control] socket`: operators.
    Control,
    /// `[control] workload_socket`: fenced workloads (grant requests).
    Workload,
}

/// The socket to call: `--socket` if given; else the one the configuration names (`--config`,
/// or the default /etc/fence/agent.toml when it exists and can be read: a non-root caller that
/// cannot read it gets the default socket); else the default.
pub fn socket_of(socket: Option<PathBuf>, config: Option<&Path>, kind: SocketKind) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let loaded = match config {
        Some(path) => Some(crate::config::Config::load(Some(path))?),
        None => crate::config::Config::load(None).ok(),
    };
    let control = loaded.map(|c| c.control).unwrap_or_default();
    Ok(match kind {
        SocketKind::Control => control.socket,
        SocketKind::Workload => control.workload_socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_comes_from_the_flag_then_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, "[control]\nsocket = \"/run/x/agent.sock\"\nworkload_socket = \"/run/x/w.sock\"\n")
            .unwrap();
        let of = |s: Option<&str>, k| socket_of(s.map(PathBuf::from), Some(&config), k).unwrap();
        assert_eq!(of(Some("/tmp/a.sock"), SocketKind::Control), PathBuf::from("/tmp/a.sock"));
        assert_eq!(of(None, SocketKind::Control), PathBuf::from("/run/x/agent.sock"));
        assert_eq!(of(None, SocketKind::Workload), PathBuf::from("/run/x/w.sock"));
        let missing = socket_of(None, Some(&dir.path().join("nope.toml")), SocketKind::Control).unwrap_err();
        assert!(missing.to_string().contains("nope.toml"), "{missing}");
    }
}
