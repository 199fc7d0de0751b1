//! Who is on the other end of a control connection, from the kernel and never from the
//! request, so that a fenced workload asking for a grant or a secret can only ask as itself
//! (the model is SPIRE's unix workload attestor).
//!
//! Two methods; the first one the kernel offers is used:
//! - [`Method::PeerPidfd`] (Linux >= 6.5): `SO_PEERPIDFD` hands over a pidfd of the peer. A
//!   pidfd pins the peer's `struct pid`: until the process is reaped its pid number cannot go
//!   to another process. The pid is read from the pidfd's fdinfo, the process's files from
//!   /proc/PID, and only then is the pidfd asked whether its process still runs: if it does,
//!   the files read were that process's.
//! - [`Method::StartTime`] (older kernels, e.g. Debian's 6.1, where `SO_PEERPIDFD` fails with
//!   ENOPROTOOPT): the `SO_PEERCRED` pid, with the process start time read before and after
//!   its files and checked against the time the connection was accepted. This narrows pid
//!   reuse to one window, it does not close it: a process given the peer's pid after the peer
//!   exited, between the peer's connect() and the agent's accept, passes.
//!
//! uid and gid are always `SO_PEERCRED`'s: the effective ids the peer had when it connected
//! (or created the socket pair), as the kernel recorded them then. A later setuid() in the
//! peer does not change them, and /proc/PID/status is not consulted for them.
//!
//! The cgroup is the `0::` line of /proc/PID/cgroup: a path relative to the root of the
//! agent's cgroup namespace, which is the cgroup2 mount when the agent runs in the host's
//! cgroup namespace. A peer outside the agent's namespace (`..` in the path) is refused.

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Component, Path, PathBuf},
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{getsockopt, sockopt},
    time::{ClockId, clock_gettime},
    unistd::{SysconfVar, sysconf},
};
use thiserror::Error;

/// Who is on the other end of a control connection, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// Process id (thread group id) in the agent's pid namespace.
    pub pid: u32,
    /// Effective uid at connect(), from `SO_PEERCRED`.
    pub uid: u32,
    /// Effective gid at connect(), from `SO_PEERCRED`.
    pub gid: u32,
    /// cgroup v2 path relative to the cgroup2 mount ("/fence/ci/1234"), from /proc/PID/cgroup
    /// (the "0::" line).
    pub cgroup: String,
    /// /proc/PID/exe target, when readable.
    pub exe: Option<PathBuf>,
    /// How the process was pinned while its files were read.
    pub method: Method,
}

/// How the peer process was told apart from any later process with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// SO_PEERPIDFD (Linux >= 6.5): the pidfd pins the very process; checked alive after reading.
    PeerPidfd,
    /// SO_PEERCRED pid, with the process start time checked before and after and against the
    /// time the connection was accepted.
    StartTime,
}

/// What could not be confirmed about the peer. Every one refuses the request: nothing is guessed.
#[derive(Debug, Error)]
pub enum AttestError {
    #[error("cannot read the peer credentials of the connection (SO_PEERCRED): {0}")]
    PeerCred(Errno),
    #[error("cannot get a pidfd of the peer (SO_PEERPIDFD): {0}")]
    PeerPidfd(Errno),
    #[error(
        "the kernel names no peer process (pid 0: the peer is in another pid namespace, or the \
         socket has no peer process); who is asking cannot be confirmed"
    )]
    NoPid,
    #[error("the peer's pidfd names pid {pidfd} but SO_PEERCRED pid {cred}; who is asking cannot be confirmed")]
    PidMismatch { pidfd: u32, cred: u32 },
    #[error("the peer process {pid} has exited; who is asking cannot be confirmed")]
    Gone { pid: u32 },
    #[error("the peer process {pid} has exited and is a zombie; who is asking cannot be confirmed")]
    Zombie { pid: u32 },
    #[error("cannot read {path}: {source}; the peer's identity cannot be confirmed")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse {path} ({what}); the peer's identity cannot be confirmed")]
    Parse { path: PathBuf, what: &'static str },
    #[error("/proc/{pid}/cgroup has no cgroup v2 line (\"0::\"); the peer's cgroup cannot be confirmed")]
    NoCgroup { pid: u32 },
    #[error(
        "the peer process {pid} is in cgroup {cgroup}, outside the agent's cgroup namespace; its \
         cgroup cannot be confirmed"
    )]
    OutsideNamespace { pid: u32, cgroup: String },
    #[error(
        "pid {pid} changed its start time while it was read ({before} then {after} clock ticks): \
         the pid went to another process; who is asking cannot be confirmed"
    )]
    Reused { pid: u32, before: u64, after: u64 },
    #[error(
        "pid {pid} started after the connection was accepted ({started_ns} ns after boot, accepted \
         at {accepted_ns} ns): it is not the process that connected"
    )]
    StartedAfterAccept { pid: u32, started_ns: u128, accepted_ns: u64 },
    #[error("cannot ask the peer's pidfd whether process {pid} still runs: {source}")]
    Liveness { pid: u32, source: Errno },
    #[error("cannot read the clock tick rate (sysconf(_SC_CLK_TCK)); the peer's start time cannot be confirmed")]
    ClockTicks,
}

