//! [`PolicyMaps`] over the maps of a loaded eBPF object.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map as BpfMap, MapData, MapError, lpm_trie::Key},
};
use fence_common::{
    AbstractKey, ActiveState, CgroupKey, IdentityInfo, IdentityKey, InodeKey, Map, NET_KEY_PREFIX_BITS, Net4Key,
    Net6Key, NetRules, Scope, UnitKey, flags_of, grant_of, inode_value,
};

use super::{MapEntry, MapsError, NetEntry, PolicyMaps};
use crate::resolve::ObjectId;

/// The policy maps (and the active-generation array), taken out of the loaded object: the
/// policy service owns them from then on; the programs keep using them.
pub struct AyaPolicyMaps {
    maps: BTreeMap<Map, BpfMap>,
}

impl AyaPolicyMaps {
    /// Takes [`Map::Active`] and every map of [`Map::POLICY`] out of `bpf`.
    pub fn take(bpf: &mut Ebpf) -> Result<AyaPolicyMaps, MapsError> {
        let mut maps = BTreeMap::new();
        for map in Map::POLICY.into_iter().chain([Map::Active]) {
            let taken = bpf.take_map(map.name()).ok_or(MapsError::Missing(map.name()))?;
            maps.insert(map, taken);
        }
        Ok(AyaPolicyMaps { maps })
    }

    fn set_scope(&mut self, g: u32, scope: &Scope) -> Result<(), MapsError> {
        let map = Map::Scope;
        let err = |source| MapsError::Map { map: map.name(), source };
        let mut array: Array<&mut MapData, Scope> = Array::try_from(self.raw_mut(map)?).map_err(err)?;
        array.set(g & 1, scope, 0).map_err(err)
    }

    fn raw(&self, map: Map) -> Result<&BpfMap, MapsError> {
        self.maps.get(&map).ok_or(MapsError::Missing(map.name()))
    }

    fn raw_mut(&mut self, map: Map) -> Result<&mut BpfMap, MapsError> {
        self.maps.get_mut(&map).ok_or(MapsError::Missing(map.name()))
    }

    fn put<K: aya::Pod, V: aya::Pod>(&mut self, map: Map, key: &K, value: &V) -> Result<(), MapsError> {
        let err = |source| MapsError::Map { map: map.name(), source };
        let mut h: HashMap<&mut MapData, K, V> = HashMap::try_from(self.raw_mut(map)?).map_err(err)?;
        h.insert(key, value, 0).map_err(err)
    }

    fn put_lpm<K: aya::Pod>(&mut self, map: Map, key: &Key<K>, value: &NetRules) -> Result<(), MapsError> {
        let err = |source| MapsError::Map { map: map.name(), source };
        let mut t: LpmTrie<&mut MapData, K, NetRules> = LpmTrie::try_from(self.raw_mut(map)?).map_err(err)?;
        t.insert(key, value, 0).map_err(err)
    }

    /// Every (key, value) of a hash map whose key is of `generation`.
    fn entries<K: aya::Pod + Generational, V: aya::Pod>(
        &self,
        map: Map,
        generation: u32,
    ) -> Result<Vec<(K, V)>, MapsError> {
        let err = |source| MapsError::Map { map: map.name(), source };
        let h: HashMap<&MapData, K, V> = HashMap::try_from(self.raw(map)?).map_err(err)?;
        // An error ends the kernel's iteration: it is returned, never taken for the end.
        let all: Vec<(K, V)> = h.iter().collect::<Result<_, _>>().map_err(err)?;
        Ok(all.into_iter().filter(|(k, _)| k.generation() == generation).collect())
    }

    fn lpm_entries<K: aya::Pod + Generational>(
        &self,
        map: Map,
        generation: u32,
    ) -> Result<Vec<(u8, K, NetRules)>, MapsError> {
        let err = |source| MapsError::Map { map: map.name(), source };
        let t: LpmTrie<&MapData, K, NetRules> = LpmTrie::try_from(self.raw(map)?).map_err(err)?;
        let all: Vec<(Key<K>, NetRules)> = t.iter().collect::<Result<_, _>>().map_err(err)?;
        Ok(all
            .into_iter()
            .filter(|(k, _)| k.data().generation() == generation)
            .map(|(k, v)| ((k.prefix_len() - NET_KEY_PREFIX_BITS) as u8, k.data(), v))
            .collect())
    }

