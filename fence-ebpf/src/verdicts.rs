//! The egress verdict cache: a destination (family, address, protocol, port) that a fenced
//! identity's prefix rules allowed is remembered per policy generation and apply sequence, so
//! that the next connect or sendmsg to it is one hash lookup instead of the prefix trie's walk,
//! which grows with the policy (the bench's policy-size rows).
//!
//! Only allows are remembered, and only those of the prefix maps, which change with a new
//! policy alone (a new sequence, so none of the old entries is found again). The value is the
//! allowing rule's grant slot: a hit is checked against the grant table as the trie's answer
//! would be, so an ended grant stops allowing at once; a hit whose grant has ended falls back
//! to the full lookup. Learned addresses (egress by name) expire on their own clock and are
//! looked up as before. A destination refused once is looked up again every time.

use fence_common::VerdictKey;

use crate::{grants, identity::Fenced, maps::FENCE_VERDICTS};

/// `VerdictKey::family` of an IPv4 destination (IPv4-mapped ones included) and of an IPv6 one.
pub const V4: u8 = 4;
pub const V6: u8 = 6;

/// The cache key of a destination of `who`, or `None` when the policy was read mid-apply (no
/// cache then).
#[inline(always)]
pub fn key(who: &Fenced, family: u8, addr: [u8; 16], protocol: u8, port: u16) -> Option<VerdictKey> {
    let sequence = who.sequence?;
    Some(VerdictKey { sequence, generation: who.generation, identity: who.identity, port, protocol, family, addr })
}

/// The grant slot of the rule that allowed `key`'s destination under this policy, when that
/// rule is still in force.
#[inline(always)]
pub fn cached(key: &Option<VerdictKey>) -> Option<u16> {
    let key = key.as_ref()?;
    // SAFETY: the value is copied out at once.
    let slot = *unsafe { FENCE_VERDICTS.get(key) }? as u16;
    grants::live(slot, key.identity).then_some(slot)
}

/// Remembers that a rule of grant slot `slot` allowed `key`'s destination. A full cache evicts
/// its least recently used entry; a failed insert only means the lookup is done again.
#[inline(always)]
pub fn remember(key: &Option<VerdictKey>, slot: Option<u16>) {
    if let (Some(key), Some(slot)) = (key.as_ref(), slot) {
        let _ = FENCE_VERDICTS.insert(key, &u32::from(slot), 0);
    }
}
