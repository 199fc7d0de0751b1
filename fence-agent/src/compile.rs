//! The policy compiler: a validated [`PolicySet`] and what its paths resolved to on this host
//! in, plain map entries out. Pure: no kernel, no files. Each fence unit compiles its own
//! section (see [`crate::fences`]); this module numbers identities, builds what every unit
//! shares about an identity, and checks the result against the maps' capacities.

use std::collections::HashMap;

use fence_common::{IDENTITY_DENY_ALL, IdentityInfo, MODE_AUDIT, MODE_ENFORCE, Map};

use crate::{
    fences::{IdentityInput, UNITS, bindings},
    kernel::MapEntry,
    policy::{Mode, PolicyError, PolicyErrorKind, PolicyErrors, PolicySet, PolicyVersion, SelectorKind},
    resolve::Resolved,
};

/// Identity ids stay the same for a name across reloads, and across agent restarts when the
/// allocator is kept in the state directory, so that events recorded by the kernel under an
/// earlier policy (or while no agent ran) keep their meaning. Ids are never reused.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
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
        crate::persist::write_private(path, &serde_json::to_vec(self).map_err(std::io::Error::other)?)
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

/// What one policy generation holds: the identities (for the event directory, the fanotify
/// fallback and status) and the map entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompiledPolicy {
    pub identities: Vec<CompiledIdentity>,
    pub entries: Vec<MapEntry>,
    /// The end (boot clock, ns) of each grant slot the entries name: what user-space
    /// enforcement (the fanotify file fallback) honours a granted entry until.
    pub grant_ends: std::collections::BTreeMap<u16, u64>,
}

impl CompiledPolicy {
    /// Entries per policy map.
    pub fn counts(&self) -> Vec<(Map, usize)> {
        Map::POLICY.iter().map(|&m| (m, self.entries.iter().filter(|e| e.map() == m).count())).collect()
    }
}

impl CompiledPolicy {
    /// The name of identity `id`.
    pub fn name_of(&self, id: u32) -> Option<&str> {
        self.identities.iter().find(|i| i.id == id).map(|i| i.name.as_str())
    }
}

/// Which identity a cgroup path carries: the deepest bound ancestor, as the kernel decides
/// (the kernel walks ids; user space, which knows paths, walks paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings(HashMap<String, u32>);

impl Bindings {
    pub fn of(compiled: &CompiledPolicy) -> Bindings {
        Bindings(
            compiled
                .identities
                .iter()
                .flat_map(|i| i.cgroups.iter().map(move |(path, _)| (path.clone(), i.id)))
                .collect(),
        )
    }

