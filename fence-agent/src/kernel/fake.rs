//! Policy maps in memory, for unit tests of the compiler and the policy service: they behave
//! like the kernel's (replace on the same key, two generations, an active state) and can be
//! told to fail.

use fence_common::{ActiveState, Map};

use super::{MapEntry, MapsError, PolicyMaps};

#[derive(Debug, Default, Clone)]
pub struct FakeMaps {
    generations: [Vec<MapEntry>; 2],
    active: ActiveState,
    /// Inserts that succeed before every further insert fails (`None`: never).
    pub fail_after: Option<usize>,
    /// Every entry inserted, in order.
    pub inserted: Vec<MapEntry>,
}

impl FakeMaps {
    pub fn generation(&self, g: u32) -> &[MapEntry] {
        &self.generations[(g & 1) as usize]
    }

    pub fn live(&self) -> &[MapEntry] {
        self.generation(self.active.generation)
    }
}

impl PolicyMaps for FakeMaps {
    fn insert(&mut self, g: u32, entry: &MapEntry) -> Result<(), MapsError> {
        if let Some(n) = &mut self.fail_after {
            if *n == 0 {
                return Err(MapsError::Injected { map: entry.map().name() });
            }
            *n -= 1;
        }
        let gen_entries = &mut self.generations[(g & 1) as usize];
        gen_entries.retain(|e| !e.same_key(entry));
        gen_entries.push(entry.clone());
        self.inserted.push(entry.clone());
        Ok(())
    }

    fn clear(&mut self, map: Map, g: u32) -> Result<(), MapsError> {
        self.generations[(g & 1) as usize].retain(|e| e.map() != map);
        Ok(())
    }

    fn dump(&self, map: Map, g: u32) -> Result<Vec<MapEntry>, MapsError> {
        Ok(self.generation(g).iter().filter(|e| e.map() == map).cloned().collect())
    }

    fn active(&self) -> Result<ActiveState, MapsError> {
        Ok(self.active)
    }

    fn set_active(&mut self, state: ActiveState) -> Result<(), MapsError> {
        self.active = state;
        Ok(())
    }
}
