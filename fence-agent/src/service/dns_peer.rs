//! Who sent a DNS query: the process that owns the client socket a query came from, found
//! while the query is held (the socket still exists). The client socket's local address names
//! its inode in /proc/net/{udp,udp6,tcp,tcp6}; the process is the one of the identity's cgroups
//! that holds a descriptor on that inode. Used only for refused queries (their events).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// What an event says about the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProcess {
    pub tgid: u32,
    pub ppid: u32,
    /// Real and effective ids ([`fence_common::NO_ID`] when unknown).
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub comm: [u8; 16],
    pub cgroup_id: u64,
}

impl Default for PeerProcess {
    /// Nothing known: no pid, and no id (never root's 0).
    fn default() -> PeerProcess {
        use fence_common::NO_ID;
        PeerProcess { tgid: 0, ppid: 0, uid: NO_ID, gid: NO_ID, euid: NO_ID, egid: NO_ID, comm: [0; 16], cgroup_id: 0 }
    }
}

/// The process of the socket bound to `peer` (`tcp`: a TCP socket, else UDP), among the
/// processes of the cgroup trees `cgroups` (the identity's); `None` when it cannot be told.
pub fn find(peer: SocketAddr, tcp: bool, cgroups: &[PathBuf]) -> Option<PeerProcess> {
    let inode = socket_inode(peer, tcp)?;
    let target = format!("socket:[{inode}]");
    for root in cgroups {
        let mut found = None;
        walk(root, 0, &mut |dir| {
            if found.is_some() {
                return;
            }
            let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else { return };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if holds(pid, &target) {
                    found = process(pid, dir);
                    return;
                }
            }
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Calls `f` on `dir` and every cgroup below it (at most 32 levels).
fn walk(dir: &Path, depth: u32, f: &mut dyn FnMut(&Path)) {
    f(dir);
    if depth >= fence_common::MAX_CGROUP_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), depth + 1, f);
        }
    }
}

fn holds(pid: u32, target: &str) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target))
}

fn process(tgid: u32, cgroup: &Path) -> Option<PeerProcess> {
    let status = crate::proc_status::Status::parse(&fs::read_to_string(format!("/proc/{tgid}/status")).ok()?);
    let mut comm = [0u8; 16];
    if let Ok(c) = fs::read_to_string(format!("/proc/{tgid}/comm")) {
        let c = c.trim_end().as_bytes();
        let n = c.len().min(15);
        comm[..n].copy_from_slice(&c[..n]);
    }
    Some(PeerProcess {
        tgid,
        ppid: status.ppid,
        uid: status.uid,
        gid: status.gid,
        euid: status.euid,
        egid: status.egid,
        comm,
        cgroup_id: fs::metadata(cgroup).map(|m| m.ino()).unwrap_or(0),
    })
}

/// The inode of the socket whose local address is `peer`: bound to that address, or to the
/// wildcard address on its port (an unbound client socket sends from 0.0.0.0 or ::), in the
/// table of its family or, for IPv4, of IPv6 sockets (dual-stack).
fn socket_inode(peer: SocketAddr, tcp: bool) -> Option<u64> {
    let (v4, v6) = if tcp { ("/proc/net/tcp", "/proc/net/tcp6") } else { ("/proc/net/udp", "/proc/net/udp6") };
    let port = peer.port();
    let mut wanted = vec![hex_address(peer)];
    let tables: Vec<&str> = match peer.ip() {
        IpAddr::V4(a) => {
            wanted.push(hex_address(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)));
            wanted.push(hex_address(SocketAddr::new(a.to_ipv6_mapped().into(), port)));
            wanted.push(hex_address(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)));
            vec![v4, v6]
        }
        IpAddr::V6(_) => {
            wanted.push(hex_address(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)));
            vec![v6]
        }
    };
    tables.into_iter().find_map(|table| {
        let text = fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            wanted.iter().any(|w| local.eq_ignore_ascii_case(w)).then(|| cols.get(9)?.parse().ok()).flatten()
        })
    })
}

/// An address as /proc/net/* writes it: the address's 32-bit words in host order, in hex,
/// then `:` and the port in hex.
fn hex_address(addr: SocketAddr) -> String {
    let octets: Vec<u8> = match addr.ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let words: String =
        octets.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect();
    format!("{words}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_the_kernel_writes_them() {
        assert_eq!(hex_address("127.0.0.1:53".parse().unwrap()), "0100007F:0035");
        assert_eq!(hex_address("[::1]:8080".parse().unwrap()), "00000000000000000000000001000000:1F90");
    }

    #[test]
    fn finds_the_process_of_its_own_socket() {
        // Unbound, as a client's socket is: it sends from 0.0.0.0.
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let addr = SocketAddr::new("127.0.0.1".parse().unwrap(), sock.local_addr().unwrap().port());
        assert!(socket_inode(addr, false).is_some());
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
        let dir = PathBuf::from(format!("/sys/fs/cgroup{rel}"));
        let p = find(addr, false, &[dir]).expect("found");
        assert_eq!(p.tgid, std::process::id());
        assert!(find(addr, true, &[]).is_none());
    }
}
