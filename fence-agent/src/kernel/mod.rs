//! The seam between the agent and the kernel's policy maps.
//!
//! - [`MapEntry`]: one typed entry of a policy map, as the compiler produces it (the
//!   generation is added when it is written).
//! - [`PolicyMaps`]: what the agent needs from the maps: insert, clear a generation, read one
//!   back (`dump`), read and flip the active generation. [`AyaPolicyMaps`] is the real one;
//!   unit tests use a fake, so that the policy service and the compiler are tested without a
//!   kernel.
//! - [`Generations`]: applies a compiled policy atomically over any [`PolicyMaps`] (write the
//!   inactive generation, flip, wait for programs in flight, clear the old one).
//! - [`loader`]: loads fence's eBPF object, lets each fence unit load its programs, attaches
//!   and pins them. It hands the policy maps to the policy service and the event maps to the
//!   event writer, and keeps only the programs.

mod aya_maps;
pub mod dns_maps;
mod entries;
#[cfg(test)]
pub mod fake;
mod generations;
pub mod grant_maps;
mod link;
pub mod loader;
mod verifier;

pub use aya_maps::AyaPolicyMaps;
pub use entries::{EntryView, MapEntry, NetEntry, port_rules_text};
pub use generations::{ApplyReport, Generations};

use fence_common::{ActiveState, Map};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("the eBPF object has no map {0}")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {what}: {source}")]
    Io {
        map: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: {what} is {len} bytes, longer than the {max} the kernel key holds")]
    TooLong { map: &'static str, what: &'static str, len: usize, max: usize },
    /// Only from the fake maps of unit tests.
    #[error("map {map}: injected failure")]
    Injected { map: &'static str },
}

/// The policy maps of one loaded eBPF object, typed. Keys carry a generation (0 or 1); see
/// [`Generations`] for how they are used.
pub trait PolicyMaps: Send {
    /// Writes `entry` into `generation`.
    fn insert(&mut self, generation: u32, entry: &MapEntry) -> Result<(), MapsError>;
    /// Removes every entry of `generation` from `map`.
    fn clear(&mut self, map: Map, generation: u32) -> Result<(), MapsError>;
    /// Every entry of `generation` in `map`, read back from the map.
    fn dump(&self, map: Map, generation: u32) -> Result<Vec<MapEntry>, MapsError>;
    /// The live generation and its sequence number.
    fn active(&self) -> Result<ActiveState, MapsError>;
    /// Makes `state.generation` live (one map update).
    fn set_active(&mut self, state: ActiveState) -> Result<(), MapsError>;
    /// Waits until every program that may have read the previous active state has finished.
    fn grace_period(&self) {}
}

/// Waits until every program running now has finished: an RCU grace period (the kernel runs
/// fence's programs, none of them sleepable, inside RCU read-side sections), so that a
/// program that read a map value before a write no longer acts on it.
pub fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers; an error only means we rely on the sleep.
    let _ = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    std::thread::sleep(std::time::Duration::from_millis(5));
}
