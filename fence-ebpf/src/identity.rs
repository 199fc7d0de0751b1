//! "Who is this task, and what does its identity allow": the one lookup every hook starts with.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid,
    generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
};
use fence_common::{
    ActiveState, CacheKey, CgroupKey, IdentityInfo, IdentityKey, MAX_CGROUP_DEPTH, MODE_AUDIT, NO_IDENTITY, SCOPE_ALL,
    SCOPE_POINTS,
};

use crate::maps::{
    FENCE_ACTIVE, FENCE_AGENT_TASKS, FENCE_CGROUPS, FENCE_IDENTITIES, FENCE_IDENTITY_CACHE, FENCE_SCOPE,
};

/// A fenced task's identity in the live generation.
pub struct Fenced {
    pub generation: u32,
    /// The low 32 bits of the apply sequence read with `generation`, when the two are from
    /// the same apply (see [`consistent`]): only then may the caches be used.
    pub sequence: Option<u32>,
    pub identity: u32,
    pub cgroup_id: u64,
    pub info: IdentityInfo,
}

impl Fenced {
    /// Audit mode: report, do not deny.
    #[inline(always)]
    pub fn audit(&self) -> bool {
        self.info.mode == MODE_AUDIT
    }
}

/// The identity of the current task, or `None` when it is not fenced. `None` is the only
/// answer for tasks outside every bound cgroup, so hooks allow them without further work:
/// outside the generation's scope, two array reads and a helper call per scope point; inside
/// it, one cache lookup once the task's cgroup has been seen under this policy.
#[inline(always)]
pub fn current() -> Option<Fenced> {
    let active = FENCE_ACTIVE.get(0)?;
    let generation = active.generation;
    let sequence = consistent(active);
    if !in_scope(generation) {
        return None;
    }
    // SAFETY: helpers without pointer arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let identity = match sequence {
        Some(sequence) => {
            let key = CacheKey { cgroup_id, sequence, generation };
            // SAFETY: the value is copied out at once.
            match unsafe { FENCE_IDENTITY_CACHE.get(&key) } {
                Some(&id) => id,
                None => {
                    let id = walk(cgroup_id, generation);
                    // A full cache evicts its least recently used entry; a failed insert
                    // only means the walk is done again next time.
                    let _ = FENCE_IDENTITY_CACHE.insert(&key, &id, 0);
                    id
                }
            }
        }
        None => walk(cgroup_id, generation),
    };
    if identity == NO_IDENTITY || is_agent_here(current_tgid(), cgroup_id) {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let info = *unsafe { FENCE_IDENTITIES.get(&IdentityKey { generation, identity }) }?;
    Some(Fenced { generation, sequence, identity, cgroup_id, info })
}

/// The low 32 bits of the apply sequence, when `active` was read whole: the agent writes the
/// generation and the sequence of each apply together (generation = sequence mod 2), but a
/// program may read the entry while the agent's write is half done. A generation and a
/// sequence from two different applies would let a cache entry made under one policy be found
/// under another, so such a read uses no cache (`None`).
#[inline(always)]
pub fn consistent(active: &ActiveState) -> Option<u32> {
    let sequence = active.sequence as u32;
    (sequence & 1 == active.generation).then_some(sequence)
}

/// The identity of the cgroup `cgroup_id` of the current task, or of its nearest bound
/// ancestor, in `generation`.
#[inline(always)]
fn walk(cgroup_id: u64, generation: u32) -> u32 {
    bound(cgroup_id, generation).or_else(|| nearest_bound_ancestor(generation)).unwrap_or(NO_IDENTITY)
}

