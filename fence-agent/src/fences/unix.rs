//! Unix sockets: the sockets an identity may reach (its allow-list) or, without one, every
//! socket but the host's default-deny set (daemons that run code for their clients). Needs BPF
//! LSM (`unix_stream_connect`, `unix_may_send`); the cgroup `connect_unix` hooks (kernel
//! >= 6.7) are not known to aya 0.16.

use fence_common::events::Mechanism;
use fence_common::{IDENTITY_UNIX_ALLOWLIST, Map, Operation, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit};
use crate::{
    kernel::MapEntry,
    policy::{Identity, PolicyError},
    resolve::Resolved,
};

pub const UNIT: Unit = Unit {
    name: "unix-sockets",
    maps: &[Map::Unix, Map::UnixAbstract],
    operations: &[Operation::UnixConnect, Operation::UnixSend],
    load,
    required: false,
    report,
    flags,
    compile_host,
    compile_identity,
    keeps_expired: false,
};

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    ctx.lsm(&[(programs::LSM_UNIX_STREAM, "unix_stream_connect"), (programs::LSM_UNIX_DGRAM, "unix_may_send")])
}

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::Lsm => {
            FenceReport::enforced(UNIT.name, "lsm/unix_stream_connect+unix_may_send", "refused with EPERM")
                .with_events(&[Mechanism::LsmUnixStreamConnect, Mechanism::LsmUnixMaySend])
        }
        other => FenceReport::unavailable(
            UNIT.name,
            format!(
                "{}; the cgroup connect_unix/sendmsg_unix hooks (kernel >= 6.7) cannot be attached by this agent \
                 (aya 0.16 does not know them)",
                other.reason()
            ),
            ctx,
        ),
    }
}

fn flags(identity: &Identity) -> u8 {
    if identity.unix.is_some() { IDENTITY_UNIX_ALLOWLIST } else { 0 }
}

/// The host's default-deny sockets, as identity 0.
fn compile_host(resolved: &Resolved, out: &mut Vec<MapEntry>) {
    let mut sockets: Vec<_> = resolved.unix_deny.iter().map(|e| e.id).collect();
    sockets.sort();
    sockets.dedup();
    out.extend(sockets.into_iter().map(|object| MapEntry::Unix { identity: 0, object, grant: 0 }));
    out.extend(resolved.unix_deny_abstract.iter().map(|n| MapEntry::UnixAbstract {
        identity: 0,
        name: n.clone(),
        grant: 0,
    }));
}

fn compile_identity(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    let Some(r) = input.resolved else { return Ok(()) };
    let identity = input.compiled.id;
    // Standing entries come first and win over a grant of the same socket.
    let mut seen = std::collections::HashSet::new();
    out.extend(r.unix_allow.iter().filter(|e| seen.insert(e.id)).map(|e| MapEntry::Unix {
        identity,
        object: e.id,
        grant: e.grant,
    }));
    let mut seen = std::collections::HashSet::new();
    out.extend(
        r.unix_allow_abstract.iter().filter(|(n, _)| seen.insert(n.clone())).map(|(n, grant)| MapEntry::UnixAbstract {
            identity,
            name: n.clone(),
            grant: *grant,
        }),
    );
    Ok(())
}
