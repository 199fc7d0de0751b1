//! Just-in-time grants (see `fence_common::grants`): a rule tagged with a grant slot allows only
//! while the kernel's boot clock is before the slot's end, and each use is counted.

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use fence_common::{flags_of, grant_of};

use crate::maps::{FENCE_GRANT_USES, FENCE_GRANTS};

/// Whether grant `slot` is in force now for `identity` (slot 0, a standing rule, always is).
/// The slot must have been given to this identity: a rule left tagged with a slot that was
/// since given to another identity allows nothing.
#[inline(always)]
pub fn live(slot: u16, identity: u32) -> bool {
    if slot == 0 {
        return true;
    }
    let Some(state) = FENCE_GRANTS.get(u32::from(slot)) else { return false };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    state.identity == identity && now < state.expires_ns
}

/// Counts one operation allowed through grant `slot` (nothing for a standing rule).
#[inline(always)]
pub fn used(slot: u16) {
    if slot == 0 {
        return;
    }
    if let Some(c) = FENCE_GRANT_USES.get_ptr_mut(u32::from(slot)) {
        // SAFETY: per-CPU slot, and programs of this type do not nest on one CPU.
        unsafe { *c += 1 };
    }
}

/// The flags of an inode-map value when its rule is in force (counting the use), else `None`.
#[inline(always)]
pub fn inode_rule(value: Option<u32>, identity: u32) -> Option<u32> {
    let v = value?;
    let slot = grant_of(v);
    if !live(slot, identity) {
        return None;
    }
    used(slot);
    Some(flags_of(v))
}
