//! Event records the kernel programs send to the agent, the names of the values their fields
//! carry, the event rate limit and the counters.
//!
//! The header stores each enum as its `u8`; the agent turns it back with `from_u8` (an unknown
//! value is reported as `unknown`, never trusted). [`Operation`], [`Mechanism`], [`Reason`],
//! [`Verdict`] and [`EventKind`] each have one `as_str`: the name in every event line, in
//! `fence-agent logs` filters, in the summaries and in the JSON Schema.

/// Defines a `#[repr(u8)]` enum with `ALL`, `as_str` and `from_u8`, and (with the `user`
/// feature) serde as its name.
macro_rules! named_u8_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal,)+ }) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name written in events and accepted by filters.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value the kernel wrote, if it is one of ours.
            pub const fn from_u8(v: u8) -> Option<$name> {
                match v {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The value named `text`.
            pub fn from_name(text: &str) -> Option<$name> {
                let mut i = 0;
                while i < Self::ALL.len() {
                    if Self::ALL[i].as_str().as_bytes() == text.as_bytes() {
                        return Some(Self::ALL[i]);
                    }
                    i += 1;
                }
                None
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[cfg(feature = "user")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        #[cfg(feature = "user")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " name"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_name(v).ok_or_else(|| E::unknown_variant(v, &[$($text,)+]))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

named_u8_enum! {
    /// `EventHeader::kind`: which record follows the header.
    pub enum EventKind {
        /// A [`NetEvent`].
        Net = 1 => "network",
        /// An [`ObjectEvent`] about an exec.
        Exec = 2 => "exec",
        /// An [`ObjectEvent`] about a file open.
        File = 3 => "file",
        /// An [`ObjectEvent`] about a unix socket.
        Unix = 4 => "unix",
        /// An [`ObjectEvent`] about an attempt to leave the fence or to tamper with it (`ino`:
        /// the target cgroup id or pid; `dev`: the signal or ptrace mode).
        Escape = 5 => "escape",
        /// A request to the credential broker (built by the agent, never in the ring buffer).
        Secret = 6 => "secret",
    }
}

named_u8_enum! {
    /// `EventHeader::verdict`.
    pub enum Verdict {
        /// The operation was refused.
        Denied = 1 => "denied",
        /// Audit mode; enforce mode would have refused it.
        WouldDeny = 2 => "would-deny",
        /// The task was killed (exec fallback without BPF LSM).
        Killed = 3 => "killed",
    }
}

named_u8_enum! {
    /// `EventHeader::operation`: what the task tried.
    pub enum Operation {
        Connect = 1 => "connect",
        Sendmsg = 2 => "sendmsg",
        Socket = 3 => "socket",
        Exec = 4 => "exec",
        Open = 5 => "open",
        UnixConnect = 6 => "unix-connect",
        UnixSend = 7 => "unix-send",
        /// A write to cgroup.procs or cgroup.threads (moving a task to another cgroup).
        CgroupMigrate = 8 => "cgroup-migrate",
        /// clone3(CLONE_INTO_CGROUP).
        CloneIntoCgroup = 9 => "clone-into-cgroup",
        Ptrace = 10 => "ptrace",
        Signal = 11 => "signal",
        Bpf = 12 => "bpf",
        /// An outgoing packet (a source route, which would send it elsewhere than judged).
        Packet = 13 => "packet",
        /// A write to a sysctl (/proc/sys).
        SysctlWrite = 14 => "sysctl-write",
        /// An ioctl (terminal input injection).
        Ioctl = 15 => "ioctl",
        /// Choosing the process that receives a file's SIGIO/SIGURG (F_SETOWN and the like).
        SetOwner = 16 => "set-owner",
        /// Removing a name (unlink, rmdir).
        Unlink = 17 => "unlink",
        Rename = 18 => "rename",
        /// A new hard link.
        Link = 19 => "link",
        /// truncate(2) of a file by path.
        Truncate = 20 => "truncate",
        /// A DNS query (judged by the agent's resolver).
        DnsQuery = 21 => "dns-query",
        /// A request to the credential broker (judged by the agent).
        SecretGet = 22 => "secret-get",
        /// A write to a control file of a cgroup outside the identity (`cgroup.kill`,
        /// `cgroup.freeze`, limits), other than `cgroup.procs`/`cgroup.threads`.
        CgroupWrite = 23 => "cgroup-write",
    }
}

named_u8_enum! {
    /// `EventHeader::mechanism`: which hook decided.
    pub enum Mechanism {
        CgroupConnect4 = 1 => "cgroup/connect4",
        CgroupConnect6 = 2 => "cgroup/connect6",
        CgroupSendmsg4 = 3 => "cgroup/sendmsg4",
        CgroupSendmsg6 = 4 => "cgroup/sendmsg6",
        CgroupSockCreate = 5 => "cgroup/sock_create",
        LsmBprmCheck = 6 => "lsm/bprm_check_security",
        TpSchedProcessExec = 7 => "tp_btf/sched_process_exec+sigkill",
        LsmFileOpen = 8 => "lsm/file_open",
        /// Decided by the agent answering a fanotify permission event.
        Fanotify = 9 => "fanotify/open_perm",
        LsmUnixStreamConnect = 10 => "lsm/unix_stream_connect",
        LsmUnixMaySend = 11 => "lsm/unix_may_send",
        LsmTaskAlloc = 12 => "lsm/task_alloc",
        LsmPtrace = 13 => "lsm/ptrace_access_check",
        LsmTaskKill = 14 => "lsm/task_kill",
        LsmBpf = 15 => "lsm/bpf",
        CgroupSkbEgress = 16 => "cgroup_skb/egress",
        CgroupSysctl = 17 => "cgroup/sysctl",
        LsmSocketCreate = 18 => "lsm/socket_create",
        LsmFileIoctl = 19 => "lsm/file_ioctl",
        LsmFileFcntl = 20 => "lsm/file_fcntl",
        LsmFileSendSigiotask = 21 => "lsm/file_send_sigiotask",
        LsmInodeUnlink = 22 => "lsm/inode_unlink",
        LsmInodeRmdir = 23 => "lsm/inode_rmdir",
        LsmInodeRename = 24 => "lsm/inode_rename",
        LsmInodeLink = 25 => "lsm/inode_link",
        LsmCgroupInodePermission = 26 => "lsm_cgroup/inode_permission",
        LsmPathTruncate = 27 => "lsm/path_truncate",
        /// Decided by the agent's DNS resolver for the identity.
        Resolver = 28 => "fence/resolver",
        /// Decided by the agent's credential broker.
        Broker = 29 => "fence/broker",
        /// The 32-bit ioctl(2) of a 64-bit kernel (Linux 6.8, and stable backports, give it a
        /// hook of its own).
        LsmFileIoctlCompat = 30 => "lsm/file_ioctl_compat",
    }
}

impl Mechanism {
    /// Whether a refusal by this mechanism is made by exactly one program, whichever runs'
    /// programs are attached: BPF LSM programs on a hook run in a chain that the first refusal
    /// ends (the programs after it do not run). Programs of the other mechanisms (cgroup,
    /// tracepoint) all run on every operation, each deciding it, as do LSM programs that only
    /// report (audit mode). See `Map::Reporter`.
    pub const fn refusal_ends_chain(self) -> bool {
        matches!(
            self,
            Mechanism::LsmBprmCheck
                | Mechanism::LsmFileOpen
                | Mechanism::LsmUnixStreamConnect
                | Mechanism::LsmUnixMaySend
                | Mechanism::LsmTaskAlloc
                | Mechanism::LsmPtrace
                | Mechanism::LsmTaskKill
                | Mechanism::LsmBpf
                | Mechanism::LsmSocketCreate
                | Mechanism::LsmFileIoctl
                | Mechanism::LsmFileIoctlCompat
                | Mechanism::LsmFileFcntl
                | Mechanism::LsmFileSendSigiotask
                | Mechanism::LsmInodeUnlink
                | Mechanism::LsmInodeRmdir
                | Mechanism::LsmInodeRename
                | Mechanism::LsmInodeLink
                | Mechanism::LsmPathTruncate
        )
    }
}

named_u8_enum! {
    /// `EventHeader::reason`: why the kernel decided as it did.
    pub enum Reason {
        /// No rule of the identity allows the destination.
        NoMatchingRule = 1 => "no-matching-rule",
        /// The identity is marked deny-all (expired).
        IdentityDenyAll = 2 => "identity-deny-all",
        /// The socket is neither TCP nor UDP over IPv4/IPv6 (raw, ICMP, SCTP, ...).
        SocketKindNotAllowed = 3 => "socket-kind-not-allowed",
        /// The program is not in the identity's exec allow-list.
        ExecNotAllowed = 4 => "exec-not-allowed",
        /// The program is an unlinked file (memfd, deleted) and the identity does not allow it.
        ExecFileless = 5 => "exec-fileless",
        /// The file is in the host's protected set and the identity has no exception for it.
        FileProtected = 6 => "file-protected",
        /// The socket is not in the identity's unix allow-list.
        UnixNotAllowed = 7 => "unix-not-allowed",
        /// The socket is in the host's default-deny set.
        UnixHostDenied = 8 => "unix-host-denied",
        /// The operation would take a task out of the identity's cgroups (or into another's).
        LeaveFence = 9 => "leave-fence",
        /// The target process is outside the identity (signals, ptrace).
        OutsideIdentity = 10 => "outside-identity",
        /// Fenced identities may not use bpf(2).
        BpfDenied = 11 => "bpf-denied",
        /// The packet carries a routing header or an IPv4 source route: it would leave for a
        /// first hop the egress rules did not judge.
        SourceRouting = 12 => "source-routing",
        /// Fenced identities may not change the host's kernel settings (sysctl).
        HostSetting = 13 => "host-setting",
        /// Pushing input into a terminal (TIOCSTI, TIOCLINUX): a command the terminal's shell
        /// would run outside the fence.
        TerminalInput = 14 => "terminal-input",
        /// fence's own state (its pinned programs in bpffs).
        FenceState = 15 => "fence-state",
        /// Opening for writing a program the identity may run (what the exec allow-list
        /// approved cannot be rewritten from inside the fence).
        ProgramWrite = 16 => "program-write",
        /// A file more directories below its file system's root than fence checks for
        /// protected trees above it.
        PathTooDeep = 17 => "path-too-deep",
        /// DNS is steered to the agent, which has no resolver for the identity (not started,
        /// or its sockets could not be opened): fail closed.
        DnsUnavailable = 18 => "dns-unavailable",
        /// The identity's policy allows no egress to the queried name.
        NameNotAllowed = 19 => "name-not-allowed",
        /// The caller's identity has no such secret (or the caller is not fenced).
        SecretNotAllowed = 20 => "secret-not-allowed",
        /// The secret is given only while a grant is in force, and none is.
        SecretNeedsGrant = 21 => "secret-needs-grant",
    }
}

/// Common head of every event record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// [`EventKind`]: which record follows.
    pub kind: u8,
    /// [`Verdict`].
    pub verdict: u8,
    /// [`Operation`].
    pub operation: u8,
    /// [`Mechanism`].
    pub mechanism: u8,
    /// Identity id (agent-assigned).
    pub identity: u32,
    /// `bpf_ktime_get_boot_ns()` at the decision.
    pub boot_ns: u64,
    /// cgroup v2 id of the acting task.
    pub cgroup_id: u64,
    /// Kernel pid of the acting task (thread id).
    pub pid: u32,
    /// Thread-group id (the process id user space sees).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `IdentityInfo::policy_version` of the identity at the decision.
    pub policy_version: u32,
    /// [`Reason`].
    pub reason: u8,
    pub _pad: [u8; 3],
    /// Task command name, NUL padded.
    pub comm: [u8; 16],
    /// Process id (tgid) of the acting task's parent; 0 if it could not be read.
    pub ppid: u32,
    /// Effective user and group ids of the acting task (`uid`/`gid` are the real ones);
    /// [`NO_ID`] if they could not be read.
    pub euid: u32,
    pub egid: u32,
    pub _pad2: u32,
}

/// An id the program could not read (`(uid_t)-1`, never a real id).
pub const NO_ID: u32 = u32::MAX;

/// A network decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvent {
    pub header: EventHeader,
    /// AF_INET or AF_INET6 as the program saw it (a v4-mapped v6 address stays AF_INET6).
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// Socket protocol (IPPROTO_*).
    pub protocol: u16,
    /// Socket type (SOCK_STREAM, SOCK_DGRAM, ...).
    pub sock_type: u16,
    /// Destination address, network byte order; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
}

/// Path components kept in an event, from the object upwards.
pub const PATH_COMPONENTS: usize = 8;
/// Bytes kept of each path component (NUL padded; longer names are cut).
pub const COMPONENT_LEN: usize = 40;
/// Bytes kept of an exec's file name or a unix socket's name as given.
pub const NAME_LEN: usize = 256;

/// Path components read from dentries, innermost first (`components[0]` is the object's own
/// name). The path is relative to the root of the object's file system.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DentryPath {
    /// Number of components filled.
    pub depth: u32,
    /// 1 when the walk reached the file system root within `PATH_COMPONENTS`.
    pub complete: u32,
    pub components: [[u8; COMPONENT_LEN]; PATH_COMPONENTS],
}

impl Default for DentryPath {
    fn default() -> Self {
        DentryPath { depth: 0, complete: 0, components: [[0; COMPONENT_LEN]; PATH_COMPONENTS] }
    }
}

/// A task just before its exec ([`crate::Map::ExecCaller`]): what the exec fallback's event
/// names as the acting process, since the kernel reports after the exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecCaller {
    pub comm: [u8; 16],
    pub exe: DentryPath,
}

