//! The maps of egress by name: where each identity's DNS is steered, and the addresses it
//! learned from allowed answers. Not policy generations: they outlive an apply (a learned
//! address keeps its expiry), and only the DNS state of the policy service writes them.

use std::net::IpAddr;

use aya::maps::{HashMap, Map as BpfMap, MapData, MapError};
use fence_common::{DNS_STEERING, DnsResolver, Learned4Key, Learned6Key, LearnedRules, Map};

use super::{MapsError, aya_maps::remove_ok_if_gone};

/// What the DNS state needs from the kernel: the real maps, or a fake in unit tests.
pub trait DnsKernel: Send {
    /// Turns steering on (every fenced identity's DNS goes to its resolver, or fails) or off.
    fn steer(&mut self, on: bool) -> Result<(), MapsError>;
    fn set_resolver(&mut self, identity: u32, resolver: DnsResolver) -> Result<(), MapsError>;
    fn remove_resolver(&mut self, identity: u32) -> Result<(), MapsError>;
    /// Allows `identity` to reach `addr` with `rules` until their expiry.
    fn learn(&mut self, identity: u32, addr: IpAddr, rules: &LearnedRules) -> Result<(), MapsError>;
    /// Removes a learned address (gone already is fine).
    fn forget(&mut self, identity: u32, addr: IpAddr) -> Result<(), MapsError>;
    /// Every learned address in the kernel (after a restart: what the previous run learned).
    fn learned(&self) -> Result<Vec<(u32, IpAddr, LearnedRules)>, MapsError>;
}

/// The real maps, taken out of the loaded object.
pub struct AyaDnsMaps {
    resolvers: HashMap<MapData, u32, DnsResolver>,
    learned4: HashMap<MapData, Learned4Key, LearnedRules>,
    learned6: HashMap<MapData, Learned6Key, LearnedRules>,
}

fn err(map: Map) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { map: map.name(), source }
}

impl AyaDnsMaps {
    /// Takes the maps out of `take` (the loader's `take_map`).
    pub fn take(mut take: impl FnMut(&'static str) -> Option<BpfMap>) -> Result<AyaDnsMaps, MapsError> {
        let mut one = |map: Map| take(map.name()).ok_or(MapsError::Missing(map.name()));
        Ok(AyaDnsMaps {
            resolvers: HashMap::try_from(one(Map::DnsResolvers)?).map_err(err(Map::DnsResolvers))?,
            learned4: HashMap::try_from(one(Map::Learned4)?).map_err(err(Map::Learned4))?,
            learned6: HashMap::try_from(one(Map::Learned6)?).map_err(err(Map::Learned6))?,
        })
    }
}

impl DnsKernel for AyaDnsMaps {
    fn steer(&mut self, on: bool) -> Result<(), MapsError> {
        let r = if on {
            self.resolvers.insert(&DNS_STEERING, &DnsResolver::default(), 0)
        } else {
            remove_ok_if_gone(self.resolvers.remove(&DNS_STEERING))
        };
        r.map_err(err(Map::DnsResolvers))
    }

    fn set_resolver(&mut self, identity: u32, resolver: DnsResolver) -> Result<(), MapsError> {
        self.resolvers.insert(&identity, &resolver, 0).map_err(err(Map::DnsResolvers))
    }

    fn remove_resolver(&mut self, identity: u32) -> Result<(), MapsError> {
        remove_ok_if_gone(self.resolvers.remove(&identity)).map_err(err(Map::DnsResolvers))
    }

    fn learn(&mut self, identity: u32, addr: IpAddr, rules: &LearnedRules) -> Result<(), MapsError> {
        match addr {
            IpAddr::V4(a) => {
                let key = Learned4Key { identity, addr: a.octets() };
                self.learned4.insert(&key, rules, 0).map_err(err(Map::Learned4))
            }
            IpAddr::V6(a) => {
                let key = Learned6Key { identity, addr: a.octets() };
                self.learned6.insert(&key, rules, 0).map_err(err(Map::Learned6))
            }
        }
    }

    fn forget(&mut self, identity: u32, addr: IpAddr) -> Result<(), MapsError> {
        match addr {
            IpAddr::V4(a) => remove_ok_if_gone(self.learned4.remove(&Learned4Key { identity, addr: a.octets() }))
                .map_err(err(Map::Learned4)),
            IpAddr::V6(a) => remove_ok_if_gone(self.learned6.remove(&Learned6Key { identity, addr: a.octets() }))
                .map_err(err(Map::Learned6)),
        }
    }

    fn learned(&self) -> Result<Vec<(u32, IpAddr, LearnedRules)>, MapsError> {
        // An error ends the kernel's iteration: returned, never taken for the end (an address
        // not adopted would never be forgotten when its name is revoked, only at its expiry).
        let v4: Vec<(Learned4Key, LearnedRules)> =
            self.learned4.iter().collect::<Result<_, _>>().map_err(err(Map::Learned4))?;
        let v6: Vec<(Learned6Key, LearnedRules)> =
            self.learned6.iter().collect::<Result<_, _>>().map_err(err(Map::Learned6))?;
        let v4 = v4.into_iter().map(|(k, v)| (k.identity, IpAddr::from(k.addr), v));
        let v6 = v6.into_iter().map(|(k, v)| (k.identity, IpAddr::from(k.addr), v));
        Ok(v4.chain(v6).collect())
    }
}
