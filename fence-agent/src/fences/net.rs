//! Egress: TCP/UDP destinations per identity (cgroup connect4/6, sendmsg4/6) and the socket
//! kinds fenced identities may create (sock_create). The programs work on every kernel fence
//! supports, so this unit is required.
//!
//! Egress rules become LPM-trie entries keyed by (identity, prefix). The kernel finds only the
//! longest matching prefix, so each prefix's entry carries the port rules of every rule whose
//! network contains it (a /16 inside an allowed /8 keeps the /8's ports).

use std::collections::BTreeSet;

use aya_obj::generated::bpf_attach_type;
use fence_common::{MAX_PORT_RULES, Map, NetRules, Operation, PROTO_TCP, PROTO_UDP, PortRule, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_flags, no_host_entries};
use crate::{
    kernel::{MapEntry, NetEntry},
    policy::{PolicyError, PolicyErrorKind, net::IpNet},
};

pub const UNIT: Unit = Unit {
    name: "egress",
    maps: &[Map::Net4, Map::Net6],
    operations: &[Operation::Connect, Operation::Sendmsg, Operation::Socket],
    load,
    required: true,
    report,
    flags: no_flags,
    compile_host: no_host_entries,
    compile_identity,
    keeps_expired: false,
};

const SOCK_ADDR_PROGRAMS: [(&str, &str, bpf_attach_type); 4] = [
    (programs::CONNECT4, "cgroup/connect4", bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    (programs::CONNECT6, "cgroup/connect6", bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    (programs::SENDMSG4, "cgroup/sendmsg4", bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG),
    (programs::SENDMSG6, "cgroup/sendmsg6", bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG),
];

fn load(ctx: &mut LoadContext<'_>) -> Availability {
    let loaded = SOCK_ADDR_PROGRAMS
        .iter()
        .try_for_each(|&(program, hook, attach)| ctx.loader.load_sock_addr(program, hook, attach))
        .and_then(|()| ctx.loader.load_sock(programs::SOCK_CREATE, "cgroup/sock_create"));
    match loaded {
        Ok(()) => Availability::CgroupHooks,
        Err(e) => {
            let why = e.to_string();
            ctx.fatal = Some(e);
            Availability::Unavailable(why)
        }
    }
}

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::CgroupHooks => FenceReport::enforced(
            UNIT.name,
            "cgroup/connect4+connect6+sendmsg4+sendmsg6+sock_create",
            "TCP/UDP allow-lists per identity; other socket kinds refused",
        ),
        other => FenceReport::unavailable(UNIT.name, other.reason().to_owned(), ctx),
    }
}

fn compile_identity(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    let identity = input.identity;
    let id = input.compiled.id;
    // Every distinct prefix of the identity.
    let prefixes: BTreeSet<IpNet> = identity.egress.iter().flat_map(|r| r.nets.iter().copied()).collect();
    for prefix in &prefixes {
        let mut contributions = Vec::new();
        for rule in &identity.egress {
            if rule.nets.iter().any(|n| n.contains(prefix)) {
                for range in &rule.ports {
                    contributions.push((range.lo, range.hi, rule.protocols));
                }
            }
        }
        let merged = merge(contributions);
        if merged.len() > MAX_PORT_RULES {
            return Err(PolicyError {
                file: identity.source.clone(),
                identity: Some(identity.name.clone()),
                field: "egress".to_owned(),
                kind: PolicyErrorKind::TooManyPortRules {
                    prefix: prefix.to_string(),
                    count: merged.len(),
                    max: MAX_PORT_RULES,
                },
            });
        }
        let mut rules = NetRules { count: merged.len() as u32, ..NetRules::default() };
        rules.rules[..merged.len()].copy_from_slice(&merged);
        out.push(match *prefix {
            IpNet::V4 { addr, len } => MapEntry::Net4(NetEntry { identity: id, prefix_len: len, addr, rules }),
            IpNet::V6 { addr, len } => MapEntry::Net6(NetEntry { identity: id, prefix_len: len, addr, rules }),
        });
    }
    Ok(())
}

