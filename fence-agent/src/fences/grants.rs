//! Just-in-time grants (see `crate::grants`): no programs of their own. A grant's rules live
//! in the other fences' maps, tagged with its slot, and every fence's program checks the
//! slot's end in the grant table against the kernel's boot clock. This unit's row says that,
//! and whether connections opened under an egress grant can be closed at its end (sock_diag
//! SOCK_DESTROY, probed on a loopback connection of its own).

use super::{
    Availability, FenceReport, LoadContext, ReportContext, Unit, no_flags, no_host_entries, no_identity_entries,
};

pub const UNIT: Unit = Unit {
    name: "grants",
    maps: &[],
    operations: &[],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity: no_identity_entries,
    keeps_expired: false,
};

fn load(_: &mut LoadContext<'_>) -> Availability {
    match crate::sockdiag::probe_destroy() {
        crate::sockdiag::DestroySupport::Available => Availability::KernelClock(None),
        crate::sockdiag::DestroySupport::Unavailable(why) => Availability::KernelClock(Some(why.to_string())),
    }
}

fn report(a: &Availability, _: &ReportContext<'_>) -> FenceReport {
    const MECHANISM: &str = "kernel clock (each grant's end in the grant table, judged by every fence's program)";
    match a {
        Availability::KernelClock(None) => FenceReport::enforced(
            UNIT.name,
            MECHANISM,
            "grants end on time with the agent stopped; at an egress grant's end its TCP connections are closed \
             (sock_diag SOCK_DESTROY); files opened under a file grant stay open",
        ),
        Availability::KernelClock(Some(why)) => FenceReport {
            fence: UNIT.name,
            enforced: true,
            mechanism: MECHANISM.into(),
            notes: format!(
                "grants end on time, but TCP connections opened under an egress grant stay open at its end: {why}"
            ),
            remedy: Some("a kernel built with CONFIG_INET_DIAG_DESTROY=y, and the agent with CAP_NET_ADMIN".into()),
            events: Vec::new(),
        },
        other => FenceReport::not_enforced(UNIT.name, other.reason()),
    }
}