    /// The identity of a process in cgroup `path` (relative to the cgroup2 mount).
    pub fn identity_of(&self, path: &str) -> Option<u32> {
        let mut p = path.trim_end_matches('/');
        loop {
            if let Some(&id) = self.0.get(p) {
                return Some(id);
            }
            match p.rfind('/') {
                Some(0) | None => return None,
                Some(i) => p = &p[..i],
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledIdentity {
    pub id: u32,
    pub name: String,
    pub mode: Mode,
    pub expired: bool,
    pub info: IdentityInfo,
    pub version: PolicyVersion,
    /// (path, id) of the bound cgroups that exist now.
    pub cgroups: Vec<(String, u64)>,
}

/// Compiles `set` with what `resolved` found on this host. Fails only on limits of the
/// kernel maps, naming the identity or what overflowed.
pub fn compile(set: &PolicySet, resolved: &Resolved, ids: &mut IdAllocator) -> Result<CompiledPolicy, PolicyErrors> {
    let mut out = CompiledPolicy::default();
    let mut errors = Vec::new();
    for unit in UNITS {
        (unit.compile_host)(resolved, &mut out.entries);
    }
    for identity in &set.identities {
        let mut flags = UNITS.iter().fold(0, |f, u| f | (u.flags)(identity));
        if identity.expired {
            flags |= IDENTITY_DENY_ALL;
        }
        let mode = match identity.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        };
        let cgroups = identity
            .cgroups
            .iter()
            .filter_map(|cg| {
                let id = match cg.kind {
                    SelectorKind::Cgroup => cg.id,
                    SelectorKind::Unit(_) | SelectorKind::Managed => resolved.cgroup_ids.get(&cg.path).copied(),
                };
                id.map(|id| (cg.path.clone(), id))
            })
            .collect();
        let compiled = CompiledIdentity {
            id: ids.id(&identity.name),
            name: identity.name.clone(),
            mode: identity.mode,
            expired: identity.expired,
            info: bindings::info(mode, flags, identity.version.short_id()),
            version: identity.version,
            cgroups,
        };
        let input = IdentityInput { identity, compiled: &compiled, resolved: resolved.identities.get(&identity.name) };
        // An expired identity keeps its bindings (it is fenced) and nothing else (deny-all).
        for unit in UNITS.iter().filter(|u| !identity.expired || u.keeps_expired) {
            if let Err(e) = (unit.compile_identity)(&input, &mut out.entries) {
                errors.push(e);
            }
        }
        out.identities.push(compiled);
    }
    for (map, needed) in out.counts() {
        let max = map.per_generation() as usize;
        if needed > max {
            errors.push(PolicyError {
                file: "<policy set>".into(),
                identity: None,
                field: String::new(),
                kind: PolicyErrorKind::TooLarge { what: map.spec().entry, needed, max },
            });
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(PolicyErrors(errors)) }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use fence_common::PROTO_TCP;

    use super::*;
    use crate::policy::{BoundCgroup, EgressRule, Identity, net::IpNet, net::PortRange};

    pub fn net(s: &str) -> IpNet {
        IpNet::parse(s).unwrap()
    }

    pub fn rule(name: &str, nets: &[&str], ports: &[(u16, u16)], protocols: u8) -> EgressRule {
        EgressRule {
            name: name.into(),
            nets: nets.iter().map(|n| net(n)).collect(),
            names: Vec::new(),
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            protocols,
            grant: 0,
        }
    }

    pub fn identity(name: &str, egress: Vec<EgressRule>) -> Identity {
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
            grantable: vec![],
            grants_in_force: vec![],
            secrets: vec![],
            version: PolicyVersion([7; 32]),
            source: PathBuf::from("p.yaml"),
        }
    }

    pub fn set(identities: Vec<Identity>) -> PolicySet {
        PolicySet { identities }
    }

    fn compile_plain(set: &PolicySet, ids: &mut IdAllocator) -> Result<CompiledPolicy, PolicyErrors> {
        compile(set, &Resolved::default(), ids)
    }

    fn cgroup_entries(c: &CompiledPolicy) -> Vec<(u64, u32)> {
        c.entries
            .iter()
            .filter_map(|e| match e {
                MapEntry::Cgroup { cgroup_id, identity } => Some((*cgroup_id, *identity)),
                _ => None,
            })
            .collect()
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
        assert_eq!(cgroup_entries(&c), vec![(100, c.identities[0].id)]);
        assert_eq!(c.counts().iter().find(|(m, _)| *m == Map::Net4).unwrap().1, 1);
    }

    #[test]
    fn expired_identities_are_deny_all_with_no_allow_entries() {
        let mut i = identity("a", vec![rule("r", &["0.0.0.0/0"], &[(1, 65535)], PROTO_TCP)]);
        i.expired = true;
        let c = compile_plain(&set(vec![i]), &mut IdAllocator::default()).unwrap();
        assert_eq!(c.identities[0].info.flags, IDENTITY_DENY_ALL);
        assert!(!c.entries.iter().any(|e| matches!(e, MapEntry::Net4(_))));
        assert_eq!(cgroup_entries(&c).len(), 1, "the cgroup stays bound, so it is fenced");
    }

    #[test]
    fn audit_mode_is_carried() {
        let mut i = identity("a", vec![]);
        i.mode = Mode::Audit;
        let c = compile_plain(&set(vec![i]), &mut IdAllocator::default()).unwrap();
        assert_eq!(c.identities[0].info.mode, MODE_AUDIT);
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

    #[test]
    fn the_deepest_bound_ancestor_decides() {
        let mut a = identity("a", vec![]);
        a.cgroups[0].path = "/x".into();
        let mut b = identity("b", vec![]);
        b.cgroups[0].path = "/x/y".into();
        b.cgroups[0].id = Some(101);
        let c = compile_plain(&set(vec![a, b]), &mut IdAllocator::default()).unwrap();
        let bindings = Bindings::of(&c);
        let name = |p: &str| bindings.identity_of(p).and_then(|id| c.name_of(id));
        assert_eq!(name("/x"), Some("a"));
        assert_eq!(name("/x/z/w"), Some("a"));
        assert_eq!(name("/x/y/z"), Some("b"));
        assert_eq!(name("/xy"), None);
        assert_eq!(name("/"), None);
    }

    #[test]
    fn map_capacity_is_checked_per_generation_with_the_entry_named() {
        let mut resolved = Resolved::default();
        for ino in 0..u64::from(Map::Protected.per_generation()) + 1 {
            resolved.protected.push(crate::resolve::Entry::new(
                crate::resolve::ObjectId { dev: 1, ino },
                PathBuf::from("/x"),
                fence_common::PROTECT_FILE,
            ));
        }
        let e = compile(&set(vec![]), &resolved, &mut IdAllocator::default()).unwrap_err().to_string();
        assert!(e.contains("protected file"), "{e}");
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
        let mut expected: Vec<&str> = fence_common::Map::ALL.iter().map(|m| m.name()).collect();
        expected.sort();
        assert_eq!(maps, expected, "maps in the object vs fence_common::Map::ALL");
        let mut programs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        programs.sort();
        let mut expected: Vec<&str> = fence_common::programs::ALL.to_vec();
        expected.sort();
        assert_eq!(programs, expected, "programs in the object vs fence_common::programs::ALL");
    }
}
