//! Filling and sending event records.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated::bpf_ktime_get_boot_ns,
};
use fence_common::{
    EventHeader, EventKind, KernelOffsets, Mechanism, ObjectEvent, Operation, RateKey, RateState, Reason, Verdict,
    counter,
};

use crate::{
    identity::Fenced,
    kernel,
    maps::{FENCE_EVENT_LIMIT, FENCE_EVENT_RATE, FENCE_REPORTER, count},
};

/// This run's token, set by the agent before loading (`fence_common::globals::RUN`). Mutable
/// as far as the compiler knows, so that it never folds the zero initialiser into the
/// programs; read through [`reporting`] only.
#[unsafe(no_mangle)]
static mut FENCE_RUN: u64 = 0;

/// Whether this program reports the decision `head`, so that every decision is logged once
/// while a new run takes over from an earlier one (both runs' programs attached, both
/// enforcing):
/// - a BPF LSM refusal, always: it ends the hook's chain, no other program sees the operation
///   (the newest run's programs come first; until its policy is live they let everything
///   through, and the earlier run's program refuses);
/// - anything else (cgroup and tracepoint programs, LSM audit reports), which every run's
///   programs decide: only if the shared reporter map names this run.
///
/// Checked before anything else of an event: a program that does not report counts nothing.
#[inline(always)]
fn reports(head: &EventHeader) -> bool {
    if head.verdict == Verdict::Denied as u8
        && Mechanism::from_u8(head.mechanism).is_some_and(Mechanism::refusal_ends_chain)
    {
        return true;
    }
    // SAFETY: programs only read the global; the agent writes it once, before loading.
    let me = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(FENCE_RUN)) };
    FENCE_REPORTER.get(0).is_some_and(|r| *r == me && me != 0)
}

/// The common head of an event about a decision on `who`.
#[inline(always)]
pub fn header(
    who: &Fenced,
    kind: EventKind,
    operation: Operation,
    mechanism: Mechanism,
    reason: Reason,
) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let actor = Actor {
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ppid: kernel::current_ppid(),
        effective: kernel::current_effective_ids(),
    };
    head(who, kind, operation, mechanism, reason, actor)
}

/// The head of an event about `who`, the current task, read from its `task_struct` rather
/// than through the current-task helpers (which some program types may not call).
#[inline(always)]
pub fn header_for_task(
    who: &Fenced,
    o: &KernelOffsets,
    task: u64,
    kind: EventKind,
    operation: Operation,
    mechanism: Mechanism,
    reason: Reason,
) -> EventHeader {
    let actor = Actor {
        pid: kernel::read::<i32>(task, o.task_pid).unwrap_or(0) as u32,
        tgid: kernel::read::<i32>(task, o.task_tgid).unwrap_or(0) as u32,
        comm: kernel::read::<[u8; 16]>(task, o.task_comm).unwrap_or([0; 16]),
        ppid: kernel::read::<u64>(task, o.task_real_parent)
            .and_then(|parent| kernel::read::<i32>(parent, o.task_tgid))
            .map_or(0, |p| p as u32),
        effective: kernel::effective_ids(o, task),
    };
    head(who, kind, operation, mechanism, reason, actor)
}

/// What an event says about the task that caused it.
struct Actor {
    pid: u32,
    tgid: u32,
    comm: [u8; 16],
    ppid: u32,
    /// Effective uid and gid.
    effective: (u32, u32),
}

#[inline(always)]
fn head(
    who: &Fenced,
    kind: EventKind,
    operation: Operation,
    mechanism: Mechanism,
    reason: Reason,
    actor: Actor,
) -> EventHeader {
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind: kind as u8,
        verdict: if who.audit() { Verdict::WouldDeny as u8 } else { Verdict::Denied as u8 },
        operation: operation as u8,
        mechanism: mechanism as u8,
        identity: who.identity,
        // SAFETY: helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: who.cgroup_id,
        pid: actor.pid,
        tgid: actor.tgid,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        policy_version: who.info.policy_version,
        reason: reason as u8,
        _pad: [0; 3],
        comm: actor.comm,
        ppid: actor.ppid,
        euid: actor.effective.0,
        egid: actor.effective.1,
        _pad2: 0,
    }
}

