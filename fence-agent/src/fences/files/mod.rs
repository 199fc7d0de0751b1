//! Credential files: the host's protected set (shadow, SSH and cloud keys, kubeconfigs,
//! `.env` files, fence's own files) and each identity's readable exceptions, by inode. BPF LSM
//! refuses with EPERM (`file_open`); without it the agent answers fanotify permission events
//! for the protected inodes ([`fanotify`]), which works only while the agent runs.

pub mod fanotify;

use std::collections::BTreeMap;

use fence_common::{Map, Operation, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_flags};
use crate::{kernel::MapEntry, policy::PolicyError, resolve::Resolved};

pub const UNIT: Unit = Unit {
    name: "credential-files",
    maps: &[Map::Protected, Map::FileExcept],
    operations: &[Operation::Open],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host,
    compile_identity,
    keeps_expired: false,
};

/// The LSM program if the kernel takes it, else fanotify if permission events work here, else
/// unavailable with both reasons.
fn load(ctx: &mut LoadContext<'_>) -> Availability {
    let lsm_why = match ctx.lsm(&[(programs::LSM_FILE_OPEN, "file_open")]) {
        Availability::Lsm => return Availability::Lsm,
        other => other.reason().to_owned(),
    };
    match fanotify::FileFence::probe() {
        Ok(()) => Availability::Fanotify,
        Err(e) => Availability::Unavailable(format!("{lsm_why}; {e}")),
    }
}

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::Lsm => FenceReport::enforced(UNIT.name, "lsm/file_open", "refused with EPERM"),
        Availability::Fanotify => FenceReport {
            fence: UNIT.name,
            enforced: true,
            mechanism: "fanotify FAN_OPEN_PERM answered by the agent".into(),
            notes: "fallback: refused with EPERM while the agent runs (not while it is down); files created later are \
                    protected once the agent sees them (milliseconds)"
                .into(),
            remedy: Some(ctx.lsm_remedy()),
        },
        other => FenceReport::unavailable(UNIT.name, other.reason().to_owned(), ctx),
    }
}

/// The host's protected inodes; one inode matched by several patterns gets the union of their
/// flags.
fn compile_host(resolved: &Resolved, out: &mut Vec<MapEntry>) {
    let mut protected: BTreeMap<_, u32> = BTreeMap::new();
    for e in &resolved.protected {
        *protected.entry(e.id).or_default() |= e.value;
    }
    out.extend(protected.into_iter().map(|(object, flags)| MapEntry::Protected { object, flags }));
}

fn compile_identity(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    let Some(r) = input.resolved else { return Ok(()) };
    let identity = input.compiled.id;
    out.extend(r.file_exceptions.iter().map(|e| MapEntry::FileExcept { identity, object: e.id, flags: e.value }));
    Ok(())
}
