//! Types shared by fence's kernel programs (`fence-ebpf`) and its agent (`fence-agent`).
//!
//! One definition for both sides: map names, map key and value layouts, event records and
//! the constants that give their fields meaning. Every type here is `#[repr(C)]`, has no
//! implicit padding (padding is spelled out as `_pad` fields so that both sides zero it, which
//! matters for hash-map keys), and has its size pinned by a `const` assertion: a layout change
//! that is not mirrored on the other side fails to compile.
//!
//! Policy is kept in two *generations* (slots 0 and 1). Every policy key carries its slot; the
//! kernel programs read the active slot from [`maps::ACTIVE`] once per hook invocation. The agent
//! writes a complete policy into the inactive slot, flips [`ActiveState::generation`] with one
//! map update, and only then clears the old slot. A hook therefore sees either the whole old
//! policy or the whole new one, never a mix.
#![no_std]

/// Version of the layouts in this crate. The agent refuses pinned state of another version.
pub const ABI_VERSION: u32 = 2;

/// Names of the eBPF maps. The statics in `fence-ebpf` carry exactly these names; the agent's
/// unit tests parse the built object and check both directions.
pub mod maps {
    /// `Array<ActiveState>`, one entry: which generation is live.
    pub const ACTIVE: &str = "FENCE_ACTIVE";
    /// `HashMap<CgroupKey, u32>`: cgroup id -> identity id, per generation.
    pub const CGROUPS: &str = "FENCE_CGROUPS";
    /// `HashMap<IdentityKey, IdentityInfo>`: per-identity mode and flags, per generation.
    pub const IDENTITIES: &str = "FENCE_IDENTITIES";
    /// `LpmTrie<Net4Key, NetRules>`: IPv4 egress allow-list.
    pub const NET4: &str = "FENCE_NET4";
    /// `LpmTrie<Net6Key, NetRules>`: IPv6 egress allow-list.
    pub const NET6: &str = "FENCE_NET6";
    /// `RingBuf` of event records (see [`super::EventHeader`]).
    pub const EVENTS: &str = "FENCE_EVENTS";
    /// `PerCpuArray<u64>` of counters indexed by [`super::counter`].
    pub const COUNTERS: &str = "FENCE_COUNTERS";
    /// `HashMap<InodeKey, u32>`: programs an identity may execute (value: rule index).
    pub const EXEC: &str = "FENCE_EXEC";
    /// `HashMap<InodeKey, u32>`: the host's protected files and directories (identity 0;
    /// value: `PROTECT_*` flags).
    pub const PROTECTED: &str = "FENCE_PROTECTED";
    /// `HashMap<InodeKey, u32>`: per-identity readable exceptions (value: `PROTECT_*` flags).
    pub const FILE_EXCEPT: &str = "FENCE_FILE_EXCEPT";
    /// `HashMap<InodeKey, u32>`: unix socket inodes an identity may connect to; identity 0
    /// holds the host's default-deny sockets.
    pub const UNIX: &str = "FENCE_UNIX";
    /// `HashMap<AbstractKey, u32>`: abstract unix socket names, as `UNIX`.
    pub const UNIX_ABSTRACT: &str = "FENCE_UNIX_ABSTRACT";
    /// `HashMap<UnitKey, u32>`: cgroup paths of units followed by identity selectors; a
    /// cgroup created at such a path is bound to the identity by the kernel, at creation.
    pub const UNITS: &str = "FENCE_UNITS";
    /// `Array<EventLimit>`, one entry: the event rate limit, set by the agent.
    pub const EVENT_LIMIT: &str = "FENCE_EVENT_LIMIT";
    /// `HashMap<RateKey, RateState>`: the rate limiter's state per (identity, operation,
    /// verdict), and the events it suppressed.
    pub const EVENT_RATE: &str = "FENCE_EVENT_RATE";

    /// Every map the object must define.
    pub const ALL: &[&str] = &[
        ACTIVE,
        CGROUPS,
        IDENTITIES,
        NET4,
        NET6,
        EVENTS,
        COUNTERS,
        EXEC,
        PROTECTED,
        FILE_EXCEPT,
        UNIX,
        UNIX_ABSTRACT,
        UNITS,
        EVENT_LIMIT,
        EVENT_RATE,
    ];
}

