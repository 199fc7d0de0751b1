//! CIDRs and port ranges as the policy writes them.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use fence_common::{PROTO_TCP, PROTO_UDP, PortRule};

use super::{PolicyErrorKind, model::PortDoc};

/// An IPv4 or IPv6 network with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpNet {
    V4 { addr: [u8; 4], len: u8 },
    V6 { addr: [u8; 16], len: u8 },
}

impl IpNet {
    /// Parses `a.b.c.d/len`, `x::y/len` or a single address (a /32 or /128).
    pub fn parse(text: &str) -> Result<IpNet, PolicyErrorKind> {
        let invalid = |why: String| PolicyErrorKind::InvalidCidr { value: text.to_owned(), why };
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr =
            addr_text.trim().parse().map_err(|_| invalid(format!("{addr_text:?} is not an IP address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) => {
                let n: u32 = l.trim().parse().map_err(|_| invalid(format!("prefix length {l:?} is not a number")))?;
                if n > max {
                    return Err(invalid(format!("prefix length {n} is out of range (0-{max})")));
                }
                n
            }
        };
        let net = match addr {
            IpAddr::V4(a) => IpNet::V4 { addr: a.octets(), len: len as u8 },
            IpAddr::V6(a) => IpNet::V6 { addr: a.octets(), len: len as u8 },
        };
        let masked = net.masked();
        if masked != net {
            return Err(PolicyErrorKind::HostBitsSet { value: text.to_owned(), suggestion: masked.to_string() });
        }
        Ok(net)
    }

    pub fn prefix_len(&self) -> u8 {
        match *self {
            IpNet::V4 { len, .. } | IpNet::V6 { len, .. } => len,
        }
    }

    /// The network with host bits cleared.
    pub fn masked(&self) -> IpNet {
        match *self {
            IpNet::V4 { addr, len } => IpNet::V4 { addr: mask(addr, len), len },
            IpNet::V6 { addr, len } => IpNet::V6 { addr: mask(addr, len), len },
        }
    }

    /// Whether `other` lies inside `self` (same family, at least as specific).
    pub fn contains(&self, other: &IpNet) -> bool {
        match (*self, *other) {
            (IpNet::V4 { addr, len }, IpNet::V4 { addr: o, len: ol }) => ol >= len && mask(o, len) == addr,
            (IpNet::V6 { addr, len }, IpNet::V6 { addr: o, len: ol }) => ol >= len && mask(o, len) == addr,
            _ => false,
        }
    }

    /// Whether address `ip` lies inside `self`.
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        let host = match ip {
            IpAddr::V4(a) => IpNet::V4 { addr: a.octets(), len: 32 },
            IpAddr::V6(a) => IpNet::V6 { addr: a.octets(), len: 128 },
        };
        self.contains(&host)
    }
}

fn mask<const N: usize>(mut addr: [u8; N], len: u8) -> [u8; N] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = (len as usize).saturating_sub(i * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    addr
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IpNet::V4 { addr, len } => write!(f, "{}/{len}", Ipv4Addr::from(addr)),
            IpNet::V6 { addr, len } => write!(f, "{}/{len}", Ipv6Addr::from(addr)),
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange { lo: 1, hi: 65535 };

    pub fn parse(port: &PortDoc) -> Result<PortRange, PolicyErrorKind> {
        match port {
            PortDoc::Number(n) => {
                let p = single(*n, &n.to_string())?;
                Ok(PortRange { lo: p, hi: p })
            }
            PortDoc::Text(t) => {
                let text = t.trim();
                if text.eq_ignore_ascii_case("any") {
                    return Ok(PortRange::ANY);
                }
                let invalid = |why: &str| PolicyErrorKind::InvalidPort { value: t.clone(), why: why.to_owned() };
                let (lo, hi) = match text.split_once('-') {
                    Some((lo, hi)) => (lo.trim(), hi.trim()),
                    None => (text, text),
                };
                let num = |s: &str| -> Result<u16, PolicyErrorKind> {
                    let n: i64 = s.parse().map_err(|_| invalid("not a number"))?;
                    single(n, s)
                };
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(invalid("the range's first port is greater than its last"));
                }
                Ok(PortRange { lo, hi })
            }
        }
    }
}

fn single(n: i64, text: &str) -> Result<u16, PolicyErrorKind> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(PolicyErrorKind::PortOutOfRange { value: text.to_owned() }),
    }
}

/// Ports per protocol: sorted, disjoint, non-adjacent ranges (the one way of writing a set of
/// ports as ranges). What an egress prefix, or a name, allows.
/// Ranges of one grant slot (0: standing) are merged with each other only: a grant's ports stay
/// its own, so that they end with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports {
    sets: std::collections::BTreeMap<u16, PortSet>,
}

