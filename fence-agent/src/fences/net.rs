//! Egress: TCP/UDP destinations per identity (cgroup connect4/6, sendmsg4/6) and the socket
//! kinds fenced identities may create (sock_create). The programs work on every kernel fence
//! supports, so this unit is required.
//!
//! Egress rules become LPM-trie entries keyed by (identity, prefix). The kernel finds only the
//! longest matching prefix, so each prefix's entry carries the port rules of every rule whose
//! network contains it (a /16 inside an allowed /8 keeps the /8's ports). An identity with
//! many single addresses ([`HOST_MAP_MIN`]) has those in a hash map instead, looked up first.

use fence_common::events::Mechanism;
use std::collections::{BTreeMap, BTreeSet};

use aya_obj::generated::bpf_attach_type;
use fence_common::{IDENTITY_HOSTS4, IDENTITY_HOSTS6, MAX_PORT_RULES, Map, NetRules, Operation, PortRule, programs};

use super::{Availability, FenceReport, IdentityInput, LoadContext, ReportContext, Unit, no_host_entries};
use crate::{
    kernel::{MapEntry, NetEntry},
    policy::{
        Identity, PolicyError, PolicyErrorKind,
        net::{IpNet, PortSpan, Ports},
    },
};

pub const UNIT: Unit = Unit {
    name: "egress",
    maps: &[Map::Host4, Map::Host6, Map::Net4, Map::Net6],
    operations: &[Operation::Connect, Operation::Sendmsg, Operation::Socket, Operation::Packet],
    load,
    required: true,
    report,
    flags,
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
        .and_then(|()| ctx.loader.load_sock(programs::SOCK_CREATE, "cgroup/sock_create"))
        .and_then(|()| ctx.loader.load_skb_egress(programs::SKB_EGRESS, "cgroup_skb/egress"));
    if let Err(e) = loaded {
        let why = e.to_string();
        ctx.fatal = Some(e);
        return Availability::Unavailable(why);
    }
    // Socket families the cgroup hooks do not see (packet, XDP, vsock...): BPF LSM only.
    match ctx.loader.load_lsm(programs::LSM_SOCKET_CREATE, "socket_create") {
        Ok(()) => Availability::CgroupHooksAndLsm,
        Err(_) => Availability::CgroupHooks,
    }
}

/// The event mechanism values of the cgroup hooks ([`MECHANISM`]).
const CGROUP_EVENTS: &[Mechanism] = &[
    Mechanism::CgroupConnect4,
    Mechanism::CgroupConnect6,
    Mechanism::CgroupSendmsg4,
    Mechanism::CgroupSendmsg6,
    Mechanism::CgroupSockCreate,
    Mechanism::CgroupSkbEgress,
];
const MECHANISM: &str = "cgroup/connect4+connect6+sendmsg4+sendmsg6+sock_create+cgroup_skb/egress";

fn report(a: &Availability, ctx: &ReportContext<'_>) -> FenceReport {
    match a {
        Availability::CgroupHooksAndLsm => FenceReport::enforced(
            UNIT.name,
            &format!("{MECHANISM}+lsm/socket_create"),
            "TCP/UDP allow-lists per identity; source-routed packets dropped; raw, ICMP, SCTP sockets and every \
             family but inet, inet6, unix and netlink (packet, XDP, vsock...) refused",
        )
        .with_events(&[CGROUP_EVENTS, &[Mechanism::LsmSocketCreate]].concat()),
        Availability::CgroupHooks => FenceReport {
            fence: UNIT.name,
            enforced: true,
            mechanism: MECHANISM.into(),
            notes: "TCP/UDP allow-lists per identity; source-routed packets dropped; raw, ICMP, SCTP sockets refused; \
                    socket families other than inet/inet6 (packet, XDP, vsock...) NOT refused without BPF LSM"
                .into(),
            remedy: Some(ctx.lsm_remedy()),
            events: CGROUP_EVENTS.to_vec(),
        },
        other => FenceReport::unavailable(UNIT.name, other.reason().to_owned(), ctx),
    }
}

/// An identity with at least this many single addresses of a family has them in the kernel's
/// host map: one hash lookup, whatever their number, where the prefix trie's walk grows with
/// them. With fewer, they stay in the trie: its walk over a few entries costs less than the
/// hash table's read of a bucket that is not in the CPU's cache (about 80 ns here), which a
/// destination that is not a single address would pay before the trie's walk as well.
pub const HOST_MAP_MIN: usize = 256;

