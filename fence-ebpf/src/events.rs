//! Filling and sending event records.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::bpf_ktime_get_boot_ns,
};
use fence_common::{EventHeader, VERDICT_DENIED, VERDICT_WOULD_DENY, counter};

use crate::{identity::Fenced, maps::count};

/// The common head of an event about a decision on `who`.
#[inline(always)]
pub fn header(who: &Fenced, kind: u8, operation: u8, mechanism: u8, reason: u8) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind,
        verdict: if who.audit() {
            VERDICT_WOULD_DENY
        } else {
            VERDICT_DENIED
        },
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
