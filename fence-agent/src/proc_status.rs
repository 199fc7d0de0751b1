//! A process's ids as `/proc/PID/status` gives them, for the events the agent makes itself
//! (fanotify decisions, DNS queries, broker refusals), in the kernel's event header's terms.

use fence_common::NO_ID;

/// What an event header needs of `/proc/PID/status`; [`NO_ID`] (ids) or 0 (pids) for what
/// could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub tgid: u32,
    pub ppid: u32,
    /// Real and effective user ids.
    pub uid: u32,
    pub euid: u32,
    /// Real and effective group ids.
    pub gid: u32,
    pub egid: u32,
}

impl Status {
    /// The status of `pid` (a thread id reads as its own task); every field unknown if the
    /// process is gone.
    pub fn of(pid: u32) -> Status {
        Status::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
    }

    pub fn parse(text: &str) -> Status {
        let nth = |name: &str, n: usize| -> Option<u32> {
            text.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().nth(n)?.parse().ok()
        };
        Status {
            tgid: nth("Tgid:", 0).unwrap_or(0),
            ppid: nth("PPid:", 0).unwrap_or(0),
            uid: nth("Uid:", 0).unwrap_or(NO_ID),
            euid: nth("Uid:", 1).unwrap_or(NO_ID),
            gid: nth("Gid:", 0).unwrap_or(NO_ID),
            egid: nth("Gid:", 1).unwrap_or(NO_ID),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_and_effective_ids() {
        let s = Status::parse("Name:\tx\nTgid:\t7\nPPid:\t1\nUid:\t1000\t0\t0\t0\nGid:\t100\t50\t50\t50\n");
        assert_eq!(s, Status { tgid: 7, ppid: 1, uid: 1000, euid: 0, gid: 100, egid: 50 });
        assert_eq!(Status::parse(""), Status { tgid: 0, ppid: 0, uid: NO_ID, euid: NO_ID, gid: NO_ID, egid: NO_ID });
        let me = Status::of(std::process::id());
        assert_eq!((me.uid, me.euid), (nix::unistd::getuid().as_raw(), nix::unistd::geteuid().as_raw()));
    }
}