/// Merges overlapping or adjacent ranges per protocol, then joins identical TCP and UDP
/// ranges into one entry.
fn merge(contributions: Vec<(u16, u16, u8)>) -> Vec<PortRule> {
    let per_protocol = |bit: u8| -> Vec<(u16, u16)> {
        let mut ranges: Vec<(u16, u16)> =
            contributions.iter().filter(|c| c.2 & bit != 0).map(|&(lo, hi, _)| (lo, hi)).collect();
        ranges.sort();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    };
    let tcp = per_protocol(PROTO_TCP);
    let udp = per_protocol(PROTO_UDP);
    let rule = |(lo, hi): (u16, u16), protocols| PortRule { lo, hi, protocols, _pad: [0; 3] };
    let mut out: Vec<PortRule> = Vec::new();
    for &range in &tcp {
        let both = udp.contains(&range);
        out.push(rule(range, if both { PROTO_TCP | PROTO_UDP } else { PROTO_TCP }));
    }
    out.extend(udp.iter().filter(|r| !tcp.contains(r)).map(|&r| rule(r, PROTO_UDP)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compile::tests::{identity, net, rule, set},
        compile::{CompiledPolicy, IdAllocator, compile},
        resolve::Resolved,
    };

    fn compile_plain(s: &crate::policy::PolicySet) -> Result<CompiledPolicy, crate::policy::PolicyErrors> {
        compile(s, &Resolved::default(), &mut IdAllocator::default())
    }

    fn rules_of(c: &CompiledPolicy, prefix: &str) -> Vec<(u16, u16, u8)> {
        let r = c
            .entries
            .iter()
            .find_map(|e| match (e, net(prefix)) {
                (MapEntry::Net4(e), IpNet::V4 { addr, len }) if e.addr == addr && e.prefix_len == len => Some(e.rules),
                (MapEntry::Net6(e), IpNet::V6 { addr, len }) if e.addr == addr && e.prefix_len == len => Some(e.rules),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no entry for {prefix}"));
        r.rules[..r.count as usize].iter().map(|p| (p.lo, p.hi, p.protocols)).collect()
    }

    #[test]
    fn one_identity_one_rule() {
        let c = compile_plain(&set(vec![identity(
            "a",
            vec![rule("r", &["127.0.0.1", "::1"], &[(8080, 8080)], PROTO_TCP)],
        )]))
        .unwrap();
        assert_eq!(rules_of(&c, "127.0.0.1/32"), vec![(8080, 8080, PROTO_TCP)]);
        assert_eq!(rules_of(&c, "::1/128"), vec![(8080, 8080, PROTO_TCP)]);
    }

    #[test]
    fn a_more_specific_prefix_keeps_the_ports_of_the_wider_one() {
        let c = compile_plain(&set(vec![identity(
            "a",
            vec![
                rule("wide", &["10.0.0.0/8"], &[(443, 443)], PROTO_TCP),
                rule("narrow", &["10.1.0.0/16"], &[(80, 80)], PROTO_TCP),
            ],
        )]))
        .unwrap();
        assert_eq!(rules_of(&c, "10.0.0.0/8"), vec![(443, 443, PROTO_TCP)]);
        assert_eq!(rules_of(&c, "10.1.0.0/16"), vec![(80, 80, PROTO_TCP), (443, 443, PROTO_TCP)]);
    }

    #[test]
    fn ranges_merge_and_tcp_udp_twins_join() {
        let c = compile_plain(&set(vec![identity(
            "a",
            vec![
                rule("a", &["0.0.0.0/0"], &[(1000, 2000), (2001, 3000), (53, 53)], PROTO_TCP),
                rule("b", &["0.0.0.0/0"], &[(53, 53)], PROTO_UDP),
                rule("c", &["0.0.0.0/0"], &[(1500, 1600)], PROTO_TCP),
            ],
        )]))
        .unwrap();
        assert_eq!(rules_of(&c, "0.0.0.0/0"), vec![(53, 53, PROTO_TCP | PROTO_UDP), (1000, 3000, PROTO_TCP)]);
    }

    #[test]
    fn v4_rules_do_not_leak_into_v6() {
        let c = compile_plain(&set(vec![identity(
            "a",
            vec![rule("r", &["0.0.0.0/0"], &[(1, 65535)], PROTO_TCP | PROTO_UDP)],
        )]))
        .unwrap();
        assert!(!c.entries.iter().any(|e| matches!(e, MapEntry::Net6(_))));
    }

    #[test]
    fn too_many_port_rules_names_identity_and_prefix() {
        let ports: Vec<(u16, u16)> = (0..20).map(|i| (1000 + i * 10, 1000 + i * 10)).collect();
        let e = compile_plain(&set(vec![identity("a", vec![rule("r", &["10.0.0.0/8"], &ports, PROTO_TCP)])]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity \"a\"") && e.contains("10.0.0.0/8 carry 20 distinct port rules"), "{e}");
    }
}
