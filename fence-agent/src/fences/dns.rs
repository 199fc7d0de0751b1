//! Egress by name: every fenced identity's DNS (TCP and UDP port 53, to any address) is
//! steered by the egress unit's connect/sendmsg programs to the identity's own resolver in
//! the agent; this unit's recvmsg4/6 and getpeername4/6 programs make the steered socket see
//! the server it named again, and its maps hold the addresses learned from allowed answers
//! (the egress programs allow them until their expiry, on the kernel's clock). Steering is
//! turned on only when these programs loaded: without them resolvers would drop the replies.

use aya_obj::generated::bpf_attach_type;
use fence_common::events::Mechanism;
use fence_common::{Operation, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_flags, no_host_entries};
use crate::{kernel::MapEntry, policy::PolicyError};

pub const UNIT: Unit = Unit {
    name: "dns",
    maps: &[],
    operations: &[Operation::DnsQuery],
    load,
    required: false,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity,
    keeps_expired: false,
};

const PROGRAMS: [(&str, &str, bpf_attach_type); 4] = [
    (programs::RECVMSG4, "cgroup/recvmsg4", bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG),
    (programs::RECVMSG6, "cgroup/recvmsg6", bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG),
    (programs::GETPEERNAME4, "cgroup/getpeername4", bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME),
    (programs::GETPEERNAME6, "cgroup/getpeername6", bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME),
];

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    if !ctx.earlier(super::net::UNIT.name).is_some_and(Availability::enforced) {
        return Availability::Unavailable("the egress programs, which steer DNS, are not loaded".into());
    }
    let loaded =
        PROGRAMS.iter().try_for_each(|&(program, hook, attach)| ctx.loader.load_sock_addr(program, hook, attach));
    match loaded {
        Ok(()) => Availability::CgroupHooks,
        Err(e) => Availability::Unavailable(e.to_string()),
    }
}

const MECHANISM: &str =
    "cgroup/connect4+connect6+sendmsg4+sendmsg6 (steering)+recvmsg4+recvmsg6+getpeername4+getpeername6";

fn report(a: &Availability, _: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::CgroupHooks => FenceReport::enforced(
            UNIT.name,
            MECHANISM,
            "fenced DNS (UDP/TCP port 53, any server) answered by the agent per identity: names the policy does not \
             allow are refused and never leave the host; addresses of allowed names are allowed until their TTL ends",
        )
        .with_events(&[Mechanism::Resolver]),
        other => FenceReport {
            fence: UNIT.name,
            enforced: false,
            mechanism: "unavailable".into(),
            notes: format!("{}: DNS names in egress rules allow nothing; DNS is ordinary egress", other.reason()),
            remedy: Some("a kernel with cgroup recvmsg and getpeername hooks (5.8 or later)".into()),
            events: Vec::new(),
        },
    }
}

/// Nothing in the policy maps: the resolver learns addresses as names are resolved.
fn compile_identity(_: &IdentityInput<'_>, _: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    Ok(())
}
