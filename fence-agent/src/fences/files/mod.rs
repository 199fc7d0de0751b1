//! Credential files: the host's protected set (shadow, SSH and cloud keys, kubeconfigs,
//! `.env` files, fence's own files) and each identity's readable exceptions, by inode. BPF LSM
//! refuses with EPERM (`file_open`); without it the agent answers fanotify permission events
//! for the protected inodes ([`fanotify`]), which works only while the agent runs.

pub mod fanotify;

use fence_common::events::Mechanism;
use std::collections::BTreeMap;

use fence_common::{Map, Operation, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_flags};
use crate::{kernel::MapEntry, policy::PolicyError, resolve::Resolved};

pub const UNIT: Unit = Unit {
    name: "credential-files",
    maps: &[Map::Protected, Map::FileExcept],
    operations: &[Operation::Open, Operation::Unlink, Operation::Rename, Operation::Link, Operation::Truncate],
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
    let lsm_why = match ctx.lsm(&[
        (programs::LSM_FILE_OPEN, "file_open"),
        (programs::LSM_INODE_UNLINK, "inode_unlink"),
        (programs::LSM_INODE_RMDIR, "inode_rmdir"),
        (programs::LSM_INODE_RENAME, "inode_rename"),
        (programs::LSM_INODE_LINK, "inode_link"),
        (programs::LSM_PATH_TRUNCATE, "path_truncate"),
    ]) {
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
        Availability::Lsm => FenceReport::enforced(
            UNIT.name,
            "lsm/file_open+inode_unlink+inode_rmdir+inode_rename+inode_link+path_truncate",
            "opening refused with EPERM, and so are unlinking, renaming, hard-linking and truncating protected \
             files (and anything in bpffs, fence's pins), opening allowed programs for writing, and opening files \
             more than 32 directories deep",
        )
        .with_events(&[
            Mechanism::LsmFileOpen,
            Mechanism::LsmInodeUnlink,
            Mechanism::LsmInodeRmdir,
            Mechanism::LsmInodeRename,
            Mechanism::LsmInodeLink,
            Mechanism::LsmPathTruncate,
        ]),
        Availability::Fanotify => FenceReport {
            fence: UNIT.name,
            enforced: true,
            mechanism: "fanotify FAN_OPEN_PERM answered by the agent".into(),
            notes: "fallback: opening refused with EPERM while the agent runs (not while it is down); files created \
                    later are protected once the agent sees them (milliseconds); renames, new hard links and \
                    truncation of protected files are not refused (the files stay protected: they are marked by \
                    inode); a stalled decision is refused for fenced openers after 1 s"
                .into(),
            remedy: Some(ctx.lsm_remedy()),
            events: vec![Mechanism::Fanotify],
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
    // Standing entries come first and win: an exception both standing and granted stays standing.
    let mut seen = std::collections::HashSet::new();
    out.extend(r.file_exceptions.iter().filter(|e| seen.insert(e.id)).map(|e| MapEntry::FileExcept {
        identity,
        object: e.id,
        flags: e.value,
        grant: e.grant,
    }));
    Ok(())
}