/// Names of read-only globals the agent sets before loading.
pub mod globals {
    /// [`super::KernelOffsets`] of the running kernel.
    pub const OFFSETS: &str = "FENCE_OFFSETS";
}

/// Names of the eBPF programs (the function names in `fence-ebpf`).
pub mod programs {
    pub const CONNECT4: &str = "fence_connect4";
    pub const CONNECT6: &str = "fence_connect6";
    pub const SENDMSG4: &str = "fence_sendmsg4";
    pub const SENDMSG6: &str = "fence_sendmsg6";
    pub const SOCK_CREATE: &str = "fence_sock_create";
    /// lsm/bprm_check_security: exec fence (EPERM).
    pub const LSM_EXEC: &str = "fence_lsm_bprm_check";
    /// tp_btf/sched_process_exec: exec fence fallback (SIGKILL).
    pub const TP_EXEC: &str = "fence_tp_exec";
    /// lsm/file_open: credential-file fence (EPERM).
    pub const LSM_FILE_OPEN: &str = "fence_lsm_file_open";
    /// lsm/unix_stream_connect: unix-socket fence for stream sockets.
    pub const LSM_UNIX_STREAM: &str = "fence_lsm_unix_stream_connect";
    /// lsm/unix_may_send: unix-socket fence for datagram sockets.
    pub const LSM_UNIX_DGRAM: &str = "fence_lsm_unix_may_send";
    /// tp_btf/cgroup_mkdir: binds a unit's re-created cgroup to its identity at creation.
    pub const TP_CGROUP_MKDIR: &str = "fence_tp_cgroup_mkdir";
    /// lsm/task_alloc: no clone3(CLONE_INTO_CGROUP) out of a fence.
    pub const LSM_TASK_ALLOC: &str = "fence_lsm_task_alloc";
    /// lsm/ptrace_access_check: no tracing of processes outside the identity.
    pub const LSM_PTRACE: &str = "fence_lsm_ptrace_access_check";
    /// lsm/task_kill: no signals to processes outside the identity (the agent included).
    pub const LSM_TASK_KILL: &str = "fence_lsm_task_kill";
    /// lsm/bpf: no bpf(2) from fenced identities.
    pub const LSM_BPF: &str = "fence_lsm_bpf";

    /// Every program the object must define.
    pub const ALL: &[&str] = &[
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        SOCK_CREATE,
        LSM_EXEC,
        TP_EXEC,
        LSM_FILE_OPEN,
        LSM_UNIX_STREAM,
        LSM_UNIX_DGRAM,
        TP_CGROUP_MKDIR,
        LSM_TASK_ALLOC,
        LSM_PTRACE,
        LSM_TASK_KILL,
        LSM_BPF,
    ];
}

/// Capacities of the maps (entries across both generations).
pub mod capacity {
    /// Cgroups bound to identities.
    pub const CGROUPS: u32 = 16_384;
    /// Identities.
    pub const IDENTITIES: u32 = 8_192;
    /// IPv4 prefixes (identity x CIDR).
    pub const NET4: u32 = 65_536;
    /// IPv6 prefixes (identity x CIDR).
    pub const NET6: u32 = 65_536;
    /// Executable inodes (identity x program).
    pub const EXEC: u32 = 65_536;
    /// Protected files and directories.
    pub const PROTECTED: u32 = 65_536;
    /// Readable exceptions (identity x file or directory).
    pub const FILE_EXCEPT: u32 = 16_384;
    /// Unix socket inodes (identity x socket, and the host's default-deny set).
    pub const UNIX: u32 = 16_384;
    /// Abstract unix socket names.
    pub const UNIX_ABSTRACT: u32 = 4_096;
    /// Followed unit cgroup paths.
    pub const UNITS: u32 = 4_096;
    /// Rate limiter entries (identity x operation x verdict). When full, events of new keys
    /// are sent unlimited and counted (`counter::RATE_TABLE_FULL`).
    pub const EVENT_RATE: u32 = 16_384;
    /// Ring buffer size in bytes (a power-of-two multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 22;
}

/// Deepest cgroup level (root = 0) at which the kernel looks for an identity binding.
/// Identities bound deeper are rejected by validation.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Port rules that one prefix of one identity can carry (after the compiler merges the rules
/// of every less specific prefix into it).
pub const MAX_PORT_RULES: usize = 16;

/// Number of policy generations (slots).
pub const GENERATIONS: u32 = 2;

