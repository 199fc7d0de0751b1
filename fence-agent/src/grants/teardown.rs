//! When an egress grant ends, the TCP connections the identity opened under it are closed:
//! the kernel refuses new connects from the end on, and established ones are destroyed through
//! sock_diag (SOCK_DESTROY: the workload's next call fails with ECONNABORTED and the peer gets
//! a reset). A connection is closed when its peer is in the ended grant's reach and no rule
//! still in force allows it. Only sockets held by the identity's processes, in the agent's
//! network namespace, are seen. Files opened under a file grant stay open (a descriptor, once
//! opened, is not re-checked by the kernel); a program started under an exec grant keeps
//! running.

use std::{net::IpAddr, path::PathBuf};

use crate::sockdiag;

/// What a teardown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closed {
    pub closed: usize,
    /// Connections that could not be closed, and why.
    pub failed: Vec<String>,
}

/// Closes the TCP connections held by the processes of the cgroup trees `cgroups` whose peer
/// `ended` says the ended grant reached and `allowed` says nothing else in force allows.
pub fn close(
    cgroups: &[PathBuf],
    ended: impl Fn(IpAddr, u16) -> bool,
    allowed: impl Fn(IpAddr, u16) -> bool,
) -> Closed {
    let mut out = Closed::default();
    let pids: Vec<u32> = cgroups.iter().flat_map(|root| crate::cgroup::processes_below(root)).collect();
    if pids.is_empty() {
        return out;
    }
    let inodes = sockdiag::socket_inodes_of(pids);
    let sockets = match sockdiag::tcp_sockets() {
        Ok(s) => s,
        Err(e) => {
            out.failed.push(format!("listing TCP sockets: {e}"));
            return out;
        }
    };
    for s in sockets.iter().filter(|s| s.inode != 0 && inodes.contains(&s.inode)) {
        let peer = s.peer();
        if !ended(peer.ip(), peer.port()) || allowed(peer.ip(), peer.port()) {
            continue;
        }
        match sockdiag::destroy(s) {
            Ok(()) => out.closed += 1,
            // Closed meanwhile.
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(e) => out.failed.push(format!("{} -> {peer}: {e}", s.src)),
        }
    }
    out
}
