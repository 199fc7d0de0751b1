//! Host settings (cgroup/sysctl, every kernel): a fenced task may read sysctls but not write
//! them. A fenced root could otherwise set `kernel.core_pattern` to a pipe or
//! `kernel.modprobe` to a program of its own, which the kernel then runs outside the fence.
//!
//! Attached at the attach points only. The current-task helpers a sysctl program may call
//! differ between kernels, so the task is read from its `task_struct`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sysctl,
    helpers::generated::{bpf_get_current_task, bpf_sysctl_get_name},
    macros::cgroup_sysctl,
    programs::SysctlContext,
};
use fence_common::{EventKind, Mechanism, NAME_LEN, Operation, Reason};

use crate::{
    events,
    identity::{self, Fenced},
    kernel::{self, read},
    maps::FENCE_ACTIVE,
};

/// Program verdicts.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sysctl]
pub fn fence_sysctl(ctx: SysctlContext) -> i32 {
    let sysctl = ctx.as_ptr() as *mut bpf_sysctl;
    // SAFETY: the context pointer is valid for the program's run; a plain field read.
    if unsafe { (*sysctl).write } == 0 {
        return ALLOW;
    }
    let Some(o) = kernel::offsets() else { return ALLOW };
    let Some(active) = FENCE_ACTIVE.get(0) else { return ALLOW };
    let generation = active.generation;
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let tgid = read::<i32>(task, o.task_tgid).unwrap_or(0) as u32;
    let cgroup_id = kernel::task_cgroup(o, task).and_then(|c| kernel::cgroup_id(o, c)).unwrap_or(0);
    if identity::is_agent_here(tgid, cgroup_id) {
        return ALLOW;
    }
    let id = identity::of_task(o, generation, task);
    let Some(who) = identity::fenced(id, generation, identity::consistent(active), cgroup_id) else { return ALLOW };
    report(&who, o, task, sysctl);
    if who.audit() { ALLOW } else { DENY }
}

#[inline(always)]
fn report(who: &Fenced, o: &fence_common::KernelOffsets, task: u64, sysctl: *mut bpf_sysctl) {
    let head = events::header_for_task(
        who,
        o,
        task,
        EventKind::Escape,
        Operation::SysctlWrite,
        Mechanism::CgroupSysctl,
        Reason::HostSetting,
    );
    events::send_object(head, o, |e| {
        // SAFETY: the helper writes at most NAME_LEN bytes into the event's own buffer.
        let n = unsafe { bpf_sysctl_get_name(sysctl, e.name.as_mut_ptr().cast(), NAME_LEN as u64, 0) };
        e.name_len = if n > 0 { (n as u32).min(NAME_LEN as u32) } else { 0 };
    });
}
