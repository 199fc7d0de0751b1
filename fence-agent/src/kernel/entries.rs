//! Typed entries of the policy maps.

use fence_common::{IdentityInfo, Map, NetRules, PortRule, SCOPE_ALL, Scope};
use serde::Serialize;

use crate::resolve::ObjectId;

/// One egress entry: destinations in `addr/prefix_len` may use `rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetEntry<const N: usize> {
    pub identity: u32,
    pub prefix_len: u8,
    pub addr: [u8; N],
    pub rules: NetRules,
    /// In the host map ([`Map::Host4`], [`Map::Host6`]; a single address of an identity with
    /// `IDENTITY_HOSTS4`/`6`), else in the prefix trie.
    pub hashed: bool,
}

/// One entry of a policy map (see [`fence_common::Map::POLICY`]), without its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapEntry {
    /// Identity id -> mode, flags and policy version.
    Identity {
        identity: u32,
        info: IdentityInfo,
    },
    Net4(NetEntry<4>),
    Net6(NetEntry<16>),
    /// A program the identity may execute (under grant slot `grant`; 0: standing).
    Exec {
        identity: u32,
        object: ObjectId,
        grant: u16,
    },
    /// A protected file or directory of the host (`PROTECT_*` flags).
    Protected {
        object: ObjectId,
        flags: u32,
    },
    /// A readable exception of the identity (`PROTECT_*` flags).
    FileExcept {
        identity: u32,
        object: ObjectId,
        flags: u32,
        grant: u16,
    },
    /// A unix socket the identity may reach; identity 0: the host's default-deny set.
    Unix {
        identity: u32,
        object: ObjectId,
        grant: u16,
    },
    /// An abstract unix socket name, as `Unix`.
    UnixAbstract {
        identity: u32,
        name: Vec<u8>,
        grant: u16,
    },
    /// A unit's cgroup path, bound to the identity by the kernel when it is created.
    Unit {
        path: String,
        identity: u32,
    },
    /// A cgroup bound to an identity.
    Cgroup {
        cgroup_id: u64,
        identity: u32,
    },
    /// The generation's scope: the subtrees that hold its bound cgroups.
    Scope(Scope),
}

impl MapEntry {
    /// The map this entry lives in.
    pub fn map(&self) -> Map {
        match self {
            MapEntry::Identity { .. } => Map::Identities,
            MapEntry::Net4(e) if e.hashed => Map::Host4,
            MapEntry::Net4(_) => Map::Net4,
            MapEntry::Net6(e) if e.hashed => Map::Host6,
            MapEntry::Net6(_) => Map::Net6,
            MapEntry::Exec { .. } => Map::Exec,
            MapEntry::Protected { .. } => Map::Protected,
            MapEntry::FileExcept { .. } => Map::FileExcept,
            MapEntry::Unix { .. } => Map::Unix,
            MapEntry::UnixAbstract { .. } => Map::UnixAbstract,
            MapEntry::Unit { .. } => Map::Units,
            MapEntry::Cgroup { .. } => Map::Cgroups,
            MapEntry::Scope(_) => Map::Scope,
        }
    }

    /// Whether `other` has the same key (and so replaces this entry when written).
    pub fn same_key(&self, other: &MapEntry) -> bool {
        use MapEntry as E;
        match (self, other) {
            (E::Identity { identity: a, .. }, E::Identity { identity: b, .. }) => a == b,
            (E::Net4(a), E::Net4(b)) => {
                (a.hashed, a.identity, a.prefix_len, a.addr) == (b.hashed, b.identity, b.prefix_len, b.addr)
            }
            (E::Net6(a), E::Net6(b)) => {
                (a.hashed, a.identity, a.prefix_len, a.addr) == (b.hashed, b.identity, b.prefix_len, b.addr)
            }
            (E::Exec { identity: a, object: x, .. }, E::Exec { identity: b, object: y, .. })
            | (E::FileExcept { identity: a, object: x, .. }, E::FileExcept { identity: b, object: y, .. })
            | (E::Unix { identity: a, object: x, .. }, E::Unix { identity: b, object: y, .. }) => (a, x) == (b, y),
            (E::Protected { object: x, .. }, E::Protected { object: y, .. }) => x == y,
            (E::UnixAbstract { identity: a, name: x, .. }, E::UnixAbstract { identity: b, name: y, .. }) => {
                (a, x) == (b, y)
            }
            (E::Unit { path: x, .. }, E::Unit { path: y, .. }) => x == y,
            (E::Cgroup { cgroup_id: x, .. }, E::Cgroup { cgroup_id: y, .. }) => x == y,
            (E::Scope(_), E::Scope(_)) => true,
            _ => false,
        }
    }

