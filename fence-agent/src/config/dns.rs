//! `[dns]`: egress by name. Every fenced identity's DNS is steered to a resolver of its own in
//! the agent (an address of `resolvers` on port 53, and a port of ::1), which answers only the
//! names its policy allows and forwards them to `upstream`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use serde::Deserialize;

/// What a refused query is answered with.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RefuseWith {
    #[default]
    Refused,
    Nxdomain,
}

/// `[dns]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Steer fenced identities' DNS to the agent (on by default). Off: DNS is ordinary egress
    /// and names in egress rules allow nothing.
    pub enabled: bool,
    /// The loopback network whose addresses the per-identity resolvers listen on (port 53).
    pub resolvers: (Ipv4Addr, u8),
    /// Where allowed queries go; empty: the host's /etc/resolv.conf nameservers.
    pub upstream: Vec<SocketAddr>,
    pub refuse_with: RefuseWith,
    /// Added to an answer's TTL before a learned address expires in the kernel.
    pub ttl_grace: Duration,
    /// The shortest and longest a learned address lives.
    pub ttl_floor: Duration,
    pub ttl_cap: Duration,
    pub max_addresses_per_name: usize,
    pub max_addresses_per_identity: usize,
    /// Learn answers that name this host's own addresses: loopback, link-local and the cloud
    /// metadata services (off: such answers reach the client but open nothing).
    pub learn_local_addresses: bool,
}

impl Default for DnsConfig {
    fn default() -> DnsConfig {
        DnsConfig::try_from(DnsSection::default()).expect("the built-in defaults are valid")
    }
}

/// `[dns]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_resolvers")]
    resolvers: String,
    #[serde(default)]
    upstream: Vec<String>,
    #[serde(default)]
    refuse_with: RefuseWith,
    #[serde(default = "default_grace")]
    ttl_grace: u64,
    #[serde(default = "default_floor")]
    ttl_floor: u64,
    #[serde(default = "default_cap")]
    ttl_cap: u64,
    #[serde(default = "default_per_name")]
    max_addresses_per_name: usize,
    #[serde(default = "default_per_identity")]
    max_addresses_per_identity: usize,
    #[serde(default)]
    learn_local_addresses: bool,
}

