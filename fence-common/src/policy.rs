//! Keys and values of the policy maps (see [`crate::Map::POLICY`]), and the constants that give
//! their fields meaning.

/// The live generation. Stored at index 0 of [`crate::Map::Active`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveState {
    /// Live slot, 0 or 1.
    pub generation: u32,
    /// [`crate::ABI_VERSION`] of the agent that wrote the policy.
    pub abi: u32,
    /// Monotonic apply sequence number of the live policy.
    pub sequence: u64,
}

/// At most this many points in a [`Scope`]; a policy with more has [`SCOPE_ALL`].
pub const SCOPE_POINTS: usize = 16;
/// `Scope::count`: no filter; every task may be fenced (the identity lookup runs for all).
pub const SCOPE_ALL: u32 = u32::MAX;

/// One cgroup under which fenced tasks live: its id and its level (the root is level 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopePoint {
    pub cgroup_id: u64,
    pub level: u32,
    pub _pad: u32,
}

/// Value of [`crate::Map::Scope`] at index `generation`: the cgroups whose subtrees hold every
/// cgroup bound in that generation (the attach points). A task whose ancestor at a point's
/// level is not that point is not fenced, and the hooks let it go after one array read and a
/// helper call per point, without the identity lookup. Kept per generation so that it flips
/// with the bindings it covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Points in use, or [`SCOPE_ALL`]. 0: nothing is fenced in this generation.
    pub count: u32,
    pub _pad: u32,
    pub points: [ScopePoint; SCOPE_POINTS],
}

/// Key of [`crate::Map::Cgroups`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    pub generation: u32,
    pub _pad: u32,
}

/// Key of [`crate::Map::IdentityCache`]: a cgroup, under one policy generation and apply
/// sequence (both, so that a reader that saw a generation and a sequence from two different
/// applies never shares entries with one that saw them from the same apply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub cgroup_id: u64,
    /// The low 32 bits of `ActiveState::sequence`.
    pub sequence: u32,
    pub generation: u32,
}

/// A destination that an identity's egress rules (the prefix maps, not learned names) allowed
/// under one policy generation and apply sequence: the key of an entry of
/// [`crate::Map::Verdicts`]. A new policy (a new sequence) never finds an older one's entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    /// The low 32 bits of `ActiveState::sequence`.
    pub sequence: u32,
    pub generation: u32,
    pub identity: u32,
    /// Host byte order.
    pub port: u16,
    /// A `PROTO_*` bit.
    pub protocol: u8,
    /// 4: `addr` holds an IPv4 address (IPv4-mapped destinations included) in its first 4
    /// bytes; 6: an IPv6 address.
    pub family: u8,
    pub addr: [u8; 16],
}

/// Entries per CPU of [`crate::Map::Verdicts`] (a power of two: the index is the key's hash
/// masked).
pub const VERDICT_SLOTS: u32 = 4_096;

/// One entry of [`crate::Map::Verdicts`], a per-CPU array indexed by the key's hash: the
/// destination, the grant slot of the rule that allowed it (0: standing), and a check over
/// both. A program may be preempted while it writes or reads an entry and another program on
/// the same CPU write it meanwhile; an entry read in pieces of two writes does not match its
/// check (but for one chance in 2^32) and counts as absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictEntry {
    pub key: VerdictKey,
    pub slot: u32,
    pub check: u32,
}

impl VerdictKey {
    /// A 64-bit hash of the key (multiply and xor-shift per 32-bit word).
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        let a = &self.addr;
        let words = [
            self.sequence,
            self.generation,
            self.identity,
            u32::from(self.port) | u32::from(self.protocol) << 16 | u32::from(self.family) << 24,
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut i = 0;
        while i < words.len() {
            h = (h ^ u64::from(words[i])).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h ^= h >> 31;
            i += 1;
        }
        h
    }

    /// The entry's index in a CPU's array, from [`VerdictKey::hash`].
    #[inline(always)]
    pub fn index(hash: u64) -> u32 {
        (hash as u32) & (VERDICT_SLOTS - 1)
    }

