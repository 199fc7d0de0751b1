//! The addresses each identity learned from the DNS answers its resolver let through, by
//! name: what the kernel's learned-address maps must hold, and the writes that bring them
//! there. One entry in the kernel per (identity, address); when several allowed names of one
//! identity share an address, the entry carries the union of their ports and the latest of
//! their expiries (the sweep narrows it again when a name's expiry passes, while the agent
//! runs). An address learned for one identity is never in another's entries.
//!
//! Caps: addresses per name and per identity; past them the least recently learned address is
//! evicted (and counted), so a name that answers with ever new addresses cannot fill the map.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use fence_common::{LearnedRules, MAX_PORT_RULES, NetRules, PortRule};

use crate::policy::net::Ports;

/// A port range of a rule: (first port, last port, `PROTO_*` bits).
pub type Range = crate::policy::net::PortSpan;

/// One change to the kernel's learned-address maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Put { identity: u32, addr: IpAddr, value: LearnedRules },
    Delete { identity: u32, addr: IpAddr },
}

/// How many addresses a name, and an identity, may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub per_name: usize,
    pub per_identity: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps { per_name: 4096, per_identity: 16_384 }
    }
}

/// The name addresses adopted from an earlier run are kept under (the kernel keeps no names).
pub const EARLIER_RUN: &str = "(learned before this run)";

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// CLOCK_BOOTTIME, ns.
    expires_ns: u64,
    /// When it was last learned, in learn order (for least-recently-learned eviction).
    order: u64,
}

#[derive(Debug, Default)]
struct Name {
    ranges: Vec<Range>,
    addrs: HashMap<IpAddr, Seen>,
}

#[derive(Debug, Default)]
struct Table {
    names: BTreeMap<String, Name>,
}

impl Table {
    fn count(&self) -> usize {
        self.names.values().map(|n| n.addrs.len()).sum()
    }

    /// The kernel value of `addr`: its names' ports and their latest expiry; `None` when no
    /// name holds it. More distinct port ranges than an entry holds keep the first ones (the
    /// rest are refused: fail closed) and say so in `truncated`.
    fn value(&self, addr: &IpAddr, truncated: &mut u64) -> Option<LearnedRules> {
        let mut ranges: Vec<Range> = Vec::new();
        let mut expires_ns = None;
        for name in self.names.values() {
            if let Some(seen) = name.addrs.get(addr) {
                ranges.extend_from_slice(&name.ranges);
                expires_ns = expires_ns.max(Some(seen.expires_ns));
            }
        }
        let expires_ns = expires_ns?;
        let mut merged: Vec<PortRule> = Ports::of(None, &ranges).rules();
        if merged.len() > MAX_PORT_RULES {
            *truncated += 1;
            merged.truncate(MAX_PORT_RULES);
        }
        let mut rules = NetRules { count: merged.len() as u32, ..NetRules::default() };
        rules.rules[..merged.len()].copy_from_slice(&merged);
        Some(LearnedRules { expires_ns, rules })
    }

    /// Evicts the least recently learned address of `name` (any name when `None`).
    fn evict_oldest(&mut self, name: Option<&str>) -> Option<IpAddr> {
        let oldest = self
            .names
            .iter()
            .filter(|(n, _)| name.is_none_or(|want| want == n.as_str()))
            .flat_map(|(n, entry)| entry.addrs.iter().map(move |(a, s)| (s.order, n.clone(), *a)))
            .min()?;
        let (_, n, addr) = oldest;
        self.names.get_mut(&n).map(|e| e.addrs.remove(&addr));
        Some(addr)
    }
}

/// Every identity's learned addresses.
#[derive(Debug, Default)]
pub struct Learned {
    identities: HashMap<u32, Table>,
    caps: Caps,
    order: u64,
    /// Addresses evicted by the caps, since start.
    pub evictions: u64,
    /// Kernel entries that could not carry every port range of their names.
    pub truncated: u64,
}

/// One row of `fence-agent dns`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub identity: u32,
    pub name: String,
    pub addr: IpAddr,
    pub expires_ns: u64,
}

impl Learned {
    pub fn new(caps: Caps) -> Learned {
        Learned { caps, ..Learned::default() }
    }

