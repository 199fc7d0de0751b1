//! Units that restart get a new cgroup (a new id) at the same path. `tp_btf/cgroup_mkdir`
//! runs as the kernel creates a cgroup, before any task can be moved into it: if its path is
//! a followed unit's, the new cgroup id is bound to the unit's identity there and then, in
//! every generation that follows the path. No user-space race.

use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, macros::btf_tracepoint, programs::BtfTracePointContext};
use fence_common::{CgroupKey, GENERATIONS, UnitKey};

use crate::{
    kernel::{self, read},
    maps::{FENCE_CGROUPS, FENCE_UNITS, lookup},
};

/// The default (cgroup v2) hierarchy's id; v1 hierarchies on hybrid hosts have others.
const DEFAULT_HIERARCHY: i32 = 0;

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn fence_tp_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *cgrp, const char *path)
    let cgroup: u64 = ctx.arg(0);
    let path: u64 = ctx.arg(1);
    let Some(o) = kernel::offsets() else { return 0 };
    let Some(root) = read::<u64>(cgroup, o.cgroup_root) else { return 0 };
    if read::<i32>(root, o.cgroup_root_hierarchy_id) != Some(DEFAULT_HIERARCHY) {
        return 0;
    }
    let mut key = UnitKey::default();
    // SAFETY: bounded by the key's buffer; a longer path is cut and will not match.
    if unsafe { bpf_probe_read_kernel_str_bytes(path as *const u8, &mut key.path) }.is_err() {
        return 0;
    }
    let Some(id) = kernel::cgroup_id(o, cgroup) else { return 0 };
    let mut generation = 0;
    while generation < GENERATIONS {
        key.generation = generation;
        if let Some(identity) = lookup(&FENCE_UNITS, &key) {
            let ck = CgroupKey { cgroup_id: id, generation, _pad: 0 };
            let _ = FENCE_CGROUPS.insert(&ck, &identity, 0);
        }
        generation += 1;
    }
    0
}