    /// A readable form (the control socket's `dump`, test assertions).
    pub fn view(&self) -> EntryView {
        let object = |o: &ObjectId| Some(format!("{}:{}", o.dev, o.ino));
        let base = |identity: u32| EntryView { map: self.map().name().into(), identity, ..EntryView::default() };
        match self {
            MapEntry::Identity { identity, info } => EntryView {
                value: Some(format!("mode={} flags={} version={:08x}", info.mode, info.flags, info.policy_version)),
                ..base(*identity)
            },
            MapEntry::Net4(e) => EntryView {
                key: Some(format!("{}/{}", std::net::Ipv4Addr::from(e.addr), e.prefix_len)),
                value: Some(port_rules(&e.rules)),
                ..base(e.identity)
            },
            MapEntry::Net6(e) => EntryView {
                key: Some(format!("{}/{}", std::net::Ipv6Addr::from(e.addr), e.prefix_len)),
                value: Some(port_rules(&e.rules)),
                ..base(e.identity)
            },
            MapEntry::Exec { identity, object: o, grant } | MapEntry::Unix { identity, object: o, grant } => {
                EntryView { key: object(o), value: granted(*grant), ..base(*identity) }
            }
            MapEntry::Protected { object: o, flags } => {
                EntryView { key: object(o), value: Some(flags.to_string()), ..base(0) }
            }
            MapEntry::FileExcept { identity, object: o, flags, grant } => {
                let value = match granted(*grant) {
                    Some(g) => format!("{flags} {g}"),
                    None => flags.to_string(),
                };
                EntryView { key: object(o), value: Some(value), ..base(*identity) }
            }
            MapEntry::UnixAbstract { identity, name, grant } => EntryView {
                key: Some(format!("@{}", String::from_utf8_lossy(name))),
                value: granted(*grant),
                ..base(*identity)
            },
            MapEntry::Unit { path, identity } => EntryView { key: Some(path.clone()), ..base(*identity) },
            MapEntry::Cgroup { cgroup_id, identity } => {
                EntryView { key: Some(cgroup_id.to_string()), ..base(*identity) }
            }
            MapEntry::Scope(scope) => EntryView {
                value: Some(if scope.count == SCOPE_ALL {
                    "all".to_owned()
                } else {
                    let n = (scope.count as usize).min(scope.points.len());
                    let points: Vec<String> =
                        scope.points[..n].iter().map(|p| format!("{}@{}", p.cgroup_id, p.level)).collect();
                    points.join(" ")
                }),
                ..base(0)
            },
        }
    }
}

/// `grant=N` for a rule of grant slot N, nothing for a standing rule.
fn granted(grant: u16) -> Option<String> {
    (grant != 0).then(|| format!("grant={grant}"))
}

/// `lo-hi/tcp+udp,...`
fn port_rules(r: &NetRules) -> String {
    port_rules_text(&r.rules[..(r.count as usize).min(r.rules.len())])
}

/// Port rules as `443/tcp,8000-8080/tcp+udp`.
pub fn port_rules_text(rules: &[PortRule]) -> String {
    let parts: Vec<String> = rules
        .iter()
        .map(|p| {
            let proto = match (p.protocols & fence_common::PROTO_TCP != 0, p.protocols & fence_common::PROTO_UDP != 0) {
                (true, true) => "tcp+udp",
                (true, false) => "tcp",
                (false, true) => "udp",
                (false, false) => "none",
            };
            let ports = if p.lo == p.hi { format!("{}/{proto}", p.lo) } else { format!("{}-{}/{proto}", p.lo, p.hi) };
            match granted(p.grant) {
                Some(g) => format!("{ports} {g}"),
                None => ports,
            }
        })
        .collect();
    parts.join(",")
}

/// One map entry in readable form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EntryView {
    pub map: std::borrow::Cow<'static, str>,
    pub identity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}
