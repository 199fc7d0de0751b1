//! The egress verdict cache: a destination (family, address, protocol, port) that a fenced
//! identity's prefix rules allowed is remembered per policy generation and apply sequence, so
//! that the next connect or sendmsg to it is one array read instead of the prefix trie's walk,
//! which grows with the policy (the bench's policy-size rows).
//!
//! Direct-mapped and per CPU: each CPU has `VERDICT_SLOTS` entries, and a destination's entry is
//! at the index of its key's hash; a destination whose entry another one took is looked up in
//! full again. No lock, no allocation: remembering costs one write, so destinations that are
//! not seen again (a crawler's) pay little for it. Each entry carries a check over its key
//! and slot (see `fence_common::VerdictEntry`): an entry read in pieces of two writes counts
//! as absent.
//!
//! Only allows are remembered, and only those of the prefix maps, which change with a new
//! policy alone (a new sequence: none of the old entries is found again). The value is the
//! allowing rule's grant slot: a hit is checked against the grant table as the trie's answer
//! would be, so an ended grant stops allowing at once, and such a hit falls back to the full
//! lookup. Learned addresses (egress by name) expire on their own clock and are looked up as
//! before. A destination refused once is looked up again every time.

use fence_common::{VerdictEntry, VerdictKey};

use crate::{grants, identity::Fenced, maps::FENCE_VERDICTS};

/// `VerdictKey::family` of an IPv4 destination (IPv4-mapped ones included) and of an IPv6 one.
pub const V4: u8 = 4;
pub const V6: u8 = 6;

/// A destination of `who` as the cache knows it: its key and the key's hash.
pub struct Lookup {
    key: VerdictKey,
    hash: u64,
}

/// The cache's view of a destination of `who`, or `None` when the policy was read mid-apply
/// (no cache then).
#[inline(always)]
pub fn dest(who: &Fenced, family: u8, addr: [u8; 16], protocol: u8, port: u16) -> Option<Lookup> {
    let sequence = who.sequence?;
    let key = VerdictKey { sequence, generation: who.generation, identity: who.identity, port, protocol, family, addr };
    let hash = key.hash();
    Some(Lookup { key, hash })
}

/// The grant slot of the rule that allowed `d` under this policy, when that rule is still in
/// force.
#[inline(always)]
pub fn cached(d: &Option<Lookup>) -> Option<u16> {
    let d = d.as_ref()?;
    let words = FENCE_VERDICTS.get_ptr(VerdictKey::index(d.hash))? as *const u64;
    // SAFETY: VerdictKey is 32 bytes of plain integers (no padding): four words, by value.
    let key: [u64; 4] = unsafe { core::mem::transmute(d.key) };
    // The entry is read word by word, each word once (volatile: the compiler may not read one
    // again after the check, when another program on this CPU may have rewritten the entry),
    // with no copy on the stack. Its last word holds the slot and the check, read together.
    // SAFETY: a per-CPU array element of 40 bytes (five words, 8-byte aligned as the kernel
    // aligns array values), valid for the program's run.
    let tail = unsafe { core::ptr::read_volatile(words.add(4)) }.to_ne_bytes();
    let slot = u32::from_ne_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let check = u32::from_ne_bytes([tail[4], tail[5], tail[6], tail[7]]);
    let mut i = 0;
    while i < 4 {
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(words.add(i)) } != key[i] {
            return None;
        }
        i += 1;
    }
    if check != VerdictKey::check(d.hash, slot) {
        return None;
    }
    let slot = slot as u16;
    grants::live(slot, d.key.identity).then_some(slot)
}

/// Remembers that a rule of grant slot `slot` allowed `d` (in place of whatever destination
/// had its entry).
#[inline(always)]
pub fn remember(d: &Option<Lookup>, slot: u16) {
    let Some(d) = d.as_ref() else { return };
    let Some(ptr) = FENCE_VERDICTS.get_ptr_mut(VerdictKey::index(d.hash)) else { return };
    let slot = u32::from(slot);
    // SAFETY: a per-CPU array element, valid for the program's run.
    unsafe { *ptr = VerdictEntry { key: d.key, slot, check: VerdictKey::check(d.hash, slot) } };
}
