//! The kernel's grant table (see `fence_common::grants`): per slot, the grant's end on the boot
//! clock, and the operations allowed through it. Not policy generations: a slot's end is
//! judged by the programs of every run at once (shared with persistence), so that a revocation
//! is one write and an expiry needs no agent.

use aya::maps::{Array, Map as BpfMap, MapData, MapError, PerCpuArray, PerCpuValues};
use fence_common::{GrantState, Map};

use super::MapsError;

/// What the grant service needs from the kernel: the real maps, or a fake in unit tests.
pub trait GrantKernel: Send {
    /// Puts grant slot `slot` in force until `state.expires_ns`, its use counter at zero.
    fn open(&mut self, slot: u16, state: GrantState) -> Result<(), MapsError>;
    /// Ends slot `slot` now (its rules allow nothing from this write on).
    fn close(&mut self, slot: u16) -> Result<(), MapsError>;
    /// Operations allowed through slot `slot` since it was opened.
    fn uses(&self, slot: u16) -> Result<u64, MapsError>;
    /// The slots with an end set (open now, or ended but not closed).
    fn open_slots(&self) -> Result<Vec<(u16, GrantState)>, MapsError>;
}

fn err(map: Map) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { map: map.name(), source }
}

/// The real maps, taken out of the loaded object.
pub struct AyaGrantMaps {
    grants: Array<MapData, GrantState>,
    uses: PerCpuArray<MapData, u64>,
}

impl AyaGrantMaps {
    /// Takes the maps out of `take` (the loader's `take_map`).
    pub fn take(mut take: impl FnMut(&'static str) -> Option<BpfMap>) -> Result<AyaGrantMaps, MapsError> {
        let mut one = |map: Map| take(map.name()).ok_or(MapsError::Missing(map.name()));
        Ok(AyaGrantMaps {
            grants: Array::try_from(one(Map::Grants)?).map_err(err(Map::Grants))?,
            uses: PerCpuArray::try_from(one(Map::GrantUses)?).map_err(err(Map::GrantUses))?,
        })
    }
}

impl GrantKernel for AyaGrantMaps {
    fn open(&mut self, slot: u16, state: GrantState) -> Result<(), MapsError> {
        let io = |what| move |source| MapsError::Io { map: Map::GrantUses.name(), what, source };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io("counting the possible CPUs")(e))?;
        let zero = PerCpuValues::try_from(vec![0u64; cpus.get() as usize]).map_err(io("a zero value per CPU"))?;
        self.uses.set(u32::from(slot), zero, 0).map_err(err(Map::GrantUses))?;
        self.grants.set(u32::from(slot), &state, 0).map_err(err(Map::Grants))
    }

    fn close(&mut self, slot: u16) -> Result<(), MapsError> {
        self.grants.set(u32::from(slot), &GrantState::default(), 0).map_err(err(Map::Grants))
    }

    fn uses(&self, slot: u16) -> Result<u64, MapsError> {
        let values = self.uses.get(&u32::from(slot), 0).map_err(err(Map::GrantUses))?;
        Ok(values.iter().sum())
    }

    fn open_slots(&self) -> Result<Vec<(u16, GrantState)>, MapsError> {
        let mut out = Vec::new();
        for slot in 1..fence_common::GRANT_SLOTS {
            let state = self.grants.get(&slot, 0).map_err(err(Map::Grants))?;
            if state.expires_ns != 0
                && let Ok(s) = u16::try_from(slot)
            {
                out.push((s, state));
            }
        }
        Ok(out)
    }
}

/// A grant table in memory, for unit tests of the grant service.
#[derive(Debug, Default, Clone)]
pub struct FakeGrantMaps {
    pub slots: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u16, (GrantState, u64)>>>,
}

impl GrantKernel for FakeGrantMaps {
    fn open(&mut self, slot: u16, state: GrantState) -> Result<(), MapsError> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).insert(slot, (state, 0));
        Ok(())
    }

    fn close(&mut self, slot: u16) -> Result<(), MapsError> {
        if let Some(s) = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&slot) {
            s.0 = GrantState::default();
        }
        Ok(())
    }

    fn uses(&self, slot: u16) -> Result<u64, MapsError> {
        Ok(self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&slot).map_or(0, |s| s.1))
    }

    fn open_slots(&self) -> Result<Vec<(u16, GrantState)>, MapsError> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Ok(slots.iter().filter(|(_, (s, _))| s.expires_ns != 0).map(|(k, (s, _))| (*k, *s)).collect())
    }
}
