//! No way out, and no tampering (BPF LSM only). A fenced task, even as root, cannot:
//! - move itself or another task out of its identity, or into another identity, by writing to
//!   a `cgroup.procs`/`cgroup.threads` file (checked in `file::fence_lsm_file_open`, which
//!   calls [`cgroup_write`]), or write any other control file of a cgroup outside its
//!   identity (`cgroup.kill`, `cgroup.freeze`, limits);
//! - start a child in another cgroup with clone3(CLONE_INTO_CGROUP);
//! - trace, or send signals to, processes outside its identity (the agent included);
//! - use bpf(2) (which could detach fence's programs or rewrite its maps);
//! - make a file's SIGIO/SIGURG go to a process outside its identity (F_SETOWN, F_SETOWN_EX,
//!   FIOSETOWN, SIOCSPGRP, also through the 32-bit ioctl), or send one (`file_send_sigiotask`);
//! - push input into a terminal (TIOCSTI, TIOCLINUX), which the terminal's shell would run
//!   outside the fence;
//! - move a task across a cgroup outside its identity: out of its identity, a task from
//!   outside into it (the agent), or through a `cgroup.procs` descriptor opened before it was
//!   fenced (`lsm_cgroup/inode_permission`, attached at the attach points only).
//!
//! A cgroup namespace does not change a task's real cgroup, which is what the hooks look up,
//! so unsharing one hides nothing from fence.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{lsm, lsm_cgroup},
    programs::LsmContext,
};
use fence_common::{EventKind, FOWN_EMBEDDED, FOWN_POINTER, KernelOffsets, Mechanism, NO_IDENTITY, Operation, Reason};

use crate::{
    events,
    identity::{self, Fenced},
    kernel::{self, read},
    maps::FENCE_FILE_OWNERS,
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
    cgroup_target(who, o, dentry, Mechanism::LsmFileOpen)
}

/// For a `cgroup.procs`/`cgroup.threads` file: allow a write that keeps the task in its
/// identity, refuse (and report) one that takes it out. Any other control file of a cgroup
/// outside the identity is refused too: `cgroup.kill` and `cgroup.freeze` would kill or stop
/// another service's processes (the agent's included) without a signal the kill hook sees,
/// and its limits starve them. `None` for the identity's own cgroups' other files.
#[inline(always)]
fn cgroup_target(who: &Fenced, o: &KernelOffsets, dentry: u64, mech: Mechanism) -> Option<i32> {
    if dentry == 0 {
        return None;
    }
    let name_ptr = read::<u64>(dentry, o.dentry_d_name_name)?;
    let name = read::<[u8; 15]>(name_ptr, 0)?;
    let procs = &name[..13] == b"cgroup.procs\0";
    let threads = &name[..15] == b"cgroup.threads\0";
    // The cgroup the file belongs to is its directory.
    let dir = kernel::parent(o, dentry)?;
    let target = identity::of_cgroup_dentry(o, who.generation, dir);
    let migrate = procs || threads;
    if target == who.identity {
        return if migrate { Some(ALLOW) } else { None };
    }
    let cgroup = kernel::dentry_inode(o, dir).map_or(0, |i| i.ino);
    Some(if migrate {
        refuse(who, o, Operation::CgroupMigrate, mech, Reason::LeaveFence, cgroup, target, dir)
    } else {
        refuse(who, o, Operation::CgroupWrite, mech, Reason::OutsideIdentity, cgroup, target, dentry)
    })
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
    judge_task(&who, o, task, operation, mech, detail)
}

