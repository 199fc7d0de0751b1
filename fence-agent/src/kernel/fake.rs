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
    /// How `set_active` fails (`None`: it does not).
    pub set_active_errs: Option<SetActiveErr>,
    /// This many next `active` reads fail (set by [`SetActiveErr::AfterWriteUnreadable`]).
    active_unreadable: std::cell::Cell<u32>,
}

/// A failure of `set_active` to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetActiveErr {
    /// Nothing written.
    BeforeWrite,
    /// Written, then an error.
    AfterWrite,
    /// Written, then an error, and the next three `active` reads fail (every read-back).
    AfterWriteUnreadable,
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
        let unreadable = self.active_unreadable.get();
        if unreadable > 0 {
            self.active_unreadable.set(unreadable - 1);
            return Err(MapsError::Injected { map: Map::Active.name() });
        }
        Ok(self.active)
    }

    fn set_active(&mut self, state: ActiveState) -> Result<(), MapsError> {
        let injected = Err(MapsError::Injected { map: Map::Active.name() });
        match self.set_active_errs {
            None => {}
            Some(SetActiveErr::BeforeWrite) => return injected,
            Some(SetActiveErr::AfterWrite) => {
                self.active = state;
                return injected;
            }
            Some(SetActiveErr::AfterWriteUnreadable) => {
                self.active = state;
                self.active_unreadable.set(3);
                return injected;
            }
        }
        self.active = state;
        Ok(())
    }
}
