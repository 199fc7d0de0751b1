//! Exec: the programs an identity may start, by inode. BPF LSM refuses with EPERM
//! (`bprm_check_security`); without it, a `tp_btf/sched_process_exec` program kills the task
//! before its first instruction.

use fence_common::events::Mechanism;
use std::collections::HashSet;

use fence_common::{IDENTITY_EXEC_ALLOWLIST, IDENTITY_FILELESS_OK, Map, Operation, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_host_entries};
use crate::{
    kernel::MapEntry,
    policy::{Identity, PolicyError},
};

pub const UNIT: Unit = Unit {
    name: "exec",
    maps: &[Map::Exec],
    operations: &[Operation::Exec],
    load,
    required: false,
    report,
    flags,
    compile_host: no_host_entries,
    compile_identity,
    keeps_expired: false,
};

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    let lsm_error = match ctx.loader.load_lsm(programs::LSM_EXEC, "bprm_check_security") {
        Ok(()) => return Availability::Lsm,
        Err(e) => e,
    };
    match ctx.loader.load_tracepoint(programs::TP_EXEC, "sched_process_exec") {
        Ok(()) => {
            // The event is made after the exec; what the task was before it (its name and
            // executable) is kept where the kernel has a tracepoint before the point of no
            // return (6.10 and later).
            if let Err(e) = ctx.loader.load_tracepoint(programs::TP_PREPARE_EXEC, "sched_prepare_exec") {
                tracing::info!(
                    reason = %e,
                    "exec fallback: no sched_prepare_exec tracepoint; exec events name the program after the exec"
                );
            }
            Availability::TracepointKill
        }
        Err(tp_error) => Availability::Unavailable(
            ctx.refused(&format!("BPF LSM refused ({lsm_error}); tp_btf refused ({tp_error})")),
        ),
    }
}

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::Lsm => FenceReport::enforced(
            UNIT.name,
            "lsm/bprm_check_security",
            "refused with EPERM; scripts and their interpreters both checked",
        )
        .with_events(&[Mechanism::LsmBprmCheck]),
        Availability::TracepointKill => FenceReport {
            fence: UNIT.name,
            enforced: true,
            mechanism: "tp_btf/sched_process_exec + SIGKILL".into(),
            notes: "fallback: a denied program is killed before its first instruction (verdict \"killed\", not \
                    EPERM); a #! script is judged by its interpreter only"
                .into(),
            remedy: Some(ctx.lsm_remedy()),
            events: vec![Mechanism::TpSchedProcessExec],
        },
        other => FenceReport::unavailable(UNIT.name, other.reason().to_owned(), ctx),
    }
}

fn flags(identity: &Identity) -> u8 {
    match &identity.exec {
        Some(exec) if exec.fileless => IDENTITY_EXEC_ALLOWLIST | IDENTITY_FILELESS_OK,
        Some(_) => IDENTITY_EXEC_ALLOWLIST,
        None => 0,
    }
}

fn compile_identity(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    let Some(r) = input.resolved else { return Ok(()) };
    // Standing entries come first, so a program both standing and granted stays standing.
    let mut seen = HashSet::new();
    for e in &r.exec {
        if seen.insert(e.id) {
            out.push(MapEntry::Exec { identity: input.compiled.id, object: e.id, grant: e.grant });
        }
    }
    Ok(())
}
