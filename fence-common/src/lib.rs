//! Types shared by fence's kernel programs (`fence-ebpf`) and its agent (`fence-agent`).
//!
//! One definition for both sides: the table of maps ([`Map`]), map key and value layouts
//! ([`policy`]), event records and the names of their fields' values ([`events`]), the kernel
//! offsets the agent hands to the programs ([`offsets`]) and the program names
//! ([`programs`]). Every type here is `#[repr(C)]`, has no implicit padding (padding is spelled
//! out as `_pad` fields so that both sides zero it, which matters for hash-map keys), and has
//! its size pinned by a `const` assertion: a layout change that is not mirrored on the other
//! side fails to compile.
//!
//! Policy is kept in two *generations* (slots 0 and 1). Every policy key carries its slot; the
//! kernel programs read the active slot from [`Map::Active`] once per hook invocation. The
//! agent writes a complete policy into the inactive slot, flips [`ActiveState::generation`]
//! with one map update, and only then clears the old slot. A hook therefore sees either the
//! whole old policy or the whole new one, never a mix.
#![no_std]

pub mod dns;
pub mod events;
pub mod grants;
pub mod maps;
pub mod offsets;
pub mod policy;
pub mod programs;

#[cfg(feature = "user")]
mod pod;

pub use dns::*;
pub use events::*;
pub use grants::*;
pub use maps::{GENERATIONS, Map, MapKind, MapSpec};
pub use offsets::{FOWN_EMBEDDED, FOWN_POINTER, KernelOffsets, globals};
pub use policy::*;

/// Version of the layouts in this crate. The agent refuses pinned state of another version.
pub const ABI_VERSION: u32 = 7;

/// Deepest cgroup level (root = 0) at which the kernel looks for an identity binding.
/// Identities bound deeper are rejected by validation.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Identity ids start at 1; 0 means "no identity".
pub const NO_IDENTITY: u32 = 0;