    /// `identity` resolved `name` (allowed with `ranges`) to `addrs`, each with its expiry
    /// (CLOCK_BOOTTIME ns): the writes that let it connect to them.
    pub fn learn(&mut self, identity: u32, name: &str, ranges: &[Range], addrs: &[(IpAddr, u64)]) -> Vec<Write> {
        let caps = self.caps;
        let table = self.identities.entry(identity).or_default();
        let entry = table.names.entry(name.to_owned()).or_default();
        entry.ranges = ranges.to_vec();
        let mut touched: BTreeSet<IpAddr> = BTreeSet::new();
        for &(addr, expires_ns) in addrs {
            self.order += 1;
            entry.addrs.insert(addr, Seen { expires_ns, order: self.order });
            touched.insert(addr);
        }
        while table.names.get(name).is_some_and(|e| e.addrs.len() > caps.per_name) {
            touched.extend(table.evict_oldest(Some(name)));
            self.evictions += 1;
        }
        while table.count() > caps.per_identity {
            touched.extend(table.evict_oldest(None));
            self.evictions += 1;
        }
        self.writes(identity, touched)
    }

    /// Drops what expired by `now_ns`: the writes that narrow or remove the kernel entries
    /// (the kernel refuses expired entries by itself; this frees their room and narrows an
    /// address shared with a name that has not expired).
    pub fn sweep(&mut self, now_ns: u64) -> Vec<Write> {
        let mut out = Vec::new();
        let ids: Vec<u32> = self.identities.keys().copied().collect();
        for identity in ids {
            let mut touched = BTreeSet::new();
            if let Some(table) = self.identities.get_mut(&identity) {
                for entry in table.names.values_mut() {
                    entry.addrs.retain(|a, s| {
                        let keep = s.expires_ns > now_ns;
                        if !keep {
                            touched.insert(*a);
                        }
                        keep
                    });
                }
                table.names.retain(|_, e| !e.addrs.is_empty());
            }
            out.extend(self.writes(identity, touched));
        }
        self.identities.retain(|_, t| !t.names.is_empty());
        out
    }

    /// The identity's policy changed: each name keeps its addresses with the ports
    /// `ranges_of` gives it now; a name it no longer allows (`None`) loses them.
    pub fn reprice(&mut self, identity: u32, ranges_of: impl Fn(&str) -> Option<Vec<Range>>) -> Vec<Write> {
        let Some(table) = self.identities.get_mut(&identity) else { return Vec::new() };
        let touched: BTreeSet<IpAddr> = table.names.values().flat_map(|e| e.addrs.keys().copied()).collect();
        table.names.retain(|name, entry| {
            // What an earlier run learned has no name to judge again: it keeps its ports until
            // its expiry (at most `[dns] ttl_cap`).
            if name.starts_with(EARLIER_RUN) {
                return true;
            }
            match ranges_of(name) {
                Some(r) => {
                    entry.ranges = r;
                    true
                }
                None => false,
            }
        });
        self.writes(identity, touched)
    }

    /// The identity is gone: every address it learned goes.
    pub fn forget_identity(&mut self, identity: u32) -> Vec<Write> {
        let Some(table) = self.identities.remove(&identity) else { return Vec::new() };
        let addrs: BTreeSet<IpAddr> = table.names.values().flat_map(|e| e.addrs.keys().copied()).collect();
        addrs.into_iter().map(|addr| Write::Delete { identity, addr }).collect()
    }

    /// Takes over what an earlier run left in the kernel (persistence): kept, under
    /// [`EARLIER_RUN`], with their ports and expiry, until they expire or the identity goes.
    pub fn adopt(&mut self, entries: Vec<(u32, IpAddr, LearnedRules)>) {
        for (identity, addr, value) in entries {
            let ranges: Vec<Range> = value
                .rules
                .rules
                .iter()
                .take(value.rules.count as usize)
                .map(|r| (r.lo, r.hi, r.protocols, r.grant))
                .collect();
            let table = self.identities.entry(identity).or_default();
            let entry = table.names.entry(format!("{EARLIER_RUN} {addr}")).or_default();
            entry.ranges = ranges;
            self.order += 1;
            entry.addrs.insert(addr, Seen { expires_ns: value.expires_ns, order: self.order });
        }
    }