/// Attests the peer of a connected unix stream socket. `accepted_boot_ns`: CLOCK_BOOTTIME when
/// the agent accepted the connection (take [`boot_ns`] right after accept()). The pidfd method
/// is used when the kernel has `SO_PEERPIDFD`, else the start-time method.
pub fn attest(sock: BorrowedFd<'_>, accepted_boot_ns: u64) -> Result<Attested, AttestError> {
    attest_by(sock, accepted_boot_ns, true)
}

/// The method this kernel gives [`attest`]: a socket pair of this process is asked for a
/// pidfd of its peer.
pub fn probe_method() -> Method {
    match std::os::unix::net::UnixStream::pair() {
        Ok((a, _b)) if getsockopt(&a.as_fd(), sockopt::PeerPidfd).is_ok() => Method::PeerPidfd,
        _ => Method::StartTime,
    }
}

/// CLOCK_BOOTTIME now, in nanoseconds. 0 if the clock cannot be read (never on Linux >= 2.6.39),
/// with which the start-time method refuses every peer rather than accept one unchecked.
pub fn boot_ns() -> u64 {
    let Ok(now) = clock_gettime(ClockId::CLOCK_BOOTTIME) else { return 0 };
    let (Ok(s), Ok(ns)) = (u64::try_from(now.tv_sec()), u64::try_from(now.tv_nsec())) else { return 0 };
    s.checked_mul(1_000_000_000).and_then(|s| s.checked_add(ns)).unwrap_or(0)
}

/// [`attest`], with the pidfd method allowed or not (tests force the start-time method).
fn attest_by(sock: BorrowedFd<'_>, accepted_boot_ns: u64, pidfd_allowed: bool) -> Result<Attested, AttestError> {
    let cred = getsockopt(&sock, sockopt::PeerCredentials).map_err(AttestError::PeerCred)?;
    let pid = u32::try_from(cred.pid()).ok().filter(|&p| p != 0).ok_or(AttestError::NoPid)?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let (seen, method) = match pidfd_allowed.then(|| getsockopt(&sock, sockopt::PeerPidfd)) {
        Some(Ok(pidfd)) => (by_pidfd(pidfd.as_fd(), pid)?, Method::PeerPidfd),
        // Before 6.5 the option is unknown (ENOPROTOOPT); 6.5 to 6.15 answer EINVAL for a peer
        // already reaped, which the start-time method then finds gone.
        None | Some(Err(Errno::ENOPROTOOPT | Errno::EINVAL)) => {
            (by_start_time(pid, accepted_boot_ns)?, Method::StartTime)
        }
        Some(Err(Errno::ESRCH)) => return Err(AttestError::Gone { pid }),
        Some(Err(e)) => return Err(AttestError::PeerPidfd(e)),
    };
    Ok(Attested { pid, uid, gid, cgroup: seen.cgroup, exe: seen.exe, method })
}

/// What is read of the peer process while it is pinned.
struct Seen {
    cgroup: String,
    exe: Option<PathBuf>,
}

/// The pidfd method: the pidfd's pid (the same as SO_PEERCRED's), the process's files, then the
/// pidfd's process confirmed running.
fn by_pidfd(pidfd: BorrowedFd<'_>, cred_pid: u32) -> Result<Seen, AttestError> {
    let pid = pidfd_pid(pidfd, cred_pid)?;
    if pid != cred_pid {
        return Err(AttestError::PidMismatch { pidfd: pid, cred: cred_pid });
    }
    living_stat(pid)?;
    let seen = read_seen(pid)?;
    confirm_running(pidfd, pid)?;
    Ok(seen)
}

