//! Names of the eBPF programs (the function names in `fence-ebpf`).

pub const CONNECT4: &str = "fence_connect4";
pub const CONNECT6: &str = "fence_connect6";
pub const SENDMSG4: &str = "fence_sendmsg4";
pub const SENDMSG6: &str = "fence_sendmsg6";
pub const SOCK_CREATE: &str = "fence_sock_create";
/// cgroup/recvmsg4, recvmsg6, getpeername4, getpeername6: a socket whose DNS was steered to
/// the agent sees the server it named.
pub const RECVMSG4: &str = "fence_recvmsg4";
pub const RECVMSG6: &str = "fence_recvmsg6";
pub const GETPEERNAME4: &str = "fence_getpeername4";
pub const GETPEERNAME6: &str = "fence_getpeername6";
/// lsm/bprm_check_security: exec fence (EPERM).
pub const LSM_EXEC: &str = "fence_lsm_bprm_check";
/// tp_btf/sched_process_exec: exec fence fallback (SIGKILL).
pub const TP_EXEC: &str = "fence_tp_exec";
/// tp_btf/sched_prepare_exec: with the fallback, keeps the exec'ing task's name and
/// executable for its event (kernels 6.10 and later).
pub const TP_PREPARE_EXEC: &str = "fence_tp_prepare_exec";
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

/// cgroup_skb/egress: drops packets of fenced sockets that carry a source route.
pub const SKB_EGRESS: &str = "fence_skb_egress";
/// cgroup/sysctl: no sysctl writes from fenced identities.
pub const SYSCTL: &str = "fence_sysctl";
/// lsm/socket_create: socket families other than inet, inet6, unix and netlink refused.
pub const LSM_SOCKET_CREATE: &str = "fence_lsm_socket_create";
/// lsm/file_ioctl: no terminal input injection (TIOCSTI, TIOCLINUX) nor SIGIO targets outside
/// the identity (FIOSETOWN, SIOCSPGRP).
pub const LSM_FILE_IOCTL: &str = "fence_lsm_file_ioctl";
/// lsm/file_ioctl_compat: the same for the 32-bit ioctl(2) (`int 0x80`), which kernels that
/// have this hook (6.8, and stable backports) no longer pass through file_ioctl.
pub const LSM_FILE_IOCTL_COMPAT: &str = "fence_lsm_file_ioctl_compat";
/// lsm/file_fcntl: no SIGIO/SIGURG targets outside the identity (F_SETOWN, F_SETOWN_EX).
pub const LSM_FILE_FCNTL: &str = "fence_lsm_file_fcntl";
/// lsm/file_send_sigiotask: no SIGIO from a fenced task to a task outside its identity.
pub const LSM_SIGIOTASK: &str = "fence_lsm_file_send_sigiotask";
/// lsm/file_set_fowner: records which unfenced process chose a file's signal receiver, so that
/// file_send_sigiotask lets that process's own SIGIO through whoever raises it.
pub const LSM_FILE_SET_FOWNER: &str = "fence_lsm_file_set_fowner";
/// lsm/inode_unlink, inode_rmdir, inode_rename, inode_link: protected files and fence's pins
/// cannot be removed, renamed or given new names by fenced identities.
pub const LSM_INODE_UNLINK: &str = "fence_lsm_inode_unlink";
pub const LSM_INODE_RMDIR: &str = "fence_lsm_inode_rmdir";
pub const LSM_INODE_RENAME: &str = "fence_lsm_inode_rename";
pub const LSM_INODE_LINK: &str = "fence_lsm_inode_link";
/// lsm/path_truncate: protected files (the logs among them) cannot be truncated by path.
pub const LSM_PATH_TRUNCATE: &str = "fence_lsm_path_truncate";
/// lsm_cgroup/inode_permission: the write permission a cgroup move needs on the common
/// ancestor's cgroup.procs, refused when that cgroup is outside the identity (moving a task
/// out, pulling one in, or writing through a descriptor opened before the task was fenced).
pub const LSM_CGROUP_INODE_PERMISSION: &str = "fence_lsm_cgroup_inode_permission";

/// Every program the object must define.
pub const ALL: &[&str] = &[
    CONNECT4,
    CONNECT6,
    SENDMSG4,
    SENDMSG6,
    SOCK_CREATE,
    RECVMSG4,
    RECVMSG6,
    GETPEERNAME4,
    GETPEERNAME6,
    LSM_EXEC,
    TP_EXEC,
    TP_PREPARE_EXEC,
    LSM_FILE_OPEN,
    LSM_UNIX_STREAM,
    LSM_UNIX_DGRAM,
    TP_CGROUP_MKDIR,
    LSM_TASK_ALLOC,
    LSM_PTRACE,
    LSM_TASK_KILL,
    LSM_BPF,
    SKB_EGRESS,
    SYSCTL,
    LSM_SOCKET_CREATE,
    LSM_FILE_IOCTL,
    LSM_FILE_IOCTL_COMPAT,
    LSM_FILE_FCNTL,
    LSM_SIGIOTASK,
    LSM_FILE_SET_FOWNER,
    LSM_INODE_UNLINK,
    LSM_INODE_RMDIR,
    LSM_INODE_RENAME,
    LSM_INODE_LINK,
    LSM_PATH_TRUNCATE,
    LSM_CGROUP_INODE_PERMISSION,
];
