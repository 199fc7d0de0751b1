//! Filling and sending event records.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated::bpf_ktime_get_boot_ns,
};
use fence_common::{EventHeader, KernelOffsets, ObjectEvent, VERDICT_DENIED, VERDICT_WOULD_DENY, counter};

use crate::{identity::Fenced, kernel, maps::count};

/// The common head of an event about a decision on `who`.
#[inline(always)]
pub fn header(who: &Fenced, kind: u8, operation: u8, mechanism: u8, reason: u8) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind,
        verdict: if who.audit() { VERDICT_WOULD_DENY } else { VERDICT_DENIED },
        operation,
        mechanism,
        identity: who.identity,
        // SAFETY: helper without arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: who.cgroup_id,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        policy_version: who.info.policy_version,
        reason,
        _pad: [0; 3],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Sends `record` to the agent; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn send<T: 'static>(record: T) {
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
    fill(e);
    kernel::fill_current_exe(offsets, &mut e.actor_exe);
    entry.submit(0);
    count(counter::EVENTS_SENT);
}