    fn clear_hash<K: aya::Pod + Generational, V: aya::Pod>(&mut self, map: Map, g: u32) -> Result<(), MapsError> {
        let err = |source| MapsError::Map { map: map.name(), source };
        let mut h: HashMap<&mut MapData, K, V> = HashMap::try_from(self.raw_mut(map)?).map_err(err)?;
        // A key the iteration did not reach would stay, and be live again when this generation
        // is next written: an error fails the clear (and so the apply), never ends it early.
        let keys: Vec<K> = h.keys().collect::<Result<Vec<K>, _>>().map_err(err)?;
        let keys: Vec<K> = keys.into_iter().filter(|k| k.generation() == g).collect();
        for k in keys {
            remove_ok_if_gone(h.remove(&k)).map_err(err)?;
        }
        Ok(())
    }

    fn clear_lpm<K: aya::Pod + Generational>(&mut self, map: Map, g: u32) -> Result<(), MapsError> {
        let err = |source| MapsError::Map { map: map.name(), source };
        let mut t: LpmTrie<&mut MapData, K, NetRules> = LpmTrie::try_from(self.raw_mut(map)?).map_err(err)?;
        let keys: Vec<Key<K>> = t.keys().collect::<Result<Vec<_>, _>>().map_err(err)?;
        let keys: Vec<Key<K>> = keys.into_iter().filter(|k| k.data().generation() == g).collect();
        for k in keys {
            remove_ok_if_gone(t.remove(&k)).map_err(err)?;
        }
        Ok(())
    }
}

impl PolicyMaps for AyaPolicyMaps {
    fn insert(&mut self, g: u32, entry: &MapEntry) -> Result<(), MapsError> {
        let inode = |identity: u32, o: &ObjectId| InodeKey { generation: g, identity, ino: o.ino, dev: o.dev, _pad: 0 };
        let map = entry.map();
        match entry {
            MapEntry::Identity { identity, info } => {
                self.put(map, &IdentityKey { generation: g, identity: *identity }, info)
            }
            MapEntry::Net4(e) => {
                let key = Net4Key { generation: g, identity: e.identity, addr: e.addr };
                match map {
                    Map::Host4 => self.put(map, &key, &e.rules),
                    _ => self.put_lpm(map, &Key::new(NET_KEY_PREFIX_BITS + u32::from(e.prefix_len), key), &e.rules),
                }
            }
            MapEntry::Net6(e) => {
                let key = Net6Key { generation: g, identity: e.identity, addr: e.addr };
                match map {
                    Map::Host6 => self.put(map, &key, &e.rules),
                    _ => self.put_lpm(map, &Key::new(NET_KEY_PREFIX_BITS + u32::from(e.prefix_len), key), &e.rules),
                }
            }
            MapEntry::Exec { identity, object, grant } | MapEntry::Unix { identity, object, grant } => {
                self.put(map, &inode(*identity, object), &inode_value(1, *grant))
            }
            MapEntry::Protected { object, flags } => self.put(map, &inode(0, object), flags),
            MapEntry::FileExcept { identity, object, flags, grant } => {
                self.put(map, &inode(*identity, object), &inode_value(*flags, *grant))
            }
            MapEntry::UnixAbstract { identity, name, grant } => {
                let mut key = AbstractKey { generation: g, identity: *identity, ..AbstractKey::default() };
                let dest = key.name.get_mut(..name.len()).ok_or(MapsError::TooLong {
                    map: map.name(),
                    what: "an abstract socket name",
                    len: name.len(),
                    max: fence_common::ABSTRACT_NAME_LEN,
                })?;
                dest.copy_from_slice(name);
                key.len = name.len() as u32;
                self.put(map, &key, &inode_value(1, *grant))
            }
            MapEntry::Unit { path, identity } => {
                let mut key = UnitKey { generation: g, ..UnitKey::default() };
                let bytes = path.as_bytes();
                let dest = key.path.get_mut(..bytes.len()).ok_or(MapsError::TooLong {
                    map: map.name(),
                    what: "a unit cgroup path",
                    len: bytes.len(),
                    max: fence_common::UNIT_PATH_LEN,
                })?;
                dest.copy_from_slice(bytes);
                self.put(map, &key, identity)
            }
            MapEntry::Cgroup { cgroup_id, identity } => {
                self.put(map, &CgroupKey { cgroup_id: *cgroup_id, generation: g, _pad: 0 }, identity)
            }
            MapEntry::Scope(scope) => self.set_scope(g, scope),
        }
    }