/// Which families' single addresses go to the host map.
#[derive(Debug, Clone, Copy)]
struct Hosts {
    v4: bool,
    v6: bool,
}

impl Hosts {
    fn of(identity: &Identity) -> Hosts {
        let singles: BTreeSet<&IpNet> = identity
            .egress
            .iter()
            .flat_map(|r| r.nets.iter())
            .filter(|n| matches!(n, IpNet::V4 { len: 32, .. } | IpNet::V6 { len: 128, .. }))
            .collect();
        let v4 = singles.iter().filter(|n| matches!(n, IpNet::V4 { .. })).count();
        Hosts { v4: v4 >= HOST_MAP_MIN, v6: singles.len() - v4 >= HOST_MAP_MIN }
    }
}

/// `IDENTITY_HOSTS4`/`6`: the programs look the identity's destinations up in the host map
/// first.
fn flags(identity: &Identity) -> u8 {
    let hosts = Hosts::of(identity);
    (if hosts.v4 { IDENTITY_HOSTS4 } else { 0 }) | (if hosts.v6 { IDENTITY_HOSTS6 } else { 0 })
}

fn compile_identity(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
    let identity = input.identity;
    let id = input.compiled.id;
    let hosts = Hosts::of(identity);
    // Every distinct prefix of the identity, in order, with the ports of the rules that name it.
    // The order (IPv4 before IPv6, then address, then length) puts every network before the
    // networks inside it, and the networks inside it right after it: a walk in this order with
    // a stack of the networks that contain the current one finds each prefix's nearest
    // enclosing prefix, whose accumulated ports (its own and every enclosing prefix's) are
    // exactly what the prefix inherits. Linear in the prefixes (the stack is at most 33 or
    // 129 deep) instead of checking every prefix against every rule.
    let mut named: BTreeMap<IpNet, Vec<PortSpan>> = BTreeMap::new();
    for rule in &identity.egress {
        for net in &rule.nets {
            named.entry(*net).or_default().extend(rule.ports.iter().map(|r| (r.lo, r.hi, rule.protocols, rule.grant)));
        }
    }
    // Prefixes that contain the current one, widest first, each with the ports it carries.
    let mut stack: Vec<(IpNet, Ports)> = Vec::new();
    for (prefix, own) in &named {
        let ports = if prefix.masked() == *prefix {
            while stack.last().is_some_and(|(outer, _)| !outer.contains(prefix)) {
                stack.pop();
            }
            let inherited = stack.last().map(|(_, p)| p);
            let ports = Ports::of(inherited, own);
            let merged = ports.rules();
            stack.push((*prefix, ports));
            merged
        } else {
            // Host bits set (validation refuses these, so not from a policy): such a network
            // contains nothing, itself included, so it only inherits, and it encloses nothing.
            // The networks that contain it are a bottom part of the stack, which stays as it is.
            let inherited = stack.iter().rev().find(|(outer, _)| outer.contains(prefix)).map(|(_, p)| p);
            Ports::of(inherited, &[]).rules()
        };
        out.push(entry(identity, id, prefix, &ports, hosts)?);
    }
    Ok(())
}

