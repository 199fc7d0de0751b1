//! No way out, and no tampering (BPF LSM only). A fenced task, even as root, cannot:
//! - move itself or another task out of its identity, or into another identity, by writing to
//!   a `cgroup.procs`/`cgroup.threads` file (checked in `file::fence_lsm_file_open`, which
//!   calls [`cgroup_write`]);
//! - start a child in another cgroup with clone3(CLONE_INTO_CGROUP);
//! - trace, or send signals to, processes outside its identity (the agent included);
//! - use bpf(2) (which could detach fence's programs or rewrite its maps).
//!
//! A cgroup namespace does not change a task's real cgroup, which is what the hooks look up,
//! so unsharing one hides nothing from fence.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use fence_common::{EventKind, KernelOffsets, Mechanism, NO_IDENTITY, Operation, Reason};

use crate::{
    events,
    identity::{self, Fenced},
    kernel::{self, read},
};

const ALLOW: i32 = 0;
const EPERM: i32 = -1;
/// clone3's CLONE_INTO_CGROUP.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `file->f_mode` bit for a file opened for writing.
const FMODE_WRITE: u32 = 0x2;

/// A decision against `who`: report, and refuse unless in audit mode.
#[inline(always)]
fn refuse(
    who: &Fenced,
    o: &KernelOffsets,
    operation: Operation,
    mech: Mechanism,
    why: Reason,
    target: u64,
    detail: u32,
    dentry: u64,
) -> i32 {
    let head = events::header(who, EventKind::Escape, operation, mech, why);
    events::send_object(head, o, |e| {
        e.ino = target;
        e.dev = detail;
        if dentry != 0 {
            kernel::fill_path(o, dentry, &mut e.path);
        }
    });
    if who.audit() { ALLOW } else { EPERM }
}

/// Called by the file_open hook for every open by a fenced task: refuses opening for writing a
/// `cgroup.procs` or `cgroup.threads` file of a cgroup outside the task's identity. `None`
/// when the open is not such a write.
#[inline(always)]
pub fn cgroup_write(who: &Fenced, o: &KernelOffsets, file: u64, inode: u64, dentry: u64) -> Option<i32> {
    if dentry == 0 || !kernel::on_cgroup2(o, inode) {
        return None;
    }
    let mode = read::<u32>(file, o.file_f_mode)?;
    if mode & FMODE_WRITE == 0 {
        return None;
    }
    let name_ptr = read::<u64>(dentry, o.dentry_d_name_name)?;
    let name = read::<[u8; 15]>(name_ptr, 0)?;
    let procs = &name[..13] == b"cgroup.procs\0";
    let threads = &name[..15] == b"cgroup.threads\0";
    if !procs && !threads {
        return None;
    }
    // The cgroup the file belongs to is its directory.
    let dir = kernel::parent(o, dentry)?;
    let target = identity::of_cgroup_dentry(o, who.generation, dir);
    if target == who.identity {
        return Some(ALLOW);
    }
    let cgroup = kernel::dentry_inode(o, dir).map_or(0, |i| i.ino);
    Some(refuse(who, o, Operation::CgroupMigrate, Mechanism::LsmFileOpen, Reason::LeaveFence, cgroup, target, dir))
}

#[lsm(hook = "task_alloc")]
pub fn fence_lsm_task_alloc(ctx: LsmContext) -> i32 {
    // (struct task_struct *task, unsigned long clone_flags, int ret)
    let previous: i32 = ctx.arg(2);
    if previous != ALLOW {
        return previous;
    }
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_INTO_CGROUP == 0 {
        return ALLOW;
    }
    let Some(who) = identity::current() else { return ALLOW };
    let Some(o) = kernel::offsets() else { return ALLOW };
    refuse(&who, o, Operation::CloneIntoCgroup, Mechanism::LsmTaskAlloc, Reason::LeaveFence, 0, 0, 0)
}

#[lsm(hook = "ptrace_access_check")]
pub fn fence_lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    // (struct task_struct *child, unsigned int mode, int ret)
    let previous: i32 = ctx.arg(2);
    if previous != ALLOW {
        return previous;
    }
    let mode: u32 = ctx.arg(1);
    other_task(ctx.arg(0), Operation::Ptrace, Mechanism::LsmPtrace, mode)
}

#[lsm(hook = "task_kill")]
pub fn fence_lsm_task_kill(ctx: LsmContext) -> i32 {
    // (struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred, int ret)
    let previous: i32 = ctx.arg(4);
    if previous != ALLOW {
        return previous;
    }
    let sig: u32 = ctx.arg(2);
    other_task(ctx.arg(0), Operation::Signal, Mechanism::LsmTaskKill, sig)
}

/// Refuses an operation of the current (fenced) task on `task` when `task` is not in the same
/// identity.
#[inline(always)]
fn other_task(task: u64, operation: Operation, mech: Mechanism, detail: u32) -> i32 {
    let Some(who) = identity::current() else { return ALLOW };
    let Some(o) = kernel::offsets() else { return ALLOW };
    let pid = read::<i32>(task, o.task_tgid).unwrap_or(0);
    // The agent is protected whatever its cgroup (a fenced root could move it into its own).
    let target = identity::of_task(o, who.generation, task);
    if target == who.identity && target != NO_IDENTITY && !identity::is_agent(pid as u32) {
        return ALLOW;
    }
    refuse(&who, o, operation, mech, Reason::OutsideIdentity, pid as u64, detail, 0)
}

#[lsm(hook = "bpf")]
pub fn fence_lsm_bpf(ctx: LsmContext) -> i32 {
    // (int cmd, union bpf_attr *attr, unsigned int size, int ret)
    let previous: i32 = ctx.arg(3);
    if previous != ALLOW {
        return previous;
    }
    let Some(who) = identity::current() else { return ALLOW };
    let Some(o) = kernel::offsets() else { return ALLOW };
    let cmd: u32 = ctx.arg(0);
    refuse(&who, o, Operation::Bpf, Mechanism::LsmBpf, Reason::BpfDenied, 0, cmd, 0)
}