    /// The entry's check, from the key's hash and the slot.
    #[inline(always)]
    pub fn check(hash: u64, slot: u32) -> u32 {
        let h = (hash ^ u64::from(slot) << 17).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((h ^ (h >> 29)) >> 32) as u32
    }
}

/// Key of [`crate::Map::Identities`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub generation: u32,
    pub identity: u32,
}

/// `IdentityInfo::mode`: deny what the policy does not allow.
pub const MODE_ENFORCE: u8 = 1;
/// `IdentityInfo::mode`: allow, and report what enforce mode would deny.
pub const MODE_AUDIT: u8 = 2;

/// `IdentityInfo::flags`: deny everything (the identity has expired: fail closed).
pub const IDENTITY_DENY_ALL: u8 = 1;
/// `IdentityInfo::flags`: the identity has an exec allow-list; other programs are denied.
pub const IDENTITY_EXEC_ALLOWLIST: u8 = 2;
/// `IdentityInfo::flags`: executing unlinked files (memfd, deleted files) is allowed.
pub const IDENTITY_FILELESS_OK: u8 = 4;
/// `IdentityInfo::flags`: the identity has a unix-socket allow-list; other sockets are denied.
/// Without it only the host's default-deny sockets are denied.
pub const IDENTITY_UNIX_ALLOWLIST: u8 = 8;
/// `IdentityInfo::flags`: the identity's single IPv4 addresses are in [`crate::Map::Host4`]
/// (it has many); without it every IPv4 rule of the identity is in [`crate::Map::Net4`].
pub const IDENTITY_HOSTS4: u8 = 16;
/// `IdentityInfo::flags`: as [`IDENTITY_HOSTS4`], IPv6 ([`crate::Map::Host6`]).
pub const IDENTITY_HOSTS6: u8 = 32;

/// Value of [`crate::Map::Identities`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityInfo {
    /// [`MODE_ENFORCE`] or [`MODE_AUDIT`]. Any other value is treated as enforce.
    pub mode: u8,
    /// `IDENTITY_*` flags.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Agent-side index of the identity's policy version, reported in events.
    pub policy_version: u32,
}

/// Data part of an IPv4 LPM key. The prefix length counts the 64 bits of `generation` and
/// `identity` (always fully matched) plus the CIDR length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net4Key {
    pub generation: u32,
    pub identity: u32,
    /// Address in network byte order.
    pub addr: [u8; 4],
}

/// Data part of an IPv6 LPM key, as [`Net4Key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net6Key {
    pub generation: u32,
    pub identity: u32,
    /// Address in network byte order.
    pub addr: [u8; 16],
}

/// Bits of the key prefix taken by `generation` and `identity`.
pub const NET_KEY_PREFIX_BITS: u32 = 64;

/// `PortRule::protocols` bit: TCP.
pub const PROTO_TCP: u8 = 1;
/// `PortRule::protocols` bit: UDP.
pub const PROTO_UDP: u8 = 2;

/// Port rules that one prefix of one identity can carry (after the compiler merges the rules
/// of every less specific prefix into it).
pub const MAX_PORT_RULES: usize = 16;

/// One allowed port range for a set of protocols.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    /// First allowed port (host byte order).
    pub lo: u16,
    /// Last allowed port, inclusive.
    pub hi: u16,
    /// `PROTO_*` bits.
    pub protocols: u8,
    pub _pad: u8,
    /// The just-in-time grant slot the rule belongs to ([`crate::Map::Grants`]); 0: a standing
    /// rule.
    pub grant: u16,
}

impl PortRule {
    pub const fn new(lo: u16, hi: u16, protocols: u8, grant: u16) -> PortRule {
        PortRule { lo, hi, protocols, _pad: 0, grant }
    }
}

/// Value of the LPM maps: every port rule that applies to destinations in the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetRules {
    /// Number of valid entries in `rules` (at most [`MAX_PORT_RULES`]).
    pub count: u32,
    pub _pad: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}

impl NetRules {
    /// Whether `port` over `protocol` (a `PROTO_*` bit) is allowed by a standing rule.
    #[inline(always)]
    pub fn allows(&self, protocol: u8, port: u16) -> bool {
        self.allows_where(protocol, port, |grant| grant == 0).is_some()
    }