/// Identity ids start at 1; 0 means "no identity".
pub const NO_IDENTITY: u32 = 0;

/// The live generation. Stored at index 0 of [`maps::ACTIVE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveState {
    /// Live slot, 0 or 1.
    pub generation: u32,
    /// [`ABI_VERSION`] of the agent that wrote the policy.
    pub abi: u32,
    /// Monotonic apply sequence number of the live policy.
    pub sequence: u64,
}

/// Key of [`maps::CGROUPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    pub generation: u32,
    pub _pad: u32,
}

/// Key of [`maps::IDENTITIES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub generation: u32,
    pub identity: u32,
}

/// `IdentityInfo::mode`: deny what the policy does not allow.
pub const MODE_ENFORCE: u8 = 1;
/// `IdentityInfo::mode`: allow, and report what enforce mode would deny.
pub const MODE_AUDIT: u8 = 2;

/// `IdentityInfo::flags`: deny everything (the identity has expired: fail closed).
pub const IDENTITY_DENY_ALL: u8 = 1;
/// `IdentityInfo::flags`: the identity has an exec allow-list; other programs are denied.
pub const IDENTITY_EXEC_ALLOWLIST: u8 = 2;
/// `IdentityInfo::flags`: executing unlinked files (memfd, deleted files) is allowed.
pub const IDENTITY_FILELESS_OK: u8 = 4;
/// `IdentityInfo::flags`: the identity has a unix-socket allow-list; other sockets are denied.
/// Without it only the host's default-deny sockets are denied.
pub const IDENTITY_UNIX_ALLOWLIST: u8 = 8;

/// Value of [`maps::IDENTITIES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityInfo {
    /// [`MODE_ENFORCE`] or [`MODE_AUDIT`]. Any other value is treated as enforce.
    pub mode: u8,
    /// `IDENTITY_*` flags.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Agent-side index of the identity's policy version, reported in events.
    pub policy_version: u32,
}

/// Data part of an IPv4 LPM key. The prefix length counts the 64 bits of `generation` and
/// `identity` (always fully matched) plus the CIDR length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net4Key {
    pub generation: u32,
    pub identity: u32,
    /// Address in network byte order.
    pub addr: [u8; 4],
}

/// Data part of an IPv6 LPM key, as [`Net4Key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net6Key {
    pub generation: u32,
    pub identity: u32,
    /// Address in network byte order.
    pub addr: [u8; 16],
}

/// Bits of the key prefix taken by `generation` and `identity`.
pub const NET_KEY_PREFIX_BITS: u32 = 64;

/// `PortRule::protocols` bit: TCP.
pub const PROTO_TCP: u8 = 1;
/// `PortRule::protocols` bit: UDP.
pub const PROTO_UDP: u8 = 2;

/// One allowed port range for a set of protocols.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// First allowed port (host byte order).
    pub lo: u16,
    /// Last allowed port, inclusive.
    pub hi: u16,
    /// `PROTO_*` bits.
    pub protocols: u8,
    pub _pad: u8,
    /// Index of the policy rule this came from (for attribution).
    pub rule: u16,
}

/// Key of the inode maps (`EXEC`, `PROTECTED`, `FILE_EXCEPT`, `UNIX`). `identity` is 0 for
/// host-wide entries. `dev` is the kernel's `super_block.s_dev` encoding (major << 20 | minor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub generation: u32,
    pub identity: u32,
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// `PROTECTED`/`FILE_EXCEPT` values: the inode itself.
pub const PROTECT_FILE: u32 = 1;
/// `PROTECTED`/`FILE_EXCEPT` values: a directory and everything below it.
pub const PROTECT_TREE: u32 = 2;
/// `PROTECTED` values: `.env*` files anywhere below this directory.
pub const PROTECT_ENV_ROOT: u32 = 4;

/// Longest abstract socket name kept (sun_path is 108 bytes, the first is the NUL).
pub const ABSTRACT_NAME_LEN: usize = 107;

/// Key of [`maps::UNIX_ABSTRACT`]: an abstract name without its leading NUL, zero padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbstractKey {
    pub generation: u32,
    pub identity: u32,
    pub len: u32,
    pub name: [u8; ABSTRACT_NAME_LEN],
    pub _pad: u8,
}

