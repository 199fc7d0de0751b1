//! The one table of fence's maps: name (the identifier of the static in `fence-ebpf`), kind,
//! capacity, what one entry is, and whether it holds policy (two generations). The kernel side
//! sizes its maps from it; the agent writes, clears and reads back policy maps by iterating
//! [`Map::POLICY`]; the agent's unit tests parse the built object and check that it defines
//! exactly [`Map::ALL`].

/// Number of policy generations (slots).
pub const GENERATIONS: u32 = 2;

/// The kind of a BPF map, as the kernel side declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Array,
    Hash,
    LruHash,
    LpmTrie,
    PerCpuArray,
    RingBuf,
}

/// What the table says about one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name in the object (the static's identifier in `fence-ebpf`).
    pub name: &'static str,
    pub kind: MapKind,
    /// Maximum entries (for policy maps: across both generations); bytes for the ring buffer.
    pub capacity: u32,
    /// What one entry is, for messages ("IPv4 prefix").
    pub entry: &'static str,
    /// Holds policy, keyed by generation: written into the inactive generation and flipped.
    pub policy: bool,
}

/// Every map of fence.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Map {
    /// `Array<ActiveState>`, one entry: which generation is live.
    Active,
    /// `HashMap<CgroupKey, u32>`: cgroup id -> identity id.
    Cgroups,
    /// `Array<Scope>`, one entry per generation: the subtrees that hold its bound cgroups;
    /// tasks elsewhere are unfenced without an identity lookup.
    Scope,
    /// `HashMap<IdentityKey, IdentityInfo>`: per-identity mode, flags and policy version.
    Identities,
    /// `HashMap<UnitKey, u32>`: cgroup paths of units followed by identity selectors; a cgroup
    /// created at such a path is bound to the identity by the kernel, at creation.
    Units,
    /// `LpmTrie<Net4Key, NetRules>`: IPv4 egress allow-list (but the single addresses of
    /// identities with `IDENTITY_HOSTS4`).
    Net4,
    /// `HashMap<Net4Key, NetRules>`: IPv4 egress allow-list, the single addresses (/32) of
    /// identities with many (`IDENTITY_HOSTS4`): one hash lookup whatever their number, before
    /// the prefixes are searched.
    Host4,
    /// `HashMap<Net6Key, NetRules>`: as `Host4`, IPv6 (/128).
    Host6,
    /// `LpmTrie<Net6Key, NetRules>`: IPv6 egress allow-list, as `Net4`.
    Net6,
    /// `HashMap<InodeKey, u32>`: programs an identity may execute (value 1).
    Exec,
    /// `HashMap<InodeKey, u32>`: the host's protected files and directories (identity 0;
    /// value: `PROTECT_*` flags).
    Protected,
    /// `HashMap<InodeKey, u32>`: per-identity readable exceptions (value: `PROTECT_*` flags).
    FileExcept,
    /// `HashMap<InodeKey, u32>`: unix socket inodes an identity may connect to; identity 0
    /// holds the host's default-deny sockets.
    Unix,
    /// `HashMap<AbstractKey, u32>`: abstract unix socket names, as `Unix`.
    UnixAbstract,
    /// `Array<EventLimit>`, one entry: the event rate limit, set by the agent.
    EventLimit,
    /// `HashMap<RateKey, RateState>`: the rate limiter's state per (identity, operation,
    /// verdict), and the events it suppressed.
    EventRate,
    /// `RingBuf` of event records (see [`crate::EventHeader`]).
    Events,
    /// `PerCpuArray<u64>` of counters indexed by [`crate::counter`].
    Counters,
    /// `LruHashMap<CacheKey, u32>`: the identity of a cgroup (0: none), as the ancestor walk
    /// found it for one policy generation and sequence. Makes "is this task fenced?" one
    /// lookup; a new policy (a new sequence) starts an empty cache.
    IdentityCache,
    /// `PerCpuArray<VerdictEntry>`: egress destinations the prefix rules allowed, with the
    /// allowing rule's grant slot (0: standing), per policy generation and sequence, each at
    /// the index of its hash. Makes an allowed connect or sendmsg one array read whatever the
    /// policy's size.
    Verdicts,
    /// `HashMap<u32, u64>`: the agent's own process ids (tgid -> the agent's cgroup id). The
    /// agent's tasks are never fenced while in that cgroup (a process id alone can be reused
    /// once the agent stops), and no fenced task may signal or trace them, whatever their
    /// cgroup.
    AgentTasks,
    /// `Array<u64>`, one entry: the token ([`crate::globals::RUN`]) of the run whose programs
    /// report events. With persistence every run of one ABI shares this map (pinned beside
    /// the runs), so that while a new run takes over from an earlier one, whose programs
    /// still enforce, each decision is reported by exactly one of them: one map write moves
    /// the reporting from the earlier run to the new one. A BPF LSM refusal is reported by the
    /// program that makes it, reporting run or not: it ends the hook's chain of programs, so
    /// no other program sees the operation ([`crate::Mechanism::refusal_ends_chain`]).
    Reporter,
    /// `HashMap<u32, DnsResolver>`: identity -> where its DNS is steered; the key
    /// [`crate::DNS_STEERING`] turns steering on. Shared by every run (pinned beside them).
    DnsResolvers,
    /// `LruHashMap<u64, DnsSteered>`: socket cookie -> the DNS server a steered socket named,
    /// for replies and getpeername.
    DnsSteered,
    /// `HashMap<Learned4Key, LearnedRules>`: IPv4 addresses an identity resolved through an
    /// allowed name, with the name's ports and an expiry the kernel checks. Shared by every
    /// run.
    Learned4,
    /// `HashMap<Learned6Key, LearnedRules>`: as `Learned4`, IPv6.
    Learned6,
    /// `Array<GrantState>`: per just-in-time grant slot, its end on the kernel clock (see
    /// [`crate::grants`]). Shared by every run.
    Grants,
    /// `PerCpuArray<u64>`: per grant slot, the operations allowed through it. Shared by every run.
    GrantUses,
    /// `LruHashMap<u32, ExecCaller>`: thread id -> the command name and executable it had
    /// just before its exec (`sched_prepare_exec`), for the exec fallback's event, which
    /// the kernel makes after the exec.
    ExecCaller,
    /// `PerCpuArray<ExecCaller>`, one entry: where an `ExecCaller` is built (too big for the
    /// BPF stack).
    ExecScratch,
    /// `LruHashMap<u64, u32>`: file (its kernel address) -> the process id of the unfenced
    /// task that last chose who gets the file's SIGIO/SIGURG. A signal such a task chose for
    /// itself is its own, whoever's I/O raises it; see `escape::fence_lsm_file_send_sigiotask`.
    FileOwners,
}