/// A decision about a file system object: an exec, a file open or a unix socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectEvent {
    pub header: EventHeader,
    /// The object's inode (`s_dev` encoding), 0 for abstract sockets.
    pub dev: u32,
    /// `dev` of the rule's inode that decided (a protected directory, ...), else 0.
    pub rule_dev: u32,
    pub ino: u64,
    pub rule_ino: u64,
    /// Link count of the object (0: unlinked, e.g. memfd).
    pub nlink: u32,
    /// Length of `name` used.
    pub name_len: u32,
    /// exec: the file name given to execve; unix: the abstract name (no leading NUL).
    pub name: [u8; NAME_LEN],
    /// The object's path from its dentries.
    pub path: DentryPath,
    /// The acting task's executable, from its dentries.
    pub actor_exe: DentryPath,
}

/// The event rate limit, per (identity, operation, verdict), as a generic cell rate
/// algorithm: one event per `interval_ns` on average, bursts of up to `burst` events.
/// `interval_ns` 0: no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLimit {
    pub interval_ns: u64,
    /// `(burst - 1) * interval_ns`: how far ahead of now the theoretical arrival time may run.
    pub tolerance_ns: u64,
}

impl EventLimit {
    /// `per_second` events per second (0: unlimited) in bursts of up to `burst`.
    pub const fn new(per_second: u32, burst: u32) -> EventLimit {
        if per_second == 0 {
            return EventLimit { interval_ns: 0, tolerance_ns: 0 };
        }
        let interval_ns = 1_000_000_000 / per_second as u64;
        let burst = if burst == 0 { 1 } else { burst };
        EventLimit { interval_ns, tolerance_ns: (burst as u64 - 1) * interval_ns }
    }

