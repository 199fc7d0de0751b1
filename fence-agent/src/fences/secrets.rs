//! The credential broker (see `crate::broker`): no programs of its own. A request's caller is
//! attested by the kernel and mapped to its identity through the policy in force; the row says
//! how this kernel tells the caller apart from a later process with its pid. The broker's
//! refusals are this unit's events (`secret-get`).

use fence_common::Operation;
use fence_common::events::Mechanism;

use super::{
    Availability, FenceReport, LoadContext, ReportContext, Unit, no_flags, no_host_entries, no_identity_entries,
};
use crate::control::attest;

pub const UNIT: Unit = Unit {
    name: "secrets",
    maps: &[],
    operations: &[Operation::SecretGet],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity: no_identity_entries,
    keeps_expired: false,
};

fn load(_: &mut LoadContext<'_>) -> Availability {
    match attest::probe_method() {
        attest::Method::PeerPidfd => Availability::Attested(None),
        attest::Method::StartTime => Availability::Attested(Some(
            "this kernel has no SO_PEERPIDFD (Linux < 6.5): a caller is told apart by its start time, which \
             narrows pid reuse to the moment between its connect and the agent's accept"
                .into(),
        )),
    }
}

fn report(a: &Availability, _: &ReportContext<'_>) -> FenceReport {
    const NOTES: &str = "a fenced process gets its own identity's secrets (policy secrets:) on the workload socket, \
                         fetched with a vault token limited to that identity; needs [vault]";
    match a {
        Availability::Attested(None) => {
            FenceReport::enforced(UNIT.name, "broker, caller attested by the kernel (SO_PEERPIDFD)", NOTES)
                .with_events(&[Mechanism::Broker])
        }
        Availability::Attested(Some(why)) => FenceReport {
            fence: UNIT.name,
            enforced: true,
            mechanism: "broker, caller attested by the kernel (SO_PEERCRED and start time)".into(),
            notes: format!("{NOTES}; {why}"),
            remedy: Some("Linux 6.5 or later (SO_PEERPIDFD)".into()),
            events: vec![Mechanism::Broker],
        },
        other => FenceReport::not_enforced(UNIT.name, other.reason()),
    }
}
