//! The exec fence. With BPF LSM: `bprm_check_security` refuses the exec (EPERM) before the
//! new program is loaded; it runs for the script and again for its interpreter, so both must
//! be allowed. Without BPF LSM: `sched_process_exec` (after the point of no return, before the
//! first user instruction) sends SIGKILL, reported as "killed".
//!
//! Programs are matched by inode (device + inode number), not by name: a symlink, a hard link
//! or a rename of a denied program is still denied, and a copy is a new, unlisted inode.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, generated as helper,
        generated::bpf_send_signal,
    },
    macros::{btf_tracepoint, lsm},
    programs::{BtfTracePointContext, LsmContext},
};
use fence_common::{
    DentryPath, EventKind, IDENTITY_DENY_ALL, IDENTITY_EXEC_ALLOWLIST, IDENTITY_FILELESS_OK, InodeKey, KernelOffsets,
    Mechanism, NAME_LEN, Operation, Reason, Verdict,
};

use crate::{
    events, grants,
    identity::{self, Fenced},
    kernel::{self, Inode, read},
    maps::{FENCE_EXEC, FENCE_EXEC_CALLER, FENCE_EXEC_SCRATCH, lookup},
};

/// LSM verdicts.
const ALLOW: i32 = 0;
const EPERM: i32 = -1;
const SIGKILL: u32 = 9;

#[lsm(hook = "bprm_check_security")]
pub fn fence_lsm_bprm_check(ctx: LsmContext) -> i32 {
    // A previous LSM program's refusal stands.
    let previous: i32 = ctx.arg(1);
    if previous != ALLOW {
        return previous;
    }
    let Some(who) = identity::current() else { return ALLOW };
    let bprm: u64 = ctx.arg(0);
    let Some(d) = judge(who, bprm) else { return ALLOW };
    report(&d, bprm, Mechanism::LsmBprmCheck, None, None);
    if d.who.audit() { ALLOW } else { EPERM }
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn fence_tp_exec(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    // Unfenced tasks (all but a few on a host) leave here, before any map write.
    let Some(who) = identity::current() else { return 0 };
    let old_pid: i32 = ctx.arg(1);
    let bprm: u64 = ctx.arg(2);
    let caller = old_pid as u32;
    let Some(d) = judge(who, bprm) else {
        let _ = FENCE_EXEC_CALLER.remove(&caller);
        return 0;
    };
    if d.who.audit() {
        report(&d, bprm, Mechanism::TpSchedProcessExec, None, Some(caller));
    } else {
        // The exec'ing task is current: it dies before its first instruction.
        // SAFETY: helper taking a signal number.
        unsafe { bpf_send_signal(SIGKILL) };
        report(&d, bprm, Mechanism::TpSchedProcessExec, Some(Verdict::Killed), Some(caller));
    }
    let _ = FENCE_EXEC_CALLER.remove(&caller);
    0
}

/// With the fallback: keeps the name and executable of a fenced task about to exec, for the
/// event `fence_tp_exec` makes after the exec (when the task already is the new program).
/// Runs before the point of no return (the task still has its old mm and comm).
#[btf_tracepoint(function = "sched_prepare_exec")]
pub fn fence_tp_prepare_exec(_ctx: BtfTracePointContext) -> i32 {
    let Some(who) = identity::current() else { return 0 };
    if who.info.flags & (IDENTITY_EXEC_ALLOWLIST | IDENTITY_DENY_ALL) == 0 {
        return 0;
    }
    let Some(o) = kernel::offsets() else { return 0 };
    let Some(scratch) = FENCE_EXEC_SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's entry of a per-CPU array, used only within this program run.
    let c = unsafe { &mut *scratch };
    c.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    kernel::fill_current_exe(o, &mut c.exe);
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = FENCE_EXEC_CALLER.insert(&tid, c, 0);
    0
}

struct Denial {
    who: Fenced,
    offsets: &'static KernelOffsets,
    file: u64,
    inode: Inode,
    reason: Reason,
}

/// `Some` when the exec of `bprm->file` by the current task (fenced as `who`) is not allowed.
#[inline(always)]
fn judge(who: Fenced, bprm: u64) -> Option<Denial> {
    let flags = who.info.flags;
    if flags & (IDENTITY_EXEC_ALLOWLIST | IDENTITY_DENY_ALL) == 0 {
        return None;
    }
    let offsets = kernel::offsets()?;
    let file = read::<u64>(bprm, offsets.binprm_file)?;
    let inode = kernel::file_inode(&offsets, file)?;
    let reason = if flags & IDENTITY_DENY_ALL != 0 {
        Reason::IdentityDenyAll
    } else if inode.nlink == 0 {
        // memfd, O_TMPFILE, deleted: nothing on disk to allow-list.
        if flags & IDENTITY_FILELESS_OK != 0 {
            return None;
        }
        Reason::ExecFileless
    } else {
        let key =
            InodeKey { generation: who.generation, identity: who.identity, ino: inode.ino, dev: inode.dev, _pad: 0 };
        if grants::inode_rule(lookup(&FENCE_EXEC, &key), who.identity).is_some() {
            return None;
        }
        Reason::ExecNotAllowed
    };
    Some(Denial { who, offsets, file, inode, reason })
}

/// Sends the event of denial `d`; `caller`: the thread id whose pre-exec name and executable
/// (`fence_tp_prepare_exec`) name the actor, when the kernel reports after the exec.
#[inline(always)]
fn report(d: &Denial, bprm: u64, mech: Mechanism, verdict: Option<Verdict>, caller: Option<u32>) {
    let mut head = events::header(&d.who, EventKind::Exec, Operation::Exec, mech, d.reason);
    if let Some(v) = verdict {
        head.verdict = v as u8;
    }
    let before = caller.and_then(|tid| FENCE_EXEC_CALLER.get_ptr(&tid));
    if let Some(c) = before {
        // SAFETY: a map value pointer, valid for this program run.
        head.comm = unsafe { (*c).comm };
    }
    let o = d.offsets;
    events::send_object(head, o, |e| {
        if let Some(c) = before {
            // SAFETY: copies the map value's path into the reserved event, helper to helper
            // (no copy on the BPF stack): both are `DentryPath`s, valid for this run.
            unsafe {
                helper::bpf_probe_read_kernel(
                    core::ptr::addr_of_mut!(e.actor_exe).cast(),
                    core::mem::size_of::<DentryPath>() as u32,
                    core::ptr::addr_of!((*c).exe).cast(),
                );
            }
        }
        e.dev = d.inode.dev;
        e.ino = d.inode.ino;
        e.nlink = d.inode.nlink;
        if let Some(name) = read::<u64>(bprm, o.binprm_filename) {
            // SAFETY: bounded by the destination.
            if let Ok(s) = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut e.name) } {
                e.name_len = s.len().min(NAME_LEN) as u32;
            }
        }
        if let Some(dentry) = kernel::file_dentry(o, d.file) {
            kernel::fill_path(o, dentry, &mut e.path);
        }
    });
}