impl Default for AbstractKey {
    fn default() -> Self {
        AbstractKey { generation: 0, identity: 0, len: 0, name: [0; ABSTRACT_NAME_LEN], _pad: 0 }
    }
}

/// Longest cgroup path (relative to the cgroup2 mount) a unit selector can follow.
pub const UNIT_PATH_LEN: usize = 128;

/// Key of [`maps::UNITS`]: a cgroup path as the `cgroup_mkdir` tracepoint gives it
/// (`/system.slice/ci.service`), NUL padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnitKey {
    pub generation: u32,
    pub _pad: u32,
    pub path: [u8; UNIT_PATH_LEN],
}

impl Default for UnitKey {
    fn default() -> Self {
        UnitKey { generation: 0, _pad: 0, path: [0; UNIT_PATH_LEN] }
    }
}

/// Offsets of kernel struct fields on the running kernel, read from its BTF by the agent and
/// set as the [`globals::OFFSETS`] global before loading. `valid` is 1 once set; programs that
/// read kernel structures do nothing without it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
    pub file_f_inode: u32,
    pub file_f_path_dentry: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub inode_i_nlink: u32,
    pub sb_s_dev: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_name_name: u32,
    pub dentry_d_name_len: u32,
    pub binprm_file: u32,
    pub binprm_filename: u32,
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub socket_sk: u32,
    pub unix_sock_addr: u32,
    pub unix_sock_path_dentry: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    pub sb_s_magic: u32,
    pub file_f_mode: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub cgroup_root: u32,
    pub cgroup_root_hierarchy_id: u32,
    /// Offset of `self.parent` (a `cgroup_subsys_state *`) in `struct cgroup`.
    pub cgroup_self_parent: u32,
    /// Offset of `self` in `struct cgroup` (to go from a parent css to its cgroup).
    pub cgroup_self: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
}

impl KernelOffsets {
    /// All zero, `valid` 0: what the programs see until the agent sets the real offsets.
    pub const ZERO: KernelOffsets = KernelOffsets {
        valid: 0,
        file_f_inode: 0,
        file_f_path_dentry: 0,
        inode_i_ino: 0,
        inode_i_sb: 0,
        inode_i_nlink: 0,
        sb_s_dev: 0,
        dentry_d_parent: 0,
        dentry_d_inode: 0,
        dentry_d_name_name: 0,
        dentry_d_name_len: 0,
        binprm_file: 0,
        binprm_filename: 0,
        task_mm: 0,
        mm_exe_file: 0,
        socket_sk: 0,
        unix_sock_addr: 0,
        unix_sock_path_dentry: 0,
        unix_address_len: 0,
        unix_address_name: 0,
        sb_s_magic: 0,
        file_f_mode: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
        cgroup_root: 0,
        cgroup_root_hierarchy_id: 0,
        cgroup_self_parent: 0,
        cgroup_self: 0,
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        task_tgid: 0,
        task_real_parent: 0,
    };
}

/// Value of the LPM maps: every port rule that applies to destinations in the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRules {
    /// Number of valid entries in `rules` (at most [`MAX_PORT_RULES`]).
    pub count: u32,
    pub _pad: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}

