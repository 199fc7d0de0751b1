//! No way out: a fenced process, even root, cannot leave its identity's cgroups
//! (cgroup.procs writes, checked by the credential-files unit's `lsm/file_open` program;
//! clone3 into another cgroup), trace or signal processes outside it, or use bpf(2). Needs BPF
//! LSM, including for file_open.

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
        Operation::CloneIntoCgroup,
        Operation::Ptrace,
        Operation::Signal,
        Operation::Bpf,
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
    ctx.lsm(&[
        (programs::LSM_TASK_ALLOC, "task_alloc"),
        (programs::LSM_PTRACE, "ptrace_access_check"),
        (programs::LSM_TASK_KILL, "task_kill"),
        (programs::LSM_BPF, "bpf"),
    ])
}

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::Lsm => FenceReport::enforced(
            UNIT.name,
            "lsm/file_open+task_alloc+ptrace_access_check+task_kill+bpf",
            "a fenced process, even root, cannot write to cgroup.procs/cgroup.threads outside its identity, \
             clone3 into another cgroup, trace or signal processes outside its identity (the agent included), \
             or use bpf(2)",
        ),
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