/// The map entry of `prefix` with its merged port rules, or the error naming the prefix when
/// they do not fit in one entry.
fn entry(
    identity: &Identity,
    id: u32,
    prefix: &IpNet,
    merged: &[PortRule],
    hosts: Hosts,
) -> Result<MapEntry, PolicyError> {
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
    rules.rules[..merged.len()].copy_from_slice(merged);
    Ok(match *prefix {
        IpNet::V4 { addr, len } => {
            MapEntry::Net4(NetEntry { identity: id, prefix_len: len, addr, rules, hashed: hosts.v4 && len == 32 })
        }
        IpNet::V6 { addr, len } => {
            MapEntry::Net6(NetEntry { identity: id, prefix_len: len, addr, rules, hashed: hosts.v6 && len == 128 })
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Instant};

    use fence_common::{PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::{
        compile::tests::{identity, net, rule, set},
        compile::{CompiledIdentity, CompiledPolicy, IdAllocator, compile},
        policy::{EgressRule, net::PortRange},
        resolve::Resolved,
    };

    /// The algorithm this unit used before: every distinct prefix checked against every rule
    /// (quadratic), with its own merge. The reference the linear walk is compared to.
    fn compile_identity_quadratic(input: &IdentityInput<'_>, out: &mut Vec<MapEntry>) -> Result<(), PolicyError> {
        let identity = input.identity;
        let id = input.compiled.id;
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
            let merged = merge_quadratic(contributions);
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
                IpNet::V4 { addr, len } => {
                    MapEntry::Net4(NetEntry { identity: id, prefix_len: len, addr, rules, hashed: false })
                }
                IpNet::V6 { addr, len } => {
                    MapEntry::Net6(NetEntry { identity: id, prefix_len: len, addr, rules, hashed: false })
                }
            });
        }
        Ok(())
    }

    fn merge_quadratic(contributions: Vec<(u16, u16, u8)>) -> Vec<PortRule> {
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
        let rule = |(lo, hi): (u16, u16), protocols| PortRule::new(lo, hi, protocols, 0);
        let mut out: Vec<PortRule> = Vec::new();
        for &range in &tcp {
            let both = udp.contains(&range);
            out.push(rule(range, if both { PROTO_TCP | PROTO_UDP } else { PROTO_TCP }));
        }
        out.extend(udp.iter().filter(|r| !tcp.contains(r)).map(|&r| rule(r, PROTO_UDP)));
        out
    }

    /// SplitMix64: a deterministic PRNG for the random policies (no dependency).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A number in `0..n`.
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A network from a small space, so that random rules nest, repeat and overlap: IPv4
    /// around 10.0.0.0/16 and IPv6 around fd00::/120, of any length; once in a while with host
    /// bits set (validation refuses those, but both algorithms must agree on them too).
    fn random_net(rng: &mut Rng) -> IpNet {
        let net = if rng.below(4) == 0 {
            let mut addr = [0u8; 16];
            addr[0] = 0xfd;
            addr[14] = rng.below(3) as u8;
            addr[15] = rng.below(8) as u8 * 32;
            let len = match rng.below(4) {
                0 => 128,
                1 => 112 + rng.below(17) as u8,
                _ => rng.below(129) as u8,
            };
            IpNet::V6 { addr, len }
        } else {
            let addr = [10, 0, rng.below(4) as u8, rng.below(8) as u8 * 32];
            let len = match rng.below(4) {
                0 => 32,
                1 => 16 + rng.below(17) as u8,
                _ => rng.below(33) as u8,
            };
            IpNet::V4 { addr, len }
        };
        if rng.below(40) == 0 { net } else { net.masked() }
    }

    fn random_identity(rng: &mut Rng) -> crate::policy::Identity {
        let rules = (0..rng.below(24))
            .map(|i| {
                let nets = (0..1 + rng.below(3)).map(|_| random_net(rng)).collect();
                let ports = (0..1 + rng.below(4))
                    .map(|_| {
                        let lo = 1 + rng.below(60) as u16;
                        PortRange { lo, hi: lo + rng.below(4) as u16 }
                    })
                    .collect();
                let protocols = [PROTO_TCP, PROTO_UDP, PROTO_TCP | PROTO_UDP][rng.below(3) as usize];
                EgressRule { name: format!("r{i}"), nets, names: Vec::new(), ports, protocols, grant: 0 }
            })
            .collect();
        identity("random", rules)
    }

    fn run(
        unit: fn(&IdentityInput<'_>, &mut Vec<MapEntry>) -> Result<(), PolicyError>,
        identity: &crate::policy::Identity,
    ) -> Result<Vec<MapEntry>, PolicyError> {
        let compiled = CompiledIdentity {
            id: 7,
            name: identity.name.clone(),
            mode: identity.mode,
            expired: false,
            info: Default::default(),
            version: identity.version,
            cgroups: vec![],
        };
        let input = IdentityInput { identity, compiled: &compiled, resolved: None };
        let mut out = Vec::new();
        unit(&input, &mut out).map(|()| out)
    }

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

    /// An identity with [`HOST_MAP_MIN`] single addresses of a family has them, and only them,
    /// in the host map, with the flag that makes the programs look there; one with fewer has
    /// everything in the trie. Each family is counted on its own.
    #[test]
    fn many_single_addresses_go_to_the_host_map() {
        let addrs = |n: usize| -> Vec<String> { (0..n).map(|i| format!("10.9.{}.{}", i / 256, i % 256)).collect() };
        let compiled = |n: usize| {
            let v4 = addrs(n);
            let mut nets: Vec<&str> = v4.iter().map(String::as_str).collect();
            nets.extend(["10.0.0.0/8", "::1"]);
            compile_plain(&set(vec![identity("a", vec![rule("r", &nets, &[(443, 443)], PROTO_TCP)])])).unwrap()
        };
        let few = compiled(HOST_MAP_MIN - 1);
        assert_eq!(few.identities[0].info.flags & (IDENTITY_HOSTS4 | IDENTITY_HOSTS6), 0);
        let hashed = |e: &MapEntry| {
            matches!(e, MapEntry::Net4(NetEntry { hashed: true, .. }) | MapEntry::Net6(NetEntry { hashed: true, .. }))
        };
        assert!(!few.entries.iter().any(hashed));
        let many = compiled(HOST_MAP_MIN);
        assert_eq!(many.identities[0].info.flags & (IDENTITY_HOSTS4 | IDENTITY_HOSTS6), IDENTITY_HOSTS4);
        let count = |map: Map| many.entries.iter().filter(|e| e.map() == map).count();
        assert_eq!(count(Map::Host4), HOST_MAP_MIN, "every single IPv4 address");
        assert_eq!(count(Map::Net4), 1, "the /8 stays in the trie");
        assert_eq!((count(Map::Host6), count(Map::Net6)), (0, 1), "one IPv6 address: in the trie");
        assert!(many.entries.iter().all(|e| match e {
            MapEntry::Net4(n) => n.hashed == (n.prefix_len == 32),
            _ => true,
        }));
        // The wider prefix's ports are folded into each address's entry, wherever it is.
        let first = many
            .entries
            .iter()
            .find_map(|e| match e {
                MapEntry::Net4(n) if n.hashed && n.addr == [10, 9, 0, 0] => Some(n.rules),
                _ => None,
            })
            .expect("10.9.0.0's entry");
        assert_eq!(first.count, 1, "443/tcp from both rules, merged: {first:?}");
        // The identity's entry carries the flag the programs read.
        assert!(
            many.entries
                .iter()
                .any(|e| matches!(e, MapEntry::Identity { info, .. } if info.flags & IDENTITY_HOSTS4 != 0))
        );
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

    #[test]
    fn the_linear_walk_matches_the_quadratic_reference_on_random_policies() {
        let mut rng = Rng(0x5eed_f3ce);
        let (mut entries, mut errors) = (0, 0);
        for case in 0..3000 {
            let identity = random_identity(&mut rng);
            let expected = run(compile_identity_quadratic, &identity);
            let got = run(compile_identity, &identity);
            assert_eq!(got, expected, "case {case}: {:?}", identity.egress);
            match expected {
                Ok(e) => entries += e.len(),
                Err(_) => errors += 1,
            }
        }
        // The random policies exercise both outcomes.
        assert!(entries > 10_000 && errors > 50, "{entries} entries, {errors} errors");
    }

    #[test]
    fn a_hundred_thousand_rules_compile() {
        // As `xtask bench`'s largest case: 25,000 addresses around 127.0.0.1, 4 ports each, one
        // rule per address and port, plus a wider rule that every address inherits.
        let mut rules = vec![rule("wide", &["127.0.0.0/8"], &[(443, 443)], PROTO_TCP)];
        rules.extend((0..99_999usize).map(|j| {
            let p = j / 4;
            let addr = format!("127.{}.{}.{}", (p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff);
            let port = 1000 + 2 * (j % 4) as u16;
            rule(&format!("r{j}"), &[&addr], &[(port, port)], PROTO_TCP)
        }));
        let big = identity("big", rules);
        let started = Instant::now();
        let entries = run(compile_identity, &big).unwrap();
        eprintln!("100,000 rules: {} entries in {:?}", entries.len(), started.elapsed());
        assert_eq!(entries.len(), 25_001);
        let MapEntry::Net4(e) = &entries[1] else { panic!("{:?}", entries[1]) };
        assert_eq!((e.addr, e.prefix_len, e.rules.count), ([127, 0, 0, 0], 32, 5));
    }
}