/// [`other_task`] once the current task is known to be `who`.
#[inline(always)]
fn judge_task(who: &Fenced, o: &KernelOffsets, task: u64, operation: Operation, mech: Mechanism, detail: u32) -> i32 {
    let pid = read::<i32>(task, o.task_tgid).unwrap_or(0);
    // The agent is protected whatever its cgroup (a fenced root could move it into its own).
    let target = identity::of_task(o, who.generation, task);
    if target == who.identity && target != NO_IDENTITY && !identity::is_agent(pid as u32) {
        return ALLOW;
    }
    refuse(who, o, operation, mech, Reason::OutsideIdentity, pid as u64, detail, 0)
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

/// ioctls that push input into a terminal.
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;
/// ioctls that choose a socket's SIGIO/SIGURG receiver (`int *` argument).
const FIOSETOWN: u32 = 0x8901;
const SIOCSPGRP: u32 = 0x8902;
/// fcntls that choose a file's SIGIO/SIGURG receiver.
const F_SETOWN: u32 = 8;
const F_SETOWN_EX: u32 = 15;
/// fcntls and the ioctl that change which signal a file sends, or make it send one (O_ASYNC,
/// a directory notification, a lease): on a file whose receiver an unfenced process chose, a
/// fenced task's change makes the signals judged again (see [`chosen_by_itself`]).
/// The numbers are those of x86 and arm64.
const F_SETFL: u32 = 4;
const F_SETSIG: u32 = 10;
const F_SETLEASE: u32 = 1024;
const F_NOTIFY: u32 = 1026;
const FIOASYNC: u32 = 0x5452;
/// `O_ASYNC` in F_SETFL's argument.
const O_ASYNC: u64 = 0o20000;
/// The file type bits of `i_mode`, and a character device's (terminals among them).
const S_IFMT: u16 = 0o170000;
const S_IFCHR: u16 = 0o020000;
/// `FENCE_FILE_OWNERS`' value for a file a fenced task touched: no process's own.
const TOUCHED: u32 = 0;
/// `struct f_owner_ex.type`: a thread, a process, a process group.
const F_OWNER_PGRP: i32 = 2;

#[lsm(hook = "file_ioctl")]
pub fn fence_lsm_file_ioctl(ctx: LsmContext) -> i32 {
    ioctl(&ctx, Mechanism::LsmFileIoctl)
}

/// The 32-bit ioctl(2) of a 64-bit kernel: the same commands, the same numbers (the argument
/// a 32-bit user address), judged alike.
#[lsm(hook = "file_ioctl_compat")]
pub fn fence_lsm_file_ioctl_compat(ctx: LsmContext) -> i32 {
    ioctl(&ctx, Mechanism::LsmFileIoctlCompat)
}

#[inline(always)]
fn ioctl(ctx: &LsmContext, mech: Mechanism) -> i32 {
    // (struct file *file, unsigned int cmd, unsigned long arg, int ret)
    let previous: i32 = ctx.arg(3);
    if previous != ALLOW {
        return previous;
    }
    let cmd: u32 = ctx.arg(1);
    if !matches!(cmd, TIOCSTI | TIOCLINUX | FIOSETOWN | SIOCSPGRP | FIOASYNC) {
        return ALLOW;
    }
    let Some(who) = identity::current() else { return ALLOW };
    let Some(o) = kernel::offsets() else { return ALLOW };
    if cmd == FIOASYNC {
        // The argument is a user pointer the kernel reads again: on a terminal, refused
        // whatever it says now.
        return async_on(&who, o, mech, cmd, ctx.arg(0));
    }
    if cmd == TIOCSTI || cmd == TIOCLINUX {
        let file: u64 = ctx.arg(0);
        let dentry = kernel::file_dentry(o, file).unwrap_or(0);
        return refuse(&who, o, Operation::Ioctl, mech, Reason::TerminalInput, 0, cmd, dentry);
    }
    let arg: u64 = ctx.arg(2);
    // SAFETY: the helper checks the user address; a failed read refuses.
    let target = unsafe { bpf_probe_read_user(arg as *const i32) }.ok();
    set_owner(&who, o, mech, cmd, target)
}

#[lsm(hook = "file_fcntl")]
pub fn fence_lsm_file_fcntl(ctx: LsmContext) -> i32 {
    // (struct file *file, unsigned int cmd, unsigned long arg, int ret)
    let previous: i32 = ctx.arg(3);
    if previous != ALLOW {
        return previous;
    }
    let cmd: u32 = ctx.arg(1);
    if !matches!(cmd, F_SETOWN | F_SETOWN_EX | F_SETFL | F_SETSIG | F_SETLEASE | F_NOTIFY) {
        return ALLOW;
    }
    let arg: u64 = ctx.arg(2);
    if cmd == F_SETFL && arg & O_ASYNC == 0 {
        return ALLOW;
    }
    let Some(who) = identity::current() else { return ALLOW };
    let Some(o) = kernel::offsets() else { return ALLOW };
    match cmd {
        F_SETFL => return async_on(&who, o, Mechanism::LsmFileFcntl, cmd, ctx.arg(0)),
        F_SETSIG | F_SETLEASE | F_NOTIFY => return touched(ctx.arg(0)),
        _ => {}
    }
    let target = if cmd == F_SETOWN {
        Some(arg as i32)
    } else {
        // struct f_owner_ex { int type; pid_t pid; }: a process group is never "self".
        // SAFETY: the helper checks the user address; a failed read refuses.
        match unsafe { bpf_probe_read_user(arg as *const [i32; 2]) } {
            Ok([kind, pid]) if kind != F_OWNER_PGRP => Some(pid),
            Ok(_) => Some(-1),
            Err(_) => None,
        }
    };
    set_owner(&who, o, Mechanism::LsmFileFcntl, cmd, target)
}

/// A fenced task may direct its files' signals only at itself (or clear the owner): any other
/// process, or a process group (a negative number), could be outside its identity.
#[inline(always)]
fn set_owner(who: &Fenced, o: &KernelOffsets, mech: Mechanism, cmd: u32, target: Option<i32>) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32 as i32, (pid_tgid >> 32) as u32 as i32);
    match target {
        Some(t) if t == 0 || t == tgid || t == tid => ALLOW,
        t => refuse(who, o, Operation::SetOwner, mech, Reason::OutsideIdentity, t.unwrap_or(0) as u64, cmd, 0),
    }
}