impl NetRules {
    /// Whether `port` over `protocol` (a `PROTO_*` bit) is allowed.
    #[inline(always)]
    pub fn allows(&self, protocol: u8, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORT_RULES {
            if i as u32 >= self.count {
                return false;
            }
            let r = &self.rules[i];
            if r.protocols & protocol != 0 && r.lo <= port && port <= r.hi {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Indexes of [`maps::COUNTERS`].
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

/// `EventHeader::kind`: the record is a [`NetEvent`].
pub const EVENT_NET: u8 = 1;
/// `EventHeader::kind`: the record is an [`ObjectEvent`] about an exec.
pub const EVENT_EXEC: u8 = 2;
/// `EventHeader::kind`: the record is an [`ObjectEvent`] about a file open.
pub const EVENT_FILE: u8 = 3;
/// `EventHeader::kind`: the record is an [`ObjectEvent`] about a unix socket.
pub const EVENT_UNIX: u8 = 4;
/// `EventHeader::kind`: the record is an [`ObjectEvent`] about an attempt to leave the fence
/// or to tamper with it (`ino`: the target cgroup id or pid; `dev`: the signal or ptrace mode).
pub const EVENT_ESCAPE: u8 = 5;

/// `EventHeader::verdict`: the operation was refused.
pub const VERDICT_DENIED: u8 = 1;
/// `EventHeader::verdict`: audit mode; enforce mode would have refused it.
pub const VERDICT_WOULD_DENY: u8 = 2;
/// `EventHeader::verdict`: the task was killed (exec fallback without BPF LSM).
pub const VERDICT_KILLED: u8 = 3;

/// `EventHeader::operation` values.
pub mod op {
    pub const CONNECT: u8 = 1;
    pub const SENDMSG: u8 = 2;
    pub const SOCKET: u8 = 3;
    pub const EXEC: u8 = 4;
    pub const OPEN: u8 = 5;
    pub const UNIX_CONNECT: u8 = 6;
    pub const UNIX_SEND: u8 = 7;
    /// A write to cgroup.procs or cgroup.threads (moving a task to another cgroup).
    pub const CGROUP_MIGRATE: u8 = 8;
    /// clone3(CLONE_INTO_CGROUP).
    pub const CLONE_INTO_CGROUP: u8 = 9;
    pub const PTRACE: u8 = 10;
    pub const SIGNAL: u8 = 11;
    pub const BPF: u8 = 12;
}

/// `EventHeader::mechanism` values: which hook decided.
pub mod mechanism {
    pub const CGROUP_CONNECT4: u8 = 1;
    pub const CGROUP_CONNECT6: u8 = 2;
    pub const CGROUP_SENDMSG4: u8 = 3;
    pub const CGROUP_SENDMSG6: u8 = 4;
    pub const CGROUP_SOCK_CREATE: u8 = 5;
    pub const LSM_BPRM_CHECK: u8 = 6;
    pub const TP_SCHED_PROCESS_EXEC: u8 = 7;
    pub const LSM_FILE_OPEN: u8 = 8;
    /// Decided by the agent answering a fanotify permission event.
    pub const FANOTIFY: u8 = 9;
    pub const LSM_UNIX_STREAM_CONNECT: u8 = 10;
    pub const LSM_UNIX_MAY_SEND: u8 = 11;
    pub const LSM_TASK_ALLOC: u8 = 12;
    pub const LSM_PTRACE: u8 = 13;
    pub const LSM_TASK_KILL: u8 = 14;
    pub const LSM_BPF: u8 = 15;
}

/// Why the kernel decided as it did (`EventHeader::reason`).
pub mod reason {
    /// No rule of the identity allows the destination.
    pub const NO_MATCHING_RULE: u8 = 1;
    /// The identity is marked deny-all (expired).
    pub const IDENTITY_DENY_ALL: u8 = 2;
    /// The socket is neither TCP nor UDP over IPv4/IPv6 (raw, ICMP, SCTP, ...).
    pub const SOCKET_KIND_NOT_ALLOWED: u8 = 3;
    /// The program is not in the identity's exec allow-list.
    pub const EXEC_NOT_ALLOWED: u8 = 4;
    /// The program is an unlinked file (memfd, deleted) and the identity does not allow that.
    pub const EXEC_FILELESS: u8 = 5;
    /// The file is in the host's protected set and the identity has no exception for it.
    pub const FILE_PROTECTED: u8 = 6;
    /// The socket is not in the identity's unix allow-list.
    pub const UNIX_NOT_ALLOWED: u8 = 7;
    /// The socket is in the host's default-deny set.
    pub const UNIX_HOST_DENIED: u8 = 8;
    /// The operation would take a task out of the identity's cgroups (or into another's).
    pub const LEAVE_FENCE: u8 = 9;
    /// The target process is outside the identity (signals, ptrace).
    pub const OUTSIDE_IDENTITY: u8 = 10;
    /// Fenced identities may not use bpf(2).
    pub const BPF_DENIED: u8 = 11;
}

/// Common head of every event record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `EVENT_*`: which record follows.
    pub kind: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `op::*`.
    pub operation: u8,
    /// `mechanism::*`.
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
    /// `reason::*`.
    pub reason: u8,
    pub _pad: [u8; 3],
    /// Task command name, NUL padded.
    pub comm: [u8; 16],
    /// Process id (tgid) of the acting task's parent; 0 if it could not be read.
    pub ppid: u32,
    pub _pad2: u32,
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

/// Key of [`maps::EVENT_RATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RateKey {
    pub identity: u32,
    /// `op::*`.
    pub operation: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub _pad: [u8; 2],
}

/// Value of [`maps::EVENT_RATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Theoretical arrival time of the next event (boot clock, ns).
    pub tat: u64,
    /// Events suppressed so far (only grows; the agent reports the difference).
    pub suppressed: u64,
}

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

// Layout pins: a change on one side that is not mirrored fails to compile.
const _: () = {
    assert!(core::mem::size_of::<ActiveState>() == 16);
    assert!(core::mem::size_of::<CgroupKey>() == 16);
    assert!(core::mem::size_of::<IdentityKey>() == 8);
    assert!(core::mem::size_of::<IdentityInfo>() == 8);
    assert!(core::mem::size_of::<Net4Key>() == 12);
    assert!(core::mem::size_of::<Net6Key>() == 24);
    assert!(core::mem::size_of::<PortRule>() == 8);
    assert!(core::mem::size_of::<NetRules>() == 8 + 8 * MAX_PORT_RULES);
    assert!(core::mem::size_of::<EventHeader>() == 72);
    assert!(core::mem::size_of::<NetEvent>() == 96);
    assert!(core::mem::offset_of!(NetEvent, addr) == 80);
    assert!(core::mem::size_of::<EventLimit>() == 16);
    assert!(core::mem::size_of::<RateKey>() == 8);
    assert!(core::mem::size_of::<RateState>() == 16);
    assert!(core::mem::size_of::<InodeKey>() == 24);
    assert!(core::mem::size_of::<AbstractKey>() == 120);
    assert!(core::mem::size_of::<KernelOffsets>() == 128);
    assert!(core::mem::size_of::<UnitKey>() == 8 + UNIT_PATH_LEN);
    assert!(core::mem::size_of::<DentryPath>() == 8 + COMPONENT_LEN * PATH_COMPONENTS);
    assert!(core::mem::size_of::<ObjectEvent>() == 72 + 32 + NAME_LEN + 2 * (8 + COMPONENT_LEN * PATH_COMPONENTS));
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and integer arrays, and have no
    // implicit padding (see the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for ActiveState {}
    unsafe impl aya::Pod for CgroupKey {}
    unsafe impl aya::Pod for IdentityKey {}
    unsafe impl aya::Pod for IdentityInfo {}
    unsafe impl aya::Pod for Net4Key {}
    unsafe impl aya::Pod for Net6Key {}
    unsafe impl aya::Pod for NetRules {}
    unsafe impl aya::Pod for InodeKey {}
    unsafe impl aya::Pod for AbstractKey {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for UnitKey {}
    unsafe impl aya::Pod for EventLimit {}
    unsafe impl aya::Pod for RateKey {}
    unsafe impl aya::Pod for RateState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(u16, u16, u8)]) -> NetRules {
        let mut r = NetRules::default();
        for (i, &(lo, hi, protocols)) in list.iter().enumerate() {
            r.rules[i] = PortRule { lo, hi, protocols, _pad: 0, rule: i as u16 };
        }
        r.count = list.len() as u32;
        r
    }

    #[test]
    fn allows_matches_port_range_and_protocol() {
        let r = rules(&[(443, 443, PROTO_TCP), (8000, 8080, PROTO_TCP | PROTO_UDP)]);
        assert!(r.allows(PROTO_TCP, 443));
        assert!(!r.allows(PROTO_UDP, 443));
        assert!(r.allows(PROTO_UDP, 8000));
        assert!(r.allows(PROTO_TCP, 8080));
        assert!(!r.allows(PROTO_TCP, 8081));
        assert!(!r.allows(PROTO_TCP, 22));
    }

    #[test]
    fn allows_ignores_entries_past_count() {
        let mut r = rules(&[(53, 53, PROTO_UDP)]);
        r.rules[1] = PortRule { lo: 0, hi: 65535, protocols: PROTO_TCP | PROTO_UDP, _pad: 0, rule: 1 };
        assert!(!r.allows(PROTO_TCP, 22));
        assert!(r.allows(PROTO_UDP, 53));
        assert!(!NetRules::default().allows(PROTO_TCP, 1));
    }

    #[test]
    fn protocol_zero_never_matches() {
        let r = rules(&[(0, 65535, PROTO_TCP | PROTO_UDP)]);
        assert!(!r.allows(0, 80));
    }
}
