//! The policy compiler: a validated [`PolicySet`] in, plain map entries out. Pure: no kernel,
//! no files. The enforcer writes its output into the inactive generation and flips.
//!
//! Egress rules become LPM-trie entries keyed by (identity, prefix). The kernel finds only the
//! longest matching prefix, so each prefix's entry carries the port rules of every rule whose
//! network contains it (a /16 inside an allowed /8 keeps the /8's ports).

use std::collections::{BTreeMap, HashMap};

use fence_common::{
    IDENTITY_DENY_ALL, IDENTITY_EXEC_ALLOWLIST, IDENTITY_FILELESS_OK, IDENTITY_UNIX_ALLOWLIST, IdentityInfo,
    MAX_PORT_RULES, MODE_AUDIT, MODE_ENFORCE, NetRules, PROTO_TCP, PROTO_UDP, PortRule, capacity,
};

use crate::{
    policy::{
        Identity, Mode, PolicyError, PolicyErrorKind, PolicyErrors, PolicySet, PolicyVersion, SelectorKind, net::IpNet,
    },
    resolve::{ObjectId, Resolved},
};

/// Identity ids stay the same for a name across reloads, and across agent restarts when the
/// allocator is kept in the state directory, so that events recorded by the kernel under an
/// earlier policy (or while no agent ran) keep their meaning. Ids are never reused.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IdAllocator {
    ids: HashMap<String, u32>,
    last: u32,
}

impl IdAllocator {
    /// The allocator saved at `path`, or a new one.
    pub fn load(path: &std::path::Path) -> IdAllocator {
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Saves the allocator at `path` (0600, written to a temporary file and renamed).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        self.last += 1;
        self.ids.insert(name.to_owned(), self.last);
        self.last
    }
}

/// What the enforcer writes for one policy generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompiledPolicy {
    pub identities: Vec<CompiledIdentity>,
    /// (cgroup id, identity id)
    pub cgroups: Vec<(u64, u32)>,
    pub net4: Vec<NetEntry<4>>,
    pub net6: Vec<NetEntry<16>>,
    /// (identity, program inode, rule index)
    pub exec: Vec<(u32, ObjectId, u32)>,
    /// The host's protected inodes with `PROTECT_*` flags.
    pub protected: Vec<(ObjectId, u32)>,
    /// (identity, inode, `PROTECT_*` flags) readable exceptions.
    pub file_exceptions: Vec<(u32, ObjectId, u32)>,
    /// (identity, socket inode); identity 0 is the host's default-deny set.
    pub unix: Vec<(u32, ObjectId)>,
    /// (identity, abstract name); identity 0 is the host's default-deny set.
    pub unix_abstract: Vec<(u32, Vec<u8>)>,
    /// (unit cgroup path, identity): followed across unit restarts by the kernel.
    pub units: Vec<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledIdentity {
    pub id: u32,
    pub name: String,
    pub mode: Mode,
    pub expired: bool,
    pub info: IdentityInfo,
    pub version: PolicyVersion,
    /// Rule names by `PortRule::rule` index.
    pub rule_names: Vec<String>,
    /// (path, id) of the bound cgroups.
    pub cgroups: Vec<(String, u64)>,
}

/// One LPM entry: destinations in `addr/prefix_len` may use `rules`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetEntry<const N: usize> {
    pub identity: u32,
    pub prefix_len: u8,
    pub addr: [u8; N],
    pub rules: NetRules,
}

