//! `aya::Pod` for the map key and value types (the `user` feature).

use crate::*;

// SAFETY: all of these are repr(C), contain only integers and integer arrays, and have no
// implicit padding (see the size assertions next to each), so every bit pattern is valid.
unsafe impl aya::Pod for ActiveState {}
// SAFETY: as above.
unsafe impl aya::Pod for CgroupKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Scope {}
// SAFETY: as above.
unsafe impl aya::Pod for CacheKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IdentityKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IdentityInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for Net4Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Net6Key {}
// SAFETY: as above.
unsafe impl aya::Pod for NetRules {}
// SAFETY: as above.
unsafe impl aya::Pod for InodeKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AbstractKey {}
// SAFETY: as above.
unsafe impl aya::Pod for KernelOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for UnitKey {}
// SAFETY: as above.
unsafe impl aya::Pod for EventLimit {}
// SAFETY: as above.
unsafe impl aya::Pod for RateKey {}
// SAFETY: as above.
unsafe impl aya::Pod for RateState {}

// SAFETY: as above.
unsafe impl aya::Pod for DnsResolver {}

// SAFETY: as above.
unsafe impl aya::Pod for DnsSteered {}

// SAFETY: as above.
unsafe impl aya::Pod for Learned4Key {}

// SAFETY: as above.
unsafe impl aya::Pod for Learned6Key {}

// SAFETY: as above.
unsafe impl aya::Pod for LearnedRules {}
// SAFETY: as above.
unsafe impl aya::Pod for GrantState {}