impl Map {
    /// Every map the object defines; the policy maps among them in the order a generation is
    /// written (bindings last: an identity is only reachable once its rules are in place).
    pub const ALL: [Map; 31] = [
        Map::Active,
        Map::Identities,
        Map::Host4,
        Map::Host6,
        Map::Net4,
        Map::Net6,
        Map::Exec,
        Map::Protected,
        Map::FileExcept,
        Map::Unix,
        Map::UnixAbstract,
        Map::Scope,
        Map::Units,
        Map::Cgroups,
        Map::EventLimit,
        Map::EventRate,
        Map::Events,
        Map::Counters,
        Map::IdentityCache,
        Map::Verdicts,
        Map::AgentTasks,
        Map::Reporter,
        Map::DnsResolvers,
        Map::DnsSteered,
        Map::Learned4,
        Map::Learned6,
        Map::Grants,
        Map::GrantUses,
        Map::ExecCaller,
        Map::ExecScratch,
        Map::FileOwners,
    ];

    /// The policy maps (two generations), in [`Map::ALL`]'s order.
    pub const POLICY: [Map; 13] = {
        let mut out = [Map::Active; 13];
        let (mut n, mut i) = (0, 0);
        while i < Map::ALL.len() {
            if Map::ALL[i].spec().policy {
                out[n] = Map::ALL[i];
                n += 1;
            }
            i += 1;
        }
        assert!(n == out.len(), "POLICY's length is the number of policy maps in the table");
        out
    };