/// The start-time method: the start time before and after the files, equal, and not after the
/// connection was accepted.
fn by_start_time(pid: u32, accepted_boot_ns: u64) -> Result<Seen, AttestError> {
    let ticks_per_s = clock_ticks()?;
    let before = living_stat(pid)?;
    started_before_accept(pid, before.start_ticks, ticks_per_s, accepted_boot_ns)?;
    let seen = read_seen(pid)?;
    let after = living_stat(pid)?;
    if after.start_ticks != before.start_ticks {
        return Err(AttestError::Reused { pid, before: before.start_ticks, after: after.start_ticks });
    }
    Ok(seen)
}

/// The pid of a pidfd's process, from /proc/self/fdinfo ("Pid:"; -1 once it is reaped).
fn pidfd_pid(pidfd: BorrowedFd<'_>, cred_pid: u32) -> Result<u32, AttestError> {
    let path = PathBuf::from(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()));
    let text = fs::read_to_string(&path).map_err(|source| AttestError::Read { path: path.clone(), source })?;
    match fdinfo_pid(&text) {
        None | Some(-1) => Err(AttestError::Gone { pid: cred_pid }),
        Some(0) => Err(AttestError::NoPid),
        Some(n) => u32::try_from(n).map_err(|_| AttestError::Parse { path, what: "Pid: is not a pid" }),
    }
}

/// The "Pid:" field of pidfd fdinfo text.
fn fdinfo_pid(text: &str) -> Option<i64> {
    text.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()
}

/// The pidfd's process has not exited: it can be signalled (signal 0: only the checks; EPERM
/// also says it exists) and its pidfd does not poll readable (which it does from exit on).
fn confirm_running(pidfd: BorrowedFd<'_>, pid: u32) -> Result<(), AttestError> {
    // SAFETY: pidfd_send_signal takes a descriptor we hold, signal 0 (no signal is sent), a null
    // siginfo and no flags; it writes no memory of ours.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    match (rc, Errno::last()) {
        (0, _) | (_, Errno::EPERM) => {}
        (_, Errno::ESRCH) => return Err(AttestError::Gone { pid }),
        (_, source) => return Err(AttestError::Liveness { pid, source }),
    }
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => Ok(()),
        Ok(_) => Err(AttestError::Zombie { pid }),
        Err(source) => Err(AttestError::Liveness { pid, source }),
    }
}

/// The peer's cgroup and executable.
fn read_seen(pid: u32) -> Result<Seen, AttestError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&path).map_err(|e| gone_or_read(pid, path, e))?;
    let cgroup = v2_cgroup(pid, &text)?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    Ok(Seen { cgroup, exe })
}

/// The cgroup v2 path in /proc/PID/cgroup text, refused outside the agent's cgroup namespace.
fn v2_cgroup(pid: u32, text: &str) -> Result<String, AttestError> {
    let cgroup = crate::cgroup::v2_path_in(text).ok_or(AttestError::NoCgroup { pid })?;
    let path = Path::new(&cgroup);
    if !path.has_root() || path.components().any(|c| c == Component::ParentDir) {
        return Err(AttestError::OutsideNamespace { pid, cgroup });
    }
    Ok(cgroup)
}

/// What /proc/PID/stat says that attestation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Field 3: R, S, D, ... Z (zombie), X (dead).
    state: u8,
    /// Field 22: start time, in clock ticks since boot.
    start_ticks: u64,
}

/// /proc/PID/stat of a process that has not exited.
fn living_stat(pid: u32) -> Result<Stat, AttestError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let bytes = fs::read(&path).map_err(|e| gone_or_read(pid, path.clone(), e))?;
    let stat = parse_stat(&bytes).ok_or(AttestError::Parse { path, what: "no state or start time" })?;
    match stat.state {
        b'Z' => Err(AttestError::Zombie { pid }),
        b'X' | b'x' => Err(AttestError::Gone { pid }),
        _ => Ok(stat),
    }
}

/// Parses /proc/PID/stat. The command name (field 2) may hold spaces, parentheses and bytes
/// that are not UTF-8, so the fields are read after its last ')'.
fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    const STATE: usize = 3;
    const START_TIME: usize = 22;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = match fields.next()?.as_bytes() {
        [s] => *s,
        _ => return None,
    };
    let start_ticks = fields.nth(START_TIME - STATE - 1)?.parse().ok()?;
    Some(Stat { state, start_ticks })
}