    /// Every learned (identity, name, address), for `fence-agent dns`.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .identities
            .iter()
            .flat_map(|(&identity, t)| {
                t.names.iter().flat_map(move |(name, e)| {
                    e.addrs.iter().map(move |(&addr, s)| Row {
                        identity,
                        name: name.clone(),
                        addr,
                        expires_ns: s.expires_ns,
                    })
                })
            })
            .collect();
        rows.sort_by(|a, b| (a.identity, &a.name, a.addr).cmp(&(b.identity, &b.name, b.addr)));
        rows
    }

    /// The grant slots learned entries name (not free for a new grant while they are held).
    pub fn grant_slots(&self) -> BTreeSet<u16> {
        let ranges = self.identities.values().flat_map(|t| t.names.values()).flat_map(|n| n.ranges.iter());
        ranges.map(|r| r.3).filter(|&s| s != 0).collect()
    }

    /// The addresses `identity` learned, each with the ranges of its names whose slot `keep`
    /// accepts (addresses with none left out).
    pub fn reach_of(&self, identity: u32, keep: impl Fn(u16) -> bool) -> Vec<(IpAddr, Vec<Range>)> {
        let Some(t) = self.identities.get(&identity) else { return Vec::new() };
        let mut out: HashMap<IpAddr, Vec<Range>> = HashMap::new();
        for name in t.names.values() {
            let kept: Vec<Range> = name.ranges.iter().filter(|r| keep(r.3)).copied().collect();
            if kept.is_empty() {
                continue;
            }
            for addr in name.addrs.keys() {
                out.entry(*addr).or_default().extend(kept.iter().copied());
            }
        }
        out.into_iter().collect()
    }

    /// Addresses held per identity (for metrics).
    pub fn sizes(&self) -> Vec<(u32, usize)> {
        self.identities.iter().map(|(&id, t)| (id, t.count())).collect()
    }

    fn writes(&mut self, identity: u32, touched: BTreeSet<IpAddr>) -> Vec<Write> {
        let Some(table) = self.identities.get(&identity) else {
            return touched.into_iter().map(|addr| Write::Delete { identity, addr }).collect();
        };
        let truncated = &mut self.truncated;
        touched
            .into_iter()
            .map(|addr| match table.value(&addr, truncated) {
                Some(value) => Write::Put { identity, addr, value },
                None => Write::Delete { identity, addr },
            })
            .collect()
    }
}