#[lsm(hook = "file_send_sigiotask")]
pub fn fence_lsm_file_send_sigiotask(ctx: LsmContext) -> i32 {
    // (struct task_struct *tsk, struct fown_struct *fown, int sig, int ret)
    let previous: i32 = ctx.arg(3);
    if previous != ALLOW {
        return previous;
    }
    // The owner checks at F_SETOWN and the like read a user pointer the kernel reads again
    // (a second thread can swap it in between), and an owner may have been set before the
    // task was fenced: so every file signal a fenced task causes is judged here too. The hook
    // runs in whichever task causes the I/O, or is current when an interrupt does: a signal an
    // unfenced task chose for itself is its own, and passes (a daemon's SIGIO when a fenced
    // writer fills its pipe).
    let Some(who) = identity::current() else { return ALLOW };
    let Some(o) = kernel::offsets() else { return ALLOW };
    let (task, fown): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    if chosen_by_itself(o, fown, task) {
        return ALLOW;
    }
    let sig: u32 = ctx.arg(2);
    judge_task(&who, o, task, Operation::Signal, Mechanism::LsmFileSendSigiotask, sig)
}

/// Whether the file of `fown` last had its signal receiver chosen by an unfenced task of
/// `task`'s process (see [`fence_lsm_file_set_fowner`]). The task a signal goes to is found
/// through the owner's `struct pid`, which is not reused while the file holds it, so a later
/// process with the same number is never taken for the one that chose.
#[inline(always)]
fn chosen_by_itself(o: &KernelOffsets, fown: u64, task: u64) -> bool {
    let file = match o.fown_kind {
        // Masked: the verifier refuses a variable offset that could take the pointer more
        // than 2^29 bytes back (a u32 could); a struct file is far smaller.
        FOWN_EMBEDDED => fown.wrapping_sub(u64::from(o.fown_file & 0xffff)),
        FOWN_POINTER => match read::<u64>(fown, o.fown_file) {
            Some(f) => f,
            None => return false,
        },
        _ => return false,
    };
    // SAFETY: a map lookup; the value is copied out at once.
    let Some(chooser) = (unsafe { FENCE_FILE_OWNERS.get(&file) }).copied() else { return false };
    chooser != TOUCHED && read::<i32>(task, o.task_tgid).is_some_and(|tgid| tgid as u32 == chooser)
}

/// A fenced task changes which signal `file` sends, or makes it send one: whatever an unfenced
/// process chose for itself no longer holds alone (a fenced task could otherwise make it
/// SIGKILL, or send SIGIO, whose default ends a process, to one that never asked for it), so
/// the file's signals are judged until an unfenced process chooses itself again (README,
/// Limits). Allowed: the change itself is the file's business.
#[inline(always)]
fn touched(file: u64) -> i32 {
    let _ = FENCE_FILE_OWNERS.insert(&file, &TOUCHED, 0);
    ALLOW
}

