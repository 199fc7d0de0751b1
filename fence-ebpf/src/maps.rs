//! Every map of fence, in one place. The table is `fence_common::Map`: the static's identifier is
//! the map's name there, and its capacity comes from there.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use fence_common::{
    AbstractKey, ActiveState, CacheKey, CgroupKey, DnsResolver, DnsSteered, EventLimit, ExecCaller, GrantState,
    IdentityInfo, IdentityKey, InodeKey, Learned4Key, Learned6Key, LearnedRules, Map, Net4Key, Net6Key, NetRules,
    RateKey, RateState, Scope, UnitKey, VerdictEntry,
};

/// The live policy generation (index 0). Written by the agent after a complete policy has been
/// written into the other slot; read once per hook invocation.
#[map]
pub static FENCE_ACTIVE: Array<ActiveState> = Array::with_max_entries(Map::Active.capacity(), 0);

/// cgroup id (+ generation) -> identity id. A task is fenced when its cgroup or any ancestor
/// (up to `MAX_CGROUP_DEPTH`) is in here; the deepest binding wins.
#[map]
pub static FENCE_CGROUPS: HashMap<CgroupKey, u32> = HashMap::with_max_entries(Map::Cgroups.capacity(), 0);

/// Per generation (index), the subtrees that hold every cgroup bound in it: a task outside
/// them is not fenced, and `identity::current` answers without the identity lookup.
#[map]
pub static FENCE_SCOPE: Array<Scope> = Array::with_max_entries(Map::Scope.capacity(), 0);

/// identity id (+ generation) -> mode, flags and policy version.
#[map]
pub static FENCE_IDENTITIES: HashMap<IdentityKey, IdentityInfo> =
    HashMap::with_max_entries(Map::Identities.capacity(), 0);

/// IPv4 egress allow-list: (generation, identity, prefix) -> port rules. The compiler merges
/// the rules of less specific prefixes into each prefix, so the longest match says it all.
/// The single addresses of an identity with many (`IDENTITY_HOSTS4`) are in `FENCE_HOST4`.
#[map]
pub static FENCE_NET4: LpmTrie<Net4Key, NetRules> = LpmTrie::with_max_entries(Map::Net4.capacity(), 0);

/// IPv6 egress allow-list, as `FENCE_NET4`. IPv4-mapped destinations use `FENCE_NET4`.
#[map]
pub static FENCE_NET6: LpmTrie<Net6Key, NetRules> = LpmTrie::with_max_entries(Map::Net6.capacity(), 0);

/// The kernel's `BPF_F_NO_PREALLOC`: entries are allocated as they are written.
const NO_PREALLOC: u32 = 1;

/// IPv4 egress allow-list, the single addresses of identities with many (`IDENTITY_HOSTS4`):
/// (generation, identity, address) -> port rules, with the rules of every prefix that holds
/// the address merged in, so that a hit says it all. One hash lookup whatever their number; a
/// miss goes on to `FENCE_NET4`.
#[map]
pub static FENCE_HOST4: HashMap<Net4Key, NetRules> = HashMap::with_max_entries(Map::Host4.capacity(), NO_PREALLOC);

/// IPv6 egress allow-list, single addresses, as `FENCE_HOST4`.
#[map]
pub static FENCE_HOST6: HashMap<Net6Key, NetRules> = HashMap::with_max_entries(Map::Host6.capacity(), NO_PREALLOC);

/// (generation, identity, inode) of programs the identity may execute -> 1.
/// Consulted only for identities with `IDENTITY_EXEC_ALLOWLIST`.
#[map]
pub static FENCE_EXEC: HashMap<InodeKey, u32> = HashMap::with_max_entries(Map::Exec.capacity(), 0);

/// (generation, 0, inode) of the host's protected files and directories -> `PROTECT_*` flags.
#[map]
pub static FENCE_PROTECTED: HashMap<InodeKey, u32> = HashMap::with_max_entries(Map::Protected.capacity(), 0);

/// (generation, identity, inode) of an identity's readable exceptions -> `PROTECT_*` flags.
#[map]
pub static FENCE_FILE_EXCEPT: HashMap<InodeKey, u32> = HashMap::with_max_entries(Map::FileExcept.capacity(), 0);

/// (generation, identity, inode) of unix sockets: an identity's allow-list, or with identity 0
/// the host's default-deny set.
#[map]
pub static FENCE_UNIX: HashMap<InodeKey, u32> = HashMap::with_max_entries(Map::Unix.capacity(), 0);

/// Abstract unix socket names, as `FENCE_UNIX`.
#[map]
pub static FENCE_UNIX_ABSTRACT: HashMap<AbstractKey, u32> = HashMap::with_max_entries(Map::UnixAbstract.capacity(), 0);

/// (generation, unit cgroup path) -> identity: a cgroup created at this path is bound to the
/// identity by `fence_tp_cgroup_mkdir` at creation.
#[map]
pub static FENCE_UNITS: HashMap<UnitKey, u32> = HashMap::with_max_entries(Map::Units.capacity(), 0);