    pub const fn spec(self) -> MapSpec {
        const fn policy(name: &'static str, kind: MapKind, capacity: u32, entry: &'static str) -> MapSpec {
            MapSpec { name, kind, capacity, entry, policy: true }
        }
        const fn other(name: &'static str, kind: MapKind, capacity: u32, entry: &'static str) -> MapSpec {
            MapSpec { name, kind, capacity, entry, policy: false }
        }
        match self {
            Map::Active => other("FENCE_ACTIVE", MapKind::Array, 1, "active generation"),
            Map::Cgroups => policy("FENCE_CGROUPS", MapKind::Hash, 16_384, "cgroup"),
            Map::Scope => policy("FENCE_SCOPE", MapKind::Array, GENERATIONS, "generation's scope"),
            Map::Identities => policy("FENCE_IDENTITIES", MapKind::Hash, 8_192, "identity"),
            Map::Units => policy("FENCE_UNITS", MapKind::Hash, 4_096, "followed unit"),
            Map::Net4 => policy("FENCE_NET4", MapKind::LpmTrie, 65_536, "IPv4 prefix"),
            Map::Net6 => policy("FENCE_NET6", MapKind::LpmTrie, 65_536, "IPv6 prefix"),
            // Not preallocated (`BPF_F_NO_PREALLOC`): kernel memory as the policy uses it.
            Map::Host4 => policy("FENCE_HOST4", MapKind::Hash, 65_536, "IPv4 address"),
            Map::Host6 => policy("FENCE_HOST6", MapKind::Hash, 65_536, "IPv6 address"),
            Map::Exec => policy("FENCE_EXEC", MapKind::Hash, 65_536, "exec program"),
            Map::Protected => policy("FENCE_PROTECTED", MapKind::Hash, 65_536, "protected file"),
            Map::FileExcept => policy("FENCE_FILE_EXCEPT", MapKind::Hash, 16_384, "file exception"),
            Map::Unix => policy("FENCE_UNIX", MapKind::Hash, 16_384, "unix socket"),
            Map::UnixAbstract => policy("FENCE_UNIX_ABSTRACT", MapKind::Hash, 4_096, "abstract socket"),
            Map::EventLimit => other("FENCE_EVENT_LIMIT", MapKind::Array, 1, "event rate limit"),
            // When full, events of new keys are sent unlimited and counted
            // (`counter::RATE_TABLE_FULL`).
            Map::EventRate => other("FENCE_EVENT_RATE", MapKind::Hash, 16_384, "rate limiter key"),
            // Bytes: a power-of-two multiple of the page size.
            Map::Events => other("FENCE_EVENTS", MapKind::RingBuf, 1 << 22, "event byte"),
            Map::Counters => other("FENCE_COUNTERS", MapKind::PerCpuArray, crate::counter::COUNT, "counter"),
            Map::IdentityCache => other("FENCE_IDENTITY_CACHE", MapKind::LruHash, 65_536, "cached cgroup"),
            Map::Verdicts => {
                other("FENCE_VERDICTS", MapKind::PerCpuArray, crate::VERDICT_SLOTS, "cached egress verdict")
            }
            Map::AgentTasks => other("FENCE_AGENT_TASKS", MapKind::Hash, 64, "agent process"),
            Map::Reporter => other("FENCE_REPORTER", MapKind::Array, 1, "reporting run"),
            Map::DnsResolvers => other("FENCE_DNS_RESOLVERS", MapKind::Hash, 8_192, "identity resolver"),
            Map::DnsSteered => other("FENCE_DNS_STEERED", MapKind::LruHash, 65_536, "steered DNS socket"),
            Map::Learned4 => other("FENCE_LEARNED4", MapKind::Hash, 65_536, "learned IPv4 address"),
            Map::Learned6 => other("FENCE_LEARNED6", MapKind::Hash, 65_536, "learned IPv6 address"),
            Map::Grants => other("FENCE_GRANTS", MapKind::Array, crate::grants::GRANT_SLOTS, "grant slot"),
            Map::GrantUses => {
                other("FENCE_GRANT_USES", MapKind::PerCpuArray, crate::grants::GRANT_SLOTS, "grant use counter")
            }
            Map::ExecCaller => other("FENCE_EXEC_CALLER", MapKind::LruHash, 1_024, "exec caller"),
            Map::ExecScratch => other("FENCE_EXEC_SCRATCH", MapKind::PerCpuArray, 1, "exec caller being built"),
            // Least recently used goes first: a file whose record is gone is judged as any
            // other (closed, never open).
            Map::FileOwners => other("FENCE_FILE_OWNERS", MapKind::LruHash, 16_384, "file signal owner"),
        }
    }

    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    pub const fn capacity(self) -> u32 {
        self.spec().capacity
    }

    /// Entries one generation of a policy map may use (half the capacity: an apply briefly
    /// holds two).
    pub const fn per_generation(self) -> u32 {
        self.spec().capacity / GENERATIONS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_maps_are_the_generational_ones_with_the_bindings_last() {
        assert!(Map::POLICY.iter().all(|m| m.spec().policy));
        assert_eq!(Map::ALL.iter().filter(|m| m.spec().policy).count(), Map::POLICY.len());
        assert_eq!(Map::POLICY.last(), Some(&Map::Cgroups));
        let mut names: [&str; 31] = Map::ALL.map(Map::name);
        names.sort();
        assert!(names.windows(2).all(|w| w[0] != w[1]), "map names are unique");
    }
}