    /// The grant slot of a rule that allows `port` over `protocol` (0: a standing rule), among
    /// the standing rules and the rules of grants `live` says are in force.
    #[inline(always)]
    pub fn allows_where(&self, protocol: u8, port: u16, live: impl Fn(u16) -> bool) -> Option<u16> {
        let mut i = 0;
        while i < MAX_PORT_RULES {
            if i as u32 >= self.count {
                return None;
            }
            let r = &self.rules[i];
            if r.protocols & protocol != 0 && r.lo <= port && port <= r.hi && (r.grant == 0 || live(r.grant)) {
                return Some(r.grant);
            }
            i += 1;
        }
        None
    }
}

/// Key of the inode maps (`Exec`, `Protected`, `FileExcept`, `Unix`). `identity` is 0 for
/// host-wide entries. `dev` is the kernel's `super_block.s_dev` encoding (major << 20 | minor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub generation: u32,
    pub identity: u32,
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// Inode-map values (`Exec`, `FileExcept`, `Unix`, `UnixAbstract`) carry a grant slot in their
/// high 16 bits (0: standing) and `PROTECT_*` flags (or 1) in the low 16.
pub const GRANT_SHIFT: u32 = 16;

/// An inode-map value: `flags` for grant slot `grant`.
pub const fn inode_value(flags: u32, grant: u16) -> u32 {
    (flags & 0xffff) | ((grant as u32) << GRANT_SHIFT)
}

/// The grant slot of an inode-map value.
pub const fn grant_of(value: u32) -> u16 {
    (value >> GRANT_SHIFT) as u16
}

/// The flags of an inode-map value.
pub const fn flags_of(value: u32) -> u32 {
    value & 0xffff
}

/// `Protected`/`FileExcept` values: the inode itself.
pub const PROTECT_FILE: u32 = 1;
/// `Protected`/`FileExcept` values: a directory and everything below it.
pub const PROTECT_TREE: u32 = 2;
/// `Protected` values: `.env*` files anywhere below this directory.
pub const PROTECT_ENV_ROOT: u32 = 4;

/// Longest abstract socket name kept (sun_path is 108 bytes, the first is the NUL).
pub const ABSTRACT_NAME_LEN: usize = 107;

/// Key of [`crate::Map::UnixAbstract`]: an abstract name without its leading NUL, zero padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbstractKey {
    pub generation: u32,
    pub identity: u32,
    pub len: u32,
    pub name: [u8; ABSTRACT_NAME_LEN],
    pub _pad: u8,
}

impl Default for AbstractKey {
    fn default() -> Self {
        AbstractKey { generation: 0, identity: 0, len: 0, name: [0; ABSTRACT_NAME_LEN], _pad: 0 }
    }
}

/// Longest cgroup path (relative to the cgroup2 mount) a unit selector can follow.
pub const UNIT_PATH_LEN: usize = 128;

/// Key of [`crate::Map::Units`]: a cgroup path as the `cgroup_mkdir` tracepoint gives it
/// (`/system.slice/ci.service`), NUL padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnitKey {
    pub generation: u32,
    pub _pad: u32,
    pub path: [u8; UNIT_PATH_LEN],
}

impl Default for UnitKey {
    fn default() -> Self {
        UnitKey { generation: 0, _pad: 0, path: [0; UNIT_PATH_LEN] }
    }
}