/// Refuses a process that started after the connection was accepted: it cannot be the one that
/// connected. The kernel rounds the start time down to a clock tick, so a process that started
/// before the accept is never refused; one that started less than a tick after it may pass.
fn started_before_accept(pid: u32, start_ticks: u64, ticks_per_s: u64, accepted_ns: u64) -> Result<(), AttestError> {
    let started_ns = u128::from(start_ticks) * 1_000_000_000 / u128::from(ticks_per_s.max(1));
    if started_ns > u128::from(accepted_ns) {
        return Err(AttestError::StartedAfterAccept { pid, started_ns, accepted_ns });
    }
    Ok(())
}

/// Clock ticks per second (USER_HZ), the unit of /proc/PID/stat times.
fn clock_ticks() -> Result<u64, AttestError> {
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten();
    ticks.and_then(|t| u64::try_from(t).ok()).filter(|&t| t > 0).ok_or(AttestError::ClockTicks)
}

/// A failed read of /proc/PID/...: the process is gone (ENOENT, ESRCH) or the file unreadable.
fn gone_or_read(pid: u32, path: PathBuf, source: io::Error) -> AttestError {
    if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
        AttestError::Gone { pid }
    } else {
        AttestError::Read { path, source }
    }
}

#[cfg(test)]
mod tests {
    use std::os::{
        fd::OwnedFd,
        unix::net::{UnixListener, UnixStream},
    };