/// The event rate limit (index 0), set by the agent; all zero: no limit.
#[map]
pub static FENCE_EVENT_LIMIT: Array<EventLimit> = Array::with_max_entries(Map::EventLimit.capacity(), 0);

/// The rate limiter's state per (identity, operation, verdict).
#[map]
pub static FENCE_EVENT_RATE: HashMap<RateKey, RateState> = HashMap::with_max_entries(Map::EventRate.capacity(), 0);

/// Deny and would-deny events for the agent (records start with `EventHeader`).
#[map]
pub static FENCE_EVENTS: RingBuf = RingBuf::with_byte_size(Map::Events.capacity(), 0);

/// Per-CPU counters, indexed by `fence_common::counter`.
#[map]
pub static FENCE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Map::Counters.capacity(), 0);

/// (cgroup id, sequence, generation) -> identity (0: none), as the ancestor walk found it.
/// Unfenced tasks cost one lookup here instead of a walk; see `identity::current`.
#[map]
pub static FENCE_IDENTITY_CACHE: LruHashMap<CacheKey, u32> =
    LruHashMap::with_max_entries(Map::IdentityCache.capacity(), 0);

/// Per CPU, at the index of the destination's hash: (sequence, generation, identity,
/// destination), the grant slot of the rule that allowed it (0: standing) and a check. An
/// allowed connect or sendmsg is one array read here instead of the prefix trie's walk, whose
/// length grows with the policy; see `verdicts`.
#[map]
pub static FENCE_VERDICTS: PerCpuArray<VerdictEntry> = PerCpuArray::with_max_entries(Map::Verdicts.capacity(), 0);

/// The agent's process ids -> the agent's cgroup id: never fenced (while in that cgroup),
/// never signalled or traced by fenced tasks.
#[map]
pub static FENCE_AGENT_TASKS: HashMap<u32, u64> = HashMap::with_max_entries(Map::AgentTasks.capacity(), 0);

/// The token of the run whose programs report events (see `fence_common::Map::Reporter`):
/// shared by every run with persistence, so that one write moves the reporting.
#[map]
pub static FENCE_REPORTER: Array<u64> = Array::with_max_entries(Map::Reporter.capacity(), 0);

/// identity -> where its DNS is steered; the key `DNS_STEERING` turns steering on.
#[map]
pub static FENCE_DNS_RESOLVERS: HashMap<u32, DnsResolver> = HashMap::with_max_entries(Map::DnsResolvers.capacity(), 0);

/// socket cookie -> the DNS server a steered socket named (for replies and getpeername).
#[map]
pub static FENCE_DNS_STEERED: LruHashMap<u64, DnsSteered> = LruHashMap::with_max_entries(Map::DnsSteered.capacity(), 0);

/// (identity, IPv4 address) learned from an allowed DNS answer -> ports and expiry.
#[map]
pub static FENCE_LEARNED4: HashMap<Learned4Key, LearnedRules> = HashMap::with_max_entries(Map::Learned4.capacity(), 0);

/// (identity, IPv6 address) learned from an allowed DNS answer -> ports and expiry.
#[map]
pub static FENCE_LEARNED6: HashMap<Learned6Key, LearnedRules> = HashMap::with_max_entries(Map::Learned6.capacity(), 0);

/// grant slot -> its end on the kernel's boot clock (see `fence_common::grants`). Shared by every run.
#[map]
pub static FENCE_GRANTS: Array<GrantState> = Array::with_max_entries(Map::Grants.capacity(), 0);

/// grant slot -> operations allowed through it, per CPU. Shared by every run.
#[map]
pub static FENCE_GRANT_USES: PerCpuArray<u64> = PerCpuArray::with_max_entries(Map::GrantUses.capacity(), 0);

/// thread id -> its name and executable just before its exec (the exec fallback's caller).
#[map]
pub static FENCE_EXEC_CALLER: LruHashMap<u32, ExecCaller> = LruHashMap::with_max_entries(Map::ExecCaller.capacity(), 0);

/// Where an `ExecCaller` is built.
#[map]
pub static FENCE_EXEC_SCRATCH: PerCpuArray<ExecCaller> = PerCpuArray::with_max_entries(Map::ExecScratch.capacity(), 0);

/// file -> the process id of the unfenced task that last chose its signal receiver; see
/// `escape::fence_lsm_file_set_fowner`.
#[map]
pub static FENCE_FILE_OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(Map::FileOwners.capacity(), 0);

/// Looks `key` up; the value is copied out.
#[inline(always)]
pub fn lookup<K, V: Copy>(map: &HashMap<K, V>, key: &K) -> Option<V> {
    // SAFETY: the value is copied out at once.
    unsafe { map.get(key) }.copied()
}

/// Adds one to a counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = FENCE_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs of this type do not nest on one CPU.
        unsafe { *c += 1 };
    }
}