/// A fenced task turns on O_ASYNC (F_SETFL, FIOASYNC). On a character device (a terminal) that
/// makes the terminal's foreground process group the receiver, outside the identity, and the
/// signal is raised by whoever types, which nothing here judges: refused. Elsewhere [`touched`].
#[inline(always)]
fn async_on(who: &Fenced, o: &KernelOffsets, mech: Mechanism, cmd: u32, file: u64) -> i32 {
    let mode = read::<u64>(file, o.file_f_inode).and_then(|inode| read::<u16>(inode, o.inode_i_mode));
    match mode {
        Some(m) if m & S_IFMT != S_IFCHR => touched(file),
        _ => refuse(who, o, Operation::SetOwner, mech, Reason::OutsideIdentity, 0, cmd, 0),
    }
}

/// Records who chooses a file's SIGIO/SIGURG receiver. Every way to set one passes here (F_SETOWN,
/// F_SETOWN_EX, FIOSETOWN, SIOCSPGRP, O_ASYNC on a terminal, F_NOTIFY, F_SETLEASE): before the
/// owner is stored on older kernels, after it and only when it changes on newer ones (6.1.113,
/// 6.12). An unfenced task's process id is kept for the file, over a fenced mark (see below);
/// a fenced task's choice marks it ([`touched`]). The hook cannot refuse (it returns
/// nothing), and runs only when an owner is chosen, which is rare.
#[lsm(hook = "file_set_fowner")]
pub fn fence_lsm_file_set_fowner(ctx: LsmContext) -> i32 {
    // (struct file *file)
    let file: u64 = ctx.arg(0);
    if identity::current().is_some() {
        return touched(file);
    }
    // A mark is overwritten: nothing removes an entry when its file is freed, and the next
    // file at the same address must not inherit it (an unfenced daemon would lose its SIGIO).
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = FENCE_FILE_OWNERS.insert(&file, &tgid, 0);
    ALLOW
}

/// `MAY_WRITE` in `inode_permission`'s mask.
const MAY_WRITE: i32 = 0x2;

/// lsm_cgroup programs answer 1 (allow) or 0 (refuse with EPERM).
const CGROUP_ALLOW: i32 = 1;
const CGROUP_DENY: i32 = 0;

/// A cgroup move needs write permission on the common ancestor's `cgroup.procs` (the kernel
/// checks it with `inode_permission`, with the opener's credentials but in the writer's
/// context): a fenced task gets it only for cgroups inside its identity. That refuses moving
/// its tasks out, pulling a task from outside in (the agent, say), and writes through a
/// descriptor opened before the task was fenced. Attached at the attach points only, so that
/// the path lookups of the rest of the host never run it.
#[lsm_cgroup(hook = "inode_permission")]
pub fn fence_lsm_cgroup_inode_permission(ctx: LsmContext) -> i32 {
    // (struct inode *inode, int mask)
    let mask: i32 = ctx.arg(1);
    if mask & MAY_WRITE == 0 {
        return CGROUP_ALLOW;
    }
    let inode: u64 = ctx.arg(0);
    let Some(o) = kernel::offsets() else { return CGROUP_ALLOW };
    if !kernel::on_cgroup2(o, inode) {
        return CGROUP_ALLOW;
    }
    let Some(who) = identity::current() else { return CGROUP_ALLOW };
    let Some(kn) = read::<u64>(inode, o.inode_i_private).filter(|&k| k != 0) else { return CGROUP_ALLOW };
    let Some(name_ptr) = read::<u64>(kn, o.kernfs_node_name) else { return CGROUP_ALLOW };
    let Some(name) = read::<[u8; 15]>(name_ptr, 0) else { return CGROUP_ALLOW };
    if &name[..13] != b"cgroup.procs\0" && &name[..15] != b"cgroup.threads\0" {
        return CGROUP_ALLOW;
    }
    // The cgroup the file belongs to is its directory's node.
    let Some(dir) = read::<u64>(kn, o.kernfs_node_parent).filter(|&d| d != 0) else { return CGROUP_ALLOW };
    let target = identity::of_kernfs_dir(o, who.generation, dir);
    if target == who.identity {
        return CGROUP_ALLOW;
    }
    let cgroup = read::<u64>(dir, o.kernfs_node_id).unwrap_or(0);
    let mech = Mechanism::LsmCgroupInodePermission;
    match refuse(&who, o, Operation::CgroupMigrate, mech, Reason::LeaveFence, cgroup, target, 0) {
        EPERM => CGROUP_DENY,
        _ => CGROUP_ALLOW,
    }
}