// Layout pins: a change on one side that is not mirrored fails to compile.
const _: () = {
    assert!(core::mem::size_of::<ActiveState>() == 16);
    assert!(core::mem::size_of::<CgroupKey>() == 16);
    assert!(core::mem::size_of::<ScopePoint>() == 16);
    assert!(core::mem::size_of::<Scope>() == 8 + 16 * SCOPE_POINTS);
    assert!(core::mem::size_of::<CacheKey>() == 16);
    assert!(core::mem::size_of::<IdentityKey>() == 8);
    assert!(core::mem::size_of::<VerdictKey>() == 32);
    assert!(core::mem::size_of::<VerdictEntry>() == 40);
    assert!(VERDICT_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<IdentityInfo>() == 8);
    assert!(core::mem::size_of::<Net4Key>() == 12);
    assert!(core::mem::size_of::<Net6Key>() == 24);
    assert!(core::mem::size_of::<PortRule>() == 8);
    assert!(core::mem::size_of::<NetRules>() == 8 + 8 * MAX_PORT_RULES);
    assert!(core::mem::size_of::<InodeKey>() == 24);
    assert!(core::mem::size_of::<AbstractKey>() == 120);
    assert!(core::mem::size_of::<UnitKey>() == 8 + UNIT_PATH_LEN);
};

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(u16, u16, u8)]) -> NetRules {
        let mut r = NetRules::default();
        for (i, &(lo, hi, protocols)) in list.iter().enumerate() {
            r.rules[i] = PortRule::new(lo, hi, protocols, 0);
        }
        r.count = list.len() as u32;
        r
    }

    #[test]
    fn allows_matches_port_range_and_protocol() {
        let r = rules(&[(443, 443, PROTO_TCP), (8000, 8080, PROTO_TCP | PROTO_UDP)]);
        assert!(r.allows(PROTO_TCP, 443));
        assert!(!r.allows(PROTO_UDP, 443));
        assert!(r.allows(PROTO_UDP, 8000));
        assert!(r.allows(PROTO_TCP, 8080));
        assert!(!r.allows(PROTO_TCP, 8081));
        assert!(!r.allows(PROTO_TCP, 22));
    }

    #[test]
    fn allows_ignores_entries_past_count() {
        let mut r = rules(&[(53, 53, PROTO_UDP)]);
        r.rules[1] = PortRule::new(0, 65535, PROTO_TCP | PROTO_UDP, 0);
        assert!(!r.allows(PROTO_TCP, 22));
        assert!(r.allows(PROTO_UDP, 53));
        assert!(!NetRules::default().allows(PROTO_TCP, 1));
    }

    #[test]
    fn grant_rules_allow_only_while_their_grant_is_live() {
        let mut r = rules(&[(443, 443, PROTO_TCP)]);
        r.rules[1] = PortRule::new(5432, 5432, PROTO_TCP, 7);
        r.count = 2;
        assert_eq!(r.allows_where(PROTO_TCP, 5432, |g| g == 7), Some(7));
        assert_eq!(r.allows_where(PROTO_TCP, 5432, |_| false), None);
        assert_eq!(r.allows_where(PROTO_TCP, 443, |_| false), Some(0));
        assert!(!r.allows(PROTO_TCP, 5432), "allows() is standing rules only");
    }

    #[test]
    fn verdict_hash_spreads_and_check_binds_the_slot() {
        let key = |port: u16, last: u8| VerdictKey {
            sequence: 7,
            generation: 1,
            identity: 3,
            port,
            protocol: PROTO_TCP,
            family: 4,
            addr: [127, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let a = key(443, 1);
        assert_eq!(a.hash(), key(443, 1).hash());
        // Neighbouring destinations land on different entries (most of them).
        let mut seen = [false; VERDICT_SLOTS as usize];
        for port in 0..1024u16 {
            seen[VerdictKey::index(key(port, 1).hash()) as usize] = true;
        }
        let distinct = seen.iter().filter(|&&s| s).count();
        assert!(distinct > 800, "{distinct} distinct indices of 1024");
        // Every field counts.
        let h = a.hash();
        for other in [
            VerdictKey { sequence: 8, ..a },
            VerdictKey { generation: 0, ..a },
            VerdictKey { identity: 4, ..a },
            VerdictKey { protocol: PROTO_UDP, ..a },
            VerdictKey { family: 6, ..a },
            key(443, 2),
        ] {
            assert_ne!(other.hash(), h, "{other:?}");
        }
        // The check binds the slot: the same key with another slot does not match.
        assert_ne!(VerdictKey::check(h, 0), VerdictKey::check(h, 5));
        assert_ne!(VerdictKey::check(h, 0), VerdictKey::check(key(443, 2).hash(), 0));
    }

    #[test]
    fn protocol_zero_never_matches() {
        let r = rules(&[(0, 65535, PROTO_TCP | PROTO_UDP)]);
        assert!(!r.allows(0, 80));
    }
}
