//! No way out: a fenced process, even root, cannot leave its identity's cgroups
//! (cgroup.procs writes, checked by the credential-files unit's `lsm/file_open` program;
//! clone3 into another cgroup), trace or signal processes outside it, or use bpf(2). Needs BPF
//! LSM, including for file_open.

use fence_common::events::Mechanism;
use fence_common::{Operation, programs};

use super::{
    Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, files, no_flags, no_host_entries,
};
use crate::{kernel::MapEntry, policy::PolicyError};

pub const UNIT: Unit = Unit {
    name: "no-way-out",
    maps: &[],
    operations: &[
        Operation::CgroupMigrate,
        Operation::CgroupWrite,
        Operation::CloneIntoCgroup,
        Operation::Ptrace,
        Operation::Signal,
        Operation::Bpf,
        Operation::Ioctl,
        Operation::SetOwner,
    ],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity,
    keeps_expired: false,
};

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    if ctx.earlier(files::UNIT.name) != Some(&Availability::Lsm) {
        return Availability::Unavailable(
            ctx.refused("needs BPF LSM (the file_open program checks cgroup.procs writes)"),
        );
    }
    let global = ctx.lsm(&[
        (programs::LSM_TASK_ALLOC, "task_alloc"),
        (programs::LSM_PTRACE, "ptrace_access_check"),
        (programs::LSM_TASK_KILL, "task_kill"),
        (programs::LSM_BPF, "bpf"),
        (programs::LSM_FILE_IOCTL, "file_ioctl"),
        (programs::LSM_FILE_FCNTL, "file_fcntl"),
        (programs::LSM_SIGIOTASK, "file_send_sigiotask"),
    ]);
    if global != Availability::Lsm {
        return global;
    }
    let mut gaps = Vec::new();
    // Without it every file signal a fenced task raises is judged, an unfenced owner's own too.
    if let Err(e) = ctx.loader.load_lsm_all(&[(programs::LSM_FILE_SET_FOWNER, "file_set_fowner")]) {
        gaps.push(format!(
            "lsm/file_set_fowner refused ({e}): an unfenced process's own SIGIO, raised by a fenced process's I/O, \
             is refused"
        ));
    }
    // Kernels without this hook pass 32-bit ioctls through file_ioctl; those with it do not.
    if crate::host::kernel_has_lsm_hook("file_ioctl_compat") != Some(false)
        && let Err(e) = ctx.loader.load_lsm_all(&[(programs::LSM_FILE_IOCTL_COMPAT, "file_ioctl_compat")])
    {
        gaps.push(format!(
            "lsm/file_ioctl_compat refused ({e}): TIOCSTI and SIGIO owners through a 32-bit ioctl are not refused"
        ));
    }
    // lsm_cgroup programs need Linux 6.0: without them, the rest still holds.
    if let Err(e) = ctx.loader.load_lsm_cgroup(programs::LSM_CGROUP_INODE_PERMISSION, "inode_permission") {
        gaps.push(format!(
            "lsm_cgroup/inode_permission refused ({e}): moves through a cgroup.procs descriptor opened before the \
             task was fenced, and pulling a process from outside into the fence, are not refused"
        ));
    }
    if gaps.is_empty() { Availability::Lsm } else { Availability::LsmPartly(gaps.join("; ")) }
}

/// The event mechanism values of [`LSM_HOOKS`].
const LSM_EVENTS: &[Mechanism] = &[
    Mechanism::LsmFileOpen,
    Mechanism::LsmTaskAlloc,
    Mechanism::LsmPtrace,
    Mechanism::LsmTaskKill,
    Mechanism::LsmBpf,
    Mechanism::LsmFileIoctl,
    Mechanism::LsmFileIoctlCompat,
    Mechanism::LsmFileFcntl,
    Mechanism::LsmFileSendSigiotask,
];
const LSM_HOOKS: &str = "lsm/file_open+task_alloc+ptrace_access_check+task_kill+bpf+file_ioctl+file_fcntl+file_send_sigiotask+file_set_fowner";

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::Lsm => FenceReport::enforced(
            UNIT.name,
            &format!("{LSM_HOOKS}+lsm_cgroup/inode_permission"),
            "a fenced process, even root, cannot move a task across a cgroup outside its identity (leaving it, \
             pulling a process in, or through a cgroup.procs descriptor opened before it was fenced), write another \
             cgroup's control files (cgroup.kill, cgroup.freeze, limits), clone3 into another cgroup, trace or signal processes outside its identity (the agent included, wherever it is; \
             SIGIO and SIGURG included), push input into a terminal (TIOCSTI), or use bpf(2)",
        )
        .with_events(&[LSM_EVENTS, &[Mechanism::LsmCgroupInodePermission]].concat()),
        Availability::LsmPartly(gap) => FenceReport {
            fence: UNIT.name,
            enforced: true,
            mechanism: LSM_HOOKS.into(),
            notes: format!(
                "a fenced process, even root, cannot write to cgroup.procs outside its identity, clone3 into another \
                 cgroup, trace or signal processes outside its identity, push input into a terminal, or use bpf(2); \
                 but {gap}"
            ),
            remedy: Some("Linux 6.0 or later runs lsm_cgroup programs".into()),
            events: LSM_EVENTS.to_vec(),
        },
        other => FenceReport::unavailable(
            UNIT.name,
            format!(
                "{}: a fenced process with CAP_SYS_ADMIN can leave its cgroup, detach fence's programs or stop the \
                 agent; run fenced workloads without CAP_SYS_ADMIN/CAP_BPF/CAP_KILL over the agent (e.g. non-root)",
                other.reason()
            ),
            ctx,
        ),
    }
}

/// The rules are the identity's own cgroups (the bindings): nothing of its own to write.
fn compile_identity(_: &IdentityInput<'_>, _: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    Ok(())
}
