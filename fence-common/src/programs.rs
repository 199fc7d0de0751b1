//! Names of the eBPF programs (the function names in `fence-ebpf`).

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