/// Now on CLOCK_BOOTTIME (the clock `bpf_ktime_get_boot_ns` reads), in ns.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use fence_common::{PROTO_TCP, PROTO_UDP};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn put(w: &Write) -> (u32, IpAddr, u64, Vec<Range>) {
        let Write::Put { identity, addr, value } = w else { panic!("{w:?}") };
        let rules = value.rules.rules[..value.rules.count as usize]
            .iter()
            .map(|r| (r.lo, r.hi, r.protocols, r.grant))
            .collect();
        (*identity, *addr, value.expires_ns, rules)
    }

    #[test]
    fn a_learned_address_carries_its_names_ports_and_expiry() {
        let mut l = Learned::default();
        let w = l.learn(
            1,
            "api.example.com",
            &[(443, 443, PROTO_TCP, 0)],
            &[(ip("192.0.2.1"), 100), (ip("2001:db8::1"), 100)],
        );
        assert_eq!(w.len(), 2);
        assert_eq!(put(&w[0]), (1, ip("192.0.2.1"), 100, vec![(443, 443, PROTO_TCP, 0)]));
    }

    #[test]
    fn names_sharing_an_address_union_their_ports_and_the_sweep_narrows_it() {
        let mut l = Learned::default();
        l.learn(1, "a.example.com", &[(443, 443, PROTO_TCP, 0)], &[(ip("192.0.2.1"), 100)]);
        let w = l.learn(1, "b.example.com", &[(53, 53, PROTO_UDP, 0)], &[(ip("192.0.2.1"), 200)]);
        assert_eq!(put(&w[0]), (1, ip("192.0.2.1"), 200, vec![(443, 443, PROTO_TCP, 0), (53, 53, PROTO_UDP, 0)]));
        // a.example.com's expiry passes: only b's port is left.
        let w = l.sweep(150);
        assert_eq!(put(&w[0]), (1, ip("192.0.2.1"), 200, vec![(53, 53, PROTO_UDP, 0)]));
        // Then b's too: the entry goes.
        assert_eq!(l.sweep(250), vec![Write::Delete { identity: 1, addr: ip("192.0.2.1") }]);
        assert!(l.rows().is_empty());
    }

    #[test]
    fn identities_never_share_entries() {
        let mut l = Learned::default();
        l.learn(1, "x.example.com", &[(443, 443, PROTO_TCP, 0)], &[(ip("192.0.2.1"), 100)]);
        let w = l.learn(2, "y.example.com", &[(80, 80, PROTO_TCP, 0)], &[(ip("192.0.2.1"), 50)]);
        assert_eq!(put(&w[0]), (2, ip("192.0.2.1"), 50, vec![(80, 80, PROTO_TCP, 0)]));
        // B's expiring does not touch A's entry.
        assert_eq!(l.sweep(60), vec![Write::Delete { identity: 2, addr: ip("192.0.2.1") }]);
        assert_eq!(l.rows().len(), 1);
        assert_eq!(l.forget_identity(1), vec![Write::Delete { identity: 1, addr: ip("192.0.2.1") }]);
    }

    #[test]
    fn caps_evict_the_least_recently_learned_and_count_it() {
        let mut l = Learned::new(Caps { per_name: 2, per_identity: 3 });
        let tcp = [(443, 443, PROTO_TCP, 0)];
        l.learn(1, "a.example.com", &tcp, &[(ip("192.0.2.1"), 100), (ip("192.0.2.2"), 100)]);
        let w = l.learn(1, "a.example.com", &tcp, &[(ip("192.0.2.3"), 100)]);
        assert!(w.contains(&Write::Delete { identity: 1, addr: ip("192.0.2.1") }), "{w:?}");
        assert_eq!(l.evictions, 1);
        let w = l.learn(1, "b.example.com", &tcp, &[(ip("192.0.2.9"), 100), (ip("192.0.2.8"), 100)]);
        assert!(w.contains(&Write::Delete { identity: 1, addr: ip("192.0.2.2") }), "{w:?}");
        assert_eq!(l.rows().len(), 3);
    }

    #[test]
    fn a_policy_change_reprices_and_drops_names_no_longer_allowed() {
        let mut l = Learned::default();
        l.learn(1, "a.example.com", &[(443, 443, PROTO_TCP, 0)], &[(ip("192.0.2.1"), 100)]);
        l.learn(1, "b.example.com", &[(80, 80, PROTO_TCP, 0)], &[(ip("192.0.2.2"), 100)]);
        let w = l.reprice(1, |n| (n == "a.example.com").then(|| vec![(8443, 8443, PROTO_TCP, 0)]));
        assert_eq!(put(&w[0]), (1, ip("192.0.2.1"), 100, vec![(8443, 8443, PROTO_TCP, 0)]));
        assert_eq!(w[1], Write::Delete { identity: 1, addr: ip("192.0.2.2") });
    }

    #[test]
    fn what_an_earlier_run_learned_is_kept_until_it_expires() {
        let mut l = Learned::default();
        let mut rules = NetRules { count: 1, ..NetRules::default() };
        rules.rules[0] = PortRule::new(443, 443, PROTO_TCP, 0);
        l.adopt(vec![(3, ip("192.0.2.7"), LearnedRules { expires_ns: 100, rules })]);
        assert_eq!(l.rows()[0].identity, 3);
        // The first apply of the new run does not drop it (its name is unknown, not refused).
        assert_eq!(put(&l.reprice(3, |_| None)[0]), (3, ip("192.0.2.7"), 100, vec![(443, 443, PROTO_TCP, 0)]));
        assert_eq!(l.sweep(101), vec![Write::Delete { identity: 3, addr: ip("192.0.2.7") }]);
    }

    #[test]
    fn the_boot_clock_moves() {
        let a = boot_ns();
        assert!(a > 0 && boot_ns() >= a);
    }
}