/// Whether the current task's cgroup is in a subtree of `generation`'s scope (or the scope is
/// [`SCOPE_ALL`]). A missing entry counts as in scope: the full lookup decides.
#[inline(always)]
fn in_scope(generation: u32) -> bool {
    let Some(scope) = FENCE_SCOPE.get(generation) else { return true };
    let count = scope.count;
    if count == SCOPE_ALL {
        return true;
    }
    let mut i = 0;
    while i < SCOPE_POINTS {
        if i as u32 >= count {
            break;
        }
        let point = scope.points[i];
        // SAFETY: helper without pointer arguments; 0 when the task's cgroup is shallower.
        if unsafe { bpf_get_current_ancestor_cgroup_id(point.level as i32) } == point.cgroup_id {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Whether `tgid` is one of the agent's processes, as a target: protected from fenced tasks
/// (a stale entry of a stopped agent protects whoever has its number since, from fenced
/// tasks only).
#[inline(always)]
pub fn is_agent(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { FENCE_AGENT_TASKS.get(&tgid) }.is_some()
}

/// Whether the current task, `tgid` in cgroup `cgroup_id`, is the agent, exempt from every
/// hook. The number alone would not do: with persistence, a stopped agent's programs keep
/// enforcing, and a fenced task that got the agent's process id would be exempt; it is in a
/// fenced cgroup, not the agent's.
#[inline(always)]
pub fn is_agent_here(tgid: u32, cgroup_id: u64) -> bool {
    // SAFETY: the value is copied out at once.
    unsafe { FENCE_AGENT_TASKS.get(&tgid) }.is_some_and(|&agent_cgroup| agent_cgroup == cgroup_id)
}

#[inline(always)]
fn bound(cgroup_id: u64, generation: u32) -> Option<u32> {
    let key = CgroupKey { cgroup_id, generation, _pad: 0 };
    // SAFETY: the value is copied out at once.
    unsafe { FENCE_CGROUPS.get(&key) }.copied()
}

/// Walks the ancestors of the current task's cgroup from the root down and returns the
/// identity of the deepest one that is bound, so that cgroups created below a fenced cgroup
/// (by anyone, at any time) are fenced from their creation, with no agent involvement.
#[inline(always)]
fn nearest_bound_ancestor(generation: u32) -> Option<u32> {
    let mut found = None;
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper without pointer arguments; returns 0 past the task's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        if let Some(identity) = bound(id, generation) {
            found = Some(identity);
        }
        level += 1;
    }
    found
}

/// `identity` (of a task in cgroup `cgroup_id`) as a fenced identity of the live generation.
#[inline(always)]
pub fn fenced(identity: u32, generation: u32, sequence: Option<u32>, cgroup_id: u64) -> Option<Fenced> {
    if identity == NO_IDENTITY {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let info = *unsafe { FENCE_IDENTITIES.get(&IdentityKey { generation, identity }) }?;
    Some(Fenced { generation, sequence, identity, cgroup_id, info })
}

/// The identity of another task (the nearest bound cgroup above its own), in `generation`;
/// `NO_IDENTITY` when it is not fenced or cannot be read.
#[inline(always)]
pub fn of_task(o: &fence_common::KernelOffsets, generation: u32, task: u64) -> u32 {
    let Some(mut cg) = crate::kernel::task_cgroup(o, task) else { return fence_common::NO_IDENTITY };
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        if let Some(id) = crate::kernel::cgroup_id(o, cg)
            && let Some(identity) = bound(id, generation)
        {
            return identity;
        }
        match crate::kernel::cgroup_parent(o, cg) {
            Some(p) => cg = p,
            None => break,
        }
        level += 1;
    }
    fence_common::NO_IDENTITY
}

/// The identity bound to the cgroup whose kernfs directory node is `kn` or its nearest bound
/// ancestor; `NO_IDENTITY` if none.
#[inline(always)]
pub fn of_kernfs_dir(o: &fence_common::KernelOffsets, generation: u32, kn: u64) -> u32 {
    let mut node = kn;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        if let Some(id) = crate::kernel::read::<u64>(node, o.kernfs_node_id)
            && let Some(identity) = bound(id, generation)
        {
            return identity;
        }
        match crate::kernel::read::<u64>(node, o.kernfs_node_parent) {
            Some(p) if p != 0 => node = p,
            _ => break,
        }
        level += 1;
    }
    fence_common::NO_IDENTITY
}

/// The identity bound to the cgroup directory `dentry` (on cgroupfs) or its nearest bound
/// ancestor; `NO_IDENTITY` if none.
#[inline(always)]
pub fn of_cgroup_dentry(o: &fence_common::KernelOffsets, generation: u32, dentry: u64) -> u32 {
    let mut d = dentry;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        if let Some(dir) = crate::kernel::dentry_inode(o, d)
            && let Some(identity) = bound(dir.ino, generation)
        {
            return identity;
        }
        match crate::kernel::parent(o, d) {
            Some(p) => d = p,
            None => break,
        }
        level += 1;
    }
    fence_common::NO_IDENTITY
}