    fn clear(&mut self, map: Map, g: u32) -> Result<(), MapsError> {
        match map {
            Map::Cgroups => self.clear_hash::<CgroupKey, u32>(map, g),
            Map::Identities => self.clear_hash::<IdentityKey, IdentityInfo>(map, g),
            Map::Units => self.clear_hash::<UnitKey, u32>(map, g),
            Map::Host4 => self.clear_hash::<Net4Key, NetRules>(map, g),
            Map::Host6 => self.clear_hash::<Net6Key, NetRules>(map, g),
            Map::Net4 => self.clear_lpm::<Net4Key>(map, g),
            Map::Net6 => self.clear_lpm::<Net6Key>(map, g),
            Map::Exec | Map::Protected | Map::FileExcept | Map::Unix => self.clear_hash::<InodeKey, u32>(map, g),
            Map::UnixAbstract => self.clear_hash::<AbstractKey, u32>(map, g),
            // Nothing fenced: a generation that is not live is never read.
            Map::Scope => self.set_scope(g, &Scope::default()),
            Map::Active
            | Map::EventLimit
            | Map::EventRate
            | Map::Events
            | Map::Counters
            | Map::IdentityCache
            | Map::Verdicts
            | Map::AgentTasks
            | Map::Reporter
            | Map::DnsResolvers
            | Map::DnsSteered
            | Map::Learned4
            | Map::Learned6
            | Map::Grants
            | Map::GrantUses
            | Map::ExecCaller
            | Map::ExecScratch
            | Map::FileOwners => Ok(()),
        }
    }

