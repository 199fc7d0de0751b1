//! Just-in-time grants in the kernel. A grant's rules are compiled into the identity's policy
//! maps like standing rules, each tagged with the grant's *slot* (`PortRule::grant`, the high
//! bits of an inode-map value: [`crate::inode_value`]); the slot's entry in
//! [`crate::Map::Grants`] holds the grant's end on the kernel's boot clock. A program allows
//! through a tagged rule only while `bpf_ktime_get_boot_ns()` is before that end, so a grant
//! ends on time with the agent stopped, killed or busy, and a change of the wall clock neither
//! ends nor extends it. Slot 0 means "standing"; a slot is reused only after no live policy
//! names it.

/// Grant slots (slot 0 is never used: it means a standing rule).
pub const GRANT_SLOTS: u32 = 4096;

/// Value of [`crate::Map::Grants`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantState {
    /// End of the grant on the kernel's boot clock (`CLOCK_BOOTTIME`, ns); 0: not in force.
    pub expires_ns: u64,
    /// The identity the slot was given to (for `dump`; the rules carry the identity too).
    pub identity: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<GrantState>() == 16);