    use nix::{
        sys::{
            socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket},
            wait::{Id, WaitPidFlag, waitid, waitpid},
        },
        unistd::{ForkResult, Pid, fork, pipe},
    };

    use super::*;

    fn own_cgroup() -> String {
        crate::cgroup::v2_path_in(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap()
    }

    fn kernel_has_peer_pidfd() -> bool {
        let (a, _b) = UnixStream::pair().unwrap();
        getsockopt(&a.as_fd(), sockopt::PeerPidfd).is_ok()
    }

    #[test]
    fn attests_its_own_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let got = attest(a.as_fd(), boot_ns()).unwrap();
        assert_eq!(got.pid, std::process::id());
        assert_eq!(got.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(got.gid, nix::unistd::getegid().as_raw());
        assert_eq!(got.cgroup, own_cgroup());
        assert_eq!(got.exe, Some(std::env::current_exe().unwrap()));
        let expected = if kernel_has_peer_pidfd() { Method::PeerPidfd } else { Method::StartTime };
        assert_eq!(got.method, expected);
    }

    #[test]
    fn the_start_time_method_gives_the_same_answer() {
        let (a, _b) = UnixStream::pair().unwrap();
        let accepted = boot_ns();
        let by_pidfd = attest_by(a.as_fd(), accepted, true).unwrap();
        let by_start = attest_by(a.as_fd(), accepted, false).unwrap();
        assert_eq!(by_start.method, Method::StartTime);
        assert_eq!(Attested { method: by_pidfd.method, ..by_start }, by_pidfd);
    }

    #[test]
    fn a_process_started_after_the_accept_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let err = attest_by(a.as_fd(), 0, false).unwrap_err();
        assert!(matches!(err, AttestError::StartedAfterAccept { .. }), "{err}");
    }

    /// A child process connects to `addr`, then waits until the write end of the `hold` pipe
    /// is closed (or exits at once without one). Returns the child's pid.
    fn child_connects(addr: &UnixAddr, hold: Option<(&OwnedFd, &OwnedFd)>) -> Pid {
        // SAFETY: the child only makes async-signal-safe system calls (socket, connect, read,
        // _exit) on values prepared before the fork; it never returns into the test harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Parent { child } => child,
            ForkResult::Child => {
                let sock = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None);
                let connected = sock.as_ref().is_ok_and(|s| connect(s.as_raw_fd(), addr).is_ok());
                if let Some((read, write)) = hold {
                    let mut byte = 0u8;
                    // SAFETY: closes the child's copy of the write end (else the read never
                    // ends), then a one-byte read into a local.
                    unsafe {
                        libc::close(write.as_raw_fd());
                        libc::read(read.as_raw_fd(), (&raw mut byte).cast(), 1);
                    }
                }
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(if connected { 0 } else { 1 }) }
            }
        }
    }

    fn listener() -> (tempfile::TempDir, UnixListener, UnixAddr) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (dir, listener, UnixAddr::new(&path).unwrap())
    }

    /// The next connection, waiting at most 10 s for it (a child that failed to connect must
    /// not hang the tests).
    fn accept(listener: &UnixListener) -> UnixStream {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(), 1, "no connection within 10 s");
        listener.accept().unwrap().0
    }

    #[test]
    fn attests_another_process() {
        let (_dir, listener, addr) = listener();
        let (hold_read, hold_write) = pipe().unwrap();
        let child = child_connects(&addr, Some((&hold_read, &hold_write)));
        let stream = accept(&listener);
        let accepted = boot_ns();
        let by_pidfd = attest_by(stream.as_fd(), accepted, true);
        let by_start = attest_by(stream.as_fd(), accepted, false);
        drop(hold_write);
        waitpid(child, None).unwrap();
        let (by_pidfd, by_start) = (by_pidfd.unwrap(), by_start.unwrap());
        assert_eq!(by_pidfd.pid, u32::try_from(child.as_raw()).unwrap());
        assert_eq!(by_pidfd.cgroup, own_cgroup());
        assert_eq!(Attested { method: by_pidfd.method, ..by_start }, by_pidfd);
    }

    #[test]
    fn a_peer_that_has_exited_is_refused() {
        let (_dir, listener, addr) = listener();
        let child = child_connects(&addr, None);
        assert_eq!(waitpid(child, None).unwrap(), nix::sys::wait::WaitStatus::Exited(child, 0));
        let stream = accept(&listener);
        let accepted = boot_ns();
        for pidfd_allowed in [true, false] {
            let err = attest_by(stream.as_fd(), accepted, pidfd_allowed).unwrap_err();
            assert!(matches!(err, AttestError::Gone { .. }), "pidfd allowed: {pidfd_allowed}: {err}");
        }
    }

    #[test]
    fn a_zombie_peer_is_refused() {
        let (_dir, listener, addr) = listener();
        let child = child_connects(&addr, None);
        waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).unwrap();
        let stream = accept(&listener);
        let accepted = boot_ns();
        let results = [true, false].map(|p| attest_by(stream.as_fd(), accepted, p));
        waitpid(child, None).unwrap();
        for r in results {
            assert!(matches!(r, Err(AttestError::Zombie { .. })), "{r:?}");
        }
    }

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        let tail = "1 1 1 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 1 0 123456 8192 100";
        let line = format!("4242 (a) b (c) S {tail}\n");
        assert_eq!(parse_stat(line.as_bytes()), Some(Stat { state: b'S', start_ticks: 123456 }));
        let mut odd = b"7 (\xff) Z) (".to_vec();
        odd.extend_from_slice(format!(") Z {tail}").as_bytes());
        assert_eq!(parse_stat(&odd), Some(Stat { state: b'Z', start_ticks: 123456 }));
        assert_eq!(parse_stat(b"7 (x) S 1 1"), None);
        assert_eq!(parse_stat(b"7 x S 1 1"), None);
        assert_eq!(parse_stat(format!("7 (x) SS {tail}").as_bytes()), None);
        assert_eq!(parse_stat(format!("7 (x) S {}", tail.replace("123456", "-5")).as_bytes()), None);
    }

    #[test]
    fn a_start_after_the_accept_is_refused_within_a_tick() {
        // 100 ticks a second: tick 500 is 5 s after boot.
        let s = 1_000_000_000;
        assert!(started_before_accept(1, 500, 100, 5 * s).is_ok());
        assert!(started_before_accept(1, 499, 100, 5 * s).is_ok());
        assert!(started_before_accept(1, 499, 100, 4_989_999_999).is_err());
        // Within a tick: a process that started at 4.995 s (tick 499, rounded down) passes an
        // accept at 4.992 s; one that started before the accept is never refused.
        assert!(started_before_accept(1, 499, 100, 4_992_000_000).is_ok());
        assert!(started_before_accept(1, 499, 100, 4_990_000_000).is_ok());
        assert!(started_before_accept(1, 501, 100, 5 * s).is_err());
        assert!(started_before_accept(1, u64::MAX, 100, u64::MAX).is_err());
        assert!(started_before_accept(1, 1, 0, 0).is_err());
    }

    #[test]
    fn fdinfo_and_cgroup_lines() {
        assert_eq!(fdinfo_pid("pos:\t0\nflags:\t02000002\nPid:\t1234\nNSpid:\t1234\n"), Some(1234));
        assert_eq!(fdinfo_pid("Pid:\t-1\n"), Some(-1));
        assert_eq!(fdinfo_pid("pos:\t0\n"), None);
        assert_eq!(v2_cgroup(1, "0::/fence/ci/1234\n").unwrap(), "/fence/ci/1234");
        assert!(matches!(v2_cgroup(1, "1:name=systemd:/\n"), Err(AttestError::NoCgroup { pid: 1 })));
        assert!(matches!(v2_cgroup(1, "0::/../../x\n"), Err(AttestError::OutsideNamespace { .. })));
    }
}
