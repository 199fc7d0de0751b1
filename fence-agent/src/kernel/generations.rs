//! Applies compiled policy atomically over any [`PolicyMaps`]: the whole new policy goes into
//! the inactive generation, one map update flips it live, programs in flight finish, and the
//! old generation is cleared. A hook sees the old policy or the new one, never a mix; a failed
//! apply leaves the live generation untouched.

use fence_common::{ABI_VERSION, ActiveState, Map};

use super::{MapEntry, MapsError, PolicyMaps};

/// What one apply wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyReport {
    pub generation: u32,
    pub sequence: u64,
    pub entries: usize,
}

/// How a flip failed.
enum Flip {
    /// The previous policy is still live.
    NotLive(MapsError),
    /// The write failed and the active state could not be read back, three times. Taken as not
    /// live by the caller (the policy service undoes what it prepared): the kernel copies an
    /// array value in before it updates, so an update that fails has not written. Should it
    /// have, the new generation is left in place (not cleared under the programs), and the
    /// next apply follows the kernel ([`Generations::follow_kernel`]).
    Unknown(MapsError),
}

/// The policy maps with their two generations.
pub struct Generations<M> {
    maps: M,
    live: u32,
    sequence: u64,
}

impl<M: PolicyMaps> Generations<M> {
    /// Starts from what the maps say is live (a new object: generation 0, sequence 0).
    pub fn new(maps: M) -> Result<Generations<M>, MapsError> {
        let active = maps.active()?;
        Ok(Generations { maps, live: active.generation & 1, sequence: active.sequence })
    }

    /// Makes `entries` the live policy. On error the previous policy stays live and untouched
    /// (the half-written generation is cleared again), with one exception no kernel is known
    /// to produce: the flip's write reports an error and the active state cannot be read back
    /// (see [`Flip::Unknown`]).
    pub fn apply(&mut self, entries: &[MapEntry]) -> Result<ApplyReport, MapsError> {
        self.apply_following(entries, &|_| None)
    }