/// Compiles `set` with what `resolved` found on this host. Fails only on limits of the
/// kernel maps, naming the identity or what overflowed.
pub fn compile(set: &PolicySet, resolved: &Resolved, ids: &mut IdAllocator) -> Result<CompiledPolicy, PolicyErrors> {
    let mut out = CompiledPolicy::default();
    let mut errors = Vec::new();
    host_entries(resolved, &mut out);
    for identity in &set.identities {
        let id = ids.id(&identity.name);
        let info = IdentityInfo {
            mode: match identity.mode {
                Mode::Enforce => MODE_ENFORCE,
                Mode::Audit => MODE_AUDIT,
            },
            flags: identity_flags(identity),
            _pad: [0; 2],
            policy_version: identity.version.short_id(),
        };
        let mut cgroups = Vec::new();
        for cg in &identity.cgroups {
            let cid = match cg.kind {
                SelectorKind::Cgroup => cg.id,
                SelectorKind::Unit(_) | SelectorKind::Managed => resolved.cgroup_ids.get(&cg.path).copied(),
            };
            if let SelectorKind::Unit(_) = cg.kind {
                out.units.push((cg.path.clone(), id));
            }
            if let Some(cid) = cid {
                out.cgroups.push((cid, id));
                cgroups.push((cg.path.clone(), cid));
            }
        }
        out.identities.push(CompiledIdentity {
            id,
            name: identity.name.clone(),
            mode: identity.mode,
            expired: identity.expired,
            info,
            version: identity.version,
            rule_names: identity.egress.iter().map(|r| r.name.clone()).collect(),
            cgroups,
        });
        if identity.expired {
            // Deny-all: no allow entries at all.
            continue;
        }
        if let Err(e) = egress_entries(identity, id, &mut out) {
            errors.push(e);
        }
        if let Some(r) = resolved.identities.get(&identity.name) {
            let mut programs = std::collections::HashSet::new();
            for e in &r.exec {
                // The first rule that allows an inode is the one reported.
                if programs.insert(e.id) {
                    out.exec.push((id, e.id, e.value));
                }
            }
            out.file_exceptions.extend(r.file_exceptions.iter().map(|e| (id, e.id, e.value)));
            out.unix.extend(r.unix_allow.iter().map(|e| (id, e.id)));
            out.unix_abstract.extend(r.unix_allow_abstract.iter().map(|n| (id, n.clone())));
        }
    }
    let half = |cap: u32| (cap / fence_common::GENERATIONS) as usize;
    for (what, needed, max) in [
        ("identity", out.identities.len(), half(capacity::IDENTITIES)),
        ("cgroup", out.cgroups.len(), half(capacity::CGROUPS)),
        ("IPv4 prefix", out.net4.len(), half(capacity::NET4)),
        ("IPv6 prefix", out.net6.len(), half(capacity::NET6)),
        ("exec program", out.exec.len(), half(capacity::EXEC)),
        ("protected file", out.protected.len(), half(capacity::PROTECTED)),
        ("file exception", out.file_exceptions.len(), half(capacity::FILE_EXCEPT)),
        ("unix socket", out.unix.len(), half(capacity::UNIX)),
        ("abstract socket", out.unix_abstract.len(), half(capacity::UNIX_ABSTRACT)),
        ("followed unit", out.units.len(), half(capacity::UNITS)),
    ] {
        if needed > max {
            errors.push(PolicyError {
                file: "<policy set>".into(),
                identity: None,
                field: String::new(),
                kind: PolicyErrorKind::TooLarge { what, needed, max },
            });
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(PolicyErrors(errors)) }
}

fn identity_flags(identity: &Identity) -> u8 {
    let mut flags = 0;
    if identity.expired {
        flags |= IDENTITY_DENY_ALL;
    }
    if let Some(exec) = &identity.exec {
        flags |= IDENTITY_EXEC_ALLOWLIST;
        if exec.fileless {
            flags |= IDENTITY_FILELESS_OK;
        }
    }
    if identity.unix.is_some() {
        flags |= IDENTITY_UNIX_ALLOWLIST;
    }
    flags
}

/// The host-wide entries (identity 0): protected files, default-deny sockets. One inode
/// matched by several patterns gets the union of their flags.
fn host_entries(resolved: &Resolved, out: &mut CompiledPolicy) {
    let mut protected: BTreeMap<ObjectId, u32> = BTreeMap::new();
    for e in &resolved.protected {
        *protected.entry(e.id).or_default() |= e.value;
    }
    out.protected = protected.into_iter().collect();
    let mut sockets: Vec<ObjectId> = resolved.unix_deny.iter().map(|e| e.id).collect();
    sockets.sort();
    sockets.dedup();
    out.unix.extend(sockets.into_iter().map(|id| (0, id)));
    out.unix_abstract.extend(resolved.unix_deny_abstract.iter().map(|n| (0, n.clone())));
}

fn egress_entries(identity: &Identity, id: u32, out: &mut CompiledPolicy) -> Result<(), PolicyError> {
    // Every distinct prefix of the identity, with the rules that name it.
    let mut prefixes: BTreeMap<IpNet, ()> = BTreeMap::new();
    for rule in &identity.egress {
        for net in &rule.nets {
            prefixes.insert(*net, ());
        }
    }
    for prefix in prefixes.keys() {
        let mut contributions = Vec::new();
        for (index, rule) in identity.egress.iter().enumerate() {
            if rule.nets.iter().any(|n| n.contains(prefix)) {
                for range in &rule.ports {
                    contributions.push((range.lo, range.hi, rule.protocols, index as u16));
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
        match *prefix {
            IpNet::V4 { addr, len } => out.net4.push(NetEntry { identity: id, prefix_len: len, addr, rules }),
            IpNet::V6 { addr, len } => out.net6.push(NetEntry { identity: id, prefix_len: len, addr, rules }),
        }
    }
    Ok(())
}

/// Merges overlapping or adjacent ranges per protocol, then joins identical TCP and UDP
/// ranges into one entry. The rule index of a merged range is its first contributor's.
fn merge(contributions: Vec<(u16, u16, u8, u16)>) -> Vec<PortRule> {
    let per_protocol = |bit: u8| -> Vec<(u16, u16, u16)> {
        let mut ranges: Vec<(u16, u16, u16)> =
            contributions.iter().filter(|c| c.2 & bit != 0).map(|&(lo, hi, _, rule)| (lo, hi, rule)).collect();
        ranges.sort();
        let mut merged: Vec<(u16, u16, u16)> = Vec::new();
        for (lo, hi, rule) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(hi);
                    last.2 = last.2.min(rule);
                }
                _ => merged.push((lo, hi, rule)),
            }
        }
        merged
    };
    let tcp = per_protocol(PROTO_TCP);
    let udp = per_protocol(PROTO_UDP);
    let mut out: Vec<PortRule> = Vec::new();
    for &(lo, hi, rule) in &tcp {
        let both = udp.iter().any(|u| u.0 == lo && u.1 == hi);
        let protocols = if both { PROTO_TCP | PROTO_UDP } else { PROTO_TCP };
        out.push(PortRule { lo, hi, protocols, _pad: 0, rule });
    }
    for &(lo, hi, rule) in &udp {
        if !tcp.iter().any(|t| t.0 == lo && t.1 == hi) {
            out.push(PortRule { lo, hi, protocols: PROTO_UDP, _pad: 0, rule });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::{BoundCgroup, EgressRule, SelectorKind, net::PortRange};

    fn net(s: &str) -> IpNet {
        IpNet::parse(s).unwrap()
    }

    fn rule(name: &str, nets: &[&str], ports: &[(u16, u16)], protocols: u8) -> EgressRule {
        EgressRule {
            name: name.into(),
            nets: nets.iter().map(|n| net(n)).collect(),
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            protocols,
        }
    }

    fn identity(name: &str, egress: Vec<EgressRule>) -> Identity {
        Identity {
            name: name.into(),
            owner: "o".into(),
            purpose: "p".into(),
            created: None,
            expires: None,
            expired: false,
            mode: Mode::Enforce,
            cgroups: vec![BoundCgroup { path: format!("/{name}"), id: Some(100), kind: SelectorKind::Cgroup }],
            egress,
            exec: None,
            file_exceptions: vec![],
            unix: None,
            version: PolicyVersion([7; 32]),
            source: PathBuf::from("p.yaml"),
        }
    }

    fn set(identities: Vec<Identity>) -> PolicySet {
        PolicySet { identities }
    }

    fn rules_of(c: &CompiledPolicy, prefix: &str) -> Vec<(u16, u16, u8)> {
        let n = net(prefix);
        let r = match n {
            IpNet::V4 { addr, len } => c.net4.iter().find(|e| e.addr == addr && e.prefix_len == len).map(|e| e.rules),
            IpNet::V6 { addr, len } => c.net6.iter().find(|e| e.addr == addr && e.prefix_len == len).map(|e| e.rules),
        }
        .unwrap_or_else(|| panic!("no entry for {prefix}"));
        r.rules[..r.count as usize].iter().map(|p| (p.lo, p.hi, p.protocols)).collect()
    }

    fn compile_plain(set: &PolicySet, ids: &mut IdAllocator) -> Result<CompiledPolicy, PolicyErrors> {
        compile(set, &Resolved::default(), ids)
    }

    #[test]
    fn one_identity_one_rule() {
        let c = compile_plain(
            &set(vec![identity("a", vec![rule("r", &["127.0.0.1", "::1"], &[(8080, 8080)], PROTO_TCP)])]),
            &mut IdAllocator::default(),
        )
        .unwrap();
        assert_eq!(c.identities.len(), 1);
        assert_eq!(c.identities[0].info.mode, MODE_ENFORCE);
        assert_eq!(c.identities[0].info.policy_version, u32::from_be_bytes([7; 4]));
        assert_eq!(c.cgroups, vec![(100, c.identities[0].id)]);
        assert_eq!(rules_of(&c, "127.0.0.1/32"), vec![(8080, 8080, PROTO_TCP)]);
        assert_eq!(rules_of(&c, "::1/128"), vec![(8080, 8080, PROTO_TCP)]);
        assert_eq!(c.net4[0].prefix_len, 32);
    }

    #[test]
    fn a_more_specific_prefix_keeps_the_ports_of_the_wider_one() {
        let c = compile_plain(
            &set(vec![identity(
                "a",
                vec![
                    rule("wide", &["10.0.0.0/8"], &[(443, 443)], PROTO_TCP),
                    rule("narrow", &["10.1.0.0/16"], &[(80, 80)], PROTO_TCP),
                ],
            )]),
            &mut IdAllocator::default(),
        )
        .unwrap();
        assert_eq!(rules_of(&c, "10.0.0.0/8"), vec![(443, 443, PROTO_TCP)]);
        assert_eq!(rules_of(&c, "10.1.0.0/16"), vec![(80, 80, PROTO_TCP), (443, 443, PROTO_TCP)]);
    }

    #[test]
    fn ranges_merge_and_tcp_udp_twins_join() {
        let c = compile_plain(
            &set(vec![identity(
                "a",
                vec![
                    rule("a", &["0.0.0.0/0"], &[(1000, 2000), (2001, 3000), (53, 53)], PROTO_TCP),
                    rule("b", &["0.0.0.0/0"], &[(53, 53)], PROTO_UDP),
                    rule("c", &["0.0.0.0/0"], &[(1500, 1600)], PROTO_TCP),
                ],
            )]),
            &mut IdAllocator::default(),
        )
        .unwrap();
        assert_eq!(rules_of(&c, "0.0.0.0/0"), vec![(53, 53, PROTO_TCP | PROTO_UDP), (1000, 3000, PROTO_TCP)]);
    }

    #[test]
    fn v4_rules_do_not_leak_into_v6() {
        let c = compile_plain(
            &set(vec![identity("a", vec![rule("r", &["0.0.0.0/0"], &[(1, 65535)], PROTO_TCP | PROTO_UDP)])]),
            &mut IdAllocator::default(),
        )
        .unwrap();
        assert!(c.net6.is_empty());
    }

    #[test]
    fn expired_identities_are_deny_all_with_no_allow_entries() {
        let mut i = identity("a", vec![rule("r", &["0.0.0.0/0"], &[(1, 65535)], PROTO_TCP)]);
        i.expired = true;
        let c = compile_plain(&set(vec![i]), &mut IdAllocator::default()).unwrap();
        assert_eq!(c.identities[0].info.flags, IDENTITY_DENY_ALL);
        assert!(c.net4.is_empty());
        assert_eq!(c.cgroups.len(), 1, "the cgroup stays bound, so it is fenced");
    }

    #[test]
    fn audit_mode_is_carried() {
        let mut i = identity("a", vec![]);
        i.mode = Mode::Audit;
        let c = compile_plain(&set(vec![i]), &mut IdAllocator::default()).unwrap();
        assert_eq!(c.identities[0].info.mode, MODE_AUDIT);
    }

    #[test]
    fn too_many_port_rules_names_identity_and_prefix() {
        let ports: Vec<(u16, u16)> = (0..20).map(|i| (1000 + i * 10, 1000 + i * 10)).collect();
        let e = compile_plain(
            &set(vec![identity("a", vec![rule("r", &["10.0.0.0/8"], &ports, PROTO_TCP)])]),
            &mut IdAllocator::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("identity \"a\"") && e.contains("10.0.0.0/8 carry 20 distinct port rules"), "{e}");
    }

    #[test]
    fn ids_are_stable_across_compiles_and_never_reused() {
        let mut ids = IdAllocator::default();
        let first = compile_plain(&set(vec![identity("a", vec![]), identity("b", vec![])]), &mut ids).unwrap();
        let second = compile_plain(&set(vec![identity("b", vec![]), identity("c", vec![])]), &mut ids).unwrap();
        let id = |c: &CompiledPolicy, n: &str| c.identities.iter().find(|i| i.name == n).unwrap().id;
        assert_eq!(id(&first, "b"), id(&second, "b"));
        assert_ne!(id(&second, "c"), id(&first, "a"));
        assert!(id(&first, "a") >= 1, "0 means no identity");
    }
}

#[cfg(test)]
mod object_tests {
    //! The embedded eBPF object and fence-common agree on every map and program name.

    #[test]
    fn object_defines_every_shared_map_and_program() {
        let bytes = crate::ebpf_object::bytes();
        if bytes.is_empty() {
            panic!("built with AYA_BUILD_SKIP: no eBPF object to check");
        }
        let obj = aya_obj::Object::parse(bytes).expect("the embedded eBPF object parses");
        let mut maps: Vec<&str> = obj.maps.keys().map(String::as_str).filter(|m| !m.starts_with('.')).collect();
        maps.sort();
        let mut expected: Vec<&str> = fence_common::maps::ALL.to_vec();
        expected.sort();
        assert_eq!(maps, expected, "maps in the object vs fence_common::maps::ALL");
        let mut programs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        programs.sort();
        let mut expected: Vec<&str> = fence_common::programs::ALL.to_vec();
        expected.sort();
        assert_eq!(programs, expected, "programs in the object vs fence_common::programs::ALL");
    }
}