    /// The rate limit's decision for an event at `now` (ns) on a key whose theoretical arrival
    /// time is `tat`: `Some(next tat)` if it may be sent, `None` if it is over the limit. The
    /// one implementation of the algorithm: the kernel programs and the agent (for records it
    /// builds itself) both call it.
    #[inline(always)]
    pub fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        if self.interval_ns == 0 {
            return Some(tat);
        }
        let tat = if tat > now { tat } else { now };
        if tat - now > self.tolerance_ns { None } else { Some(tat + self.interval_ns) }
    }
}

/// Key of [`crate::Map::EventRate`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RateKey {
    pub identity: u32,
    /// [`Operation`].
    pub operation: u8,
    /// [`Verdict`].
    pub verdict: u8,
    pub _pad: [u8; 2],
}

/// Value of [`crate::Map::EventRate`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Theoretical arrival time of the next event (boot clock, ns).
    pub tat: u64,
    /// Events suppressed so far (only grows; the agent reports the difference).
    pub suppressed: u64,
}

/// Indexes of [`crate::Map::Counters`].
pub mod counter {
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 1;
    /// Events not sent because their (identity, operation, verdict) was over the rate limit
    /// (the decision itself is made all the same; the agent reports them as summaries).
    pub const SUPPRESSED: u32 = 2;
    /// Events sent without a rate limit because the rate table was full.
    pub const RATE_TABLE_FULL: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

// Layout pins: a change on one side that is not mirrored fails to compile.
const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 80);
    assert!(core::mem::size_of::<NetEvent>() == 104);
    assert!(core::mem::offset_of!(NetEvent, addr) == 88);
    assert!(core::mem::size_of::<EventLimit>() == 16);
    assert!(core::mem::size_of::<RateKey>() == 8);
    assert!(core::mem::size_of::<RateState>() == 16);
    assert!(core::mem::size_of::<DentryPath>() == 8 + COMPONENT_LEN * PATH_COMPONENTS);
    assert!(core::mem::size_of::<ObjectEvent>() == 80 + 32 + NAME_LEN + 2 * (8 + COMPONENT_LEN * PATH_COMPONENTS));
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bpf_lsm_refusals_end_their_chain() {
        for m in Mechanism::ALL {
            assert_eq!(m.refusal_ends_chain(), m.as_str().starts_with("lsm/"), "{m}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_values_are_refused() {
        for o in Operation::ALL {
            assert_eq!(Operation::from_u8(*o as u8), Some(*o));
            assert_eq!(Operation::from_name(o.as_str()), Some(*o));
        }
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_u8(*m as u8), Some(*m));
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_u8(*r as u8), Some(*r));
        }
        assert_eq!(Verdict::from_name("would-deny"), Some(Verdict::WouldDeny));
        assert_eq!(Operation::from_u8(0), None);
        assert_eq!(Verdict::from_u8(200), None);
        assert_eq!(Mechanism::from_name("lsm/nope"), None);
    }

    #[test]
    fn rate_limit_allows_the_burst_then_the_rate() {
        let limit = EventLimit::new(10, 3);
        let (mut tat, mut sent) = (0, 0);
        for _ in 0..10 {
            if let Some(next) = limit.admit(tat, 1_000) {
                tat = next;
                sent += 1;
            }
        }
        assert_eq!(sent, 3, "the burst");
        assert!(limit.admit(tat, 1_000 + 50_000_000).is_none(), "half an interval later");
        assert!(limit.admit(tat, 1_000 + 100_000_000).is_some(), "one interval later");
        assert_eq!(EventLimit::new(0, 5).admit(7, 9), Some(7), "0: unlimited");
    }
}