impl Default for DnsSection {
    fn default() -> DnsSection {
        DnsSection {
            enabled: true,
            resolvers: default_resolvers(),
            upstream: Vec::new(),
            refuse_with: RefuseWith::Refused,
            ttl_grace: default_grace(),
            ttl_floor: default_floor(),
            ttl_cap: default_cap(),
            max_addresses_per_name: default_per_name(),
            max_addresses_per_identity: default_per_identity(),
            learn_local_addresses: false,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_resolvers() -> String {
    "127.153.0.0/16".into()
}
fn default_grace() -> u64 {
    30
}
fn default_floor() -> u64 {
    5
}
fn default_cap() -> u64 {
    3600
}
fn default_per_name() -> usize {
    4096
}
fn default_per_identity() -> usize {
    16_384
}

/// The longest a learned address may live (a day).
const MAX_TTL_SECS: u64 = 86_400;

impl TryFrom<DnsSection> for DnsConfig {
    type Error = String;

    fn try_from(s: DnsSection) -> Result<DnsConfig, String> {
        let resolvers = resolver_network(&s.resolvers)?;
        let upstream = s.upstream.iter().map(|u| upstream(u, resolvers)).collect::<Result<Vec<_>, _>>()?;
        for (field, secs) in [("ttl_grace", s.ttl_grace), ("ttl_floor", s.ttl_floor), ("ttl_cap", s.ttl_cap)] {
            if secs > MAX_TTL_SECS {
                return Err(format!("dns.{field}: must be at most {MAX_TTL_SECS} seconds (got {secs})"));
            }
        }
        if s.ttl_cap == 0 || s.ttl_floor > s.ttl_cap {
            return Err(format!(
                "dns.ttl_cap: must be at least 1 second and at least dns.ttl_floor ({} > {})",
                s.ttl_floor, s.ttl_cap
            ));
        }
        for (field, n) in [
            ("max_addresses_per_name", s.max_addresses_per_name),
            ("max_addresses_per_identity", s.max_addresses_per_identity),
        ] {
            if !(1..=65_536).contains(&n) {
                return Err(format!("dns.{field}: must be between 1 and 65536 (got {n})"));
            }
        }
        Ok(DnsConfig {
            enabled: s.enabled,
            resolvers,
            upstream,
            refuse_with: s.refuse_with,
            ttl_grace: Duration::from_secs(s.ttl_grace),
            ttl_floor: Duration::from_secs(s.ttl_floor),
            ttl_cap: Duration::from_secs(s.ttl_cap),
            max_addresses_per_name: s.max_addresses_per_name,
            max_addresses_per_identity: s.max_addresses_per_identity,
            learn_local_addresses: s.learn_local_addresses,
        })
    }
}

/// `127.X.0.0/16`-like: inside 127.0.0.0/8, at least 256 addresses, no host bits.
fn resolver_network(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = |why: &str| format!("dns.resolvers: {text:?} {why}");
    let (addr, len) = text.split_once('/').ok_or_else(|| bad("is not a network (e.g. \"127.153.0.0/16\")"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("is not an IPv4 network"))?;
    let len: u8 = len.parse().map_err(|_| bad("has no valid prefix length"))?;
    if !(8..=24).contains(&len) {
        return Err(bad("must have a prefix length from 8 to 24 (room for one address per identity)"));
    }
    if addr.octets()[0] != 127 {
        return Err(bad("is not inside 127.0.0.0/8 (the resolvers listen on loopback only)"));
    }
    if u32::from(addr) & (u32::MAX >> len) != 0 {
        return Err(bad("has host bits set"));
    }
    Ok((addr, len))
}

/// `"192.0.2.53"`, `"192.0.2.53:5353"`, `"::1"` or `"[::1]:53"`, outside the resolvers' network.
fn upstream(text: &str, (net, len): (Ipv4Addr, u8)) -> Result<SocketAddr, String> {
    let addr = text
        .parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, fence_common::DNS_PORT)))
        .map_err(|_| format!("dns.upstream: {text:?} is not an IP address with an optional port"))?;
    if let IpAddr::V4(v4) = addr.ip()
        && (u32::from(v4) ^ u32::from(net)) >> (32 - u32::from(len)) == 0
    {
        return Err(format!("dns.upstream: {addr} is inside dns.resolvers, the agent's own resolvers (a loop)"));
    }
    if addr.port() == 0 {
        return Err(format!("dns.upstream: {addr} has port 0"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn dns(text: &str) -> Result<super::DnsConfig, String> {
        Config::parse(&format!("[dns]\n{text}\n")).map(|c| c.dns)
    }

    #[test]
    fn defaults_and_upstreams() {
        let d = Config::parse("").unwrap().dns;
        assert!(d.enabled && d.upstream.is_empty());
        assert_eq!(d.resolvers, ("127.153.0.0".parse().unwrap(), 16));
        let d = dns("upstream = [\"192.0.2.53\", \"[2001:db8::53]:5353\"]\nrefuse_with = \"nxdomain\"").unwrap();
        assert_eq!(d.upstream[0].to_string(), "192.0.2.53:53");
        assert_eq!(d.upstream[1].to_string(), "[2001:db8::53]:5353");
        assert_eq!(d.refuse_with, super::RefuseWith::Nxdomain);
    }

    #[test]
    fn bad_values_name_the_field_and_the_reason() {
        let cases = [
            ("resolvers = \"10.0.0.0/16\"", "dns.resolvers: \"10.0.0.0/16\" is not inside 127.0.0.0/8"),
            ("resolvers = \"127.1.2.3/16\"", "has host bits set"),
            ("resolvers = \"127.0.0.0/30\"", "prefix length from 8 to 24"),
            ("upstream = [\"dns.example\"]", "dns.upstream: \"dns.example\" is not an IP address"),
            ("upstream = [\"127.153.0.1\"]", "dns.upstream: 127.153.0.1:53 is inside dns.resolvers"),
            ("ttl_floor = 10\nttl_cap = 5", "dns.ttl_cap: must be at least 1 second and at least dns.ttl_floor"),
            ("ttl_grace = 100000", "dns.ttl_grace: must be at most 86400"),
            ("max_addresses_per_name = 0", "dns.max_addresses_per_name: must be between 1 and 65536"),
            ("refuse_with = \"drop\"", "dns.refuse_with"),
            ("servers = []", "servers"),
        ];
        for (text, want) in cases {
            let e = dns(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
