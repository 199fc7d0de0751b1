//! Bindings: which cgroups carry which identity, each identity's mode and flags, and the
//! cgroup paths of followed units, which the kernel binds as it creates them
//! (`tp_btf/cgroup_mkdir`), before any process of a restarted unit can run. Without that
//! program the agent binds a restarted unit's cgroup when it sees it (inotify), milliseconds
//! later.

use fence_common::{IdentityInfo, Map, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_flags, no_host_entries};
use crate::{
    kernel::MapEntry,
    policy::{PolicyError, SelectorKind},
};

pub const UNIT: Unit = Unit {
    name: "unit-restarts",
    maps: &[Map::Identities, Map::Cgroups, Map::Units],
    operations: &[],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity,
    keeps_expired: true,
};

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    match ctx.loader.load_tracepoint(programs::TP_CGROUP_MKDIR, "cgroup_mkdir") {
        Ok(()) => Availability::Tracepoint,
        Err(e) => Availability::Unavailable(ctx.refused(&format!("tp_btf/cgroup_mkdir refused ({e})"))),
    }
}

fn report(a: &Availability, _: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::Tracepoint => FenceReport::enforced(
            UNIT.name,
            "tp_btf/cgroup_mkdir",
            "a restarted unit's new cgroup is bound to its identity as the kernel creates it",
        ),
        other => FenceReport {
            fence: UNIT.name,
            enforced: false,
            mechanism: "inotify (user space)".into(),
            notes: format!(
                "{}: a restarted unit's new cgroup is bound when the agent sees it, milliseconds later; a process \
                 the unit starts in that time runs unfenced",
                other.reason()
            ),
            remedy: None,
        },
    }
}

/// The identity's info, its bound cgroups, and its units' cgroup paths.
fn compile_identity(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    let c = input.compiled;
    out.push(MapEntry::Identity { identity: c.id, info: c.info });
    for cg in &input.identity.cgroups {
        if let SelectorKind::Unit(_) = cg.kind {
            out.push(MapEntry::Unit { path: cg.path.clone(), identity: c.id });
        }
    }
    out.extend(c.cgroups.iter().map(|&(_, cgroup_id)| MapEntry::Cgroup { cgroup_id, identity: c.id }));
    Ok(())
}

/// The value of an identity's entry in [`Map::Identities`].
pub fn info(mode: u8, flags: u8, policy_version: u32) -> IdentityInfo {
    IdentityInfo { mode, flags, _pad: [0; 2], policy_version }
}