    fn dump(&self, map: Map, g: u32) -> Result<Vec<MapEntry>, MapsError> {
        let object = |k: &InodeKey| ObjectId { dev: k.dev, ino: k.ino };
        Ok(match map {
            Map::Cgroups => self
                .entries::<CgroupKey, u32>(map, g)?
                .into_iter()
                .map(|(k, identity)| MapEntry::Cgroup { cgroup_id: k.cgroup_id, identity })
                .collect(),
            Map::Identities => self
                .entries::<IdentityKey, IdentityInfo>(map, g)?
                .into_iter()
                .map(|(k, info)| MapEntry::Identity { identity: k.identity, info })
                .collect(),
            Map::Units => self
                .entries::<UnitKey, u32>(map, g)?
                .into_iter()
                .map(|(k, identity)| {
                    let end = k.path.iter().position(|&b| b == 0).unwrap_or(k.path.len());
                    MapEntry::Unit { path: String::from_utf8_lossy(&k.path[..end]).into_owned(), identity }
                })
                .collect(),
            Map::Host4 => self
                .entries::<Net4Key, NetRules>(map, g)?
                .into_iter()
                .map(|(k, rules)| {
                    MapEntry::Net4(NetEntry { identity: k.identity, prefix_len: 32, addr: k.addr, rules, hashed: true })
                })
                .collect(),
            Map::Host6 => self
                .entries::<Net6Key, NetRules>(map, g)?
                .into_iter()
                .map(|(k, rules)| {
                    MapEntry::Net6(NetEntry {
                        identity: k.identity,
                        prefix_len: 128,
                        addr: k.addr,
                        rules,
                        hashed: true,
                    })
                })
                .collect(),
            Map::Net4 => self
                .lpm_entries::<Net4Key>(map, g)?
                .into_iter()
                .map(|(prefix_len, k, rules)| {
                    MapEntry::Net4(NetEntry { identity: k.identity, prefix_len, addr: k.addr, rules, hashed: false })
                })
                .collect(),
            Map::Net6 => self
                .lpm_entries::<Net6Key>(map, g)?
                .into_iter()
                .map(|(prefix_len, k, rules)| {
                    MapEntry::Net6(NetEntry { identity: k.identity, prefix_len, addr: k.addr, rules, hashed: false })
                })
                .collect(),
            Map::Exec | Map::Protected | Map::FileExcept | Map::Unix => self
                .entries::<InodeKey, u32>(map, g)?
                .into_iter()
                .map(|(k, v)| {
                    let (identity, object, grant) = (k.identity, object(&k), grant_of(v));
                    match map {
                        Map::Exec => MapEntry::Exec { identity, object, grant },
                        Map::Protected => MapEntry::Protected { object, flags: v },
                        Map::FileExcept => MapEntry::FileExcept { identity, object, flags: flags_of(v), grant },
                        _ => MapEntry::Unix { identity, object, grant },
                    }
                })
                .collect(),
            Map::UnixAbstract => self
                .entries::<AbstractKey, u32>(map, g)?
                .into_iter()
                .map(|(k, v)| {
                    let len = (k.len as usize).min(k.name.len());
                    MapEntry::UnixAbstract { identity: k.identity, name: k.name[..len].to_vec(), grant: grant_of(v) }
                })
                .collect(),
            Map::Scope => {
                let err = |source| MapsError::Map { map: map.name(), source };
                let array: Array<&MapData, Scope> = Array::try_from(self.raw(map)?).map_err(err)?;
                let scope = array.get(&(g & 1), 0).map_err(err)?;
                if scope == Scope::default() { Vec::new() } else { vec![MapEntry::Scope(scope)] }
            }
            Map::Active
            | Map::EventLimit
            | Map::EventRate
            | Map::Events
            | Map::Counters
            | Map::IdentityCache
            | Map::Verdicts
            | Map::AgentTasks
            | Map::Reporter
            | Map::DnsResolvers
            | Map::DnsSteered
            | Map::Learned4
            | Map::Learned6
            | Map::Grants
            | Map::GrantUses
            | Map::ExecCaller
            | Map::ExecScratch
            | Map::FileOwners => Vec::new(),
        })
    }

    fn active(&self) -> Result<ActiveState, MapsError> {
        let map = Map::Active;
        let err = |source| MapsError::Map { map: map.name(), source };
        let array: Array<&MapData, ActiveState> = Array::try_from(self.raw(map)?).map_err(err)?;
        array.get(&0, 0).map_err(err)
    }

    fn set_active(&mut self, state: ActiveState) -> Result<(), MapsError> {
        let map = Map::Active;
        let err = |source| MapsError::Map { map: map.name(), source };
        let mut array: Array<&mut MapData, ActiveState> = Array::try_from(self.raw_mut(map)?).map_err(err)?;
        array.set(0, &state, 0).map_err(err)
    }

    /// membarrier's global command runs synchronize_rcu() in the kernel (non-sleepable BPF
    /// programs run inside RCU read-side sections). A short sleep covers kernels where the
    /// command is unavailable.
    fn grace_period(&self) {
        super::grace_period();
    }
}

/// Keys that carry a policy generation.
trait Generational {
    fn generation(&self) -> u32;
}

macro_rules! generational {
    ($($t:ty),*) => {$(
        impl Generational for $t {
            fn generation(&self) -> u32 {
                self.generation
            }
        }
    )*};
}
generational!(CgroupKey, IdentityKey, InodeKey, AbstractKey, UnitKey, Net4Key, Net6Key);

/// A key that is already gone is fine when clearing.
pub(super) fn remove_ok_if_gone(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