/// The TCP and UDP ranges of one grant slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PortSet {
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
}

/// A port range for a set of protocols: (lo, hi, `PROTO_*` bits, grant slot; 0: standing).
pub type PortSpan = (u16, u16, u8, u16);

impl Ports {
    /// The ports of `inherited` and of the ranges of `own`.
    pub fn of(inherited: Option<&Ports>, own: &[PortSpan]) -> Ports {
        let mut sets = inherited.map(|p| p.sets.clone()).unwrap_or_default();
        let mut grants: Vec<u16> = own.iter().map(|s| s.3).collect();
        grants.sort_unstable();
        grants.dedup();
        for grant in grants {
            let set = sets.entry(grant).or_default();
            let per_protocol = |bit: u8, inherited: &[(u16, u16)]| {
                let ranges = own.iter().filter(|c| c.3 == grant && c.2 & bit != 0).map(|&(lo, hi, _, _)| (lo, hi));
                normalize(inherited.iter().copied().chain(ranges).collect())
            };
            *set = PortSet { tcp: per_protocol(PROTO_TCP, &set.tcp), udp: per_protocol(PROTO_UDP, &set.udp) };
        }
        Ports { sets }
    }

    /// The kernel's port rules, standing ones first, then per grant: TCP ranges first (joined
    /// with an identical UDP range into one rule), then the UDP ranges that have no TCP twin.
    pub fn rules(&self) -> Vec<PortRule> {
        let mut out: Vec<PortRule> = Vec::new();
        for (&grant, set) in &self.sets {
            let rule = |(lo, hi): (u16, u16), protocols| PortRule::new(lo, hi, protocols, grant);
            // Both lists are sorted and disjoint, so a binary search finds a twin.
            let twin = |list: &[(u16, u16)], range: &(u16, u16)| list.binary_search(range).is_ok();
            for range in &set.tcp {
                let both = twin(&set.udp, range);
                out.push(rule(*range, if both { PROTO_TCP | PROTO_UDP } else { PROTO_TCP }));
            }
            out.extend(set.udp.iter().filter(|r| !twin(&set.tcp, r)).map(|&r| rule(r, PROTO_UDP)));
        }
        out
    }
}

/// Merges overlapping or adjacent ranges.
fn normalize(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_single_addresses() {
        assert_eq!(IpNet::parse("10.0.0.0/8").unwrap(), IpNet::V4 { addr: [10, 0, 0, 0], len: 8 });
        assert_eq!(IpNet::parse("127.0.0.1").unwrap().prefix_len(), 32);
        assert_eq!(IpNet::parse("::1").unwrap().prefix_len(), 128);
        assert_eq!(IpNet::parse("0.0.0.0/0").unwrap().prefix_len(), 0);
        assert_eq!(IpNet::parse("fd00::/8").unwrap().to_string(), "fd00::/8");
    }

    #[test]
    fn rejects_host_bits_with_a_suggestion() {
        match IpNet::parse("10.1.2.3/8") {
            Err(PolicyErrorKind::HostBitsSet { suggestion, .. }) => {
                assert_eq!(suggestion, "10.0.0.0/8")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_prefixes_and_names() {
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/x", "example.com", "10.0.0/8", ""] {
            assert!(matches!(IpNet::parse(bad), Err(PolicyErrorKind::InvalidCidr { .. })), "{bad}");
        }
    }

    #[test]
    fn containment() {
        let n8 = IpNet::parse("10.0.0.0/8").unwrap();
        let n16 = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n8.contains(&n16));
        assert!(!n16.contains(&n8));
        assert!(n8.contains(&n8));
        assert!(!n8.contains(&IpNet::parse("::/0").unwrap()));
        assert!(IpNet::parse("::/0").unwrap().contains(&IpNet::parse("::1").unwrap()));
    }

    #[test]
    fn ports() {
        assert_eq!(PortRange::parse(&PortDoc::Number(443)).unwrap(), PortRange { lo: 443, hi: 443 });
        assert_eq!(PortRange::parse(&PortDoc::Text("8000-8080".into())).unwrap(), PortRange { lo: 8000, hi: 8080 });
        assert_eq!(PortRange::parse(&PortDoc::Text("any".into())).unwrap(), PortRange::ANY);
        assert!(matches!(PortRange::parse(&PortDoc::Number(70000)), Err(PolicyErrorKind::PortOutOfRange { .. })));
        assert!(matches!(PortRange::parse(&PortDoc::Number(0)), Err(PolicyErrorKind::PortOutOfRange { .. })));
        assert!(matches!(PortRange::parse(&PortDoc::Text("90-80".into())), Err(PolicyErrorKind::InvalidPort { .. })));
        assert!(matches!(PortRange::parse(&PortDoc::Text("http".into())), Err(PolicyErrorKind::InvalidPort { .. })));
    }
}