/// Whether an event with this head may be sent now: the agent's rate limit per (identity,
/// operation, verdict), a generic cell rate algorithm. An event over the limit is counted in
/// the key's `suppressed` (the agent reports those as summaries), never silently lost. Races
/// between CPUs may let a few more through than the limit; they never lose a count.
///
/// Not inlined: as a BPF subprogram its branches end in one return value, so the verifier does
/// not carry them into the event filling that follows at every call site (on Debian's 6.1
/// kernel under qemu, loading fence's programs took 11 s with it inlined, 6.6 s without).
#[inline(never)]
fn within_rate(head: &EventHeader) -> bool {
    let Some(limit) = FENCE_EVENT_LIMIT.get(0) else { return true };
    if limit.interval_ns == 0 {
        return true;
    }
    let key = RateKey { identity: head.identity, operation: head.operation, verdict: head.verdict, _pad: [0; 2] };
    let now = head.boot_ns;
    match FENCE_EVENT_RATE.get_ptr_mut(&key) {
        // SAFETY: a live map value; the counter is updated atomically, `tat` racily (see above).
        Some(state) => match limit.admit(unsafe { (*state).tat }, now) {
            None => {
                // SAFETY: the value is 8-byte aligned and lives as long as the map entry. The
                // BPF target has no atomic types; this is the BPF atomic add (__sync_fetch_and_add).
                unsafe {
                    core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                        core::ptr::addr_of_mut!((*state).suppressed),
                        1,
                    )
                };
                count(counter::SUPPRESSED);
                false
            }
            Some(tat) => {
                // SAFETY: as above.
                unsafe { (*state).tat = tat };
                true
            }
        },
        None => {
            let fresh = RateState { tat: limit.admit(0, now).unwrap_or(now), suppressed: 0 };
            // BPF_NOEXIST: another CPU may have created it meanwhile (then this one event goes
            // through unlimited); a full table is counted.
            if FENCE_EVENT_RATE.insert(&key, &fresh, 1).is_err() && FENCE_EVENT_RATE.get_ptr_mut(&key).is_none() {
                count(counter::RATE_TABLE_FULL);
            }
            true
        }
    }
}

/// Sends `record` (whose head is `head`) to the agent if this run reports, within the rate
/// limit; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn send<T: 'static>(head: &EventHeader, record: T) {
    if !reports(head) || !within_rate(head) {
        return;
    }
    match crate::maps::FENCE_EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(0);
            count(counter::EVENTS_SENT);
        }
        None => count(counter::RINGBUF_FULL),
    }
}

/// Sends an [`ObjectEvent`] about `who`: reserved in the ring buffer and filled in place (it is
/// larger than the BPF stack). `fill` sets the object's fields; the actor's executable is added
/// here.
#[inline(always)]
pub fn send_object(head: EventHeader, offsets: &KernelOffsets, fill: impl FnOnce(&mut ObjectEvent)) {
    if !reports(&head) || !within_rate(&head) {
        return;
    }
    let Some(mut entry) = crate::maps::FENCE_EVENTS.reserve::<ObjectEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    // SAFETY: the reservation is exclusive, 8-byte aligned and sized for ObjectEvent; every
    // field the reader looks at is written below (names are bounded by name_len and depth).
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.header = head;
    e.dev = 0;
    e.rule_dev = 0;
    e.ino = 0;
    e.rule_ino = 0;
    e.nlink = 0;
    e.name_len = 0;
    e.path.depth = 0;
    e.path.complete = 0;
    e.actor_exe.depth = 0;
    fill(e);
    // `fill` may name the actor's executable itself (the exec fallback: the one before the exec).
    if e.actor_exe.depth == 0 {
        kernel::fill_current_exe(offsets, &mut e.actor_exe);
    }
    entry.submit(0);
    count(counter::EVENTS_SENT);
}
