//! Host settings: a fenced task may read sysctls but not write them (cgroup/sysctl, every
//! kernel). A fenced root could otherwise point `kernel.core_pattern` at a pipe or
//! `kernel.modprobe` at a program of its own, which the kernel then runs outside the fence.

use fence_common::events::Mechanism;
use fence_common::{Operation, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_flags, no_host_entries};
use crate::{kernel::MapEntry, policy::PolicyError};

pub const UNIT: Unit = Unit {
    name: "host-settings",
    maps: &[],
    operations: &[Operation::SysctlWrite],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity,
    keeps_expired: false,
};

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    match ctx.loader.load_sysctl(programs::SYSCTL, "cgroup/sysctl") {
        Ok(()) => Availability::CgroupHooks,
        Err(e) => Availability::Unavailable(ctx.refused(&e.to_string())),
    }
}

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::CgroupHooks => FenceReport::enforced(
            UNIT.name,
            "cgroup/sysctl",
            "fenced processes, even root, cannot write sysctls (kernel.core_pattern, kernel.modprobe...)",
        )
        .with_events(&[Mechanism::CgroupSysctl]),
        other => FenceReport {
            fence: UNIT.name,
            enforced: false,
            mechanism: "unavailable".into(),
            notes: format!(
                "{}: a fenced root could set kernel.core_pattern or kernel.modprobe to run a program outside the fence",
                other.reason()
            ),
            remedy: Some(ctx.lsm_remedy()),
            events: Vec::new(),
        },
    }
}

/// Nothing per identity: every fenced identity is refused alike.
fn compile_identity(_: &IdentityInput<'_>, _: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    Ok(())
}