    /// [`Generations::apply`], binding each unit's cgroup as it is just before the flip
    /// (`current`: a unit path's cgroup id now). A unit restarted while this apply ran (its
    /// new cgroup made after the policy was resolved, or bound by the kernel in this
    /// generation before it was cleared) is bound here; one made after this look finds the
    /// unit's path in this generation, and the kernel binds it (`tp_btf/cgroup_mkdir`).
    pub fn apply_following(
        &mut self,
        entries: &[MapEntry],
        current: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<ApplyReport, MapsError> {
        self.follow_kernel()?;
        let next = 1 - self.live;
        // Leftovers of an interrupted apply, or of the generation before last.
        self.clear(next)?;
        // generation == sequence mod 2 in every state written: the programs' caches tell a
        // whole read of this entry from a torn one by it.
        let state = ActiveState { generation: next, abi: ABI_VERSION, sequence: self.sequence + 1 };
        let written = self.write(next, entries).and_then(|()| self.follow_units(next, entries, current));
        let flipped = match written {
            Ok(()) => self.flip(state),
            Err(e) => Err(Flip::NotLive(e)),
        };
        match flipped {
            Ok(()) => {}
            Err(Flip::NotLive(e)) => {
                if let Err(clear) = self.clear(next) {
                    tracing::warn!(error = %clear, "clearing a half-written policy generation failed; it is not live");
                }
                return Err(e);
            }
            // Whether the kernel took the flip is unknown: the generation is left as it is (it
            // may be live), and the next apply starts from what the kernel says.
            Err(Flip::Unknown(e)) => return Err(e),
        }
        let old = self.live;
        self.live = next;
        self.sequence += 1;
        // Hooks that read the old generation number just before the flip may still be looking
        // up its entries; let them finish before the entries go.
        self.maps.grace_period();
        if let Err(e) = self.clear(old) {
            tracing::warn!(error = %e, generation = old, "clearing the previous policy generation failed; it is no longer live");
        }
        Ok(ApplyReport { generation: next, sequence: self.sequence, entries: entries.len() })
    }

    /// Every entry of the live generation, read back from the maps.
    pub fn dump_live(&self) -> Result<Vec<MapEntry>, MapsError> {
        let mut out = Vec::new();
        for map in Map::POLICY {
            out.extend(self.maps.dump(map, self.live)?);
        }
        Ok(out)
    }

    /// The apply sequence number of the live policy.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Writes the entries map by map in [`Map::POLICY`] order (cgroup bindings last).
    fn write(&mut self, g: u32, entries: &[MapEntry]) -> Result<(), MapsError> {
        for map in Map::POLICY {
            for e in entries.iter().filter(|e| e.map() == map) {
                self.maps.insert(g, e)?;
            }
        }
        Ok(())
    }

    fn follow_units(
        &mut self,
        g: u32,
        entries: &[MapEntry],
        current: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<(), MapsError> {
        for e in entries {
            if let MapEntry::Unit { path, identity } = e
                && let Some(cgroup_id) = current(path)
            {
                self.maps.insert(g, &MapEntry::Cgroup { cgroup_id, identity: *identity })?;
            }
        }
        Ok(())
    }

    /// Starts an apply from the kernel's active state. It is ours unless a flip whose outcome
    /// was unknown did take effect after all; then its generation is live and its sequence
    /// number spent (programs may have cached verdicts under it).
    fn follow_kernel(&mut self) -> Result<(), MapsError> {
        let active = self.maps.active()?;
        if (active.generation & 1, active.sequence) != (self.live, self.sequence) {
            tracing::warn!(
                generation = active.generation,
                sequence = active.sequence,
                expected_generation = self.live,
                expected_sequence = self.sequence,
                "the kernel's live policy generation is not the one this agent last wrote; continuing from the kernel's"
            );
            self.live = active.generation & 1;
            // The next flip writes sequence + 1 with the other generation: generation ==
            // sequence mod 2 must hold there too (the programs' caches rely on it).
            self.sequence = active.sequence + u64::from(active.sequence % 2 != u64::from(self.live));
            // The generation about to be cleared was live until that flip: hooks that read it
            // just before finish first.
            self.maps.grace_period();
        }
        Ok(())
    }

    /// Writes `state` as the active one. A write reported as failed is read back: a map
    /// update that took effect but returned an error must not have its generation cleared
    /// under the programs, nor its sequence number given to another policy.
    fn flip(&mut self, state: ActiveState) -> Result<(), Flip> {
        let Err(e) = self.maps.set_active(state) else { return Ok(()) };
        let mut read = self.maps.active();
        for _ in 1..3 {
            if read.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            read = self.maps.active();
        }
        match read {
            Ok(now) if now == state => {
                tracing::warn!(error = %e, sequence = state.sequence, "the kernel took the policy flip although the write reported an error");
                Ok(())
            }
            Ok(_) => Err(Flip::NotLive(e)),
            Err(read) => {
                tracing::warn!(error = %read, "reading the active policy generation back after a failed flip failed");
                Err(Flip::Unknown(e))
            }
        }
    }

    fn clear(&mut self, g: u32) -> Result<(), MapsError> {
        for map in Map::POLICY {
            self.maps.clear(map, g)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{FakeMaps, SetActiveErr};

    fn cgroup(id: u64, identity: u32) -> MapEntry {
        MapEntry::Cgroup { cgroup_id: id, identity }
    }

    #[test]
    fn applies_flip_generations_and_clear_the_old_one() {
        let mut k = Generations::new(FakeMaps::default()).unwrap();
        let r = k.apply(&[cgroup(1, 1)]).unwrap();
        assert_eq!((r.generation, r.sequence, r.entries), (1, 1, 1));
        assert_eq!(k.dump_live().unwrap(), vec![cgroup(1, 1)]);
        let r = k.apply(&[cgroup(2, 1), cgroup(3, 2)]).unwrap();
        assert_eq!((r.generation, r.sequence), (0, 2));
        assert_eq!(k.dump_live().unwrap(), vec![cgroup(2, 1), cgroup(3, 2)]);
        assert!(k.maps().generation(1).is_empty(), "the old generation is cleared");
    }

    /// The kernel's caches rely on it: a read of the active entry whose generation is not its
    /// sequence mod 2 is half of one write and half of another (`identity::consistent` in
    /// fence-ebpf), and uses no cache.
    #[test]
    fn every_active_state_written_has_the_generation_of_its_sequence_parity() {
        let mut k = Generations::new(FakeMaps::default()).unwrap();
        for i in 0..5u64 {
            if i == 2 {
                k.maps.fail_after = Some(0);
                assert!(k.apply(&[cgroup(9, 1)]).is_err());
                k.maps.fail_after = None;
            }
            k.apply(&[cgroup(i + 1, 1)]).unwrap();
            let active = k.maps().active().unwrap();
            assert_eq!(u64::from(active.generation), active.sequence % 2, "{active:?}");
        }
    }

    /// A flip the kernel took although the write reported an error is live: its generation is
    /// kept and its sequence number is not given to the next policy.
    #[test]
    fn a_flip_that_took_effect_despite_an_error_is_followed() {
        let mut k = Generations::new(FakeMaps::default()).unwrap();
        k.apply(&[cgroup(1, 1)]).unwrap();
        k.maps.set_active_errs = Some(SetActiveErr::AfterWrite);
        assert_eq!(k.apply(&[cgroup(2, 1)]).unwrap().sequence, 2, "read back: it is live");
        assert_eq!(k.maps().live(), &[cgroup(2, 1)]);

        // Not readable back either (three reads): nothing is cleared, and the next apply follows
        // the kernel.
        k.maps.set_active_errs = Some(SetActiveErr::AfterWriteUnreadable);
        assert!(k.apply(&[cgroup(3, 1)]).is_err());
        k.maps.set_active_errs = None;
        assert_eq!(k.maps().live(), &[cgroup(3, 1)], "the kernel's live generation was not cleared");
        let r = k.apply(&[cgroup(4, 1)]).unwrap();
        assert_eq!(r.sequence, 4, "sequence 3 was spent by the flip the kernel took");
        assert_eq!(k.maps().live(), &[cgroup(4, 1)]);
        let active = k.maps().active().unwrap();
        assert_eq!(u64::from(active.generation), active.sequence % 2);

        // A write that failed before taking effect: the old policy stays, its sequence reused.
        k.maps.set_active_errs = Some(SetActiveErr::BeforeWrite);
        assert!(k.apply(&[cgroup(5, 1)]).is_err());
        k.maps.set_active_errs = None;
        assert_eq!(k.maps().live(), &[cgroup(4, 1)]);
        assert!(k.maps().generation(1).is_empty(), "the unflipped generation is cleared");
        assert_eq!(k.apply(&[cgroup(6, 1)]).unwrap().sequence, 5);
    }

    /// A kernel state this agent did not write, whose sequence has the other parity: the next
    /// flip still writes generation == sequence mod 2, and a higher sequence.
    #[test]
    fn following_the_kernel_keeps_the_parity() {
        let mut k = Generations::new(FakeMaps::default()).unwrap();
        k.apply(&[cgroup(1, 1)]).unwrap();
        k.maps_mut().set_active(ActiveState { generation: 1, abi: ABI_VERSION, sequence: 4 }).unwrap();
        let r = k.apply(&[cgroup(2, 1)]).unwrap();
        assert_eq!((r.generation, r.sequence), (0, 6));
        assert_eq!(k.maps().live(), &[cgroup(2, 1)]);
    }

    #[test]
    fn a_unit_restarted_during_an_apply_is_bound_in_the_new_generation() {
        let mut k = Generations::new(FakeMaps::default()).unwrap();
        let unit = MapEntry::Unit { path: "/s.slice/u.service".into(), identity: 5 };
        // The policy was resolved while the unit had no cgroup; it has one (id 77) now.
        k.apply_following(std::slice::from_ref(&unit), &|p| (p == "/s.slice/u.service").then_some(77)).unwrap();
        let live = k.dump_live().unwrap();
        assert!(live.contains(&cgroup(77, 5)), "{live:?}");
        assert!(live.contains(&unit), "{live:?}");
    }

    #[test]
    fn a_failed_apply_leaves_the_live_generation_untouched() {
        let mut k = Generations::new(FakeMaps::default()).unwrap();
        k.apply(&[cgroup(1, 1)]).unwrap();
        k.maps.fail_after = Some(1);
        assert!(k.apply(&[cgroup(2, 1), cgroup(3, 1)]).is_err());
        assert_eq!(k.dump_live().unwrap(), vec![cgroup(1, 1)]);
        assert_eq!(k.sequence(), 1);
        assert!(k.maps().generation(0).is_empty(), "the half-written generation is cleared");
        k.maps.fail_after = None;
        assert_eq!(k.apply(&[cgroup(4, 1)]).unwrap().sequence, 2);
    }

    #[test]
    fn bindings_are_written_last() {
        let mut k = Generations::new(FakeMaps::default()).unwrap();
        let identity = MapEntry::Identity { identity: 1, info: Default::default() };
        k.apply(&[cgroup(1, 1), identity.clone()]).unwrap();
        assert_eq!(k.maps().inserted, vec![identity, cgroup(1, 1)]);
    }
}
